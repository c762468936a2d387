""" Fidelity and timm-API tests of the official ImageNet nets (and every other registered variant).

Big nets run at small input sizes; the few full-size checks (MACs, pool_size) run on the meta device, where
shapes and FLOPs are computed without arithmetic.
"""
import copy

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import timm
import timm_resattn  # noqa: F401  (registers the models)
from timm.layers import get_notrace_functions, get_notrace_modules, set_layer_config
from timm.models import group_parameters
from helpers import narrow_kwargs, num_params, small_input_size
from timm_resattn.models.resattnet import ResidualAttentionNet

OFFICIAL = ['resattnet56', 'resattnet92', 'resattnext56', 'resattnext92']
ALL_MODELS = timm.list_models(module='resattnet')

# Exact learnable-parameter counts of the official Caffe deploy files (conv/fc weights, fc bias, BN scale/shift),
# and their multiply-accumulates at 224 (conv + fc), from the reference reading of the four prototxts.
OFFICIAL_PARAMS = {
    'resattnet56': 31_810_728,
    'resattnet92': 52_466_344,
    'resattnext56': 31_318_824,
    'resattnext92': 52_102_952,
}
OFFICIAL_GMACS_224 = {'resattnet56': 6.271, 'resattnet92': 10.534, 'resattnext56': 6.419, 'resattnext92': 10.704}
OFFICIAL_BN_STATS = {'resattnet56': 72_704, 'resattnet92': 133_632, 'resattnext56': 98_432, 'resattnext92': 171_136}


def _macs(model, size, device='meta'):
    x = torch.randn(1, *size, device=device)
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(x)
    return fc.get_total_flops() / 2


@pytest.mark.parametrize('name', OFFICIAL)
def test_official_param_count_and_macs(name):
    model = timm.create_model(name, device='meta').eval()
    assert num_params(model) == OFFICIAL_PARAMS[name]
    bn_stats = sum(b.numel() for n, b in model.named_buffers() if n.endswith(('running_mean', 'running_var')))
    assert bn_stats == OFFICIAL_BN_STATS[name]
    gmacs = _macs(model, (3, 224, 224)) / 1e9
    assert abs(gmacs / OFFICIAL_GMACS_224[name] - 1) < 0.005, gmacs


@pytest.mark.parametrize('name', ['resattnet92', 'resattnext92'])
def test_92_at_320_global_pool(name):
    # All spatial sizes scale by 10/7 at 320; MACs are 2.04x those at 224 (21.495 / 21.843 G officially).
    model = timm.create_model(name, device='meta').eval()
    x = torch.randn(1, 3, 320, 320, device='meta')
    assert model.forward_features(x).shape[-2:] == (10, 10)
    expected = {'resattnet92': 21.495, 'resattnext92': 21.843}[name]
    assert abs(_macs(model, (3, 320, 320)) / 1e9 / expected - 1) < 0.005
    assert model(x).shape == (1, 1000)


def test_official_spatial_sizes_at_224():
    """ Caffe ceil-mode pools: 112 -> 56 -> mask 28/14/7; stage outputs 56/28/14/7. """
    model = timm.create_model('resattnet56', features_only=True, device='meta')
    feats = model(torch.randn(1, 3, 224, 224, device='meta'))
    assert [tuple(f.shape[1:]) for f in feats] == [
        (64, 112, 112), (256, 56, 56), (512, 28, 28), (1024, 14, 14), (2048, 7, 7)]
    mask_sizes = []
    full = timm.create_model('resattnet56', device='meta')
    for mod in full.modules():
        if isinstance(mod, nn.MaxPool2d):
            mod.register_forward_hook(lambda m, i, o: mask_sizes.append(o.shape[-1]))
    full(torch.randn(1, 3, 224, 224, device='meta'))
    assert mask_sizes == [56, 28, 14, 7, 14, 7, 7]


def test_ceil_mode_pool_matches_caffe_windows():
    """ Caffe pools 3x3/s2 pad 0 in ceil mode: window i covers rows [2i, 2i+2], the last one clipped. """
    model = timm.create_model('resattnet56', device='meta')
    pool = model.stem.pool
    x = torch.arange(6.).reshape(1, 1, 1, 6).expand(1, 1, 6, 6).contiguous()
    out = pool(x)
    assert out.shape[-1] == 3
    assert out[0, 0, 0].tolist() == [2., 4., 5.]


@pytest.mark.parametrize('name', OFFICIAL + ['resattninc56', 'resattnet56_cifar', 'resattnet452_cifar'])
def test_backward_reaches_every_parameter(name):
    model = timm.create_model(name, num_classes=42).train()
    out = model(torch.randn(2, *small_input_size(name)))
    assert out.shape == (2, 42)
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert not torch.isnan(out).any()


@pytest.mark.parametrize('size', [31, 33, 65, 225])
def test_odd_and_minimum_input_sizes(size):
    model = timm.create_model('resattnet56', num_classes=10).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size + 2))
    assert out.shape == (1, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize('size', [299, 321])
def test_large_odd_sizes_meta(size):
    model = timm.create_model('resattnext92', device='meta')
    assert model(torch.randn(1, 3, size, size, device='meta')).shape == (1, 1000)


def test_below_minimum_input_size_raises():
    model = timm.create_model('resattnet56')
    assert model.min_input_size == 31
    with pytest.raises(ValueError, match='31x31'):
        model(torch.randn(1, 3, 30, 64))
    with pytest.raises(ValueError, match='minimum'):
        model.forward_intermediates(torch.randn(1, 3, 64, 16))


@pytest.mark.parametrize('in_chans', [1, 5])
def test_in_chans(in_chans):
    model = timm.create_model('resattnext56', in_chans=in_chans, num_classes=3).eval()
    assert model.stem.conv.in_channels == in_chans
    with torch.no_grad():
        assert model(torch.randn(1, in_chans, 64, 64)).shape == (1, 3)


@pytest.mark.parametrize('name', ALL_MODELS)
def test_default_cfg_and_head_api(name):
    # the cfg and its pool_size at full width on the meta device (no arithmetic); the head API on a narrow build
    meta = timm.create_model(name, device='meta')
    cfg = meta.pretrained_cfg
    for key in ('input_size', 'pool_size', 'crop_pct', 'interpolation', 'mean', 'std', 'first_conv', 'classifier',
                'num_classes', 'paper_ids', 'license'):
        assert cfg.get(key) is not None, key
    assert 'arXiv:1704.06904' in cfg['paper_ids']
    sd = meta.state_dict()
    assert cfg['first_conv'] + '.weight' in sd and cfg['classifier'] + '.weight' in sd
    assert meta.get_classifier() is meta.head.fc

    # pool_size is the unpooled feature size at the default input size
    feats = meta.forward_features(torch.randn(1, *cfg['input_size'], device='meta'))
    assert tuple(feats.shape[-2:]) == tuple(cfg['pool_size'])
    assert feats.shape[1] == meta.num_features

    model = timm.create_model(name, **narrow_kwargs(name)).eval()
    size = small_input_size(name)
    x = torch.randn(2, *size)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape[1] == model.num_features
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, model.head_hidden_size)
        logits = model.forward_head(feats)
        assert torch.equal(logits, model(x))
        model.reset_classifier(0)
        assert model(x).shape == (2, model.num_features)
        model.reset_classifier(0, '')
        assert model(x).shape == feats.shape
        model.reset_classifier(7, 'avg')
        assert model(x).shape == (2, 7) and model.num_classes == 7
    headless = timm.create_model(name, num_classes=0, global_pool='', **narrow_kwargs(name)).eval()
    with torch.no_grad():
        assert headless(x).dim() == 4


def test_global_pool_options():
    model = timm.create_model('resattnet56', global_pool='catavgmax', num_classes=0).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4096)


def test_features_only():
    model = timm.create_model('resattnet92', features_only=True).eval()
    assert model.feature_info.channels() == [64, 256, 512, 1024, 2048]
    assert model.feature_info.reduction() == [2, 4, 8, 16, 32]
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 96, 96))
    assert [o.shape[1] for o in outs] == [64, 256, 512, 1024, 2048]
    assert [96 // o.shape[-1] for o in outs] == [2, 4, 8, 16, 32]

    picked = timm.create_model('resattnext56', features_only=True, out_indices=(1, 3)).eval()
    with torch.no_grad():
        outs = picked(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [256, 1024]


def test_features_only_matches_forward_intermediates():
    torch.manual_seed(0)
    model = timm.create_model('resattnet56').eval()
    torch.manual_seed(0)
    feat_model = timm.create_model('resattnet56', features_only=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a = feat_model(x)
        b = model.forward_intermediates(x, intermediates_only=True, norm=True)
    assert len(a) == len(b) == 5
    for fa, fb in zip(a, b):
        torch.testing.assert_close(fa, fb)


@pytest.mark.parametrize('name', ['resattnet56', 'resattnext56'])
def test_forward_intermediates(name):
    model = timm.create_model(name).eval()
    x = torch.randn(1, 3, 64, 64)
    info = model.feature_info
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        assert torch.equal(final, model.forward_features(x))
        assert len(inter) == len(info) == 5
        for f, i in zip(inter, info):
            assert f.shape[1] == i['num_chs']
            assert 64 // f.shape[-1] == i['reduction']
        # last-n and explicit indices
        assert len(model.forward_intermediates(x, indices=2, intermediates_only=True)) == 2
        only = model.forward_intermediates(x, indices=[0, 2], intermediates_only=True)
        assert [o.shape[1] for o in only] == [64, 512]
        early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
        assert torch.equal(early[0], inter[1])
        model.set_grad_checkpointing(True)
        final_ckpt, inter_ckpt = model.forward_intermediates(x)
        assert torch.equal(final_ckpt, final)


def test_prune_intermediate_layers():
    model = timm.create_model('resattnet56').eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model.forward_intermediates(x, indices=[1, 2], intermediates_only=True)
    taken = model.prune_intermediate_layers([1, 2])
    assert taken == [1, 2]
    assert len(model.stages) == 2
    assert model.num_classes == 0 and model.num_features == 512
    with torch.no_grad():
        out = model.forward_intermediates(x, indices=[1, 2], intermediates_only=True)
        assert model(x).shape == (1, 512, 8, 8)
    for a, b in zip(ref, out):
        assert torch.equal(a, b)
    getter = timm.create_model('resattnet56', features_only=True, feature_cls='getter', out_indices=(2, 3)).eval()
    with torch.no_grad():
        assert [o.shape[1] for o in getter(x)] == [512, 1024]


def test_group_matcher_covers_all_params():
    model = timm.create_model('resattnet92')
    groups = group_parameters(model, model.group_matcher(coarse=False))
    flat = [n for names in groups.values() for n in names]
    assert sorted(flat) == sorted(n for n, _ in model.named_parameters())
    assert len(groups) > len(model.stages) + 2  # stem, blocks per stage, norm, head
    coarse = group_parameters(model, model.group_matcher(coarse=True))
    assert 4 < len(coarse) < len(groups)


def test_grad_checkpointing_really_checkpoints():
    torch.manual_seed(0)
    model = timm.create_model('resattnet56', num_classes=5).train()
    x = torch.randn(2, 3, 64, 64)

    def run():
        saved = []

        def pack(t):
            saved.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            torch.manual_seed(1)
            out = model(x)
        out.sum().backward()
        grads = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        return out.detach(), grads, sum(saved)

    model.eval()  # deterministic BN so both runs see the same statistics
    out_a, grads_a, saved_a = run()
    model.set_grad_checkpointing(True)
    assert model.grad_checkpointing
    out_b, grads_b, saved_b = run()
    torch.testing.assert_close(out_a, out_b)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-5)
    assert saved_b < saved_a / 4, (saved_a, saved_b)


def test_drop_rate_and_drop_path():
    model = timm.create_model('resattnet56', drop_rate=0.3, drop_path_rate=0.2)
    assert model.head.drop.p == 0.3
    rates = [m.drop_prob for m in model.modules() if m.__class__.__name__ == 'DropPath']
    assert rates and max(rates) == pytest.approx(0.2)
    mask_units_with_drop = [
        n for n, m in model.named_modules() if '.mask.' in n and m.__class__.__name__ == 'DropPath']
    assert not mask_units_with_drop
    x = torch.randn(2, 3, 64, 64)
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    b = model(x)
    assert not torch.equal(a, b)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_unknown_kwarg_is_a_clear_error():
    with pytest.raises(TypeError, match='not_a_field'):
        timm.create_model('resattnet56', not_a_field=3)


SCRIPT_FX_MODELS = ['resattnet56', 'resattnext56', 'resattninc56', 'resattnet56_pcv', 'resattnet92_cifar']


@pytest.mark.parametrize('name', SCRIPT_FX_MODELS)
def test_torchscript(name):
    with set_layer_config(scriptable=True):
        model = timm.create_model(name).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(1, *small_input_size(name))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))
        torch.testing.assert_close(scripted.forward_features(x), model.forward_features(x))
    with pytest.raises(Exception, match='minimum'):
        scripted(torch.randn(1, 3, model.min_input_size - 1, 64))


def _fx_model(model):
    from torchvision.models.feature_extraction import create_feature_extractor
    return create_feature_extractor(
        model,
        train_return_nodes=['head.fc'],
        eval_return_nodes=['head.fc'],
        tracer_kwargs={
            'leaf_modules': list(get_notrace_modules()), 'autowrap_functions': list(get_notrace_functions())},
    )


@pytest.mark.parametrize('name', ['resattnet92', *SCRIPT_FX_MODELS[1:]])
def test_fx_bit_identical(name):
    model = timm.create_model(name, num_classes=10).eval()
    fx_model = _fx_model(model)
    x = torch.randn(1, *small_input_size(name))
    with torch.no_grad():
        assert torch.equal(fx_model(x)['head.fc'], model(x))
    # backward through the traced graph reaches every parameter
    fx_model.train()
    out = fx_model(torch.randn(2, *small_input_size(name)))['head.fc']
    out.mean().backward()
    assert all(p.grad is not None for p in fx_model.parameters())
    # the input-size check survives tracing
    fx_model.eval()
    with pytest.raises(ValueError, match='minimum'):
        fx_model(torch.randn(1, 3, model.min_input_size - 1, 64))


def test_torch_compile_fullgraph():
    """ Dynamo captures the whole forward as one graph (no graph breaks); inductor codegen is left to benchmarks. """
    import torch._dynamo
    torch._dynamo.reset()
    model = timm.create_model('resattnet56', num_classes=10).eval()
    compiled = torch.compile(model, backend='eager', fullgraph=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


def test_deepcopy_and_channels_last():
    model = timm.create_model('resattnet56', num_classes=10).eval()
    ema = copy.deepcopy(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        assert torch.equal(ema(x), ref)
        cl = model.to(memory_format=torch.channels_last)
        out = cl(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_cfg_overrides_are_validated():
    with pytest.raises(ValueError, match='mask_act'):
        timm.create_model('resattnet56', mask_act='softmax')
    with pytest.raises(ValueError, match='mask_type'):
        timm.create_model('resattnet56', mask_type='global')
    with pytest.raises(ValueError, match='stage_modules'):
        timm.create_model('resattnet56', stage_modules=(1, 1))
    assert isinstance(timm.create_model('resattnet56', device='meta'), ResidualAttentionNet)


@pytest.mark.parametrize('mode, kwargs', [('caffe', dict(ceil_mode=True)), ('torch', dict(padding=1))])
def test_cpu_fast_max_pool_is_exact(mode, kwargs):
    from timm_resattn.layers.attention import MaxPool2dCpuFast, create_max_pool
    pool = create_max_pool(mode)
    assert isinstance(pool, MaxPool2dCpuFast)
    ref = nn.MaxPool2d(3, 2, **kwargs)
    for shape in [(2, 8, 56, 56), (1, 16, 57, 31), (1, 4, 2, 3)]:
        x = torch.randn(shape, requires_grad=True)
        out = pool(x)
        assert out.is_contiguous() and torch.equal(out, ref(x))
        out.sum().backward()
        assert x.grad.sum().item() == out.numel()  # each output routes its gradient to exactly one input
        xcl = x.detach().contiguous(memory_format=torch.channels_last)
        assert torch.equal(pool(xcl), ref(xcl))
