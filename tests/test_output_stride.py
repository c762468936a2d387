""" ``output_stride`` 8/16/32 for dense prediction (timm's ResNet convention: later stages dilate, not stride).

Narrow widths (``stage_chs``) keep every structural choice of the official nets (units, modules, mask levels,
groups) and keep the module fast; inputs are 64 px.
"""
import pytest
import torch
import torch.nn as nn

import timm
import timm_resattn  # noqa: F401  (registers the models)
from timm_resattn.errors import ConfigError

pytestmark = pytest.mark.usefixtures('one_thread')

NAMES = ['resattnet56', 'resattnext56', 'resattninc56']
NARROW = {'stem_chs': 16, 'stage_chs': (64, 128, 256, 512)}
SIZE = 64
REDUCTIONS = {
    32: [2, 4, 8, 16, 32],
    16: [2, 4, 8, 16, 16],
    8: [2, 4, 8, 8, 8],
}


def _create(name, output_stride=None, **kwargs):
    if output_stride is not None:
        kwargs['output_stride'] = output_stride
    return timm.create_model(name, **{**NARROW, **kwargs}).eval()


def _dilations(model):
    """ {module name: (stride, dilation, padding)} of every 3x3 conv. """
    return {
        n: (m.stride[0], m.dilation[0], m.padding[0])
        for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
    }


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('output_stride', [8, 16, 32])
def test_features_only_shapes_and_reductions(name, output_stride):
    model = _create(name, output_stride, features_only=True)
    assert model.feature_info.reduction() == REDUCTIONS[output_stride]
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        feats = model(x)
    assert [tuple(f.shape[-2:]) for f in feats] == [(SIZE // r, SIZE // r) for r in REDUCTIONS[output_stride]]
    assert [f.shape[1] for f in feats] == model.feature_info.channels()


@pytest.mark.parametrize('output_stride', [8, 16, 32])
def test_classification_forward(output_stride):
    for name in NAMES:
        model = _create(name, output_stride, num_classes=7)
        with torch.no_grad():
            features = model.forward_features(torch.randn(2, 3, SIZE, SIZE))
            out = model.forward_head(features)
        assert features.shape[-2:] == (SIZE // output_stride,) * 2
        assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_dilation_schedule():
    """ timm's ResNet rule: the first unit of a dilated stage keeps the previous dilation, the rest take the new one;
    inside Attention Modules the trunk side is dilated and the mask branch is not. """
    convs = _dilations(_create('resattnet56', 8, device='meta'))
    assert convs['stages.1.0.conv2'] == (2, 1, 1)  # stage 1 still strided
    assert convs['stages.2.0.conv2'] == (1, 1, 1)  # first unit of stage 2: stride dropped, previous dilation
    for part in ('pre.0', 'trunk.0', 'trunk.1', 'post.0'):
        assert convs[f'stages.2.1.{part}.conv2'] == (1, 2, 2)
    mask_convs = {v for k, v in convs.items() if k.startswith('stages.2.1.mask.')}
    assert mask_convs == {(1, 1, 1)}
    assert convs['stages.3.0.conv2'] == (1, 2, 2)  # first unit of stage 3: stage 2's dilation
    assert convs['stages.3.1.conv2'] == convs['stages.3.2.conv2'] == (1, 4, 4)
    # the stride-32 layout is untouched by the explicit default
    assert _dilations(_create('resattnet56', 32, device='meta')) == _dilations(_create('resattnet56', device='meta'))


@pytest.mark.parametrize('name', NAMES)
def test_stride32_weights_load_into_dilated_nets(name):
    ref = _create(name, num_classes=5)
    state = ref.state_dict()
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        expected = ref(x)
    for output_stride in (8, 16):
        dilated = _create(name, output_stride, num_classes=5)
        assert {k: v.shape for k, v in dilated.state_dict().items()} == {k: v.shape for k, v in state.items()}
        dilated.load_state_dict(state, strict=True)
        with torch.no_grad():
            assert dilated(x).shape == expected.shape
    # and back: the same tensors in a net built again at 32 give the reference output
    again = _create(name, 32, num_classes=5)
    again.load_state_dict(dilated.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(again(x), expected, rtol=0, atol=0)


def test_pretrained_stride32_file_into_dilated_backbone(tmp_path):
    """ The segmentation workflow: stride-32 weights from a file, ``features_only=True, output_stride=8``. """
    from safetensors.torch import save_file

    ref = _create('resattnet56')
    path = tmp_path / 'resattnet56.safetensors'
    save_file(ref.state_dict(), str(path))
    backbone = timm.create_model(
        'resattnet56', pretrained=True, features_only=True, output_stride=8, out_indices=(1, 4),
        pretrained_cfg_overlay={'file': str(path)}, **NARROW).eval()
    assert backbone.feature_info.reduction() == [4, 8]
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        low, high = backbone(x)
        _, inter = ref.forward_intermediates(x, indices=(1,))
    assert high.shape[-2:] == (SIZE // 8, SIZE // 8)
    torch.testing.assert_close(low, inter[0])  # stage 0 is undilated: the loaded weights give the same features


@pytest.mark.parametrize('name', NAMES)
def test_dilated_trunk_is_the_stride32_net_sampled_densely(name):
    """ With no Attention Module in the dilated stages (the official nets' last stage at 16; stages 2-3 here at 8),
    dilation is exact: the stride-32 features are the dilated net's features at every (32 / output_stride)-th
    position. Wrong dilations or paddings (including first_dilation) break this. """
    x = torch.randn(1, 3, SIZE, SIZE)
    for output_stride, kwargs in ((16, {}), (8, {'stage_modules': (1, 1, 0, 0)})):
        ref = _create(name, features_only=True, **kwargs)
        dilated = _create(name, output_stride, features_only=True, **kwargs)
        dilated.load_state_dict(ref.state_dict(), strict=True)
        with torch.no_grad():
            for r, a, b in zip(REDUCTIONS[32], ref(x), dilated(x)):
                step = r // min(r, output_stride)
                torch.testing.assert_close(b[..., ::step, ::step], a, rtol=1e-5, atol=1e-5 * a.abs().max().item())


def test_dilated_mask_differs_from_stride32():
    """ The undilated mask of a dilated stage sees a different (smaller, in input pixels) context: at 8 the stage-2
    module of the official layout no longer reproduces the stride-32 function on the subsampled grid. """
    x = torch.randn(1, 3, SIZE, SIZE)
    ref = _create('resattnet56', features_only=True, out_indices=(3,))
    dilated = _create('resattnet56', 8, features_only=True, out_indices=(3,))
    dilated.load_state_dict(ref.state_dict(), strict=True)
    with torch.no_grad():
        a, b = ref(x)[0], dilated(x)[0]
    assert not torch.allclose(b[..., ::2, ::2], a, rtol=1e-3, atol=1e-3 * a.abs().max().item())


@pytest.mark.parametrize('name', NAMES)
def test_gradients_flow(name):
    model = _create(name, 8, num_classes=3).train()
    model(torch.randn(2, 3, SIZE, SIZE)).logsumexp(dim=1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if '.mask.' in n)


def test_timm_api_at_output_stride_8():
    """ forward_intermediates, features_only with out_indices, grad checkpointing and FX agree in a dilated net. """
    from torchvision.models.feature_extraction import create_feature_extractor
    from timm.layers import get_notrace_functions, get_notrace_modules

    torch.manual_seed(0)
    model = _create('resattnet56', 8)
    torch.manual_seed(0)
    feats = _create('resattnet56', 8, features_only=True, out_indices=(1, 3, 4))  # same init
    assert feats.feature_info.reduction() == [4, 8, 8]
    x = torch.randn(1, 3, SIZE, SIZE)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x, norm=True)
        assert [tuple(t.shape[-2:]) for t in inter] == [(SIZE // r,) * 2 for r in REDUCTIONS[8]]
        picked = feats(x)
        assert len(picked) == 3
        for a, b in zip(picked, [inter[1], inter[3], inter[4]]):
            torch.testing.assert_close(a, b)
        expected = model(x)
        torch.testing.assert_close(model.forward_head(final), expected)
        tracer_kwargs = {
            'leaf_modules': list(get_notrace_modules()), 'autowrap_functions': list(get_notrace_functions())}
        fx_model = create_feature_extractor(model, return_nodes=['head.fc'], tracer_kwargs=tracer_kwargs)
        assert torch.equal(fx_model(x)['head.fc'], expected)
    model.set_grad_checkpointing(True)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)


def test_min_input_size_follows_the_dilated_layout():
    """ Deep masks in stage 2 need a large input at stride 32 (3 pools from 1/16); dilated to 8 they start from 1/8,
    so the net accepts smaller inputs, and the check still names the right minimum. """
    kwargs = {'stem_chs': 16, 'stage_chs': (32, 64, 128, 256), 'mask_levels': (1, 1, 3, 0)}
    deep32 = _create('resattnet56', **kwargs)
    deep8 = _create('resattnet56', 8, **kwargs)
    assert deep8.min_input_size < deep32.min_input_size
    size = deep8.min_input_size
    with torch.no_grad():
        assert deep8(torch.randn(1, 3, size, size)).shape == (1, 1000)
        with pytest.raises(ValueError, match=f'minimum {size}x{size}'):
            deep8(torch.randn(1, 3, size - 1, size))
        with pytest.raises(ValueError, match='minimum'):
            deep32(torch.randn(1, 3, size, size))
    # official nets: the stage-0 mask binds, so the minimum does not change
    assert {_create('resattnet56', s, device='meta').min_input_size for s in (8, 16, 32)} == {31}


@pytest.mark.parametrize('output_stride', [4, 12, 64, 0, True, '16'])
def test_unsupported_output_stride_is_a_clear_error(output_stride):
    with pytest.raises(ConfigError, match=r'output_stride=.* expected one of \(8, 16, 32\)'):
        timm.create_model('resattnet56', output_stride=output_stride, device='meta')


def test_cifar_nets_refuse_output_stride():
    with pytest.raises(ConfigError, match=r"stem_type='cifar'.*stride 4"):
        timm.create_model('resattnet56_cifar', output_stride=8, device='meta')
    with pytest.raises(ConfigError, match='output_stride=32'):
        timm.create_model('resattnet56_cifar', output_stride=32, device='meta')
    with pytest.raises(ValueError, match='output_stride'):  # ConfigError is a ValueError
        timm.create_model('resattnet92_cifar', features_only=True, output_stride=16, device='meta')


def test_output_stride_must_fit_the_stages():
    # three stages: stride 16 overall, so 32 can't be reached
    with pytest.raises(ConfigError, match='reach only stride 16'):
        timm.create_model(
            'resattnet56', output_stride=32, device='meta', stage_chs=(64, 128, 256), stage_strides=(1, 2, 2),
            stage_units=(1, 1, 1), stage_modules=(1, 1, 0), mask_levels=(1, 1, 0))
    # a stride-4 stage can't be half dilated
    with pytest.raises(ConfigError, match='closest it gets is 4'):
        timm.create_model('resattnet56', output_stride=8, device='meta', stage_strides=(1, 4, 1, 2))
