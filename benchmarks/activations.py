""" Bytes a training forward keeps for backward ("saved activations"), per image, in a given precision.

What is counted: the bytes allocated during one training forward (grad enabled) that are still live when it ends,
less the output itself: every tensor autograd saved for backward, plus whatever a (selective) activation checkpoint
caches outside autograd (``memory_efficient=True`` keeps the convolutions' outputs in its own cache, which
``torch.autograd.graph.saved_tensors_hooks`` does not see), plus, under autocast, the low-precision weight copies the
convolutions saved (a fixed cost, not per image: at batch 2 it is half of it per image). On CPU the live bytes come
from the torch profiler's memory events (``profile_memory=True``), on CUDA from ``torch.cuda.memory_allocated``.
Deterministic on CPU for a given torch build. Left out: the weights, their gradients and optimizer state, the
backward pass's transient buffers (including what a checkpoint recomputes), allocator slack.

``--precision bf16|fp16`` runs the forward under ``torch.autocast`` of that dtype (fp32 weights, as in AMP training).

``saved_activation_breakdown`` attributes what ``saved_tensors_hooks`` sees to the innermost module whose forward was
running when it was first saved (plain models: everything; selective checkpoints: not their caches).

Usage::

    python -m benchmarks.activations resattnet56 resnet152 --img-size 224 --batch-size 2 [--precision bf16] \
        [--breakdown DEPTH] [--grad-checkpointing] [--model-kwargs memory_efficient=True] [--plain-stages 0]
    python -m benchmarks.activations resattnet56 resattnet92 resnet152 --table DIR --memory-budget-gib 16 \
        --precision bf16

Copyright the timm-resattn authors, Apache-2.0.
"""
import argparse
import contextlib
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = [
    'saved_activation_bytes', 'forward_and_saved_bytes', 'saved_activation_breakdown', 'max_batch_for_budget',
    'activation_rows', 'activation_markdown', 'autocast_for', 'VARIANTS', 'PRECISIONS',
]

_MIB = float(1 << 20)
PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def autocast_for(precision: str, device: Any = 'cpu'):
    """ ``torch.autocast`` of ``precision`` ('bf16', 'fp16') on ``device``'s type; a null context for 'fp32'. """
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {", ".join(PRECISIONS)}, got {precision!r}')
    if PRECISIONS[precision] is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=PRECISIONS[precision])


def _storage_key(t: torch.Tensor) -> Tuple[str, int]:
    s = t.untyped_storage()
    return str(t.device), s.data_ptr()


def _output_bytes(out: Any) -> int:
    seen, total = set(), 0
    for t in (out if isinstance(out, (list, tuple)) else [out]):
        if isinstance(t, torch.Tensor) and _storage_key(t) not in seen:
            seen.add(_storage_key(t))
            total += t.untyped_storage().nbytes()
    return total


def forward_and_saved_bytes(model: nn.Module, x: torch.Tensor, precision: str = 'fp32') -> Tuple[Any, int]:
    """ ``(model(x), bytes)``: the output of one forward under ``precision``'s autocast (grad enabled) and the bytes
    it keeps for backward (allocated during the forward and still live at its end, less the output; see the module
    docstring). The output is returned, so the caller can run the backward of the very step it measured.
    """
    ctx = autocast_for(precision, x.device)
    if x.device.type == 'cuda':
        torch.cuda.synchronize(x.device)
        before = torch.cuda.memory_allocated(x.device)
        with torch.enable_grad(), ctx:
            out = model(x)
        torch.cuda.synchronize(x.device)
        total = torch.cuda.memory_allocated(x.device) - before
    else:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, torch.enable_grad(), ctx:
            out = model(x)
        # allocations minus frees within the window (each event's own, so nothing is counted twice)
        total = sum(e.self_cpu_memory_usage for e in prof.events())
    return out, int(total - _output_bytes(out))


def saved_activation_bytes(model: nn.Module, x: torch.Tensor, precision: str = 'fp32') -> int:
    """ Bytes a training forward of ``model(x)`` keeps for backward: allocated during the forward and still live at
    its end, less the output (see the module docstring), with the forward under ``precision``'s autocast.

    The model's mode is respected (call ``model.train()`` first for a training forward). Batch norm running stats
    are updated by the forward as in any training step.
    """
    return forward_and_saved_bytes(model, x, precision)[1]


def saved_activation_breakdown(model: nn.Module, x: torch.Tensor, precision: str = 'fp32') -> Dict[str, int]:
    """ The tensors ``saved_tensors_hooks`` sees (once per storage, parameters and buffers excluded), split by the
    innermost module that first saved each storage. Selective checkpoint caches are not seen: for plain models.
    """
    excluded = {_storage_key(t) for t in list(model.parameters()) + list(model.buffers())}
    seen = set()
    by_module: Dict[str, int] = defaultdict(int)
    stack: List[str] = []
    handles = []

    def leave(_m: nn.Module, _args: Any, _out: Any) -> None:
        stack.pop()  # returns None: a forward hook's non-None result would replace the module's output

    for name, m in model.named_modules():
        handles.append(m.register_forward_pre_hook(lambda _m, _a, n=name: stack.append(n)))
        handles.append(m.register_forward_hook(leave))

    def pack(t: torch.Tensor):
        if t.layout == torch.strided and t.device.type != 'meta':
            key = _storage_key(t)
            if key not in excluded and key not in seen:
                seen.add(key)
                by_module[stack[-1] if stack else ''] += t.untyped_storage().nbytes()
        return t

    try:
        with torch.enable_grad(), autocast_for(precision, x.device), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    del out
    return dict(by_module)


def max_batch_for_budget(bytes_per_image: float, budget_bytes: float, fixed_bytes: float = 0.) -> int:
    """ The largest batch whose saved activations (plus ``fixed_bytes``: weights, grads, optimizer state) fit the
    budget. An estimate: the backward pass's transient buffers and allocator slack come on top.
    """
    if bytes_per_image <= 0:
        return 0
    return max(int((budget_bytes - fixed_bytes) // bytes_per_image), 0)


VARIANTS = ('plain', 'grad_ckpt', 'lean', 'lean+grad_ckpt')


def activation_rows(
        names: Sequence[str],
        ours: Sequence[str],
        img_size: int = 224,
        budget_gib: float = 16.,
        batch_size: int = 2,
        precision: str = 'fp32',
) -> List[Dict[str, Any]]:
    """ Saved activation bytes per image of each model (training forward, under ``precision``: 'fp32', or 'bf16' /
    'fp16' autocast), without and with stage-level grad checkpointing (``set_grad_checkpointing``), and for ``ours``
    also with ``memory_efficient=True`` ("lean"), with the largest batch whose activations + weights + grads + SGD
    momentum (3 x fp32 parameters) fit ``budget_gib``. Every row records its ``precision``.

    Measured on the CPU (``saved_activation_bytes``: live bytes at the end of the forward, checkpoint caches
    included). The models are the benchmark's (``common.create_model``: randomly initialised, 1000 classes).
    """
    from .common import create_model
    autocast_for(precision)  # an unknown precision fails before any model is built
    budget = budget_gib * (1 << 30)
    rows = []
    for name in names:
        kind = 'ours' if name in ours else 'peer'
        for variant in VARIANTS if kind == 'ours' else VARIANTS[:2]:
            torch.manual_seed(0)
            kwargs = {'memory_efficient': True} if variant.startswith('lean') else {}
            model = create_model(name, **kwargs).train()
            if variant.endswith('grad_ckpt'):
                model.set_grad_checkpointing(True)
            x = torch.randn(batch_size, 3, img_size, img_size)
            per_image = saved_activation_bytes(model, x, precision) / batch_size
            fixed = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
            rows.append({
                'model': name, 'kind': kind, 'variant': variant, 'precision': precision, 'img_size': img_size,
                'batch_size': batch_size,
                'saved_mib_per_img': round(per_image / _MIB, 2),
                'weights_grads_momentum_mib': round(fixed / _MIB, 1),
                'budget_gib': budget_gib,
                'max_batch_in_budget': max_batch_for_budget(per_image, budget, fixed),
            })
            del model
    return rows


def activation_markdown(rows: List[Dict[str, Any]]) -> List[str]:
    """ Markdown lines: one table per precision, one row per model, one column pair (MiB/img, max batch) per
    variant. """
    if not rows:
        return []
    lines: List[str] = []
    for precision in dict.fromkeys(r.get('precision', 'fp32') for r in rows):
        prows = [r for r in rows if r.get('precision', 'fp32') == precision]
        by_model: Dict[str, Dict[str, Dict[str, Any]]] = defaultdict(dict)
        for r in prows:
            by_model[r['model']][r['variant']] = r
        r0 = prows[0]
        where = 'fp32' if precision == 'fp32' else f'{precision} autocast (fp32 weights)'
        lines += [
            f"## Saved activations (training forward, {where}, {r0['img_size']}x{r0['img_size']}, "
            f"batch {r0.get('batch_size', '?')})",
            '',
            f'MiB per image that a training forward in **{precision}** keeps for backward '
            '(``benchmarks/activations.py``: bytes allocated during the forward and still live at its end, less the '
            "output, from the torch profiler's memory events on CPU; autograd's saved tensors and checkpoint caches "
            'alike'
            + ('; under autocast this includes the low-precision weight copies the convolutions keep, a fixed cost '
               'spread over the batch' if precision != 'fp32' else '')
            + '). *grad ckpt* = ``set_grad_checkpointing()`` (each block keeps only its input); *lean* = '
            '``memory_efficient=True`` (selective checkpointing: convolution outputs kept, the rest recomputed); '
            'with both, grad ckpt wins. Max batch = the largest batch whose activations + weights + grads + SGD '
            f"momentum fit {r0['budget_gib']:g} GiB (an estimate: transient backward buffers, including what the "
            'checkpoints recompute, come on top).',
            '',
        ]
        head = ['model'] + [f'{v} MiB/img' for v in VARIANTS] + [f'{v} max batch' for v in VARIANTS]
        lines += ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
        for name, per in by_model.items():
            cells = [f'`{name}`']
            cells += [f"{per[v]['saved_mib_per_img']:.1f}" if v in per else '-' for v in VARIANTS]
            cells += [str(per[v]['max_batch_in_budget']) if v in per else '-' for v in VARIANTS]
            lines.append('| ' + ' | '.join(cells) + ' |')
        lines.append('')
    return lines[:-1]


def _group(by_module: Dict[str, int], depth: int) -> Dict[str, int]:
    out: Dict[str, int] = defaultdict(int)
    for name, n in by_module.items():
        out['.'.join(name.split('.')[:depth]) or '<top>'] += n
    return dict(out)


def main(argv: Optional[Sequence[str]] = None) -> None:
    import timm

    import timm_resattn  # noqa: F401  (registers the models)
    from timm_resattn.cli.common import parse_model_kwargs

    from .common import lean_except

    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('models', nargs='+')
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument('--grad-checkpointing', action='store_true')
    parser.add_argument('--model-kwargs', nargs='*', default=[])
    parser.add_argument('--plain-stages', type=int, nargs='*', default=None, metavar='I',
                        help='memory_efficient=True with these stages left on the plain path (common.lean_except)')
    parser.add_argument('--breakdown', type=int, default=0, metavar='DEPTH',
                        help='print the bytes per module, grouped to this depth of module names')
    parser.add_argument('--table', type=Path, default=None, metavar='DIR',
                        help='write activations.md/.json for every variant (plain, grad ckpt, lean, both) to DIR')
    parser.add_argument('--memory-budget-gib', type=float, default=16.)
    parser.add_argument('--precision', choices=tuple(PRECISIONS), default='fp32',
                        help='fp32, or the forward under bf16 / fp16 autocast (fp32 weights)')
    args = parser.parse_args(argv)
    if args.table is not None:
        import json

        ours = [n for n in args.models if n.startswith('resatt')]
        rows = activation_rows(
            args.models, ours, args.img_size, args.memory_budget_gib, args.batch_size, precision=args.precision)
        args.table.mkdir(parents=True, exist_ok=True)
        (args.table / 'activations.json').write_text(json.dumps(rows, indent=2) + '\n')
        text = '\n'.join(activation_markdown(rows)) + '\n'
        (args.table / 'activations.md').write_text(text)
        print(text)
        return
    torch.manual_seed(0)
    kwargs = parse_model_kwargs(args.model_kwargs)
    for name in args.models:
        model = timm.create_model(name, **(kwargs if name.startswith('resatt') else {}))
        model.train()
        if args.plain_stages is not None and name.startswith('resatt'):
            lean_except(model, args.plain_stages)
        if args.grad_checkpointing:
            model.set_grad_checkpointing(True)
        x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
        if args.breakdown:
            by_module = saved_activation_breakdown(model, x, args.precision)
            total = sum(by_module.values())
            for k, v in sorted(_group(by_module, args.breakdown).items(), key=lambda kv: -kv[1]):
                print(f'  {k:40s} {v / _MIB / args.batch_size:8.2f} MiB/img')
        else:
            total = saved_activation_bytes(model, x, args.precision)
        print(f'{name}: {total / _MIB / args.batch_size:.2f} MiB/img saved activations at {args.img_size}, '
              f'{args.precision}')


if __name__ == '__main__':
    main()
