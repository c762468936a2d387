""" Tests of timm_resattn.analysis.masks: recording M(x) / T(x) and the mean absolute stage response (paper Fig. 4). """
import math

import pytest
import torch
import torch.nn as nn

import timm
import timm_resattn  # noqa: F401  (registers the models)
from helpers import NARROW_IMAGENET
from timm_resattn.layers.attention import AttentionModule
from timm_resattn.analysis.masks import (
    MaskRecord, MaskRecorder, ResponseRecorder, extract_masks, find_attention_modules, find_stage_modules,
    mean_abs_response, stage_index,
)

IMG = 48  # small input: stem -> 12x12, stages -> 12, 6, 3, 2


def _no_hooks_left(model: nn.Module) -> bool:
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not getattr(m, '_forward_hooks_with_kwargs', {})
        for m in model.modules()
    )


class _SigmoidMask(nn.Module):
    def __init__(self, chs: int):
        super().__init__()
        self.conv = nn.Conv2d(chs, chs, 1)

    def forward(self, x: torch.Tensor, trunk: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(x))


class _ToyNet(nn.Module):
    """ A tiny net laid out like ResidualAttentionNet: ``stages.{s}.{b}`` with one AttentionModule. """

    def __init__(self, chs: int = 4):
        super().__init__()
        self.stages = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, chs, 3, padding=1), nn.BatchNorm2d(chs)),
            nn.Sequential(
                nn.Conv2d(chs, chs, 1),
                AttentionModule(nn.Identity(), nn.Conv2d(chs, chs, 3, padding=1), _SigmoidMask(chs), nn.Identity()),
            ),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x).mean((2, 3))


@pytest.fixture(scope='module')
def model():
    # the full-width resattnet56 runs end to end in tests/test_visualize.py::test_main_untrained
    torch.manual_seed(0)
    return timm.create_model('resattnet56', **NARROW_IMAGENET).eval()


@pytest.fixture(scope='module')
def batch():
    return torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope='module')
def extracted(model, batch):
    """ (reference output, output with extraction, records, each AttentionModule's own output). """
    with torch.no_grad():
        ref = model(batch)
    module_out = {}
    handles = [
        m.register_forward_hook(lambda mod, args, out, name=name: module_out.__setitem__(name, out))
        for name, m in find_attention_modules(model)
    ]
    try:
        out, records = extract_masks(model, batch)
    finally:
        for h in handles:
            h.remove()
    return ref, out, records, module_out


def test_one_record_per_module(model, extracted):
    _, _, records, _ = extracted
    names = [n for n, m in model.named_modules() if isinstance(m, AttentionModule)]
    assert [r.name for r in records] == names == ['stages.0.1', 'stages.1.1', 'stages.2.1']
    assert [r.stage for r in records] == [0, 1, 2]
    assert all(isinstance(r, MaskRecord) for r in records)


def test_shapes_match_feature_maps(model, extracted):
    _, _, records, module_out = extracted
    for r in records:
        info = model.feature_info[r.stage + 1]  # feature_info[0] is the stem
        side = IMG // info['reduction']
        assert r.shape == tuple(r.mask.shape) == (2, info['num_chs'], side, side)
        assert r.trunk.shape == r.mask.shape == module_out[r.name].shape


def test_mask_values_and_detached(extracted):
    _, _, records, _ = extracted
    for r in records:
        assert r.mask.dtype == torch.float32 and not r.mask.requires_grad and not r.trunk.requires_grad
        assert torch.isfinite(r.mask).all() and torch.isfinite(r.trunk).all()
        assert r.mask.min() >= 0 and r.mask.max() <= 1  # 'mixed' activation: sigmoid
        assert r.mask.std() > 0


def test_records_are_m_and_t(model, extracted):
    """ The module output is exactly post((1 + M) * T) of the recorded tensors. """
    _, _, records, module_out = extracted
    modules = dict(model.named_modules())
    with torch.no_grad():
        for r in records:
            rebuilt = modules[r.name].post(torch.addcmul(r.trunk, r.trunk, r.mask))
            torch.testing.assert_close(rebuilt, module_out[r.name], rtol=0, atol=0)


def test_output_unchanged_and_no_hooks_left(model, extracted):
    ref, out, _, _ = extracted
    assert torch.equal(ref, out)
    assert _no_hooks_left(model)


def test_hooks_removed_on_error():
    net = _ToyNet()
    with pytest.raises(KeyError), MaskRecorder(net) as rec, ResponseRecorder(net):
        assert not _no_hooks_left(net)
        raise KeyError('boom')
    assert _no_hooks_left(net)
    assert rec.records == []


def test_recorder_options_and_accumulation():
    net = _ToyNet().eval()
    x = torch.randn(3, 3, 8, 8)
    with MaskRecorder(net, to_cpu=True, store_trunk=False, names=['stages.1.1']) as rec, torch.no_grad():
        net(x)
        net(x[:1])
    assert [(r.name, r.stage, r.shape) for r in rec.records] == [
        ('stages.1.1', 1, (3, 4, 8, 8)), ('stages.1.1', 1, (1, 4, 8, 8))]
    assert all(r.trunk is None and r.mask.device.type == 'cpu' for r in rec.records)
    rec.clear()
    assert rec.records == []
    with pytest.raises(ValueError, match='no Attention Module named'):
        MaskRecorder(net, names=['stages.0.0'])


def test_no_attention_module_error():
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(ValueError, match='no AttentionModule'):
        extract_masks(plain, torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match='no AttentionModule'):
        MaskRecorder(plain)
    with pytest.raises(ValueError, match='no stage modules'):
        mean_abs_response(plain, torch.randn(1, 3, 8, 8))
    assert _no_hooks_left(plain)


def test_stage_index():
    assert stage_index('stages.2.1') == 2
    assert stage_index('stages_3.0') == 3
    assert stage_index('module.stages.1.2') == 1
    assert stage_index('stem.conv') is None


def test_features_only():
    """ features_only nets (FeatureListNet, flattened names): masks and stage responses of one forward. """
    torch.manual_seed(0)
    fm = timm.create_model('resattnet56', features_only=True, **NARROW_IMAGENET).eval()
    assert [name for _, name, _ in find_stage_modules(fm)] == ['stages_0', 'stages_1', 'stages_2', 'stages_3']
    x = torch.randn(1, 3, IMG, IMG, generator=torch.Generator().manual_seed(1))
    with MaskRecorder(fm) as rec, ResponseRecorder(fm) as resp, torch.no_grad():
        feats = fm(x)
    assert _no_hooks_left(fm)
    assert [(r.name, r.stage) for r in rec.records] == [('stages_0.1', 0), ('stages_1.1', 1), ('stages_2.1', 2)]
    for i, r in enumerate(rec.records):
        assert r.shape == r.trunk.shape == feats[i + 1].shape  # feats: stem, stages_0..2, norm
    responses = resp.result()
    assert list(responses) == ['stages.0', 'stages.1', 'stages.2', 'stages.3']
    for s in range(3):
        assert math.isclose(responses[f'stages.{s}'], feats[s + 1].abs().mean().item(), rel_tol=1e-5)


def test_mean_abs_response_batch_and_loader(model):
    batch = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(3))
    by_batch = mean_abs_response(model, batch)
    assert list(by_batch) == ['stages.0', 'stages.1', 'stages.2', 'stages.3']
    assert all(math.isfinite(v) and v > 0 for v in by_batch.values())

    dataset = torch.utils.data.TensorDataset(batch, torch.zeros(len(batch), dtype=torch.long))
    loader = torch.utils.data.DataLoader(dataset, batch_size=1)  # (images, targets), one sample per batch
    by_loader = mean_abs_response(model, loader)
    assert list(by_loader) == list(by_batch)
    for k in by_batch:
        assert math.isclose(by_loader[k], by_batch[k], rel_tol=1e-5)
    assert _no_hooks_left(model)


def test_mean_abs_response_restores_mode_and_stats():
    net = _ToyNet().train()
    bn = net.stages[0][1]
    stats = bn.running_mean.clone()
    images = [torch.randn(2, 3, 8, 8) for _ in range(3)]  # a plain iterable of image batches
    full = mean_abs_response(net, images)
    assert math.isclose(full['stages.0'], sum(
        net.eval().stages[0](im).abs().flatten(1).mean(1).sum().item() for im in images) / 6, rel_tol=1e-5)
    net.train()
    first = mean_abs_response(net, images, max_batches=1)
    assert all(m.training for m in net.modules())
    assert torch.equal(bn.running_mean, stats)
    assert list(full) == list(first) == ['stages.0', 'stages.1']
    with pytest.raises(ValueError, match='no samples'):
        mean_abs_response(net, [])


def test_naive_attention_learning():
    """ attention_residual=False (NAL, paper §4.1): module output is post(M * T); responses still measurable. """
    torch.manual_seed(0)
    nal = timm.create_model('resattnet56', attention_residual=False, **NARROW_IMAGENET).eval()
    x = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(2))
    module_out = {}
    handles = [m.register_forward_hook(lambda mod, a, out, name=name: module_out.__setitem__(name, out))
               for name, m in find_attention_modules(nal)]
    try:
        with MaskRecorder(nal) as rec, ResponseRecorder(nal) as resp, torch.no_grad():
            nal(x)
    finally:
        for h in handles:
            h.remove()
    modules = dict(nal.named_modules())
    with torch.no_grad():
        for r in rec.records:
            torch.testing.assert_close(modules[r.name].post(r.trunk * r.mask), module_out[r.name], rtol=0, atol=0)
    assert len(resp.result()) == 4 and all(math.isfinite(v) and v > 0 for v in resp.result().values())
    assert _no_hooks_left(nal)
