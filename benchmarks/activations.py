""" Bytes of the tensors a training forward keeps for backward ("saved activations").

A deterministic, device-independent measure of training memory: run one forward with grad enabled inside
``torch.autograd.graph.saved_tensors_hooks`` and add up every tensor autograd packs for backward, counted once per
storage (views and tensors saved by several ops share one storage), parameters and buffers excluded. What it leaves
out: the weights, their gradients and optimizer state, the backward pass's transient buffers, allocator slack. Under
stage-level grad checkpointing only what the checkpoints keep (their inputs) is counted, which is what it should be.

``saved_activation_breakdown`` attributes each storage to the innermost module whose forward was running when it was
first saved, to see where the bytes go.

Usage::

    python -m benchmarks.activations resattnet56 resnet152 --img-size 224 --batch-size 2 [--breakdown DEPTH] \
        [--grad-checkpointing] [--model-kwargs memory_efficient=True]
    python -m benchmarks.activations resattnet56 resattnet92 resnet152 --table DIR --memory-budget-gib 16

Hacked together by the timm-resattn authors, Apache-2.0.
"""
import argparse
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = [
    'saved_activation_bytes', 'saved_activation_breakdown', 'max_batch_for_budget', 'activation_rows',
    'activation_markdown', 'VARIANTS',
]

_MIB = float(1 << 20)


def _storage_key(t: torch.Tensor) -> Tuple[str, int]:
    s = t.untyped_storage()
    return str(t.device), s.data_ptr()


def _storage_nbytes(t: torch.Tensor) -> int:
    return t.untyped_storage().nbytes()


def _forward_saved(
        model: nn.Module,
        x: torch.Tensor,
        per_module: bool,
) -> Tuple[int, Dict[str, int]]:
    excluded = set()
    for t in list(model.parameters()) + list(model.buffers()):
        excluded.add(_storage_key(t))
    seen = set()
    total = 0
    by_module: Dict[str, int] = defaultdict(int)
    stack: List[str] = []
    handles = []
    def leave(_m: nn.Module, _args: Any, _out: Any) -> None:
        stack.pop()  # returns None: a forward hook's non-None result would replace the module's output

    if per_module:
        for name, m in model.named_modules():
            handles.append(m.register_forward_pre_hook(lambda _m, _a, n=name: stack.append(n)))
            handles.append(m.register_forward_hook(leave))

    def pack(t: torch.Tensor):
        nonlocal total
        if t.layout == torch.strided and t.device.type != 'meta':
            key = _storage_key(t)
            if key not in excluded and key not in seen:
                seen.add(key)
                nbytes = _storage_nbytes(t)
                total += nbytes
                if per_module:
                    by_module[stack[-1] if stack else ''] += nbytes
        return t

    try:
        with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    del out
    return total, dict(by_module)


def saved_activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """ Bytes autograd saves for backward in one forward of ``model(x)`` (once per storage; weights excluded).

    The model's mode is respected (call ``model.train()`` first for a training forward). Batch norm running stats
    are updated by the forward as in any training step.
    """
    return _forward_saved(model, x, per_module=False)[0]


def saved_activation_breakdown(model: nn.Module, x: torch.Tensor) -> Dict[str, int]:
    """ ``saved_activation_bytes`` split by the innermost module that first saved each storage. """
    return _forward_saved(model, x, per_module=True)[1]


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
) -> List[Dict[str, Any]]:
    """ Saved activation bytes per image of each model (fp32, training forward), without and with stage-level grad
    checkpointing (``set_grad_checkpointing``), and for ``ours`` also with ``memory_efficient=True`` ("lean"), with
    the largest batch whose activations + weights + grads + SGD momentum (3 x fp32 parameters) fit ``budget_gib``.

    Deterministic and device-independent (CPU is used): it counts tensors, it does not measure an allocator. The
    models are the benchmark's (``common.create_model``: randomly initialised, 1000 classes).
    """
    from .common import create_model
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
            per_image = saved_activation_bytes(model, x) / batch_size
            fixed = 3 * sum(p.numel() * p.element_size() for p in model.parameters())
            rows.append({
                'model': name, 'kind': kind, 'variant': variant, 'img_size': img_size,
                'saved_mib_per_img': round(per_image / _MIB, 2),
                'weights_grads_momentum_mib': round(fixed / _MIB, 1),
                'budget_gib': budget_gib,
                'max_batch_in_budget': max_batch_for_budget(per_image, budget, fixed),
            })
    return rows


def activation_markdown(rows: List[Dict[str, Any]]) -> List[str]:
    """ Markdown lines: one row per model, one column pair (MiB/img, max batch) per variant. """
    if not rows:
        return []
    by_model: Dict[str, Dict[str, Dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        by_model[r['model']][r['variant']] = r
    r0 = rows[0]
    lines = [
        f"## Saved activations (training forward, fp32, {r0['img_size']}x{r0['img_size']})",
        '',
        'Bytes autograd keeps for backward per image (``benchmarks/activations.py``: ``saved_tensors_hooks``, once '
        'per storage, parameters excluded): deterministic and device-independent. *grad ckpt* = '
        '``set_grad_checkpointing()`` (stage-level); *lean* = ``memory_efficient=True``. Max batch = the largest '
        f"batch whose activations + weights + grads + SGD momentum fit {r0['budget_gib']:g} GiB (an estimate: "
        'transient backward buffers come on top; with grad ckpt, backward also re-materialises one checkpointed '
        'block at a time, so that column is optimistic).',
        '',
    ]
    head = ['model'] + [f'{v} MiB/img' for v in VARIANTS] + [f'{v} max batch' for v in VARIANTS]
    lines += ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for name, per in by_model.items():
        cells = [f'`{name}`']
        cells += [f"{per[v]['saved_mib_per_img']:.1f}" if v in per else '-' for v in VARIANTS]
        cells += [str(per[v]['max_batch_in_budget']) if v in per else '-' for v in VARIANTS]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return lines


def _group(by_module: Dict[str, int], depth: int) -> Dict[str, int]:
    out: Dict[str, int] = defaultdict(int)
    for name, n in by_module.items():
        out['.'.join(name.split('.')[:depth]) or '<top>'] += n
    return dict(out)


def main(argv: Optional[Sequence[str]] = None) -> None:
    import timm

    import timm_resattn  # noqa: F401  (registers the models)
    from timm_resattn.cli.common import parse_model_kwargs

    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('models', nargs='+')
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument('--grad-checkpointing', action='store_true')
    parser.add_argument('--model-kwargs', nargs='*', default=[])
    parser.add_argument('--breakdown', type=int, default=0, metavar='DEPTH',
                        help='print the bytes per module, grouped to this depth of module names')
    parser.add_argument('--table', type=Path, default=None, metavar='DIR',
                        help='write activations.md/.json for every variant (plain, grad ckpt, lean, both) to DIR')
    parser.add_argument('--memory-budget-gib', type=float, default=16.)
    args = parser.parse_args(argv)
    if args.table is not None:
        import json

        ours = [n for n in args.models if n.startswith('resatt')]
        rows = activation_rows(args.models, ours, args.img_size, args.memory_budget_gib, args.batch_size)
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
        if args.grad_checkpointing:
            model.set_grad_checkpointing(True)
        x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
        if args.breakdown:
            by_module = saved_activation_breakdown(model, x)
            total = sum(by_module.values())
            for k, v in sorted(_group(by_module, args.breakdown).items(), key=lambda kv: -kv[1]):
                print(f'  {k:40s} {v / _MIB / args.batch_size:8.2f} MiB/img')
        else:
            total = saved_activation_bytes(model, x)
        print(f'{name}: {total / _MIB / args.batch_size:.2f} MiB/img saved activations at {args.img_size}')


if __name__ == '__main__':
    main()
