""" Weight sources: the loud failure for missing weights, local files, in_chans/num_classes adaptation, torch.hub. """
import pytest
import torch
from safetensors.torch import save_file

import timm
import timm_resattn  # noqa: F401
from helpers import REPO_ROOT


@pytest.mark.parametrize('name', timm.list_models(module='resattnet'))
def test_pretrained_without_weights_fails_loudly(name):
    if timm.list_pretrained(name):
        pytest.skip('has published weights')
    with pytest.raises(RuntimeError) as e:
        timm.create_model(name, pretrained=True, device='meta')
    msg = str(e.value)
    assert 'No pretrained weights exist' in msg and name in msg
    assert 'pretrained_cfg_overlay=dict(file=' in msg


def test_untrained_tag_is_registered_without_weights():
    assert 'resattnet56.untrained' in timm.list_models(module='resattnet', include_tags=True)
    assert 'resattnet56' not in timm.list_models(module='resattnet', pretrained=True)


@pytest.fixture(scope='module')
def saved_resattnext56(tmp_path_factory):
    torch.manual_seed(0)
    model = timm.create_model('resattnext56').eval()
    path = tmp_path_factory.mktemp('w') / 'resattnext56.safetensors'
    save_file(model.state_dict(), str(path))
    return model, path


def test_load_own_file_through_pretrained_cfg_overlay(saved_resattnext56):
    model, path = saved_resattnext56
    loaded = timm.create_model('resattnext56', pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_load_adapts_in_chans_and_num_classes(saved_resattnext56):
    model, path = saved_resattnext56
    gray = timm.create_model(
        'resattnext56', pretrained=True, in_chans=1, num_classes=5, pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(gray.stem.conv.weight, model.stem.conv.weight.sum(dim=1, keepdim=True))
    assert gray.get_classifier().out_features == 5
    torch.testing.assert_close(gray.stages[2][1].trunk[0].conv2.weight, model.stages[2][1].trunk[0].conv2.weight)
    feats = timm.create_model(
        'resattnext56', pretrained=True, features_only=True, pretrained_cfg_overlay=dict(file=str(path)))
    torch.testing.assert_close(feats.stem_conv.weight, model.stem.conv.weight)


@pytest.mark.parametrize('route', ['file', 'local-dir'])
def test_features_only_loads_a_file_with_another_classifier(tmp_path, route):
    """ A backbone drops the head: a file trained for 100 classes loads into a features_only net whatever its
    classifier (as timm loads features_only weights with num_classes=0); the features are the full net's. """
    from timm_resattn.export.hub import save_pretrained
    torch.manual_seed(0)
    source = timm.create_model('resattnet56_cifar', num_classes=100, stem_chs=8, stage_chs=(16, 32, 64)).eval()
    if route == 'file':
        path = tmp_path / 'c100.pth'
        torch.save(source.state_dict(), path)
        feats = timm.create_model('resattnet56_cifar', pretrained=True, features_only=True, stem_chs=8,
                                  stage_chs=(16, 32, 64), pretrained_cfg_overlay=dict(file=str(path))).eval()
    else:
        folder = save_pretrained(source, tmp_path / 'c100')
        feats = timm.create_model(f'local-dir:{folder}', pretrained=True, features_only=True).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        want = source.forward_intermediates(x, intermediates_only=True, norm=True)
        got = feats(x)
    assert len(got) == len(want) == 4
    for a, b in zip(got, want):
        assert torch.equal(a, b)


def test_torch_hub_local():
    model = torch.hub.load(str(REPO_ROOT), 'resattnet56', source='local', num_classes=10)
    assert model.num_classes == 10 and model.pretrained_cfg['architecture'] == 'resattnet56'
    import importlib.util
    spec = importlib.util.spec_from_file_location('hubconf_under_test', REPO_ROOT / 'hubconf.py')
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    assert hubconf.dependencies == ['torch', 'timm']
    for name in timm.list_models(module='resattnet'):
        assert callable(getattr(hubconf, name)) and getattr(hubconf, name).__doc__
    with pytest.raises(RuntimeError, match='No pretrained weights exist'):
        torch.hub.load(str(REPO_ROOT), 'resattnet92', source='local', pretrained=True)
