""" Memory-lean training: selective activation checkpointing of each stage block, on public torch APIs.

With ``memory_efficient=True`` (``ResAttnCfg.memory_efficient``, ``ResidualAttentionNet.set_memory_efficient``),
every block of every stage (each residual unit and each Attention Module, ``MemoryLeanSequential``) runs in training
under ``torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False, context_fn=...)`` with a selective policy
(``create_selective_checkpoint_contexts``): the outputs of ``aten.convolution`` are kept for backward
(``CheckpointPolicy.MUST_SAVE``), everything else is recomputed in backward (``PREFER_RECOMPUTE``): batch norm,
ReLU, the mask's sigmoid, adds and ``addcmul``, max-pools, bilinear upsampling, concatenations, autocast's casts.
Those are element-wise, per-channel or resampling ops: the recompute costs no convolution, and it runs the very
kernels of the forward on the very inputs, so every recomputed tensor is bit-identical. Outputs are bit-identical to
the plain model's and gradients equal (fp32, and under autocast equal to plain autocast's).

What it saves (bytes allocated in a training forward and still live at its end, autograd's saved tensors and the
checkpoint caches alike) is measured by ``python -m benchmarks.activations ... --precision fp32|bf16``; the numbers
are in ``docs/training.md`` and ``benchmarks/results/activations_{fp32,bf16}_224``.

Batch norm statistics: the recompute runs each BN again in training mode, which would update ``running_mean``,
``running_var`` and ``num_batches_tracked`` a second time. In eager mode the recompute context therefore snapshots
the block's buffers before the recompute and writes them back after it (outside the selective-checkpoint dispatch
mode, so the recompute issues exactly the forward's ops), so they are updated exactly once per step. The recompute
also runs each module in the train/eval mode it had in the forward (a ``model.eval()`` between forward and backward
changes nothing). Under ``torch.compile`` the graph is functionalised and the buffer updates happen once, in the
compiled forward; the partitioner follows the same policy (saves the convolutions' outputs). Tested with AOT
autograd's eager backend on CPU (``backend='aot_eager'``); inductor not yet measured. Nothing here depends on the BN
class (``timm.layers.convert_sync_batchnorm``'s ``SyncBatchNormAct`` works alike): any buffer of the block is restored.

Where it engages: ``MemoryLeanSequential.forward`` in training with grad enabled, eager or compiled; each stage of a
``ResidualAttentionNet`` is one, so the model's ``forward``, ``forward_intermediates`` and the ``features_only``
wrapper (which calls the stages) all take it. The plain path runs in eval mode, under ``torch.no_grad()``, in
TorchScript, under FX symbolic tracing and under torch.export.

One backward per forward: torch's selective checkpoint refuses a second backward through the same graph
(``backward(retain_graph=True)`` then ``backward()``, or a double backward such as a gradient penalty) with
``RuntimeError: Trying to backward an extra time``. For those, leave ``memory_efficient`` off or use
``set_grad_checkpointing``, whose plain checkpoints allow it. Under ``torch.compile`` a graph break inside a block
makes dynamo run that block's checkpoint eagerly without the buffer restore, so its BN statistics are updated twice
in that step; the nets have no graph break.

Grad checkpointing (``ResidualAttentionNet.set_grad_checkpointing``) runs each block under a plain checkpoint that
keeps only its input (``checkpoint_blocks``, the same buffer restore, so BN statistics are updated once there too).
It keeps less than the selective policy and wins where both are on: the model calls the blocks through
``checkpoint_blocks``, not through the stages' ``forward``. The ``features_only`` wrapper's own
``set_grad_checkpointing`` is timm's (whole stages, its recompute updates BN statistics again); with
``memory_efficient`` on as well, the selective checkpoints run nested inside it, with the same outputs and gradients.

The price is compute: the backward reruns each block's non-convolution ops (see ``benchmarks/results/lean_speed_cpu``
for the measured training-step cost).

Copyright the timm-resattn authors, Apache-2.0.
"""
import contextlib
import functools
from typing import Any, Callable, List, Tuple

import torch
import torch.nn as nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from ..errors import ConfigError
from ..schema import Bool, Schema

__all__ = [
    'MemoryLeanSequential', 'lean_policy', 'lean_context_fn', 'checkpoint_lean', 'checkpoint_blocks',
    'set_memory_efficient', 'SAVED_OPS', 'SWITCH',
]

# the value of the ``enable`` switches (``set_memory_efficient``, the model's ``set_grad_checkpointing``)
SWITCH = Schema(dict(enable=Bool()), error=ConfigError)

# the ops whose outputs the selective checkpoint keeps for backward; everything else is recomputed
SAVED_OPS = frozenset({torch.ops.aten.convolution.default})


def lean_policy(ctx: Any, op: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    """ Selective-checkpoint policy: keep convolution outputs, recompute everything else. """
    return CheckpointPolicy.MUST_SAVE if op in SAVED_OPS else CheckpointPolicy.PREFER_RECOMPUTE


def _selective_contexts() -> Tuple[Any, Any]:
    return create_selective_checkpoint_contexts(lean_policy)


class _RestoreBuffers:
    """ Wraps the recompute context: snapshots ``buffers`` before the recompute, writes them back after it (both
    outside the wrapped context), so that batch norm's running statistics are updated once per step, not twice.
    The recompute runs with each module in the mode (``training``) it had in the forward, so a ``model.eval()``
    between forward and backward does not change what is recomputed.
    """

    def __init__(self, module: nn.Module, inner: Any):
        self.buffers = list(module.buffers())
        self.modes = [(m, m.training) for m in module.modules()]  # as in the forward (this is built there)
        self.inner = inner
        self.saved: List[torch.Tensor] = []
        self.now: List[bool] = []

    def __enter__(self):
        with torch.no_grad():
            self.saved = [b.clone() for b in self.buffers]
        self.now = [m.training for m, _ in self.modes]
        for m, training in self.modes:
            m.training = training
        return self.inner.__enter__()

    def __exit__(self, *exc: Any):
        try:
            return self.inner.__exit__(*exc)
        finally:
            for (m, _), training in zip(self.modes, self.now):
                m.training = training
            with torch.no_grad():
                for b, s in zip(self.buffers, self.saved):
                    b.copy_(s)
            self.saved, self.now = [], []


def lean_context_fn(module: nn.Module, selective: bool = True) -> Tuple[Any, Any]:
    """ ``context_fn`` of the eager checkpoint of ``module``: the (forward, recompute) context pair of
    ``create_selective_checkpoint_contexts(lean_policy)`` (``selective``) or of a plain checkpoint (no contexts),
    the recompute one restoring ``module``'s buffers and running it in the forward's train/eval modes.
    """
    if selective:
        fwd, recompute = _selective_contexts()
    else:
        fwd, recompute = contextlib.nullcontext(), contextlib.nullcontext()
    return fwd, _RestoreBuffers(module, recompute)


def checkpoint_lean(module: Callable[..., torch.Tensor], x: torch.Tensor, selective: bool = True) -> torch.Tensor:
    """ ``module(x)`` under a non-reentrant activation checkpoint whose recompute leaves ``module``'s buffers (BN
    statistics) as the forward left them: selective (keeps convolution outputs only; see the module docstring), or
    with ``selective=False`` a plain one (keeps only ``x``).
    """
    if torch.compiler.is_compiling():
        # dynamo takes a plain function as context_fn; functionalisation updates the buffers once
        if selective:
            return checkpoint(module, x, use_reentrant=False, context_fn=_selective_contexts)
        return checkpoint(module, x, use_reentrant=False)
    context_fn = functools.partial(lean_context_fn, module, selective)
    return checkpoint(module, x, use_reentrant=False, context_fn=context_fn)


def checkpoint_blocks(blocks: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ Each child of ``blocks`` (a stage) in turn under a plain activation checkpoint (``checkpoint_lean`` with
    ``selective=False``): each block keeps only its input; BN statistics are updated once, not again in backward.
    What ``ResidualAttentionNet.set_grad_checkpointing`` runs.
    """
    for block in blocks.children():
        x = checkpoint_lean(block, x, selective=False)
    return x


def _is_tracing() -> bool:
    """ FX symbolic tracing or torch.export (not torch.compile): these take the plain path. """
    from torch.fx._symbolic_trace import is_fx_symbolic_tracing  # no public name for it in torch
    return is_fx_symbolic_tracing() or torch.compiler.is_exporting()


class MemoryLeanSequential(nn.Sequential):
    """ ``nn.Sequential`` that runs each of its blocks under the selective checkpoint (``checkpoint_lean``) where
    ``memory_efficient`` is set, in training with grad enabled and something to differentiate (the input or a
    parameter needs grad); the plain ``nn.Sequential`` forward otherwise (eval, no-grad, TorchScript, FX,
    torch.export). Same parameters, buffers and state_dict keys as ``nn.Sequential``.
    """

    def __init__(self, *args: Any):
        super().__init__(*args)
        self.memory_efficient = False

    @torch.jit.unused
    def _forward_lean(self, x: torch.Tensor) -> torch.Tensor:
        for block in self:
            x = checkpoint_lean(block, x)
        return x

    @torch.jit.unused
    def _lean(self, x: torch.Tensor) -> bool:
        return (
            not _is_tracing()  # first: under FX the rest would be traced, not evaluated
            and self.memory_efficient
            and self.training
            and torch.is_grad_enabled()
            # a frozen stage on a frozen input saves nothing for backward: no checkpoint to pay for
            and (x.requires_grad or any(p.requires_grad for p in self.parameters()))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript skips only this form of branch)
            if self._lean(x):
                return self._forward_lean(x)
        for block in self:
            x = block(x)
        return x


def set_memory_efficient(model: nn.Module, enable: bool = True) -> None:
    """ Switch the selective checkpointing of every ``MemoryLeanSequential`` in ``model`` on or off, in place
    (``enable``: a bool; ``'false'`` and other non-bools are a ``ConfigError``). Parameters, buffers and outputs are
    unchanged. """
    enable = SWITCH.check_value('enable', enable)
    for m in model.modules():
        if isinstance(m, MemoryLeanSequential):
            m.memory_efficient = enable
