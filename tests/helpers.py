""" Helpers shared by the test modules (import as ``from helpers import ...``; pytest puts tests/ on sys.path). """
from pathlib import Path
from typing import Dict, Tuple

import timm
import torch
import torch.nn as nn

REPO_ROOT = Path(__file__).resolve().parents[1]

# resattnet56's layout at 1/8 width: same stages, modules and mask levels, for tests that need no real widths
NARROW_IMAGENET = dict(stem_chs=16, stage_chs=(32, 64, 128, 256))
# the same for the CIFAR nets: resattnet56_cifar's layout at 1/4 width
NARROW_CIFAR = dict(stem_chs=8, stage_chs=(16, 32, 64))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """ ``max |a - b| / max |b|`` (0 for two zero tensors). """
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def rel_norm_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """ ``||a - b|| / ||b||`` (Frobenius norms): the relative error of ``a`` against the reference ``b``. """
    return ((a - b).norm() / b.norm()).item()


def narrow_kwargs(name: str, one_module_per_stage: bool = False) -> Dict[str, object]:
    """ ``timm.create_model`` kwargs building the registered net ``name`` at a fraction of its width, keeping what
    sets it apart (unit type, mask wiring, pooling, p/t/r, stages and mask levels): ``NARROW_CIFAR`` or
    ``NARROW_IMAGENET``, with 8 groups (of 2) for the 32x4d NeXt nets. With ``one_module_per_stage``, the CIFAR nets
    deeper than Attention-92 also get one attention module per stage.
    """
    if name.endswith('_cifar'):
        kwargs = dict(NARROW_CIFAR)
        if one_module_per_stage and name not in ('resattnet56_cifar', 'resattnet92_cifar'):
            kwargs['stage_modules'] = (1, 1, 1)
        return kwargs
    return dict(NARROW_IMAGENET, groups=8) if 'next' in name else dict(NARROW_IMAGENET)


def small_input_size(name: str) -> Tuple[int, int, int]:
    """ A small input that exercises every mask level of ``name`` (the timm test-suite sizes: 64..128 px). """
    cfg = timm.get_pretrained_cfg(name)
    return (cfg.input_size[0], 64, 64) if cfg.input_size[-1] >= 64 else tuple(cfg.input_size)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
