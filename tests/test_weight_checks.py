""" The checks every weight-loading route runs (``timm_resattn.weights.check_weights``), one cause at a time:

* what the weights were written for: the file's metadata, a Hub folder's ``config.json`` and the model must agree,
  on the ``local-dir:`` / ``hf-hub:`` route too, and ``save_pretrained`` never writes a contradicting folder;
* values: finite after the cast to the model's dtype (any floating dtype), BN ``running_var + eps > 0``;
* metadata of the wrong JSON type: refused with a ``WeightsError`` (never a ``TypeError``).

Every file is written here, from narrow CIFAR nets.
"""
import json

import pytest
import torch
from safetensors.torch import save_file

import timm
import timm_resattn  # noqa: F401
from timm_resattn.errors import ExportError, WeightsError
from timm_resattn.export.hub import save_pretrained
from timm_resattn.weights import (
    ARCH_CFG_KEY, ARCHITECTURE_KEY, METADATA_KEY, check_state_dict, check_weights, load_checked, load_weights,
    save_state_dict,
)

from helpers import NARROW_CIFAR

NAME = 'resattnet56_cifar'
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
pytestmark = pytest.mark.usefixtures('one_thread')


def _net(**kwargs):
    torch.manual_seed(0)
    model = timm.create_model(NAME, **NARROW_CIFAR, **kwargs)
    with torch.no_grad():  # non-trivial BN statistics
        model.train()(torch.randn(4, 3, 32, 32))
    return model.eval()


@pytest.fixture(scope='module')
def net():
    return _net()


@pytest.fixture(scope='module')
def folder(net, tmp_path_factory):
    """ A Hub folder exported from the default (narrow) net. """
    return save_pretrained(net, tmp_path_factory.mktemp('hub') / 'default')


def _copy_folder(folder, tmp_path, edit_config=None):
    out = tmp_path / 'copy'
    out.mkdir()
    for f in folder.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    if edit_config is not None:
        cfg = json.loads((out / 'config.json').read_text())
        edit_config(cfg)
        (out / 'config.json').write_text(json.dumps(cfg))
    return out


# ---------------------------------------------------------------------------------------------------------------
# what the weights were written for, on the local-dir: route


@pytest.mark.parametrize('override', [dict(mask_wiring='pytorchcv'), dict(max_pool='torch')])
def test_local_dir_refuses_an_overriding_switch(folder, override):
    """ The same keys and shapes, another function: the file's header and config.json both say so. """
    with pytest.raises(WeightsError) as e:
        timm.create_model(f'local-dir:{folder}', pretrained=True, **override)
    (field, value), = override.items()
    msg = str(e.value)
    assert f'{field}={value!r}' in msg and "written for resattnet56_cifar" in msg


def test_local_dir_loads_with_harmless_overrides(net, folder):
    model = timm.create_model(f'local-dir:{folder}', pretrained=True, memory_efficient=True, drop_rate=0.1).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(X), net(X), rtol=0, atol=0)


@pytest.mark.parametrize('edit', [
    dict(mask_wiring='pytorchcv'),
    dict(max_pool='torch', mask_act='spatial'),
])
def test_local_dir_config_contradicting_the_header(folder, tmp_path, edit):
    """ config.json edited to another net with the same shapes: it contradicts the weights' header. """
    out = _copy_folder(folder, tmp_path, lambda cfg: cfg['model_args'].update(edit))
    with pytest.raises(WeightsError) as e:
        timm.create_model(f'local-dir:{out}', pretrained=True)
    msg = str(e.value)
    assert 'config.json' in msg and 'contradict' in msg
    assert all(f'{k}={v!r}' in msg for k, v in edit.items())


def test_local_dir_without_header_is_checked_against_config(net, tmp_path):
    """ A folder whose weights carry no metadata (written by another tool): config.json still describes the net. """
    out = save_pretrained(net, tmp_path / 'plain')
    save_file(net.state_dict(), str(out / 'model.safetensors'))  # no metadata
    with pytest.raises(WeightsError, match=r"config\.json' describes resattnet56_cifar \(attention_residual=True\)"):
        timm.create_model(f'local-dir:{out}', pretrained=True, attention_residual=False)
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), net(X), rtol=0, atol=0)


def test_local_dir_torch_save_weights_with_metadata(net, tmp_path):
    """ A folder holding a pytorch_model.bin (torch.save dict with the metadata entry) is checked the same way. """
    out = save_pretrained(net, tmp_path / 'bin')
    (out / 'model.safetensors').unlink()
    torch.save({'state_dict': net.state_dict(), METADATA_KEY: net.weights_metadata()}, out / 'pytorch_model.bin')
    (out / 'config.json').write_text((out / 'config.json').read_text().replace(
        '"model_args": {', '"model_args": {"mask_act": "channel", '))
    with pytest.raises(WeightsError, match=r"mask_act='channel'.*mask_act='mixed'"):
        timm.create_model(f'local-dir:{out}', pretrained=True)


@pytest.fixture(scope='module')
def silu_folder(tmp_path_factory):
    return save_pretrained(_net(act_layer='silu'), tmp_path_factory.mktemp('hub') / 'silu')


def test_the_activation_is_recorded_and_checked(net, silu_folder, tmp_path):
    """ ``act_layer`` is a constructor argument, not a config field, and changes the function like ``mask_act``:
    weights written for SiLU are refused by a ReLU net on the file, overlay and local-dir routes; the same
    activation spelled another way (a class instead of a name) loads. """
    weights = silu_folder / 'model.safetensors'
    with pytest.raises(WeightsError, match=r"act_layer='SiLU'.*act_layer='ReLU'"):
        load_weights(_net(), weights)
    with pytest.raises(WeightsError, match=r"act_layer='SiLU'.*act_layer='GELU'"):
        timm.create_model(NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)), act_layer='gelu',
                          **NARROW_CIFAR)
    with pytest.raises(WeightsError, match=r"act_layer='ReLU'"):
        timm.create_model(f'local-dir:{silu_folder}', pretrained=True, act_layer='relu')
    loaded = load_weights(_net(act_layer=torch.nn.SiLU), weights)
    reference = timm.create_model(f'local-dir:{silu_folder}', pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), reference(X), rtol=0, atol=0)


@pytest.mark.parametrize('route', [
    lambda f: dict(pretrained_cfg_overlay=dict(file=f, custom_load=False)),  # timm's own loader asked for
    lambda f: dict(pretrained_cfg=dict(file=f, num_classes=10)),  # a whole pretrained cfg with a file
    lambda f: dict(pretrained_cfg=dict(file=f, num_classes=10, custom_load=False),
                   pretrained_cfg_overlay=dict(mean=(0.5, 0.5, 0.5))),
])
def test_file_routes_always_take_the_checked_loader(tmp_path, route):
    """ However a file is named to ``create_model``, its header is checked (a mask_act='channel' file into the
    default net is refused) and the model's loader reads it. """
    folder = save_pretrained(_net(mask_act='channel'), tmp_path / 'channel')
    with pytest.raises(WeightsError, match=r"mask_act='channel'.*mask_act='mixed'"):
        timm.create_model(NAME, pretrained=True, **route(str(folder / 'model.safetensors')), **NARROW_CIFAR)


def test_local_dir_header_is_read_from_the_file_timm_loads(net, tmp_path):
    """ timm prefers some names (open_clip_model.safetensors) to the first file by name: the header checked is the
    one of the file it loads, not of a decoy sorted before it; our list of names is timm's. """
    from timm.models import _hub
    from timm_resattn.weights import loading
    assert loading._HUB_PREFERRED_FILES == _hub._PREFERRED_FILES
    assert loading._HUB_EXTENSIONS == _hub._EXT_PRIORITY
    out = save_pretrained(_net(mask_act='channel'), tmp_path / 'decoy')
    (out / 'model.safetensors').rename(out / 'open_clip_model.safetensors')
    cfg = json.loads((out / 'config.json').read_text())
    del cfg['model_args']  # the weights' header alone says what they are for
    (out / 'config.json').write_text(json.dumps(cfg))
    save_state_dict(net.state_dict(), out / 'a_decoy.safetensors', metadata=net.weights_metadata())
    with pytest.raises(WeightsError, match=r"open_clip_model\.safetensors.*mask_act='channel'|mask_act='channel'"):
        timm.create_model(f'local-dir:{out}', pretrained=True, **NARROW_CIFAR)


# ---------------------------------------------------------------------------------------------------------------
# save_pretrained never writes a folder whose config.json contradicts the weights' header


@pytest.mark.parametrize('kwargs', [
    dict(model_args=dict(mask_wiring='pytorchcv')),
    dict(model_config=dict(model_args=dict(max_pool='torch'))),  # timm merges these into config.json too
])
def test_save_pretrained_refuses_contradicting_model_args(net, tmp_path, kwargs):
    with pytest.raises(ExportError, match='contradict'):
        save_pretrained(net, tmp_path / 'out', **kwargs)
    assert not (tmp_path / 'out').exists()


def test_save_pretrained_model_args_that_agree(tmp_path):
    model = _net(attention_residual=False)
    out = save_pretrained(model, tmp_path / 'out', model_args=dict(attention_residual=False, drop_rate=0.2))
    loaded = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), model(X), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------------
# values, as the model holds them


def _bad_file(net, tmp_path, edit, dtype=None, metadata=None):
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    edit(sd)
    path = tmp_path / 'w.safetensors'
    save_file(sd, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize('dtype, value, model_dtype', [
    (torch.float8_e4m3fn, float('nan'), torch.float32),  # float8 has no isfinite kernel: checked after the cast
    (torch.float8_e4m3fnuz, float('nan'), torch.float32),
    (torch.bfloat16, 1e6, torch.float16),  # finite in the file, Inf in the float16 model
    (torch.float64, -1e39, torch.float32),
])
def test_non_finite_in_any_floating_dtype(net, tmp_path, dtype, value, model_dtype):
    def edit(sd):
        sd['stem.conv.weight'][0, 0, 0, 0] = value
    path = _bad_file(net, tmp_path, edit, dtype)
    name = str(model_dtype).replace('torch.', '')
    with pytest.raises(WeightsError, match=rf"NaN or Inf values \(after casting to the model's {name}\): "
                                           r"stem\.conv\.weight"):
        load_weights(_net().to(model_dtype), path)


def test_float8_file_loads_when_finite(net, tmp_path):
    path = _bad_file(net, tmp_path, lambda sd: None, torch.float8_e4m3fn)
    model = load_weights(_net(), path)
    assert torch.equal(model.stem.conv.weight, net.stem.conv.weight.to(torch.float8_e4m3fn).float())


def test_value_finite_in_the_file_but_not_in_a_half_model(net, tmp_path):
    """ 7e4 is a float32 value, but Inf in a float16 model. """
    def edit(sd):
        sd['head.fc.bias'][0] = 7e4
    path = _bad_file(net, tmp_path, edit)
    load_weights(_net(), path)  # fine in float32
    with pytest.raises(WeightsError, match=r"float16\): head\.fc\.bias \(torch\.float32 -> torch\.float16\)"):
        load_weights(_net().half(), path)


@pytest.mark.parametrize('var, ok', [
    (-1e-5, False),  # var + eps == 0: 1/sqrt(0)
    (-5e-6, True),  # slightly negative, as the Caffe converter legitimately writes
    (-0.25, False),
])
def test_running_var_plus_eps_must_be_positive(net, tmp_path, var, ok):
    key = 'stages.1.0.norm2.running_var'

    def edit(sd):
        sd[key][3] = var
    path = _bad_file(net, tmp_path, edit)
    if ok:
        load_weights(_net(), path)
        return
    with pytest.raises(WeightsError, match=rf'running_var \+ eps <= 0.*{key}'):
        load_weights(_net(), path)


def test_values_checked_on_every_route(net, tmp_path):
    """ strict=False, a state dict given directly, pretrained_cfg_overlay=dict(file=...), and a local-dir: folder. """
    def edit(sd):
        sd['stages.0.0.norm1.running_var'][0] = -1.0
    path = _bad_file(net, tmp_path, edit)
    with pytest.raises(WeightsError, match='running_var'):
        load_weights(_net(), path, strict=False)
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    sd['stages.2.0.conv1.weight'][0] = float('nan')
    with pytest.raises(WeightsError, match=r'NaN or Inf.*stages\.2\.0\.conv1\.weight'):
        load_checked(_net(), sd)
    with pytest.raises(WeightsError, match=r'NaN or Inf.*stages\.2\.0\.conv1\.weight'):
        timm.create_model(NAME, **NARROW_CIFAR, pretrained=True, pretrained_cfg_overlay=dict(state_dict=sd))
    with pytest.raises(WeightsError, match='running_var'):
        timm.create_model(NAME, **NARROW_CIFAR, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    out = save_pretrained(net, tmp_path / 'folder')
    save_state_dict(_load_file(path), out / 'model.safetensors', net.weights_metadata())
    with pytest.raises(WeightsError, match='running_var'):
        timm.create_model(f'local-dir:{out}', pretrained=True)


def _load_file(path):
    from safetensors.torch import load_file
    return load_file(str(path))


def test_integer_where_the_model_has_floating_is_refused(net, tmp_path):
    def edit(sd):
        sd['stem.conv.weight'] = sd['stem.conv.weight'].round().to(torch.int32)
    with pytest.raises(WeightsError, match=r'not floating point.*stem\.conv\.weight: torch\.int32') as e:
        load_weights(_net(), _bad_file(net, tmp_path, edit))
    sd = _net().state_dict()
    edit(sd)
    with pytest.raises(WeightsError, match='not floating point') as e:
        check_state_dict(sd, _net(), 'the state dict')
    assert str(e.value).count('stem.conv.weight') == 1  # one problem, reported once


# ---------------------------------------------------------------------------------------------------------------
# metadata of the wrong JSON type


def _with_arch_cfg(net, tmp_path, arch_cfg):
    return _bad_file(net, tmp_path, lambda sd: None, metadata={ARCHITECTURE_KEY: NAME, ARCH_CFG_KEY: arch_cfg})


@pytest.mark.parametrize('arch_cfg, match', [
    ('"resattnet56_cifar"', 'expected a JSON object of architecture fields, got a string'),
    ('true', 'expected a JSON object of architecture fields, got a boolean'),
    ('{"attention_residual": "false"}', "attention_residual='false' is invalid: expected True or False"),
    ('{"stage_chs": 16}', 'stage_chs=16 is invalid: expected a tuple'),
    ('{"bottle_ratio": null}', 'bottle_ratio=None is invalid: expected a number'),
    ('{"mask_act": ["mixed"]}', r"mask_act=\['mixed'\] is invalid: expected a string"),
    # equal to the model's values in Python (1 == True, 8.0 == 8), yet of the wrong type
    ('{"attention_residual": 1}', 'attention_residual=1 is invalid: expected True or False'),
    ('{"stem_chs": 8.0}', 'stem_chs=8.0 is invalid: expected an integer'),
    ('{"mask_act": ', 'is not valid JSON'),
    pytest.param('[' * 100000 + ']' * 100000, 'is not valid JSON', id='nested-deeper-than-json-parses'),
    pytest.param('{"mask_act": ' + '{"a": ' * 50000 + '1' + '}' * 50001, 'is not valid JSON', id='deep-object'),
])
def test_metadata_of_the_wrong_type(net, tmp_path, arch_cfg, match):
    path = _with_arch_cfg(net, tmp_path, arch_cfg)
    with pytest.raises(WeightsError, match=match):
        load_weights(_net(), path)


def test_metadata_unknown_fields_are_ignored(net, tmp_path):
    """ A field this version does not know (a file from another version) is not a reason to refuse. """
    fields = json.loads(net.weights_metadata()[ARCH_CFG_KEY])
    path = _with_arch_cfg(net, tmp_path, json.dumps(dict(fields, some_future_switch=3)))
    load_weights(_net(), path)


@pytest.mark.parametrize('metadata, match', [
    ([ARCH_CFG_KEY, '{}'], 'its metadata is list, expected a mapping'),
    (7, 'its metadata is int, expected a mapping'),
    ({ARCHITECTURE_KEY: 56, ARCH_CFG_KEY: '{}'}, f"{ARCHITECTURE_KEY}=56 is invalid: expected a string"),
    ({ARCH_CFG_KEY: {'attention_residual': True}}, f'{ARCH_CFG_KEY}=.* is invalid: expected a non-empty string'),
    pytest.param({ARCH_CFG_KEY: '[' * 100000 + ']' * 100000}, 'is not valid JSON', id='nested-deeper-than-json-parses'),
])
def test_torch_save_metadata_of_the_wrong_type(net, tmp_path, metadata, match):
    path = tmp_path / 'w.pth'
    torch.save({'state_dict': net.state_dict(), METADATA_KEY: metadata}, path)
    with pytest.raises(WeightsError, match=match):
        load_weights(_net(), path)


def test_meta_tensors_hold_no_values(net, tmp_path):
    """ A state dict with a meta tensor (from a model built on the meta device) passes keys and shapes but has
    nothing to load: refused by name, on the state-dict and the file routes. """
    sd = dict(net.state_dict())
    sd['head.fc.weight'] = torch.empty_like(sd['head.fc.weight'], device='meta')
    with pytest.raises(WeightsError, match=r'head\.fc\.weight: a meta tensor, which holds no values'):
        load_checked(_net(), sd)
    meta_net = timm.create_model(NAME, device='meta', **NARROW_CIFAR)
    with pytest.raises(WeightsError, match=r'stem\.conv\.weight: a meta tensor'):
        load_weights(_net(), _saved_torch(meta_net.state_dict(), tmp_path / 'meta.pth'))


def _saved_torch(sd, path):
    torch.save(sd, path)
    return path


def test_wrong_metadata_type_on_the_local_dir_route(net, folder, tmp_path):
    """ The pretrained filter refuses it with a WeightsError too (timm retries a filter that raises TypeError). """
    out = _copy_folder(folder, tmp_path)
    save_state_dict(net.state_dict(), out / 'model.safetensors', {ARCHITECTURE_KEY: NAME, ARCH_CFG_KEY: '[1, 2]'})
    with pytest.raises(WeightsError, match='expected a JSON object of architecture fields, got a list'):
        timm.create_model(f'local-dir:{out}', pretrained=True)


def test_check_weights_is_the_one_entry(net):
    """ A route calling check_weights gets the metadata, structure and value checks in one call. """
    model = _net()
    sd = {k: v.clone() for k, v in net.state_dict().items()}
    check_weights(sd, model, 'sd', net.weights_metadata())
    meta = dict(net.weights_metadata())
    meta[ARCH_CFG_KEY] = meta[ARCH_CFG_KEY].replace('"mask_act": "mixed"', '"mask_act": "channel"')
    with pytest.raises(WeightsError, match="written for resattnet56_cifar"):
        check_weights(sd, model, 'sd', meta)
    sd['head.fc.weight'][0, 0] = float('nan')
    with pytest.raises(WeightsError, match='NaN'):
        check_weights(sd, model, 'sd', net.weights_metadata())


def test_command_refuses_nan_weights(tmp_path, capsys):
    """ ``classify --checkpoint`` with a BN whose running_var + eps <= 0: one error line and status 2, not nan%. """
    import numpy as np
    from PIL import Image

    from timm_resattn.cli import main
    img = tmp_path / 'img.png'
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(img)

    def edit(sd):
        sd['norm.running_var'][:] = -1.0
    path = _bad_file(timm.create_model(NAME), tmp_path, edit)  # the command builds the registered width
    assert main(['classify', str(img), '--model', NAME, '--checkpoint', str(path)]) == 2
    captured = capsys.readouterr()
    assert 'nan%' not in captured.out
    assert captured.err.startswith('error: ') and 'running_var + eps <= 0' in captured.err


def test_not_strict_still_refuses_integers(net, tmp_path):
    """ ``strict=False`` skips the key check, not the dtype and value checks of what it loads. """
    def edit(sd):
        sd['head.fc.weight'] = (sd['head.fc.weight'] * 100).to(torch.int16)
    with pytest.raises(WeightsError, match=r"head\.fc\.weight: torch\.int16, not floating point"):
        load_weights(_net(), _bad_file(net, tmp_path, edit), strict=False)


def test_the_issues_own_examples(net, folder, tmp_path):
    """ The cases named in the issue: mask_act='channel' on a default folder, config.json edited to
    attention_residual=false, save_pretrained(model_args=...) contradicting the header, a float64 1e300, and
    metadata 5 / null / a list. """
    with pytest.raises(WeightsError, match="mask_act='mixed'.*mask_act='channel'"):
        timm.create_model(f'local-dir:{folder}', pretrained=True, mask_act='channel')
    edited = _copy_folder(folder, tmp_path, lambda cfg: cfg['model_args'].update(attention_residual=False))
    with pytest.raises(WeightsError, match='contradict'):
        timm.create_model(f'local-dir:{edited}', pretrained=True)
    with pytest.raises(ExportError, match='contradict'):
        save_pretrained(net, tmp_path / 'contradicting', model_args=dict(attention_residual=False))

    def edit(sd):
        sd['head.fc.weight'][0, 0] = 1e300
    with pytest.raises(WeightsError, match=r'head\.fc\.weight \(torch\.float64 -> torch\.float32\)'):
        load_weights(_net(), _bad_file(net, tmp_path, edit, torch.float64))
    for arch_cfg, kind in (('5', 'a number'), ('null', 'null'), ('[]', 'a list')):
        with pytest.raises(WeightsError, match=f'expected a JSON object of architecture fields, got {kind}'):
            load_weights(_net(), _with_arch_cfg(net, tmp_path, arch_cfg))
