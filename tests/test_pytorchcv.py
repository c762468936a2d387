""" ``resattnet56_pcv``: pytorchcv's ResAttNet-56, the architecture of the one public ImageNet checkpoint.

pytorchcv (a test dependency) builds the reference network with random weights and random BN statistics; its
state_dict, wrapped as the release is (``{'state_dict': {'module.features...': ...}, 'optimizer': ..., ...}``), goes
through ``checkpoint_filter_fn`` by way of ``timm.create_model(..., pretrained=True)`` and must give pytorchcv's
logits. The released file itself can't be downloaded here.
"""
import pytest
import torch
import torch.nn.functional as F

import timm
import timm_resattn  # noqa: F401
from timm_resattn.models.resattnet import checkpoint_filter_fn
from helpers import rel_norm_err

pcv_resattnet = pytest.importorskip('pytorchcv.models.resattnet')
from pytorchcv.models.common.arch import Hourglass  # noqa: E402

RELEASE_URL = 'https://github.com/phamquiluan/ResidualAttentionNetwork/releases/download/v0.1.0/resattnet56.pth'


@pytest.fixture(scope='module')
def reference():
    """ pytorchcv's resattnet56, random weights, random BN affine and running statistics (eval mode). """
    torch.manual_seed(0)
    net = pcv_resattnet.resattnet56()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            # gammas below 1 keep the 56-layer net's activations O(1), so float32 rounding stays far below 1e-5
            m.weight.data.uniform_(0.2, 0.6)
            m.bias.data.normal_(0, 0.1)
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return net.eval()


@pytest.fixture(scope='module')
def release_file(reference, tmp_path_factory):
    """ A file shaped like the release: the training script's dict, DataParallel ``module.`` names. """
    sd = {'module.' + k: v for k, v in reference.state_dict().items()}
    ckpt = {
        'epoch': 90,
        'arch': 'resattnet56',
        'state_dict': sd,
        'best_acc1': torch.tensor(77.024),
        'optimizer': {'state': {}, 'param_groups': [{'lr': 0.001, 'momentum': 0.9, 'params': [0, 1]}]},
    }
    path = tmp_path_factory.mktemp('pcv') / 'resattnet56.pth'
    torch.save(ckpt, path)
    return path


@pytest.fixture(scope='module')
def ours(release_file):
    return timm.create_model(
        'resattnet56_pcv', pretrained=True, pretrained_cfg_overlay=dict(file=str(release_file))).eval()


@pytest.mark.slow
def test_release_file_gives_pytorchcv_logits_at_224(reference, ours):
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = reference(x)
        out = ours(x)
    assert out.shape == (1, 1000)
    assert rel_norm_err(out, expected) < 1e-5


def test_filter_accepts_release_dict_plain_and_prefixed_state_dicts(reference, release_file, ours):
    """ The URL route hands the filter the raw file (timm's file route unwraps and strips ``module.`` first). """
    raw = torch.load(release_file, map_location='cpu', weights_only=True)
    plain = reference.state_dict()
    prefixed = {'module.' + k: v for k, v in plain.items()}
    expected_keys = set(ours.state_dict())
    results = [checkpoint_filter_fn(sd, ours) for sd in (raw, plain, prefixed, {'model': prefixed})]
    for res in results:
        assert set(res) == expected_keys
        for k, v in res.items():
            assert torch.equal(v, results[0][k])
    out = results[0]
    assert torch.equal(out['stem.conv.weight'], plain['features.init_block.conv.conv.weight'])
    assert torch.equal(out['head.fc.weight'], plain['output.weight'])
    # the deepest mask level: pytorchcv's down3 then up3 are our down.2's two units
    assert torch.equal(out['stages.0.1.mask.down.2.0.conv2.weight'],
                       plain['features.stage1.unit2.hg.down_seq.down3.res_blocks.blocks.block1.body.conv2.conv.weight'])
    assert torch.equal(out['stages.0.1.mask.down.2.1.conv2.weight'],
                       plain['features.stage1.unit2.hg.up_seq.up3.res_blocks.blocks.block1.body.conv2.conv.weight'])
    # skip{m} wraps its unit as skip1; skip1 itself is the trunk
    assert torch.equal(out['stages.0.1.mask.up.0.skip.conv1.weight'],
                       plain['features.stage1.unit2.hg.skip_seq.skip3.skip1.body.conv1.conv.weight'])
    assert torch.equal(out['stages.0.1.trunk.1.norm3.running_var'],
                       plain['features.stage1.unit2.hg.skip_seq.skip1.blocks.block2.body.conv3.bn.running_var'])


def test_own_state_dict_passes_through(ours):
    sd = ours.state_dict()
    out = checkpoint_filter_fn({'state_dict': {'module.' + k: v for k, v in sd.items()}}, ours)
    assert list(out) == list(sd)
    assert all(out[k] is sd[k] for k in sd)


def test_pytorchcv_weights_into_official_net_are_rejected(reference, release_file):
    official = timm.create_model('resattnet56', device='meta')
    with pytest.raises(ValueError, match="resattnet56_pcv"):
        checkpoint_filter_fn(reference.state_dict(), official)
    with pytest.raises(ValueError, match="mask_wiring='official'"):
        timm.create_model('resattnet56', pretrained=True, pretrained_cfg_overlay=dict(file=str(release_file)))


def test_unknown_pytorchcv_key_is_an_error(reference, ours):
    sd = dict(reference.state_dict())
    sd['features.stage1.unit2.hg.extra_seq.weight'] = torch.zeros(1)
    with pytest.raises(ValueError, match='no counterpart'):
        checkpoint_filter_fn(sd, ours)


@pytest.mark.parametrize('size', [72, 97])
def test_sizes_pytorchcv_cannot_run(reference, ours, size, monkeypatch):
    """ pytorchcv's x2 upsampling breaks where a mask map has an odd size (72: 18 -> 9 -> 5 -> 3 -> 6 != 5) and
    its fixed 7x7 average pool wherever the last map isn't 7x7. Ours runs there, and computes what pytorchcv would
    if it resized each upsampled map to the size it is merged with (patched in below), with a global pool.
    """
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        with pytest.raises(RuntimeError):
            reference(x)
        out = ours(x)
        feats = ours.forward_features(x)
    assert out.shape == (1, 1000) and torch.isfinite(out).all()

    monkeypatch.setattr(pcv_resattnet.InterpolationBlock, 'forward', lambda self, t: t)
    monkeypatch.setattr(
        Hourglass, '_merge',
        lambda self, t, y: F.interpolate(t, size=y.shape[-2:], mode='bilinear', align_corners=True) + y,
    )
    with torch.no_grad():
        ref_feats = reference.features[:-1](x)  # all but the fixed 7x7 average pool
        ref_logits = reference.output(ref_feats.mean(dim=(2, 3)))
    assert ref_feats.shape == feats.shape
    assert rel_norm_err(feats, ref_feats) < 1e-5
    assert rel_norm_err(out, ref_logits) < 1e-5


def test_wiring_matters(ours):
    """ The same tensors in the official net compute something else: the variant is not a renaming. """
    official = timm.create_model('resattnet56').eval()
    official.load_state_dict(ours.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert rel_norm_err(official(x), ours(x)) > 1e-2


def test_pretrained_cfg():
    assert timm.list_pretrained('resattnet56_pcv*') == ['resattnet56_pcv.pq_in1k']
    cfg = timm.get_pretrained_cfg('resattnet56_pcv')
    assert cfg.url == RELEASE_URL and cfg.num_classes == 1000
    assert cfg.crop_pct == 0.875 and cfg.interpolation == 'bilinear' and cfg.input_size == (3, 224, 224)
    assert cfg.mean == (0.485, 0.456, 0.406) and cfg.std == (0.229, 0.224, 0.225)
    assert cfg.license == 'unknown'
    notes = ' '.join(cfg.notes)
    assert '77.02' in notes and '93.57' in notes and 'not measured here' in notes


def test_pcv_arch_fields():
    model = timm.create_model('resattnet56_pcv', device='meta')
    assert sum(p.numel() for p in model.parameters()) == 31_810_728
    assert model.stem.pool.padding == 1 and not model.stem.pool.ceil_mode
    assert model.min_input_size == 1  # padded floor-mode pools never shrink a map to nothing
    with pytest.raises(ValueError, match='mask_wiring'):
        timm.create_model('resattnet56', mask_wiring='caffe', device='meta')
    with pytest.raises(ValueError, match='max_pool'):
        timm.create_model('resattnet56', max_pool='avg', device='meta')
