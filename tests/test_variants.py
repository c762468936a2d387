""" The rest of the paper's family (CIFAR Attention-56..452, AttentionInception-56) and the ablation switches. """
import argparse

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import timm
import timm_resattn  # noqa: F401
from timm.utils.misc import ParseKwargs
from timm_resattn.layers import AttentionModule, MaskActivation, PreActBottleneck
from timm_resattn.layers.attention import EncoderDecoderMask, LocalConvMask

CIFAR = {  # name: (m, p, t, r, exact params at 10 classes)
    'resattnet56_cifar': (1, 1, 2, 1, 1_068_186),
    'resattnet92_cifar': (2, 1, 2, 1, 1_798_426),
    'resattnet128_cifar': (3, 1, 2, 1, 2_528_666),
    'resattnet164_cifar': (4, 1, 2, 1, 3_258_906),
    'resattnet236_cifar': (6, 1, 2, 1, 4_719_386),
    'resattnet452_cifar': (6, 2, 4, 3, 9_170_714),
}
PAPER_TABLE6 = {'resattnet92_cifar': 1.9e6, 'resattnet236_cifar': 5.1e6, 'resattnet452_cifar': 8.6e6}


def _params(m):
    return sum(p.numel() for p in m.parameters())


def _macs(model, size):
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(torch.randn(1, *size, device='meta'))
    return fc.get_total_flops() / 2


@pytest.mark.parametrize('name', list(CIFAR))
def test_cifar_params_and_depth(name):
    m, p, t, r, exact = CIFAR[name]
    model = timm.create_model(name, device='meta')
    assert _params(model) == exact
    if name in PAPER_TABLE6:
        assert abs(exact / PAPER_TABLE6[name] - 1) < 0.08
    assert (model.cfg.p, model.cfg.t, model.cfg.r, model.cfg.stage_modules) == (p, t, r, (m, m, m))
    # trunk depth = stem conv + 3 layers per trunk-path unit + fc
    trunk_units = [n for n, mod in model.named_modules() if isinstance(mod, PreActBottleneck) and '.mask.' not in n]
    depth = 1 + 3 * len(trunk_units) + 1
    assert depth == int(name.split('_')[0][len('resattnet'):])
    assert depth == (36 * m + 20 if (p, t) == (1, 2) else 20 + 9 * m * (2 * p + t))
    assert model.pretrained_cfg['num_classes'] == 10 and model.pretrained_cfg['crop_pct'] == 1.0
    assert timm.create_model(name, num_classes=100, device='meta').get_classifier().out_features == 100


def test_cifar_features_only_has_its_real_levels():
    model = timm.create_model('resattnet92_cifar', features_only=True).eval()
    assert model.feature_info.channels() == [16, 64, 128, 256]
    assert model.feature_info.reduction() == [1, 1, 2, 4]
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 32, 32))
    assert [tuple(o.shape[1:]) for o in outs] == [(16, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8)]


def test_cifar_trains_loss_goes_down():
    torch.manual_seed(0)
    model = timm.create_model('resattnet56_cifar', num_classes=10).train()
    x = torch.randn(16, 3, 32, 32)
    y = torch.randint(0, 10, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4)
    losses = []
    for _ in range(12):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_inception56_counts():
    model = timm.create_model('resattninc56', device='meta')
    assert model.pretrained_cfg['input_size'] == (3, 299, 299)
    assert abs(_params(model) / 31.9e6 - 1) < 0.03
    assert abs(_macs(model, (3, 224, 224)) / 6.3e9 - 1) < 0.03
    assert model.forward_features(torch.randn(1, 3, 299, 299, device='meta')).shape[-2:] == (10, 10)


# --- mask activations (paper §3.3, Eq. 4-6) -------------------------------------------------------------------

def test_mask_activation_formulas():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 7) * 3
    mixed = MaskActivation('mixed')(x)
    torch.testing.assert_close(mixed, 1 / (1 + torch.exp(-x)))
    assert mixed.min() >= 0 and mixed.max() <= 1

    channel = MaskActivation('channel')(x)
    norms = torch.sqrt((x ** 2).sum(dim=1, keepdim=True))
    torch.testing.assert_close(channel, x / norms)
    torch.testing.assert_close(channel.pow(2).sum(1), torch.ones(2, 5, 7))

    spatial = MaskActivation('spatial')(x)
    mean = x.mean(dim=(2, 3), keepdim=True)
    std = ((x - mean) ** 2).mean(dim=(2, 3), keepdim=True).sqrt()
    torch.testing.assert_close(spatial, 1 / (1 + torch.exp(-(x - mean) / (std + 1e-5))))
    # per channel the standardised pre-activation has zero mean, so the sigmoid is centred on 0.5
    assert torch.allclose(torch.logit(spatial).mean(dim=(2, 3)), torch.zeros(2, 8), atol=1e-4)
    with pytest.raises(ValueError, match="mask_act='softmax'"):
        MaskActivation('softmax')


@pytest.mark.parametrize('mask_act', ['mixed', 'channel', 'spatial'])
def test_mask_act_switch_reaches_every_module(mask_act):
    model = timm.create_model('resattnet56', mask_act=mask_act, num_classes=4).eval()
    acts = [m.mode for m in model.modules() if isinstance(m, MaskActivation)]
    assert acts == [mask_act] * 3
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 64, 64))).all()


# --- attention residual learning vs naive attention learning (paper §3.1, Eq. 3) --------------------------------

class _Const(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x, trunk=None):
        return torch.full_like(x, self.value)


def test_attention_residual_vs_naive_on_a_module():
    x = torch.randn(1, 4, 6, 6)
    post = nn.Conv2d(4, 4, 1)
    arl = AttentionModule(nn.Identity(), nn.Identity(), _Const(0.25), post, attention_residual=True)
    nal = AttentionModule(nn.Identity(), nn.Identity(), _Const(0.25), post, attention_residual=False)
    torch.testing.assert_close(arl(x), post(1.25 * x))
    torch.testing.assert_close(nal(x), post(0.25 * x))
    # a zero mask leaves ARL with the identity of the trunk, and kills the features under NAL
    zero_arl = AttentionModule(nn.Identity(), nn.Identity(), _Const(0.), nn.Identity())
    zero_nal = AttentionModule(nn.Identity(), nn.Identity(), _Const(0.), nn.Identity(), attention_residual=False)
    assert torch.equal(zero_arl(x), x) and torch.equal(zero_nal(x), torch.zeros_like(x))


@pytest.mark.parametrize('attention_residual', [True, False])
def test_attention_residual_switch_in_a_network(attention_residual):
    model = timm.create_model('resattnet56', attention_residual=attention_residual).eval()
    module = model.stages[1][1]
    seen = {}
    module.trunk.register_forward_hook(lambda m, i, o: seen.__setitem__('T', o))
    module.mask.register_forward_hook(lambda m, i, o: seen.__setitem__('M', o))
    module.post.register_forward_hook(lambda m, i, o: seen.__setitem__('H', i[0]))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    t, m = seen['T'], seen['M']
    expected = (1 + m) * t if attention_residual else m * t
    torch.testing.assert_close(seen['H'], expected)


# --- mask type, p/t/r -----------------------------------------------------------------------------------------

def test_local_mask_has_no_resampling_and_about_the_same_macs():
    enc_dec = timm.create_model('resattnet56', device='meta')
    local = timm.create_model('resattnet56', mask_type='local', device='meta')
    masks = [m for m in local.modules() if isinstance(m, (EncoderDecoderMask, LocalConvMask))]
    assert masks and all(isinstance(m, LocalConvMask) for m in masks)
    assert not any(isinstance(m, nn.MaxPool2d) for mask in masks for m in mask.modules())
    ratio = _macs(local, (3, 224, 224)) / _macs(enc_dec, (3, 224, 224))
    assert 0.95 < ratio < 1.05, ratio  # 6.414 vs 6.271 GMACs
    real = timm.create_model('resattnet56', mask_type='local', num_classes=3).eval()
    with torch.no_grad():
        assert real(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_p_t_r_shape_the_module():
    model = timm.create_model('resattnet56', p=2, t=3, r=2, device='meta')
    module = model.stages[0][1]
    assert len(module.pre) == 2 and len(module.trunk) == 3 and len(module.post) == 2
    assert [len(d) for d in module.mask.down] == [2, 2, 4]
    assert [len(u.up) for u in module.mask.up] == [2, 2]
    p0 = timm.create_model('resattnet56_cifar', p=0, num_classes=3).eval()
    assert len(p0.stages[0][1].pre) == 0
    with torch.no_grad():
        assert p0(torch.randn(1, 3, 32, 32)).shape == (1, 3)


@pytest.mark.parametrize('kwargs, match', [
    (dict(t=0), r't=0 is invalid: expected an integer in \[1, 1000\]'),
    (dict(r=0), r'r=0 is invalid: expected an integer in \[1, 1000\]'),
    (dict(p=-1), r'p=-1 is invalid: expected an integer in \[0, 1000\]'),
    (dict(mask_levels=(0, 2, 1, 0)), 'mask_levels >= 1'),
    (dict(unit='dense'), "unit='dense'"),
])
def test_switch_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model('resattnet56', device='meta', **kwargs)


def test_more_mask_levels_raise_the_minimum_input_size():
    deep = timm.create_model('resattnet56_cifar', mask_levels=(3, 2, 1), device='meta')
    assert deep.min_input_size > timm.create_model('resattnet56_cifar', device='meta').min_input_size
    with pytest.raises(ValueError, match='minimum'):
        deep(torch.randn(1, 3, deep.min_input_size - 1, 32, device='meta'))


def test_switches_through_train_py_model_kwargs():
    parser = argparse.ArgumentParser()
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
    args = parser.parse_args(
        ['--model-kwargs', 'attention_residual=False', 'mask_act=spatial', 'stage_modules=[1,2,3,0]', 'r=2'])
    model = timm.create_model('resattnet56', device='meta', **args.model_kwargs)
    assert model.cfg.attention_residual is False and model.cfg.mask_act == 'spatial'
    assert model.cfg.stage_modules == (1, 2, 3, 0) and model.cfg.r == 2
    assert len(model.stages[2]) == 4


def test_a_new_unit_type_plugs_in(monkeypatch):
    """ The extension point CONTRIBUTING names: a ``ResidualUnit`` subclass implementing ``_build``, added to
    ``UNIT_TYPES``, builds every place a unit goes (stage entry, trunk, mask, tail) with the config's widths. """
    from timm_resattn.layers import units
    from timm_resattn.layers.units import ResidualUnit, UnitSpec

    class PreActPlainUnit(units.PreActUnit):  # one pre-activated 3x3 conv (ResNet's basic path, shortened)
        def _build_residual(self, s: UnitSpec) -> None:
            self.conv = nn.Conv2d(s.in_chs, s.out_chs, 3, stride=s.stride, padding=1, bias=False, **s.dd)

        def residual(self, x_preact: torch.Tensor) -> torch.Tensor:
            return self.conv(x_preact)

    assert issubclass(PreActPlainUnit, ResidualUnit)
    assert PreActPlainUnit.preactivates_input
    monkeypatch.setitem(units.UNIT_TYPES, 'plain_test', PreActPlainUnit)  # removed again after the test

    model = timm.create_model('resattnet56_cifar', unit='plain_test', stage_modules=(1, 0, 0)).eval()
    kinds = {type(m) for m in model.modules() if isinstance(m, ResidualUnit)}
    assert kinds == {PreActPlainUnit}
    assert model.stages[0][0].conv.weight.shape == (64, 16, 3, 3) and model.stages[0][0].downsample is not None
    assert not isinstance(model.stages[0][1].mask.head.norm1, nn.Identity)  # pre-activated units: head normalises
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match='plain_test'):  # the unit choice lists the registered units
        timm.create_model('resattnet56_cifar', unit='nope')
