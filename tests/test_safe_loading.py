""" Safe weight loading: safetensors / weights_only pickles, refused code-executing pickles, clear errors for
corrupt, truncated, mismatched and wrong-architecture files, and the same checks on timm's other loading routes. """
import pickle

import pytest
import torch
from safetensors.torch import save_file

import timm
import timm_resattn  # noqa: F401
from timm_resattn.weights import WeightsError, check_state_dict, load_state_dict_file

NAME = 'resattnet56_cifar'
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
pytestmark = [pytest.mark.filterwarnings('ignore:Detected pickle protocol'), pytest.mark.usefixtures('one_thread')]


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model(NAME).eval()
    with torch.no_grad():  # non-trivial BN statistics
        model.train()(torch.randn(8, 3, 32, 32))
    model.eval()
    d = tmp_path_factory.mktemp('weights')
    sd = model.state_dict()
    paths = dict(safetensors=d / 'w.safetensors', pth=d / 'w.pth', bin=d / 'pytorch_model.bin')
    save_file(sd, str(paths['safetensors']))
    torch.save(sd, paths['pth'])
    torch.save({'epoch': 3, 'state_dict': {f'module.{k}': v for k, v in sd.items()}}, paths['bin'])
    with torch.no_grad():
        out = model(X)
    return model, out, paths


def _load(path, **kwargs):
    return timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs).eval()


@pytest.mark.parametrize('fmt', ['safetensors', 'pth', 'bin'])
def test_file_overlay_loads_each_format(reference, fmt):
    _, out, paths = reference
    model = _load(paths[fmt])
    with torch.no_grad():
        torch.testing.assert_close(model(X), out, rtol=0, atol=0)
    # the tensors (or their stand-in) are not kept in the model's cfg; the file is
    assert 'state_dict' not in model.pretrained_cfg and model.pretrained_cfg['file'] == str(paths[fmt])


def test_safetensors_recognised_by_content(reference, tmp_path):
    _, out, paths = reference
    odd = tmp_path / 'weights.pth'
    odd.write_bytes(paths['safetensors'].read_bytes())
    with torch.no_grad():
        torch.testing.assert_close(_load(odd)(X), out, rtol=0, atol=0)


def test_file_overlay_keeps_adaptation_and_filter(reference):
    ref, _, paths = reference
    # in_chans / num_classes adaptation still runs in timm's load_pretrained
    model = _load(paths['safetensors'], in_chans=1, num_classes=3)
    torch.testing.assert_close(model.stem.conv.weight, ref.stem.conv.weight.sum(dim=1, keepdim=True))
    assert model.get_classifier().out_features == 3
    # features_only: classifier dropped, body loaded
    feats = timm.create_model(
        NAME, pretrained=True, features_only=True, pretrained_cfg_overlay=dict(file=str(paths['bin'])))
    torch.testing.assert_close(feats.stem_conv.weight, ref.stem.conv.weight)
    assert 'state_dict' not in feats.pretrained_cfg


class _WritesMarker:
    """ Unpickling this calls open(marker, 'w'): a stand-in for any code a malicious pickle would run. """

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, 'w')


def _evil_files(reference, tmp_path):
    _, _, _ = reference
    marker = tmp_path / 'pwned'
    sd = {'stem.conv.weight': torch.zeros(1), 'payload': _WritesMarker(marker)}
    zipped = tmp_path / 'evil.pth'
    torch.save(sd, zipped)
    raw2 = tmp_path / 'evil_p2.bin'
    raw2.write_bytes(pickle.dumps(sd, protocol=2))
    raw5 = tmp_path / 'evil_p5.pt'
    raw5.write_bytes(pickle.dumps(sd, protocol=5))
    legacy = tmp_path / 'evil_legacy.pth'  # torch.save's pre-1.6 (non-zip) format
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    assert not marker.exists()
    return marker, [zipped, raw2, raw5, legacy]


def test_code_executing_pickle_is_refused(reference, tmp_path):
    marker, files = _evil_files(reference, tmp_path)
    for path in files:
        with pytest.raises(WeightsError) as e:
            _load(path)
        msg = str(e.value)
        assert str(path) in msg and 'Refused' in msg and 'weights_only=True' in msg, msg
        assert 'open' in msg  # names the callable
        with pytest.raises(WeightsError):
            load_state_dict_file(path)
    assert not marker.exists()


def test_code_executing_pickle_refused_by_timm_checkpoint_path(reference, tmp_path):
    """ create_model(checkpoint_path=...) (train.py --initial-checkpoint) and load_checkpoint (validate.py
    --checkpoint) / resume_checkpoint use timm's own loader, which is torch.load(weights_only=True) too. """
    marker, files = _evil_files(reference, tmp_path)
    model = timm.create_model(NAME)
    with pytest.raises(RuntimeError, match='weights_only'):
        timm.create_model(NAME, checkpoint_path=str(files[0]))
    with pytest.raises(Exception):
        timm.models.load_checkpoint(model, str(files[1]))
    with pytest.raises(Exception):
        timm.models.resume_checkpoint(model, str(files[2]))
    assert not marker.exists()


@pytest.mark.parametrize('fmt', ['safetensors', 'pth'])
def test_corrupt_and_truncated_files(reference, tmp_path, fmt):
    _, _, paths = reference
    data = paths[fmt].read_bytes()
    cases = {
        'truncated': data[: len(data) // 2],
        'garbage': bytes(range(256)) * 16 if fmt == 'pth' else b'\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}',
        'empty': b'',
    }
    for what, content in cases.items():
        path = tmp_path / f'{what}.{fmt}'
        path.write_bytes(content)
        with pytest.raises(WeightsError) as e:
            _load(path)
        msg = str(e.value)
        assert str(path) in msg, msg
        assert ('corrupt' in msg or 'empty' in msg), msg
        assert len(msg) < 800, msg


def test_missing_file():
    with pytest.raises(FileNotFoundError, match='not found'):
        _load('/nonexistent/w.safetensors')


def test_not_a_state_dict(tmp_path):
    path = tmp_path / 'list.pth'
    torch.save([torch.zeros(1)], path)
    with pytest.raises(WeightsError, match='not a state dict'):
        _load(path)
    path = tmp_path / 'mixed.pth'
    torch.save({'a': torch.zeros(1), 'b': 3}, path)
    with pytest.raises(WeightsError, match='not tensors'):
        _load(path)


def test_mismatched_keys_and_shapes_summarised(reference, tmp_path):
    ref, _, _ = reference
    sd = dict(ref.state_dict())
    removed = list(sd)[:40]
    for k in removed:
        del sd[k]
    for i in range(12):
        sd[f'extra.{i}.weight'] = torch.zeros(1)
    sd['stages.0.0.conv2.weight'] = torch.zeros(3, 3, 3, 3)
    # BN num_batches_tracked counters may be absent (torch fills them in)
    n_missing = len([k for k in removed if k not in sd and not k.endswith('num_batches_tracked')])
    path = tmp_path / 'mismatch.safetensors'
    save_file(sd, str(path))
    with pytest.raises(WeightsError) as e:
        _load(path)
    msg = str(e.value)
    assert str(path) in msg and NAME in msg
    assert f'{n_missing} missing key(s) (in the model, not in the weights): {removed[0]}' in msg
    assert '12 unexpected key(s)' in msg and 'extra.0.weight' in msg and '(+7 more)' in msg
    assert '1 shape mismatch(es): stages.0.0.conv2.weight: (3, 3, 3, 3) in the weights' in msg
    assert len(msg.splitlines()) <= 8 and len(msg) < 1500, msg


def test_wrong_architecture_is_named(reference, tmp_path):
    torch.manual_seed(1)
    other = timm.create_model('resattnet92_cifar')
    path = tmp_path / 'r92.safetensors'
    save_file(other.state_dict(), str(path))
    with pytest.raises(WeightsError) as e:
        _load(path)
    msg = str(e.value)
    assert str(path) in msg and "those of resattnet92_cifar" in msg, msg
    assert len(msg) < 1500


def test_wrong_imagenet_architecture_is_named():
    """ A resattnext56 state dict checked against resattnet56 (same key count, other shapes), on the meta device. """
    src = timm.create_model('resattnext56', device='meta').state_dict()
    dst = timm.create_model('resattnet56', device='meta')
    with pytest.raises(WeightsError) as e:
        check_state_dict(src, dst, source="weight file 'x.safetensors'")
    msg = str(e.value)
    assert msg.startswith("Can't load weight file 'x.safetensors' into resattnet56 (num_classes=1000):")
    assert 'shape mismatch' in msg and 'those of resattnext56' in msg
    assert len(msg) < 1500


def test_same_arch_other_args_is_explained(reference, tmp_path):
    _, _, paths = reference
    with pytest.raises(WeightsError) as e:
        _load(paths['safetensors'], mask_type='local')
    assert 'default architecture arguments' in str(e.value)


def test_validation_on_other_routes(reference, tmp_path):
    """ The same check runs for a state_dict passed in the cfg and for local-dir:/hf-hub: sources. """
    torch.manual_seed(1)
    sd = timm.create_model('resattnet92_cifar').state_dict()
    with pytest.raises(WeightsError, match='state_dict given in the pretrained cfg'):
        timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(state_dict=sd))
    # a local-dir export whose config.json names another architecture than its weights
    from timm_resattn.export.hub import save_pretrained
    out = save_pretrained(timm.create_model('resattnet92_cifar'), tmp_path / 'export')
    cfg = (out / 'config.json').read_text().replace('"resattnet92_cifar"', f'"{NAME}"')
    (out / 'config.json').write_text(cfg)
    with pytest.raises(WeightsError) as e:
        timm.create_model(f'local-dir:{out}', pretrained=True)
    assert f"Can't load weights in 'local-dir:{out}' into {NAME}" in str(e.value)
    assert 'those of resattnet92_cifar' in str(e.value)


def test_load_weights_not_strict_loads_what_fits(tmp_path):
    """ ``strict=False``: the tensors whose name and shape fit are loaded, the rest keep their init. """
    from timm_resattn.weights import load_weights
    torch.manual_seed(0)
    src = timm.create_model('resattnet56_cifar', num_classes=100)
    sd = dict(src.state_dict(), extra_key=torch.zeros(1))
    save_file(sd, str(tmp_path / 'w.safetensors'))
    torch.manual_seed(1)
    dst = timm.create_model('resattnet56_cifar', num_classes=10)
    fc_before = dst.head.fc.weight.clone()
    with pytest.raises(WeightsError):
        load_weights(dst, tmp_path / 'w.safetensors')
    load_weights(dst, tmp_path / 'w.safetensors', strict=False)
    assert torch.equal(dst.stem.conv.weight, src.stem.conv.weight)
    assert torch.equal(dst.head.fc.weight, fc_before)  # 100 classes don't fit 10: left as initialised


def test_filter_unwraps_like_the_file_route():
    """ ``checkpoint_filter_fn`` (hf-hub / state-dict routes) picks the same entry of a training checkpoint as the
    file routes (EMA weights first, as timm) and strips DDP's and torch.compile's prefixes. """
    from timm_resattn.models.resattnet import checkpoint_filter_fn
    model = timm.create_model('resattnet56_cifar')
    plain = {f'module.{k}': torch.zeros_like(v) for k, v in model.state_dict().items()}
    ema = {f'_orig_mod.{k}': torch.ones_like(v) for k, v in model.state_dict().items()}
    out = checkpoint_filter_fn({'state_dict': plain, 'state_dict_ema': ema, 'epoch': 3}, model)
    assert out.keys() == model.state_dict().keys()
    assert torch.equal(out['stem.conv.weight'], torch.ones_like(model.stem.conv.weight))
