""" Bytes of the tensors a training forward keeps for backward ("saved activations").

A deterministic, device-independent measure of training memory: run one forward with grad enabled inside
``torch.autograd.graph.saved_tensors_hooks`` and add up every tensor autograd packs for backward, counted once per
storage (views and tensors saved by several ops share one storage), parameters and buffers excluded. What it leaves
out: the weights, their gradients and optimizer state, the backward pass's transient buffers, allocator slack. Under
stage-level grad checkpointing only what the checkpoints keep (their inputs) is counted, which is what it should be.

``saved_activation_breakdown`` attributes each storage to the innermost module whose forward was running when it was
first saved, to see where the bytes go.

Usage::

    python -m benchmarks.activations resattnet56 resnet152 --img-size 224 --batch-size 2 [--breakdown] \
        [--grad-checkpointing] [--model-kwargs memory_efficient=True]

Hacked together by the timm-resattn authors, Apache-2.0.
"""
import argparse
from collections import defaultdict
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = ['saved_activation_bytes', 'saved_activation_breakdown', 'max_batch_for_budget']

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
    if per_module:
        for name, m in model.named_modules():
            handles.append(m.register_forward_pre_hook(lambda _m, _a, n=name: stack.append(n)))
            handles.append(m.register_forward_hook(lambda _m, _a, _o: stack.pop() and None))

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
    args = parser.parse_args(argv)
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
