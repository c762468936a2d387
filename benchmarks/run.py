""" Benchmark the Residual Attention Networks against timm's ResNet peers, side by side in one run.

    python -m benchmarks.run --device cpu --threads 2 --batch-size 8 --img-size 224 --out benchmarks/results/cpu

For every model: parameters, MACs (``FlopCounterMode`` total / 2 at ``--img-size``), inference and training
throughput (images/s; train = forward + backward + SGD step in train mode) and peak memory (see
``benchmarks/memory.py``). All models stay resident and are timed round-robin (repeat 1 of every model and mode,
then repeat 2, ...), so slow drifts of a shared machine hit them alike; warm-up steps are excluded and the median
over the repeats is reported.

Writes to ``--out``: ``results.csv`` (one row per model and mode), ``results.json`` (config, environment, raw
per-repeat times, medians), ``results.md`` (tables, with each net's speed-up over its ResNet peer beside the MAC
ratio) and ``throughput_vs_gmacs.png``.

Hacked together by the timm-resattn authors, Apache-2.0.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

import timm

from .common import (
    MODES, PRECISIONS, REPO_ROOT, RUNTIMES, BenchConfig, Step, count_macs, count_params, create_model, environment,
    make_runtime_step, make_step, synchronize,
)
from .activations import activation_rows
from .report import OUTPUT_FILES, write_csv, write_json, write_markdown, write_plot

__all__ = ['main', 'parse_args', 'OUR_MODELS', 'DEFAULT_PEERS', 'PEER_OF']

OUR_MODELS = ('resattnet56', 'resattnet92', 'resattnext56', 'resattninc56')
DEFAULT_PEERS = ('resnet152', 'resnet200', 'resnetv2_152')
# each of our nets against the ResNet of about its accuracy in the paper (Attention-56 ~ ResNet-152, -92 ~ -200)
PEER_OF = {
    'resattnet56': 'resnet152',
    'resattnext56': 'resnet152',
    'resattninc56': 'resnet152',
    'resattnet92': 'resnet200',
    'resattnext92': 'resnet200',
}


def _csv_list(s: str) -> List[str]:
    return [v.strip() for v in s.split(',') if v.strip()]


def _default_models() -> List[str]:
    available = set(timm.list_models('resatt*'))
    return [m for m in OUR_MODELS if m in available]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog='python -m benchmarks.run',
        description='Throughput, MACs and peak memory of the Residual Attention Networks vs timm ResNets.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument('--models', type=_csv_list, default=None,
                   help=f'our models, comma-separated (default: those of {",".join(OUR_MODELS)} that are registered)')
    p.add_argument('--peers', type=_csv_list, default=list(DEFAULT_PEERS),
                   help='timm peer models, comma-separated')
    p.add_argument('--peer-map', type=_csv_list, default=[],
                   help='ours=peer overrides of the peer each net is compared with, comma-separated; a net whose '
                        'peer is not in the run is compared with the first of --peers')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', choices=('cpu', 'cuda'))
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--precision', default='fp32', choices=tuple(PRECISIONS), help='fp32, or autocast to bf16/fp16')
    p.add_argument('--channels-last', action='store_true', help='channels_last model and input')
    p.add_argument('--compile', action='store_true', help='torch.compile every model (default mode)')
    p.add_argument('--fuse-bn', action='store_true',
                   help='inference: fold each BN that follows a conv into it '
                        '(timm_resattn.analysis.fuse.fuse_bn), peers too')
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: torch\'s choice)')
    p.add_argument('--repeats', type=int, default=5, help='timed repeats per model and mode (median reported)')
    p.add_argument('--warmup', type=int, default=2, help='untimed steps per model and mode before the repeats')
    p.add_argument('--iters', type=int, default=3, help='steps per timed repeat')
    p.add_argument('--modes', type=_csv_list, default=list(MODES), help='infer and/or train, comma-separated')
    p.add_argument('--runtimes', type=_csv_list, default=['eager'],
                   help='how each model runs, comma-separated: eager (PyTorch), export (its torch.export program, '
                        'ExportedProgram.module()), onnxruntime (its ONNX file, CPU); the last two infer only')
    p.add_argument('--out', type=Path, default=None,
                   help='output folder (default: benchmarks/results/<device>_<precision>_b<batch>_<img>)')
    p.add_argument('--no-memory', action='store_true', help='skip the per-model peak-memory subprocesses')
    p.add_argument('--memory-steps', type=int, default=2, help='steps per mode in the peak-memory subprocess')
    p.add_argument('--no-activations', action='store_true',
                   help='skip the saved-activation-bytes table (benchmarks/activations.py; CPU, fp32, deterministic)')
    p.add_argument('--memory-budget-gib', type=float, default=16.,
                   help='memory budget of the "largest batch that fits" column of the saved-activations table')
    p.add_argument('--no-plot', action='store_true', help='skip the PNG plot (no matplotlib needed)')
    p.add_argument('--no-progress', action='store_true', help='no progress bar (per-step lines are still printed)')
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args(argv)

    if args.models is None:
        args.models = _default_models()
    for m in args.modes:
        if m not in MODES:
            p.error(f'--modes: unknown mode {m!r}; expected {",".join(MODES)}')
    for r in args.runtimes:
        if r not in RUNTIMES:
            p.error(f'--runtimes: unknown runtime {r!r}; expected {",".join(RUNTIMES)}')
    if not args.runtimes:
        p.error('--runtimes: give at least one runtime')
    if set(args.runtimes) - {'eager'}:
        if args.compile or args.channels_last or args.precision != 'fp32':
            p.error('--runtimes export/onnxruntime: benchmarked in fp32, without --compile and --channels-last')
        if 'infer' not in args.modes:
            p.error('--runtimes export/onnxruntime: they run inference, add infer to --modes')
        if 'onnxruntime' in args.runtimes and args.device != 'cpu':
            p.error('--runtimes onnxruntime: CPU only (--device cpu)')
    for n, v in (('--batch-size', args.batch_size), ('--img-size', args.img_size), ('--repeats', args.repeats),
                 ('--iters', args.iters)):
        if v < 1:
            p.error(f'{n} must be >= 1')
    if args.warmup < 0 or (args.compile and args.warmup < 1):
        p.error('--warmup must be >= 0 (>= 1 with --compile, whose first step compiles)')
    if args.device == 'cuda' and not torch.cuda.is_available():
        p.error('--device cuda: CUDA is not available')
    names = list(dict.fromkeys(args.models + args.peers))
    if not names:
        p.error('no models to run')
    unknown = [n for n in names if not timm.is_model(n)]
    if unknown:
        p.error(f'unknown model(s) {unknown}')
    args.peer_overrides = {}
    for item in args.peer_map:
        ours, sep, peer = item.partition('=')
        if not sep:
            p.error(f'--peer-map: expected ours=peer, got {item!r}')
        args.peer_overrides[ours.strip()] = peer.strip()
    if args.out is None:
        tag = f'{args.device}_{args.precision}_b{args.batch_size}_{args.img_size}'
        args.out = REPO_ROOT / 'benchmarks' / 'results' / tag
    return args


class _Progress:
    """ A tqdm bar on stderr when it is a terminal and tqdm is installed (it comes with huggingface_hub); one line per
    measurement either way.
    """

    def __init__(self, total: int, enabled: bool = True):
        self.bar = None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, file=sys.stderr, unit='run', dynamic_ncols=True)
            except ImportError:
                pass
        self.total, self.done = total, 0

    def log(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def update(self, desc: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_description(desc)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _label(key: tuple) -> str:
    name, mode, rt = key
    return f'{name} {mode}' if rt == 'eager' else f'{name} {mode} [{rt}]'


def _time_steps(step: Step, iters: int, device: str) -> Tuple[float, float]:
    """ Wall-clock and process CPU seconds of ``iters`` steps. """
    step.prepare()
    synchronize(device)
    c0 = time.process_time()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    synchronize(device)
    return time.perf_counter() - t0, time.process_time() - c0


def _loadavg() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _peer_for(name: str, args: argparse.Namespace) -> Optional[str]:
    peer = args.peer_overrides.get(name, PEER_OF.get(name))
    if peer in args.peers:
        return peer
    return args.peers[0] if args.peers else None


def _measure_memory(name: str, args: argparse.Namespace, cfg: BenchConfig) -> Dict[str, Optional[float]]:
    payload = json.dumps({
        'model': name, 'modes': args.modes, 'threads': args.threads, 'steps': args.memory_steps,
        'cfg': vars(cfg),
    })
    proc = subprocess.run(
        [sys.executable, '-m', 'benchmarks.memory', payload], cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f'peak-memory run of {name} failed:\n{proc.stderr[-2000:]}', file=sys.stderr)
        return dict.fromkeys(args.modes)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """ Run the benchmark described by ``args`` (see ``parse_args``) and write the outputs; returns the JSON data. """
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == 'cuda':
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(args.seed)
    cfg = BenchConfig(
        device=args.device, batch_size=args.batch_size, img_size=args.img_size, precision=args.precision,
        channels_last=args.channels_last, compile=args.compile, fuse_bn=args.fuse_bn,
    )
    ours = list(dict.fromkeys(args.models))
    names = list(dict.fromkeys(ours + args.peers))
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    load_start = _loadavg()

    # models: params and MACs on the plain fp32 model, then one prepared step closure per (model, mode)
    # (mode, runtime) pairs: every mode in eager, inference in the deployed runtimes
    runs = [(mode, rt) for rt in args.runtimes for mode in args.modes if rt == 'eager' or mode == 'infer']
    models: Dict[str, Dict[str, Any]] = {}
    steps: Dict[tuple, Step] = {}
    workdir = tempfile.TemporaryDirectory(prefix='resattn_bench_') if 'onnxruntime' in args.runtimes else None
    for name in names:
        model = create_model(name)
        info = {'kind': 'ours' if name in ours else 'peer', 'params': count_params(model),
                'macs': count_macs(model, args.img_size), 'setup_seconds': {}}
        models[name] = info
        print(f'{name}: {info["params"] / 1e6:.2f} M params, {info["macs"] / 1e9:.2f} GMACs', file=sys.stderr)
        programs: Dict[int, Any] = {}
        for mode, rt in runs:
            if rt == 'eager':
                steps[(name, mode, rt)] = make_step(model, mode, cfg)
                continue
            steps[(name, mode, rt)], secs = make_runtime_step(
                model, rt, cfg, workdir=workdir.name if workdir else None, programs=programs)
            info['setup_seconds'][rt] = round(secs, 1)
            print(f'{name}: {rt} set up in {secs:.1f} s', file=sys.stderr, flush=True)
    for name, info in models.items():
        if info['kind'] == 'ours':
            peer = _peer_for(name, args)
            info['peer'] = peer
            info['mac_ratio'] = models[peer]['macs'] / info['macs'] if peer else None

    keys = [(name, mode, rt) for name in names for mode, rt in runs]
    progress = _Progress(len(keys) * (args.repeats + (1 if args.warmup else 0)), enabled=not args.no_progress)
    if args.warmup:
        for key in keys:
            t, _ = _time_steps(steps[key], args.warmup, args.device)
            progress.log(f'[warm-up] {_label(key)}: {args.warmup} steps in {t:.2f} s')
            progress.update(f'warm-up {_label(key)}')

    times: Dict[tuple, List[float]] = {k: [] for k in keys}
    cpu_times: Dict[tuple, List[float]] = {k: [] for k in keys}
    for r in range(args.repeats):
        for key in keys:
            t, c = _time_steps(steps[key], args.iters, args.device)
            times[key].append(t)
            cpu_times[key].append(c)
            progress.log(
                f'[{r + 1}/{args.repeats}] {_label(key)}: {args.batch_size * args.iters / t:.2f} img/s '
                f'({1000 * t / args.iters:.1f} ms/step)')
            progress.update(f'repeat {r + 1}/{args.repeats} {_label(key)}')
    progress.close()
    steps.clear()
    if workdir is not None:
        workdir.cleanup()

    memory: Dict[str, Dict[str, Optional[float]]] = {}
    if not args.no_memory:
        for name in names:
            print(f'peak memory: {name} ...', file=sys.stderr, flush=True)
            memory[name] = _measure_memory(name, args, cfg)

    activations: List[Dict[str, Any]] = []
    if not args.no_activations:
        print('saved activations ...', file=sys.stderr, flush=True)
        activations = activation_rows(names, ours, args.img_size, args.memory_budget_gib)
    saved_plain = {r['model']: r['saved_mib_per_img'] for r in activations if r['variant'] == 'plain'}

    rows: List[Dict[str, Any]] = []
    results: List[Dict[str, Any]] = []
    medians = {k: statistics.median(args.batch_size * args.iters / t for t in v) for k, v in times.items()}
    env = environment(args.device)
    env['loadavg_1min_start'], env['loadavg_1min_end'] = load_start, _loadavg()
    for key in keys:
        name, mode, rt = key
        info = models[name]
        ips = [args.batch_size * args.iters / t for t in times[key]]
        peer = info.get('peer')
        speedup = medians[key] / medians[(peer, mode, rt)] if peer else None
        mem = memory.get(name, {}).get(mode) if rt == 'eager' else None  # the memory run is eager
        row = {
            'model': name, 'kind': info['kind'], 'mode': mode, 'runtime': rt,
            'params_m': round(info['params'] / 1e6, 3), 'gmacs': round(info['macs'] / 1e9, 4),
            'img_s_median': round(medians[key], 3), 'img_s_min': round(min(ips), 3),
            'img_s_max': round(max(ips), 3),
            'ms_per_step_median': round(1000 * statistics.median(times[key]) / args.iters, 2),
            'peak_mem_mib': None if mem is None else round(mem, 1),
            'peer': peer, 'speedup_vs_peer': None if speedup is None else round(speedup, 4),
            'mac_ratio_peer_over_ours': None if info.get('mac_ratio') is None else round(info['mac_ratio'], 4),
            'device': args.device, 'device_name': env['device_name'], 'precision': args.precision,
            'batch_size': args.batch_size, 'img_size': args.img_size, 'channels_last': args.channels_last,
            'compile': args.compile, 'fuse_bn': args.fuse_bn, 'threads': env['threads'],
            'repeats': args.repeats, 'iters': args.iters, 'warmup': args.warmup,
            'saved_act_mib_per_img': saved_plain.get(name),
        }
        rows.append(row)
        results.append({
            'model': name, 'mode': mode, 'runtime': rt, 'repeat_seconds': times[key], 'repeat_img_s': ips,
            'repeat_cpu_seconds': cpu_times[key],
            'cpu_over_wall_median': statistics.median(c / t for c, t in zip(cpu_times[key], times[key])),
            'img_s_median': medians[key], 'peak_mem_mib': row['peak_mem_mib'],
        })

    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config['runs'] = [list(r) for r in runs]
    data = {
        'config': config,
        'env': env,
        'timestamp': datetime.now(timezone.utc).isoformat(timespec='seconds'),
        'wall_seconds': round(time.time() - t_start, 1),
        'memory_method': (
            'not measured' if args.no_memory else
            'torch.cuda.max_memory_allocated of the model run alone in a fresh process (eager)'
            if args.device == 'cuda' else
            'peak RSS increase (VmHWM) of a fresh process running the model alone (eager): weights, input, '
            'activations, and in train grads + SGD momentum'
        ),
        'models': models,
        'results': results,
        'rows': rows,
        'activations': activations,
    }
    out = args.out
    write_csv(rows, out / OUTPUT_FILES['csv'])
    write_json(data, out / OUTPUT_FILES['json'])
    write_markdown(data, out / OUTPUT_FILES['md'])
    if not args.no_plot:
        write_plot(data, out / OUTPUT_FILES['png'])
    print((out / OUTPUT_FILES['md']).read_text())
    print(f'wrote {", ".join(str(out / f) for k, f in OUTPUT_FILES.items() if k != "png" or not args.no_plot)}',
          file=sys.stderr)
    return data


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401  (fail before a long run, not after it)
        except ImportError:
            print('error: the throughput plot needs matplotlib: pip install -e ".[bench]" (or pip install '
                  'matplotlib), or pass --no-plot', file=sys.stderr)
            return 2
    run(args)
    return 0


if __name__ == '__main__':
    sys.exit(main())
