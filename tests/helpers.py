""" Helpers shared by the test modules (import as ``from helpers import ...``; pytest puts tests/ on sys.path). """
from pathlib import Path

import torch
import torch.nn as nn

REPO_ROOT = Path(__file__).resolve().parents[1]

# resattnet56's layout at 1/8 width: same stages, modules and mask levels, for tests that need no real widths
NARROW_IMAGENET = dict(stem_chs=16, stage_chs=(32, 64, 128, 256))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """ ``max |a - b| / max |b|`` (0 for two zero tensors). """
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
