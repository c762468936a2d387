""" ``torch.export`` of the Residual Attention Networks with a dynamic batch, height and width.

The exported program computes exactly the eager function (the test suite checks bit-equality on CPU at odd and
non-square sizes). Two things make the export work over the whole size range ``min_input_size .. max_size``:

* The mask branches' Caffe max-pools (3x3/s2, ceil mode) trace as floor-mode pools of an input padded with one
  ``-inf`` pixel on the right/bottom (``timm_resattn.layers.attention.max_pool_padded``; bit-identical). The
  ceil-mode size rule is what ``torch.export``'s shape solver could not decide
  (``Expected op to be '==', got < for (-2) + 2*(((1/8)*h) // 2) < (1/8)*h``).
* At the smallest inputs the deepest mask maps (and the last stage) are 1x1. Tracing with symbolic sizes, PyTorch
  adds guards ``size != 1`` while it records the memory layout of some outputs (``is_contiguous`` of a max-pool's
  output), which contradicts a range that contains those sizes. ``export_program`` traces with
  ``torch.fx.experimental._config.backed_size_oblivious`` so that sizes are not specialised on being 1; nothing in
  these networks branches on a size of 1 (no broadcasting between symbolic sizes), so the program stays exact at
  the minimum size, which the tests check.

The minimum input size is part of the program: it is the lower bound of the height/width ``Dim`` s, and the
module of the exported program (``ExportedProgram.module()``) refuses smaller inputs with
``AssertionError: Guard failed: x.size()[2] >= <min>``; AOTInductor packages check the same bounds (see
``timm_resattn.export.aoti``). The model's own ``check_input_size`` is statically true under these bounds and
leaves no op in the graph.

Copyright the timm-resattn authors, Apache-2.0.
"""
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn

from ..errors import ConfigError

__all__ = [
    'export_program', 'dynamic_shapes', 'resolve_size_range', 'export_min_size', 'model_in_chans', 'DEFAULT_MAX_SIZE',
    'program_size_range',
]

DEFAULT_MAX_SIZE = 1024


def model_in_chans(model: nn.Module) -> int:
    """ Input channels of ``model``: its ``in_chans`` (timm's attribute, also on features_only wrappers), else those
    of its first ``Conv2d``. """
    if isinstance(getattr(model, 'in_chans', None), int):
        return model.in_chans
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise ConfigError(f'{type(model).__name__} has no Conv2d to read its input channels from')


def export_min_size(model: nn.Module) -> Optional[int]:
    """ The smallest input height/width an exported program of ``model`` can accept: ``model.min_input_size``,
    raised where needed so that no mask upsampling outputs a 1-pixel side (``ResAttnCfg.min_input_size(...,
    min_upsampled=2)``: ``F.interpolate(..., align_corners=True)`` computes its scale as ``(in - 1) / (out - 1)``
    only for ``out > 1``, and a program traced with symbolic sizes holds one of the two formulas; only
    ``resattnet56_pcv``'s padded pools get there: 17 instead of 1). None for a model without ``min_input_size``.
    """
    model_min = getattr(model, 'min_input_size', None)
    cfg = getattr(model, 'cfg', None)
    if model_min is None or not hasattr(cfg, 'min_input_size'):
        return model_min
    return max(int(model_min), cfg.min_input_size(getattr(model, 'output_stride', None), min_upsampled=2))


def resolve_size_range(model: nn.Module, min_size: Optional[int] = None, max_size: int = DEFAULT_MAX_SIZE) -> Tuple[
        int, int]:
    """ Check and complete the ``(min_size, max_size)`` range of input heights/widths an export accepts.

    ``min_size`` defaults to ``export_min_size(model)`` (the model's ``min_input_size``, the smallest input all its
    max-pools accept, for every registered net but ``resattnet56_pcv``); a smaller value than that is refused, as
    is ``max_size < min_size``. A model without ``min_input_size`` (a timm peer, for the benchmarks) needs
    ``min_size`` given explicitly.
    """
    model_min = export_min_size(model)
    if min_size is None:
        if model_min is None:
            raise ConfigError(
                f'{type(model).__name__} has no min_input_size: pass min_size (the smallest input height/width '
                f'the exported program must accept)'
            )
        min_size = int(model_min)
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 1:
        raise ConfigError(f'min_size must be a positive integer, got {min_size!r}')
    if model_min is not None and min_size < model_min:
        raise ConfigError(
            f'min_size={min_size} is below the smallest input size {model_min} this network exports at '
            f'(its min_input_size is {model.min_input_size}; see timm_resattn.export.program.export_min_size); '
            f'expected min_size >= {model_min}'
        )
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < min_size:
        raise ConfigError(f'max_size must be an integer >= min_size={min_size}, got {max_size!r}')
    return min_size, max_size


def program_size_range(program: Any) -> Optional[Tuple[int, int]]:
    """ The ``(min, max)`` input height/width an ``ExportedProgram`` accepts, read from its range constraints;
    None where its input has no symbolic height and width. """
    graph, signature = getattr(program, 'graph', None), getattr(program, 'graph_signature', None)
    if graph is None or signature is None:
        return None
    for node in graph.nodes:
        if node.op == 'placeholder' and node.name in signature.user_inputs:
            dims = node.meta['val'].shape[2:]
            ranges = [program.range_constraints.get(d.node.expr) for d in dims if isinstance(d, torch.SymInt)]
            if len(ranges) != 2 or not all(ranges):
                return None
            return max(int(r.lower) for r in ranges), min(int(r.upper) for r in ranges)
    return None


def dynamic_shapes(
        min_size: int,
        max_size: int = DEFAULT_MAX_SIZE,
        dynamic_batch: bool = True,
        max_batch: int = 1024,
) -> Tuple[Dict[int, Any]]:
    """ ``dynamic_shapes`` for ``torch.export.export`` / ``torch.onnx.export``: one NCHW input with height
    and width in ``[min_size, max_size]`` (independent: non-square inputs work) and, if ``dynamic_batch``, a batch
    in ``[1, max_batch]``.
    """
    dims = {
        2: torch.export.Dim('height', min=min_size, max=max_size),
        3: torch.export.Dim('width', min=min_size, max=max_size),
    }
    if dynamic_batch:
        dims[0] = torch.export.Dim('batch', min=1, max=max_batch)
    return (dict(sorted(dims.items())),)


def _example_input(model: nn.Module, min_size: int, max_size: int, batch_size: int) -> torch.Tensor:
    # any size inside the range traces the same graph; stay clear of the bounds (and of 0/1 specialisation)
    size = min(max(2 * min_size, 64), max_size)
    param = next(model.parameters(), None)
    kw = {} if param is None else {'device': param.device, 'dtype': param.dtype}
    return torch.randn(batch_size, model_in_chans(model), size, size, **kw)


def export_program(
        model: nn.Module,
        min_size: Optional[int] = None,
        max_size: int = DEFAULT_MAX_SIZE,
        dynamic_batch: bool = True,
        max_batch: int = 1024,
        example_input: Optional[torch.Tensor] = None,
        strict: bool = False,
) -> 'torch.export.ExportedProgram':
    """ Export ``model`` (in eval mode) with ``torch.export`` for NCHW inputs of any height and width in
    ``[min_size, max_size]`` and, if ``dynamic_batch``, any batch in ``[1, max_batch]``.

    Args:
        model: A Residual Attention Network (or any image model; then ``min_size`` is required). Must be in eval
            mode: the program is for inference (BN with running statistics).
        min_size: Smallest height/width the program accepts; default and lower limit: ``model.min_input_size``.
        max_size: Largest height/width (default 1024).
        dynamic_batch: Keep the batch dimension symbolic (else the program is specialised to the example's batch).
        max_batch: Largest batch with ``dynamic_batch``.
        example_input: The tracing input (default: random, batch 2, a size inside the range, the model's dtype and
            device). Its values don't matter; its size must be inside the range.
        strict: ``torch.export``'s strict (TorchDynamo) tracing instead of the default non-strict tracing.

    Returns:
        A ``torch.export.ExportedProgram``; ``.module()`` runs it, ``torch.export.save`` writes it.
    """
    if model.training:
        raise ConfigError('export_program exports for inference: call model.eval() first (the model is in train mode)')
    min_size, max_size = resolve_size_range(model, min_size, max_size)
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ConfigError(f'max_batch must be a positive integer, got {max_batch!r}')
    if example_input is None:
        example_input = _example_input(model, min_size, max_size, batch_size=2 if dynamic_batch else 1)
    elif example_input.dim() != 4 or not all(min_size <= s <= max_size for s in example_input.shape[-2:]):
        raise ConfigError(
            f'example_input must be NCHW with height and width in [{min_size}, {max_size}], '
            f'got shape {tuple(example_input.shape)}'
        )
    shapes = dynamic_shapes(min_size, max_size, dynamic_batch=dynamic_batch, max_batch=max_batch)
    import torch.fx.experimental._config as fx_config
    with fx_config.patch(backed_size_oblivious=True):
        return torch.export.export(model, (example_input,), dynamic_shapes=shapes, strict=strict)
