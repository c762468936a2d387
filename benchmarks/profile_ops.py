""" Where does the time go? CPU profile of one model: per op type and per network region.

    python -m benchmarks.profile_ops --model resattnet56 --batch-size 8 --img-size 224 --threads 2
    python -m benchmarks.profile_ops --model resnet152 --batch-size 8 --img-size 224 --threads 2
    python -m benchmarks.profile_ops --model resattnet56 --variants   # eager vs channels_last / fuse_bn / jit / compile

Prints

* op types: self CPU time of every aten op (``torch.profiler``) summed into conv, batch_norm, relu, max_pool,
  upsample_bilinear, sigmoid, add/mul/addcmul, copies, ... with the share of the total and the op-call count;
* regions: inclusive time of the stem, the plain residual units, and for each Attention Module its trunk side
  (pre + trunk + post units), its mask branch and the ``(1 + M) * T`` merge, next to each region's share of the
  MACs (``FlopCounterMode`` per module), so a region that costs more time than its MACs stands out;
* the top ops by self time.

Regions are marked with ``record_function`` ranges opened and closed by forward pre-/post-hooks, so the model code
is untouched. ``--mode train`` profiles forward + backward + SGD step (regions then cover the forward only).

Hacked together by the timm-resattn authors, Apache-2.0.
"""
import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

os.environ.setdefault('KINETO_LOG_LEVEL', '5')  # keep the profiler's start/stop chatter off stderr

import torch
import torch.nn as nn
from torch.profiler import ProfilerActivity, profile, record_function

from .common import BenchConfig, create_model, make_step

__all__ = ['op_category', 'annotate_regions', 'profile_model', 'main']

# exact aten op names first, then substrings (first match wins)
_EXACT = {
    'aten::add': 'add/mul/addcmul', 'aten::add_': 'add/mul/addcmul', 'aten::mul': 'add/mul/addcmul',
    'aten::mul_': 'add/mul/addcmul', 'aten::addcmul': 'add/mul/addcmul', 'aten::addcmul_': 'add/mul/addcmul',
    'aten::sum': 'add/mul/addcmul', 'aten::copy_': 'copies', 'aten::contiguous': 'copies', 'aten::clone': 'copies',
    'aten::_to_copy': 'copies', 'aten::to': 'copies', 'aten::addmm': 'linear (fc)', 'aten::linear': 'linear (fc)',
    'aten::mm': 'linear (fc)', 'aten::mean': 'global pool', 'aten::sigmoid': 'sigmoid',
    'aten::sigmoid_backward': 'sigmoid',
}
_SUBSTRINGS: Tuple[Tuple[str, str], ...] = (
    ('conv', 'conv'),
    ('batch_norm', 'batch_norm'),
    ('relu', 'relu'), ('threshold', 'relu'), ('clamp_min', 'relu'),
    ('max_pool', 'max_pool'),
    ('upsample', 'upsample_bilinear'), ('interpolate', 'upsample_bilinear'),
    ('sigmoid', 'sigmoid'),
    ('adaptive_avg_pool', 'global pool'), ('avg_pool', 'global pool'),
    ('cross_entropy', 'loss'), ('log_softmax', 'loss'), ('nll_loss', 'loss'),
    ('sgd', 'optimizer'), ('_foreach', 'optimizer'),
    ('empty', 'alloc/view'), ('zeros', 'alloc/view'), ('resize', 'alloc/view'), ('view', 'alloc/view'),
    ('as_strided', 'alloc/view'), ('reshape', 'alloc/view'), ('flatten', 'alloc/view'), ('expand', 'alloc/view'),
    ('transpose', 'alloc/view'), ('permute', 'alloc/view'), ('detach', 'alloc/view'), ('slice', 'alloc/view'),
    ('select', 'alloc/view'), ('aten::t', 'alloc/view'), ('fill_', 'alloc/view'), ('zero_', 'alloc/view'),
)
_REGION_PREFIX = 'region::'


def op_category(name: str) -> str:
    """ Category of an aten op name (``'aten::conv2d'`` -> ``'conv'``). """
    if name in _EXACT:
        return _EXACT[name]
    for sub, cat in _SUBSTRINGS:
        if sub in name:
            return cat
    if 'backward' in name or 'Backward' in name:
        return 'autograd other'
    return 'other'


def _regions(model: nn.Module) -> List[Tuple[str, str, nn.Module]]:
    """ (label, group, module) of the regions to time: coarse enough to read, fine enough to see the mask. """
    from timm_resattn.layers.attention import AttentionModule

    out: List[Tuple[str, str, nn.Module]] = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential) and name in ('stages', 'layers') or name.startswith('layer'):
            stages = [(f'{name}.{i}', s) for i, s in enumerate(child)] if name in ('stages', 'layers') \
                else [(name, child)]
            for sname, stage in stages:
                blocks = stage.blocks if hasattr(stage, 'blocks') else stage
                for bname, block in blocks.named_children():
                    label = f'{sname}.{bname}'
                    if isinstance(block, AttentionModule):
                        out.append((label, 'attention module', block))
                        for part in ('pre', 'trunk', 'mask', 'post'):
                            group = 'mask' if part == 'mask' else 'trunk (pre+trunk+post)'
                            out.append((f'{label}.{part}', group, getattr(block, part)))
                    else:
                        out.append((label, 'residual units', block))
        elif name in ('head', 'fc', 'global_pool', 'norm', 'final_norm'):
            out.append((name, 'norm+head', child))
        else:
            out.append((name, 'stem', child))
    return out


def annotate_regions(model: nn.Module) -> Tuple[List[Tuple[str, str, nn.Module]], List]:
    """ Open a ``record_function`` range around each region's forward (hooks); returns regions and hook handles. """
    regions = _regions(model)
    handles = []
    for label, _, module in regions:
        stack: List[record_function] = []

        def pre(_m, _inp, label=label, stack=stack):
            rf = record_function(_REGION_PREFIX + label)
            rf.__enter__()
            stack.append(rf)

        def post(_m, _inp, _out, stack=stack):
            stack.pop().__exit__(None, None, None)

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))
    return regions, handles


def _region_macs(model: nn.Module, img_size: int, regions) -> Dict[str, float]:
    from torch.utils.flop_counter import FlopCounterMode

    fqn = {id(m): n for n, m in model.named_modules()}
    root = type(model).__name__
    counter = FlopCounterMode(display=False)
    was_training = model.training
    model.eval()
    with torch.no_grad(), counter:
        model(torch.randn(1, 3, img_size, img_size))
    model.train(was_training)
    counts = counter.get_flop_counts()
    out = {}
    for label, _, module in regions:
        key = f'{root}.{fqn[id(module)]}'
        out[label] = sum(counts.get(key, {}).values()) / 2
    out['__total__'] = counter.get_total_flops() / 2
    return out


def profile_model(args: argparse.Namespace) -> Dict:
    cfg = BenchConfig(device='cpu', batch_size=args.batch_size, img_size=args.img_size,
                      channels_last=args.channels_last, fuse_bn=args.fuse_bn)
    step = make_step(create_model(args.model), args.mode, cfg)
    model = step.model  # the fused copy with --fuse-bn
    regions, handles = annotate_regions(model)
    macs = _region_macs(model, args.img_size, regions)
    step.prepare()
    for _ in range(args.warmup):
        step()
    wall = []
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        for _ in range(args.iters):
            t0 = time.perf_counter()
            step()
            wall.append(time.perf_counter() - t0)
    for h in handles:
        h.remove()
    if args.trace:
        prof.export_chrome_trace(str(args.trace))

    events = prof.key_averages()
    cats: Dict[str, float] = defaultdict(float)
    calls: Dict[str, int] = defaultdict(int)
    region_time: Dict[str, float] = {}
    ops = []
    for e in events:
        if e.key.startswith(_REGION_PREFIX):
            region_time[e.key[len(_REGION_PREFIX):]] = e.cpu_time_total / 1e3 / args.iters  # ms, inclusive
            continue
        if e.key.startswith('ProfilerStep') or not e.key.startswith('aten::'):
            continue
        cat = op_category(e.key)
        cats[cat] += e.self_cpu_time_total / 1e3 / args.iters
        calls[cat] += e.count // args.iters
        ops.append((e.key, e.self_cpu_time_total / 1e3 / args.iters, e.count // args.iters))
    total_ops = sum(cats.values())

    # regions: inclusive times, with the attention module's merge = module - its 4 parts
    groups: Dict[str, float] = defaultdict(float)
    group_macs: Dict[str, float] = defaultdict(float)
    per_region = []
    for label, group, _ in regions:
        t = region_time.get(label, 0.)
        m = macs.get(label, 0.)
        if group == 'attention module':
            parts = sum(region_time.get(f'{label}.{p}', 0.) for p in ('pre', 'trunk', 'mask', 'post'))
            pmacs = sum(macs.get(f'{label}.{p}', 0.) for p in ('pre', 'trunk', 'mask', 'post'))
            groups['merge (1+M)*T'] += t - parts
            group_macs['merge (1+M)*T'] += m - pmacs
            per_region.append((label + ' [merge]', t - parts, m - pmacs))
            continue
        groups[group] += t
        group_macs[group] += m
        per_region.append((label, t, m))
    fwd_total = sum(groups.values())
    return dict(
        model=args.model, batch_size=args.batch_size, img_size=args.img_size, threads=torch.get_num_threads(),
        mode=args.mode, fuse_bn=args.fuse_bn, channels_last=args.channels_last,
        wall_ms_median=1e3 * statistics.median(wall), gmacs=macs['__total__'] / 1e9,
        categories={k: dict(ms=v, share=v / total_ops, calls=calls[k]) for k, v in
                    sorted(cats.items(), key=lambda kv: -kv[1])},
        op_calls=sum(calls.values()),
        groups={k: dict(ms=v, share=v / fwd_total if fwd_total else 0.,
                        mac_share=group_macs[k] / macs['__total__']) for k, v in groups.items()},
        regions=[dict(region=r, ms=t, gmacs=m / 1e9) for r, t, m in per_region],
        top_ops=[dict(op=k, ms=t, calls=c) for k, t, c in sorted(ops, key=lambda o: -o[1])[:args.top]],
    )


def print_report(res: Dict, file=sys.stdout) -> None:
    p = lambda *a: print(*a, file=file)  # noqa: E731
    p(f"== {res['model']} {res['mode']}: batch {res['batch_size']}, {res['img_size']} px, {res['threads']} threads"
      f"{', fuse_bn' if res['fuse_bn'] else ''}{', channels_last' if res['channels_last'] else ''}: "
      f"{res['wall_ms_median']:.0f} ms/step (profiled), {res['gmacs']:.2f} GMACs/img, "
      f"{res['op_calls']} aten op calls/step")
    p('-- op types (self CPU time)')
    for k, v in res['categories'].items():
        p(f"  {k:22s} {v['ms']:9.1f} ms  {100 * v['share']:5.1f}%  {v['calls']:6d} calls")
    p('-- regions (inclusive forward time vs MACs)')
    for k, v in sorted(res['groups'].items(), key=lambda kv: -kv[1]['ms']):
        p(f"  {k:24s} {v['ms']:9.1f} ms  {100 * v['share']:5.1f}% of time  {100 * v['mac_share']:5.1f}% of MACs")
    p('-- per region')
    for r in res['regions']:
        p(f"  {r['region']:28s} {r['ms']:9.1f} ms  {r['gmacs']:6.3f} GMACs")
    p('-- top ops (self CPU time)')
    for o in res['top_ops']:
        p(f"  {o['op']:40s} {o['ms']:9.1f} ms  {o['calls']:6d} calls")


def time_variants(args: argparse.Namespace) -> Dict[str, float]:
    """ Inference ms/step of eager vs channels_last, fuse_bn, both, torch.jit.trace+freeze and torch.compile. """
    base = dict(device='cpu', batch_size=args.batch_size, img_size=args.img_size)
    variants = {
        'eager': BenchConfig(**base),
        'channels_last': BenchConfig(**base, channels_last=True),
        'fuse_bn': BenchConfig(**base, fuse_bn=True),
        'fuse_bn+channels_last': BenchConfig(**base, fuse_bn=True, channels_last=True),
    }
    steps = {k: make_step(create_model(args.model), 'infer', c) for k, c in variants.items()}
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    if 'jit' in args.variant_extra:
        m = create_model(args.model).eval()
        with torch.no_grad():
            jm = torch.jit.freeze(torch.jit.trace(m, x, check_trace=False))

        def jit_step(jm=jm):
            with torch.no_grad():
                jm(x)
        steps['jit.trace+freeze'] = jit_step
    if 'compile' in args.variant_extra:
        steps['torch.compile'] = make_step(create_model(args.model), 'infer', BenchConfig(**base, compile=True))
    times: Dict[str, List[float]] = defaultdict(list)
    for k, s in steps.items():
        if hasattr(s, 'prepare'):
            s.prepare()
        t0 = time.perf_counter()
        for _ in range(max(args.warmup, 1)):
            s()
        print(f'  warm-up {k}: {time.perf_counter() - t0:.1f} s', file=sys.stderr)
    for _ in range(args.iters):
        for k, s in steps.items():
            t0 = time.perf_counter()
            s()
            times[k].append(1e3 * (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog='python -m benchmarks.profile_ops', description=__doc__.split('\n')[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument('--model', default='resattnet56')
    ap.add_argument('--batch-size', type=int, default=8)
    ap.add_argument('--img-size', type=int, default=224)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--mode', default='infer', choices=('infer', 'train'))
    ap.add_argument('--warmup', type=int, default=2)
    ap.add_argument('--iters', type=int, default=3)
    ap.add_argument('--fuse-bn', action='store_true')
    ap.add_argument('--channels-last', action='store_true')
    ap.add_argument('--top', type=int, default=15, help='top ops to list')
    ap.add_argument('--trace', type=Path, default=None, help='write a Chrome trace here')
    ap.add_argument('--json', type=Path, default=None, help='write the numbers here')
    ap.add_argument('--variants', action='store_true',
                    help='instead of profiling, time inference of eager / channels_last / fuse_bn / jit / compile')
    ap.add_argument('--variant-extra', type=lambda s: [v for v in s.split(',') if v], default=['jit'],
                    help='extra variants for --variants: jit, compile (compile needs a C++ compiler, and minutes)')
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.variants:
        res = time_variants(args)
        ref = res['eager']
        print(f'== {args.model} inference, batch {args.batch_size}, {args.img_size} px, {args.threads} threads '
              f'(median of {args.iters}, interleaved)')
        for k, v in res.items():
            print(f'  {k:24s} {v:9.1f} ms/step  {ref / v:5.2f}x eager')
        out = dict(model=args.model, variants_ms=res)
    else:
        out = profile_model(args)
        print_report(out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
