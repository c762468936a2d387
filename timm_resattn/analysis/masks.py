""" Seeing the attention: record the soft masks M(x) and trunk outputs T(x) of every Attention Module, and the
mean absolute response of each stage's output features (paper §4.1, Fig. 4).

Everything here works through forward hooks that are removed again in a ``finally``, so the model's output is
bit-identical with and without recording and no hook is left behind::

    model = timm.create_model('resattnet56').eval()
    with MaskRecorder(model) as rec:
        out = model(x)
    for r in rec.records:
        print(r.name, r.stage, tuple(r.mask.shape))   # stages.0.1 0 (B, 256, 56, 56) ...

    out, records = extract_masks(model, x)                 # the same, in one call (under torch.no_grad())
    responses = mean_abs_response(model, loader)           # {'stages.0': 0.41, 'stages.1': 0.37, ...}

Attention Modules are found by ``isinstance(m, AttentionModule)``, so every variant (ImageNet and CIFAR nets,
NeXt and Inception units, ``features_only`` wrappers) is covered.

Copyright the timm-resattn authors, Apache-2.0.
"""
import re
import threading
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..layers.attention import AttentionModule

__all__ = [
    'MaskRecord', 'MaskRecorder', 'ResponseRecorder', 'extract_masks', 'mean_abs_response',
    'find_attention_modules', 'find_stage_modules', 'stage_index',
]

# ``stages.2.1`` in a ResidualAttentionNet, ``stages_2.1`` in a features_only (FeatureListNet) wrapper
_STAGE_RE = re.compile(r'(?:^|\.)stages[._](\d+)(?=\.|$)')
# a stage itself: ``stages.2`` / ``stages_2`` (optionally below a wrapper prefix such as ``module.``)
_STAGE_MODULE_RE = re.compile(r'(?:.*\.)?stages[._](\d+)')


def stage_index(name: str) -> Optional[int]:
    """ Stage index of a module from its qualified name (``'stages.2.1'`` or ``'stages_2.1'`` -> 2), else None. """
    match = _STAGE_RE.search(name)
    return int(match.group(1)) if match else None


def find_attention_modules(model: nn.Module) -> List[Tuple[str, AttentionModule]]:
    """ All Attention Modules of a model as ``(qualified name, module)`` in forward (registration) order.

    Raises:
        ValueError: If the model contains no ``AttentionModule``.
    """
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, AttentionModule)]
    if not found:
        raise ValueError(
            f'{type(model).__name__} contains no AttentionModule (timm_resattn.layers.attention.AttentionModule): '
            f'soft masks can only be recorded from a Residual Attention Network (e.g. resattnet56)'
        )
    return found


def find_stage_modules(model: nn.Module) -> List[Tuple[int, str, nn.Module]]:
    """ The stage modules of a Residual Attention Network as ``(stage index, qualified name, module)``, by index.

    Matches ``stages.{s}`` of a ``ResidualAttentionNet`` and ``stages_{s}`` of a ``features_only`` model (which only
    holds the stages up to its last requested feature).

    Raises:
        ValueError: If no stage module is found.
    """
    found = []
    for name, m in model.named_modules():
        match = _STAGE_MODULE_RE.fullmatch(name)
        if match:
            found.append((int(match.group(1)), name, m))
    if not found:
        raise ValueError(
            f'{type(model).__name__} has no stage modules (named stages.N, or stages_N in a features_only model)'
        )
    return sorted(found, key=lambda f: f[0])


def _snapshot(t: torch.Tensor, to_cpu: bool) -> torch.Tensor:
    # a detached copy: later in-place ops of the model (or the caller) cannot change a recorded tensor
    t = t.detach()
    return t.to('cpu', copy=True) if to_cpu else t.clone()


class _ForwardHooks:
    """ Lifecycle shared by the recorders: ``attach`` registers the forward hooks ``_hooks()`` lists, ``remove``
    (also on error, and on ``__exit__``) takes every one of them off again.

    A recorder belongs to the thread that attached it: its hooks record only the forward passes run by that thread,
    so two threads running the same model, each with its own recorder, never see each other's tensors. For the same
    reason it records nothing under ``nn.DataParallel`` on several GPUs (its replicas run in worker threads): record
    on the bare model.
    """

    def __init__(self):
        self._handles: List[Any] = []
        self._thread: Optional[int] = None

    def _own_thread_only(self, hook):
        def guarded(module: nn.Module, args: Any, output: Any) -> None:
            if threading.get_ident() == self._thread:
                hook(module, args, output)
        return guarded

    def _hooks(self) -> List[Tuple[nn.Module, Any]]:
        raise NotImplementedError

    def attach(self):
        """ Register the hooks (``__enter__`` does this). """
        if self._handles:
            raise RuntimeError(f'{type(self).__name__} is already attached')
        self._thread = threading.get_ident()
        try:
            for module, hook in self._hooks():
                self._handles.append(module.register_forward_hook(self._own_thread_only(hook)))
        except BaseException:
            self.remove()
            raise
        return self

    def remove(self) -> None:
        """ Remove every hook this recorder registered (``__exit__`` does this). """
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()

    def __enter__(self):
        return self.attach()

    def __exit__(self, *exc_info) -> None:
        self.remove()


@dataclass
class MaskRecord:
    """ What one Attention Module computed in one forward pass.

    Args:
        name: Qualified module name (``'stages.0.1'``; ``'stages_0.1'`` in a ``features_only`` model).
        stage: Stage index parsed from the name (None if the name has no ``stages.N`` part).
        mask: The soft mask M(x), shape ``(B, C, H, W)``, detached. In ``[0, 1]`` for the ``'mixed'`` and
            ``'spatial'`` activations, in ``[-1, 1]`` for ``'channel'``.
        trunk: The trunk output T(x), same shape as ``mask`` (None if recorded with ``store_trunk=False``).
    """
    name: str
    stage: Optional[int]
    mask: torch.Tensor
    trunk: Optional[torch.Tensor] = None

    @property
    def shape(self) -> Tuple[int, ...]:
        """ Shape of the mask (== trunk shape == the module's feature map). """
        return tuple(self.mask.shape)


class MaskRecorder(_ForwardHooks):
    """ Context manager recording M(x) and T(x) of every Attention Module while the model runs.

    Each forward pass appends one ``MaskRecord`` per Attention Module executed, in execution order. Hooks are
    attached on ``__enter__`` and removed on ``__exit__`` (also on error); the hooks never change what a module
    returns. A recorder records only the forward passes of the thread that entered it (give each thread its own).
    The model's train/eval mode and grad mode are left to the caller (use ``model.eval()`` and
    ``torch.no_grad()``, or ``extract_masks``).

    Args:
        model: A Residual Attention Network, or any module containing ``AttentionModule`` instances.
        to_cpu: Store the recorded tensors on the CPU (saves accelerator memory for big batches).
        store_trunk: Also store the trunk outputs T(x).
        names: Record only the modules with these qualified names (default: all).

    Raises:
        ValueError: If the model has no Attention Module, or ``names`` contains an unknown module name.
    """

    def __init__(
            self,
            model: nn.Module,
            to_cpu: bool = False,
            store_trunk: bool = True,
            names: Optional[Sequence[str]] = None,
    ):
        super().__init__()
        modules = find_attention_modules(model)
        if names is not None:
            known = {n for n, _ in modules}
            unknown = [n for n in names if n not in known]
            if unknown:
                raise ValueError(f'no Attention Module named {unknown}; the model has {sorted(known)}')
            modules = [(n, m) for n, m in modules if n in set(names)]
        self.modules: List[Tuple[str, AttentionModule]] = modules
        self.to_cpu = to_cpu
        self.store_trunk = store_trunk
        self.records: List[MaskRecord] = []
        self._pending_trunk: Dict[str, Optional[torch.Tensor]] = {}

    @property
    def names(self) -> List[str]:
        """ Qualified names of the recorded Attention Modules. """
        return [n for n, _ in self.modules]

    def clear(self) -> None:
        """ Forget the records of earlier forward passes. """
        self.records.clear()
        self._pending_trunk.clear()

    def _trunk_hook(self, name: str):
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            self._pending_trunk[name] = _snapshot(output, self.to_cpu) if self.store_trunk else None
        return hook

    def _mask_hook(self, name: str):
        stage = stage_index(name)

        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            trunk = self._pending_trunk.pop(name, None)
            self.records.append(MaskRecord(name=name, stage=stage, mask=_snapshot(output, self.to_cpu), trunk=trunk))
        return hook

    def _hooks(self) -> List[Tuple[nn.Module, Any]]:
        hooks = []
        for name, module in self.modules:
            hooks += [(module.trunk, self._trunk_hook(name)), (module.mask, self._mask_hook(name))]
        return hooks

    def remove(self) -> None:
        """ Remove every hook this recorder registered (``__exit__`` does this). """
        super().remove()
        self._pending_trunk.clear()


def extract_masks(
        model: nn.Module,
        x: torch.Tensor,
        to_cpu: bool = False,
        store_trunk: bool = True,
        no_grad: bool = True,
) -> Tuple[Any, List[MaskRecord]]:
    """ Run ``model(x)`` once and return its output together with every Attention Module's M(x) and T(x).

    The output is exactly what ``model(x)`` returns without recording. Put the model in eval mode first if BN
    statistics must not be updated.

    Args:
        model: A Residual Attention Network (also ``features_only``).
        x: Input batch.
        to_cpu: Store the recorded tensors on the CPU.
        store_trunk: Also record the trunk outputs T(x).
        no_grad: Run under ``torch.no_grad()``.

    Returns:
        ``(output, records)``, one ``MaskRecord`` per Attention Module in execution order.
    """
    with MaskRecorder(model, to_cpu=to_cpu, store_trunk=store_trunk) as rec, \
            torch.no_grad() if no_grad else nullcontext():
        out = model(x)
    return out, rec.records


class ResponseRecorder(_ForwardHooks):
    """ Context manager accumulating the mean absolute response of each stage's output features.

    For each sample the response of stage s is ``mean(|y_s|)`` over all ``C x H x W`` elements of the stage output
    ``y_s``; ``result()`` averages it over all samples seen (paper §4.1, Fig. 4).

    Args:
        model: A Residual Attention Network (stages ``stages.N``) or its ``features_only`` version (``stages_N``).

    Raises:
        ValueError: If the model has no stage modules.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.stages = find_stage_modules(model)
        self._sums: Dict[int, torch.Tensor] = {}
        self._counts: Dict[int, int] = {}

    def _hook(self, stage: int):
        def hook(module: nn.Module, args: Any, output: torch.Tensor) -> None:
            per_sample = output.detach().abs().flatten(1).mean(dim=1, dtype=torch.float64)
            total = per_sample.sum()
            self._sums[stage] = self._sums[stage] + total if stage in self._sums else total
            self._counts[stage] = self._counts.get(stage, 0) + per_sample.numel()
        return hook

    def clear(self) -> None:
        """ Forget everything accumulated so far. """
        self._sums.clear()
        self._counts.clear()

    @property
    def num_samples(self) -> int:
        """ Samples seen by the first stage. """
        return max(self._counts.values(), default=0)

    def result(self) -> Dict[str, float]:
        """ ``{'stages.0': r0, 'stages.1': r1, ...}`` (full-model names, also for ``features_only`` models). """
        return {f'stages.{s}': float(self._sums[s].item()) / self._counts[s] for s, _, _ in self.stages
                if self._counts.get(s)}

    def _hooks(self) -> List[Tuple[nn.Module, Any]]:
        return [(module, self._hook(stage)) for stage, _, module in self.stages]


def _batches(data: Union[torch.Tensor, Iterable[Any]]) -> Iterable[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        yield data.unsqueeze(0) if data.ndim == 3 else data
        return
    for item in data:
        if isinstance(item, (tuple, list)):
            item = item[0]
        if not isinstance(item, torch.Tensor):
            raise TypeError(
                f'expected batches of image tensors or (images, targets) pairs, got {type(item).__name__}'
            )
        yield item


def mean_abs_response(
        model: nn.Module,
        data: Union[torch.Tensor, Iterable[Any]],
        device: Optional[Union[str, torch.device]] = None,
        max_batches: Optional[int] = None,
        eval_mode: bool = True,
) -> Dict[str, float]:
    """ Mean absolute response of the output features of each stage (paper §4.1, Fig. 4).

    The paper uses it to compare attention residual learning (``attention_residual=True``) with naive attention
    learning (``False``): with NAL the response vanishes as Attention Modules are stacked. Per sample, the response
    of a stage is the mean of ``|y|`` over all elements of the stage output ``y``; it is averaged over all samples.

    Args:
        model: A Residual Attention Network or its ``features_only`` version.
        data: A single batch tensor ``(B, C, H, W)`` (or one image ``(C, H, W)``), or an iterable (e.g. a
            DataLoader) yielding image batches or ``(images, targets)`` pairs.
        device: Device to move the images to (default: the device of the model's parameters).
        max_batches: Stop after this many batches.
        eval_mode: Measure in eval mode (BN with running statistics; nothing in the model is updated). The modes
            of all submodules are restored afterwards.

    Returns:
        ``{'stages.0': r0, 'stages.1': r1, ...}`` ordered by stage.

    Raises:
        ValueError: If the model has no stages or ``data`` holds no samples.
    """
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device('cpu')
    modes = [(m, m.training) for m in model.modules()]
    if eval_mode:
        model.eval()
    try:
        with ResponseRecorder(model) as rec, torch.no_grad():
            for i, images in enumerate(_batches(data)):
                if max_batches is not None and i >= max_batches:
                    break
                model(images.to(device))
    finally:
        for m, training in modes:
            m.training = training
    result = rec.result()
    if not result:
        raise ValueError('mean_abs_response got no samples (empty batch or data loader)')
    return result
