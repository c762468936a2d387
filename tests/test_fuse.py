""" Tests of timm_resattn.analysis.fuse: BatchNorm folding for inference. """
import pytest
import torch
import torch.nn as nn

import timm
import timm_resattn  # noqa: F401
from timm.layers import BatchNormAct2d
from timm_resattn.analysis.fuse import count_bn, find_conv_bn_pairs, fuse_bn
from timm_resattn.layers.units import PreActBottleneck
from helpers import rel_norm_err


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.rand(n, generator=g) - 0.5)
    return model


@pytest.mark.parametrize('name', ['resattnet56', 'resattnext56'])
def test_fuse_bn_matches_eval_output(name):
    torch.manual_seed(0)
    model = _randomize_bn(timm.create_model(name)).eval()
    x = torch.randn(2, 3, 64, 64)
    before = count_bn(model)
    fused = fuse_bn(model)
    assert fused is not model
    with torch.no_grad():
        ref = model(x)
        out = fused(x)
    assert rel_norm_err(out, ref) < 1e-5
    assert count_bn(fused) < count_bn(model)
    assert count_bn(model) == before  # the default works on a copy: the original keeps every BN


@pytest.mark.parametrize('name', ['resattnet56', 'resattnext56', 'resattninc56'])
def test_fuse_bn_exact_in_float64(name):
    # in float64 the fold is exact up to rounding; fp32 differences only come from rounding the folded weights
    if name not in timm.list_models('resatt*'):
        pytest.skip(f'{name} is not registered')
    torch.manual_seed(0)
    model = _randomize_bn(timm.create_model(name)).eval().double()
    x = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    fused = fuse_bn(model)
    with torch.no_grad():
        assert rel_norm_err(fused(x), model(x)) < 1e-10
    assert all(p.dtype == torch.float64 for p in fused.parameters())


def test_fuse_bn_counts_resattnet56():
    model = timm.create_model('resattnet56').eval()
    before = count_bn(model)
    fused = fuse_bn(model)
    units = [m for m in model.modules() if isinstance(m, PreActBottleneck)]
    # per pre-act unit norm2 and norm3 fold, plus the stem norm and each mask head's norm2
    num_heads = sum(1 for n, _ in model.named_modules() if n.endswith('mask.head'))
    assert count_bn(fused) == before - 2 * len(units) - 1 - num_heads
    # what is left of a BatchNormAct2d is its ReLU
    assert isinstance(fused.stem.norm, nn.ReLU)
    assert isinstance(units[0].norm1, BatchNormAct2d)  # the pre-activation BN cannot be folded


def test_fuse_bn_next_folds_every_bn():
    model = timm.create_model('resattnext56').eval()
    fused = fuse_bn(model)
    assert count_bn(fused) == 0
    assert isinstance(fused.stages[0][0].downsample.norm, nn.Identity)
    assert fused.stages[0][0].conv1.bias is not None


def test_fuse_bn_inplace():
    model = _randomize_bn(timm.create_model('resattnet56')).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    before = count_bn(model)
    out_model = fuse_bn(model, inplace=True)
    assert out_model is model
    assert count_bn(model) < before
    with torch.no_grad():
        assert rel_norm_err(model(x), ref) < 1e-5


def test_fuse_bn_training_mode_raises():
    model = timm.create_model('resattnet56')
    assert model.training
    with pytest.raises(RuntimeError, match='eval'):
        fuse_bn(model)
    model.eval()
    model.stem.norm.train()  # one BN left in training mode is enough to refuse
    with pytest.raises(RuntimeError, match='eval'):
        fuse_bn(model)


@pytest.mark.parametrize('name', ['resnet18', 'resnetv2_50'])
def test_fuse_bn_timm_peers(name):
    from benchmarks.fuse_peers import register_timm_peers  # the benchmarks' rules for the ResNet peers
    register_timm_peers()
    torch.manual_seed(0)
    model = _randomize_bn(timm.create_model(name)).eval()
    x = torch.randn(1, 3, 64, 64)
    fused = fuse_bn(model)
    with torch.no_grad():
        assert rel_norm_err(fused(x), model(x)) < 1e-5
    assert count_bn(fused) < count_bn(model)


def test_find_pairs_skips_conv_with_activation_between():
    # conv -> ReLU -> BN: the BN does not directly follow the conv and must not be folded
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    assert find_conv_bn_pairs(model) == [('3', '4')]
    model = _randomize_bn(model).eval()
    x = torch.randn(2, 3, 8, 8)
    fused = fuse_bn(model)
    assert isinstance(fused[2], nn.BatchNorm2d) and isinstance(fused[4], nn.Identity)
    with torch.no_grad():
        assert rel_norm_err(fused(x), model(x)) < 1e-5
