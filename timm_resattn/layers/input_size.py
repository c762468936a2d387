""" The input-size check of a network whose max-pools need a minimum input (the mask branches pool to 1x1).

``check_input_size`` is an FX leaf function (it stays in traced graphs) and TorchScript-able; ``InputSizeCheck``
wraps it as the first module of a stem, so that every way of running the network (``forward``,
``forward_intermediates``, the ``features_only`` wrappers that call the stem's children) checks the input.
"""
import torch
import torch.nn as nn
from timm.layers import register_notrace_function

__all__ = ['check_input_size', 'InputSizeCheck']


@register_notrace_function
def check_input_size(x: torch.Tensor, min_size: int) -> torch.Tensor:
    """ Raise a ValueError naming the minimum if ``x`` is too small; returns ``x`` (so that FX keeps the check). """
    if x.shape[-2] < min_size or x.shape[-1] < min_size:
        raise ValueError(
            f'input spatial size {x.shape[-2]}x{x.shape[-1]} is below the minimum {min_size}x{min_size} '
            f'this network accepts (its mask branches max-pool the feature maps down to 1x1)'
        )
    return x


class InputSizeCheck(nn.Module):
    """ The first module of the stem: ``check_input_size`` against the network's minimum. Being part of the stem, it
    also guards the ``features_only`` wrappers, which call the stem's children instead of ``forward_features``. """

    def __init__(self, min_size: int):
        super().__init__()
        self.min_size = min_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return check_input_size(x, self.min_size)

    def extra_repr(self) -> str:
        return f'min_size={self.min_size}'
