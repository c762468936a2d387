""" Memory-lean training: the same forward, fewer tensors kept for backward.

Two small autograd functions, used by the residual units and the mask branches when a model is built with
``memory_efficient=True`` (``ResidualAttentionNet.set_memory_efficient``):

* ``bn_relu_conv(norm, convs, x)``: ``[conv(ReLU(BN(x))) for conv in convs]`` keeping only ``x`` (plus per-channel
  vectors). The plain path keeps BN's input ``x`` *and* the ReLU output ``y`` (which every following conv also keeps
  as its input): two tensors per BN-ReLU-conv, one of them as wide as the unit. Backward recomputes ``y`` from ``x``
  (one BN + ReLU: element-wise and per-channel reductions, no conv) with the very kernels of the forward, so the
  recomputed ``y`` is bit-identical, then runs aten's own ``convolution_backward``, ``threshold_backward`` and batch
  norm backward: the gradients are those of the plain path up to the order in which the convs' input gradients are
  summed. Running stats are updated once, in the forward (backward recomputes into scratch buffers).

  Why not the In-Place ABN trick (Rota Bulo et al. 2018: keep only ``y`` and invert the activation)? It needs an
  invertible activation (leaky ReLU); with ReLU, BN's input gradient at every position depends on ``x_hat`` there,
  which ``y = 0`` no longer holds. Keeping ``x`` and recomputing ``y`` is the exact alternative.

* ``LeanMaxPool2d``: a max-pool that keeps a window-local ``uint8`` argmax (0..k*k-1) instead of aten's ``int64``
  flat indices and nothing of its input (1/8 of the indices' bytes; the channels_last copy made by the CPU fast path
  is not kept either). Backward rebuilds the flat indices and calls aten's ``max_pool2d_with_indices_backward``.

The price is compute: every BN-ReLU runs twice (statistics included), which costs a training step about 1.0-1.3x
on CPU (measured interleaved with ``benchmarks/lean_speed.py`` on a shared 2-core VM; not yet measured on a GPU).

Both take the plain path (bit-identical, no overhead) in eval mode, under ``torch.no_grad()``, TorchScript, FX
tracing, ``torch.compile`` (whose partitioner makes its own recompute decisions) and autocast (not handled here:
the plain path runs, so AMP still works, without this saving).

Hacked together by the timm-resattn authors, Apache-2.0.
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import BatchNormAct2d, register_notrace_module

__all__ = ['bn_relu_conv', 'use_lean_path', 'LeanMaxPool2d', 'lean_max_pool2d', 'set_memory_efficient']


def _is_tracing_or_compiling() -> bool:
    if torch.compiler.is_compiling():
        return True
    try:
        from torch.fx._symbolic_trace import is_fx_symbolic_tracing as is_fx_tracing
        return is_fx_tracing()
    except ImportError:  # pragma: no cover
        return False


def _autocast_on(x: torch.Tensor) -> bool:
    return torch.is_autocast_enabled(x.device.type)


def _grad_wanted(x: torch.Tensor, module: nn.Module) -> bool:
    if not torch.is_grad_enabled():
        return False
    return x.requires_grad or any(p.requires_grad for p in module.parameters())


def use_lean_path(norm: nn.Module, x: torch.Tensor) -> bool:
    """ True where ``bn_relu_conv`` applies: a training BatchNormAct2d (BN + ReLU, no drop) under autograd, eager
    (not scripted, traced or compiled), no autocast.
    """
    return (
        not _is_tracing_or_compiling()  # first: the rest reads tensor attributes, which FX proxies can't give
        and isinstance(norm, BatchNormAct2d)
        and norm.training
        and norm.weight is not None
        and norm.bias is not None
        and isinstance(norm.act, nn.ReLU)
        and isinstance(norm.drop, nn.Identity)
        and x.dim() == 4
        and _grad_wanted(x, norm)
        and not _autocast_on(x)
    )


def _conv_args(conv: nn.Module) -> Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int], int]:
    if (
            not isinstance(conv, nn.Conv2d)
            or conv.bias is not None
            or conv.padding_mode != 'zeros'
            or isinstance(conv.padding, str)
    ):
        raise TypeError(f'bn_relu_conv needs bias-free zero-padded nn.Conv2d layers, got {conv}')
    return tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation), conv.groups


class _BnReluConvFn(torch.autograd.Function):
    """ ``[conv_i(relu(batch_norm(x)))]`` keeping ``x`` only; see the module docstring. """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, conv_args, *conv_weights):
        cudnn = torch.backends.cudnn.enabled
        # the same aten entry point F.batch_norm takes (so the same kernel and the same single running-stats update)
        z = torch.ops.aten._batch_norm_impl_index(
            x, weight, bias, running_mean, running_var, True, momentum, eps, cudnn)[0]
        y = torch.relu_(z)
        outs = tuple(
            F.conv2d(y, w, None, stride, padding, dilation, groups)
            for w, (stride, padding, dilation, groups) in zip(conv_weights, conv_args)
        )
        ctx.save_for_backward(x, weight, bias, *conv_weights)
        ctx.momentum = momentum
        ctx.eps = eps
        ctx.cudnn = cudnn
        ctx.conv_args = conv_args
        ctx.stats_shape = running_mean.shape if running_mean is not None else None
        return outs

    @staticmethod
    def backward(ctx, *grad_outs):
        x, weight, bias, *conv_weights = ctx.saved_tensors
        # recompute the forward's BN (+ batch stats) into scratch running stats: bit-identical y, buffers untouched
        scratch_mean = scratch_var = None
        if ctx.stats_shape is not None:
            scratch_mean = torch.zeros(ctx.stats_shape, dtype=weight.dtype, device=weight.device)
            scratch_var = torch.ones(ctx.stats_shape, dtype=weight.dtype, device=weight.device)
        z, save_mean, save_var, reserve, impl_index = torch.ops.aten._batch_norm_impl_index(
            x, weight, bias, scratch_mean, scratch_var, True, ctx.momentum, ctx.eps, ctx.cudnn)
        y = torch.relu_(z)
        needs = ctx.needs_input_grad
        need_bn = needs[0] or needs[1] or needs[2]
        dy = None
        conv_grads: List[torch.Tensor] = []
        for i, (w, g, (stride, padding, dilation, groups)) in enumerate(zip(conv_weights, grad_outs, ctx.conv_args)):
            need_w = needs[8 + i]
            if g is None:
                conv_grads.append(None)
                continue
            dy_i, dw, _ = torch.ops.aten.convolution_backward(
                g, y, w, None, list(stride), list(padding), list(dilation), False, [0, 0], groups,
                [need_bn, need_w, False])
            conv_grads.append(dw)
            if need_bn:
                dy = dy_i if dy is None else dy + dy_i
        dx = dgamma = dbeta = None
        if need_bn and dy is not None:
            dz = torch.ops.aten.threshold_backward(dy, y, 0)
            dx, dgamma, dbeta = torch.ops.aten._batch_norm_impl_index_backward(
                impl_index, x, dz, weight, scratch_mean, scratch_var, save_mean, save_var, True, ctx.eps,
                [needs[0], needs[1], needs[2]], reserve)
        return (dx, dgamma, dbeta, None, None, None, None, None, *conv_grads)


def bn_relu_conv(norm: BatchNormAct2d, convs: Sequence[nn.Conv2d], x: torch.Tensor) -> List[torch.Tensor]:
    """ ``[conv(norm(x)) for conv in convs]`` for a training ``BatchNormAct2d`` with ReLU, keeping only ``x`` for
    backward. Same outputs and running-stats update as the modules (the momentum logic is BatchNormAct2d's).
    Call it where ``use_lean_path(norm, x)`` holds.
    """
    momentum = 0.0 if norm.momentum is None else norm.momentum
    if norm.track_running_stats and norm.num_batches_tracked is not None:
        norm.num_batches_tracked.add_(1)
        if norm.momentum is None:
            momentum = 1.0 / float(norm.num_batches_tracked)
    track = norm.track_running_stats
    conv_args = tuple(_conv_args(c) for c in convs)
    return list(_BnReluConvFn.apply(
        x, norm.weight, norm.bias,
        norm.running_mean if track else None,
        norm.running_var if track else None,
        momentum, norm.eps, conv_args, *[c.weight for c in convs],
    ))


class _LeanMaxPoolFn(torch.autograd.Function):
    """ Max-pool keeping a uint8 window-local argmax; see the module docstring. """

    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, ceil_mode, cpu_channels_last):
        xin = x.contiguous(memory_format=torch.channels_last) if cpu_channels_last else x
        out, idx = torch.ops.aten.max_pool2d_with_indices(xin, kernel_size, stride, padding, [1, 1], ceil_mode)
        if cpu_channels_last:
            out = out.contiguous()
        in_w = x.shape[-1]
        oh, ow = out.shape[-2:]
        hs = (torch.arange(oh, device=x.device) * stride[0] - padding[0]).view(oh, 1)
        ws = torch.arange(ow, device=x.device) * stride[1] - padding[1]
        local = (torch.div(idx, in_w, rounding_mode='floor') - hs) * kernel_size[1] + (idx % in_w - ws)
        ctx.save_for_backward(local.to(torch.uint8))
        ctx.args = (kernel_size, stride, padding, ceil_mode)
        ctx.in_shape = x.shape
        ctx.in_format = torch.channels_last if cpu_channels_last else torch.contiguous_format
        ctx.in_dtype = x.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        local, = ctx.saved_tensors
        kernel_size, stride, padding, ceil_mode = ctx.args
        in_w = ctx.in_shape[-1]
        oh, ow = local.shape[-2:]
        local = local.long()
        hs = (torch.arange(oh, device=local.device) * stride[0] - padding[0]).view(oh, 1)
        ws = torch.arange(ow, device=local.device) * stride[1] - padding[1]
        idx = (hs + torch.div(local, kernel_size[1], rounding_mode='floor')) * in_w + (ws + local % kernel_size[1])
        if ctx.in_format == torch.channels_last:
            grad_out = grad_out.contiguous(memory_format=torch.channels_last)
        # the input is only read for its shape and layout: an uninitialised stand-in costs no traffic
        like = torch.empty(ctx.in_shape, dtype=ctx.in_dtype, device=grad_out.device, memory_format=ctx.in_format)
        dx = torch.ops.aten.max_pool2d_with_indices_backward(
            grad_out, like, kernel_size, stride, padding, [1, 1], ceil_mode, idx)
        return dx.contiguous(), None, None, None, None, None


def _pair(v) -> List[int]:
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


def lean_max_pool2d(x: torch.Tensor, pool: nn.MaxPool2d) -> torch.Tensor:
    """ ``pool(x)`` for an ``nn.MaxPool2d`` (dilation 1, no indices returned), keeping a uint8 argmax only. """
    kernel_size, stride = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size)
    padding = _pair(pool.padding)
    cpu_channels_last = x.device.type == 'cpu' and x.shape[1] > 1 and x.is_contiguous()
    return _LeanMaxPoolFn.apply(x, kernel_size, stride, padding, pool.ceil_mode, cpu_channels_last)


@register_notrace_module
class LeanMaxPool2d(nn.Module):
    """ Wraps a 2d max-pool module: its own forward in eval / no-grad / traced / compiled / autocast runs, the
    uint8-argmax function in training (``lean_max_pool2d``). Same output; no parameters, so no state-dict change.
    """

    def __init__(self, pool: nn.MaxPool2d):
        super().__init__()
        if not isinstance(pool, nn.MaxPool2d) or pool.return_indices or _pair(pool.dilation) != [1, 1]:
            raise TypeError(f'LeanMaxPool2d wraps an nn.MaxPool2d with dilation 1 and no indices, got {pool}')
        k = _pair(pool.kernel_size)
        if k[0] * k[1] > 256:
            raise TypeError(f'LeanMaxPool2d: a {k} window does not fit a uint8 argmax')
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting():  # noqa: SIM102 (TorchScript skips only this form of branch)
            if (
                    not _is_tracing_or_compiling() and self.training and x.dim() == 4 and torch.is_grad_enabled()
                    and x.requires_grad and not _autocast_on(x)
            ):
                return lean_max_pool2d(x, self.pool)
        return self.pool(x)


def set_memory_efficient(model: nn.Module, enable: bool = True) -> None:
    """ Switch the lean path on or off in place: sets ``memory_efficient`` on every unit and mask head of
    ``model`` and wraps (or unwraps) each max-pool in ``LeanMaxPool2d``. Parameters, buffers and outputs are
    unchanged. """
    for m in model.modules():
        if isinstance(getattr(m, 'memory_efficient', None), bool):
            m.memory_efficient = enable
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if enable and isinstance(child, nn.MaxPool2d) and not isinstance(parent, LeanMaxPool2d):
                setattr(parent, child_name, LeanMaxPool2d(child))
            elif not enable and isinstance(child, LeanMaxPool2d):
                setattr(parent, child_name, child.pool)
