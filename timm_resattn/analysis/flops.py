""" Multiply-accumulates as the paper counts FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` total / 2. """
from typing import Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ['count_macs']


@torch.no_grad()
def count_macs(model: nn.Module, input_size: Sequence[int]) -> int:
    """ Multiply-accumulates of one image's eval-mode forward at ``input_size`` (C, H, W).

    Works on the meta device too (shapes and counts without arithmetic). The model's train/eval mode is restored.
    """
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    x = torch.empty(1, *input_size, device=param.device if param is not None else 'cpu')
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
