""" Bad input on every route a user touches: a clear error naming the argument or file, never a silent wrong
result, never a traceback from a command (issue 10). Model inputs use narrow configs; commands run in-process. """
import json
from pathlib import Path
import os
import stat
import threading
import urllib.error

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import timm
import timm_resattn  # noqa: F401
from helpers import NARROW_IMAGENET
from timm_resattn.analysis.figures import MIN_TILE, _wrap, mask_grid
from timm_resattn.analysis.masks import MaskRecord, MaskRecorder
from timm_resattn.cli import main as cli_main
from timm_resattn.errors import ConfigError, ExportError, ResAttnError, WeightsError
from timm_resattn.export.hub import save_pretrained
from timm_resattn.weights import load_weights, save_state_dict

pytestmark = pytest.mark.usefixtures('one_thread')
CIFAR = 'resattnet56_cifar'


# --- architecture settings: type and range of every ResAttnCfg field -------------------------------------------

@pytest.mark.parametrize('kwargs, field', [
    (dict(attention_residual='false'), 'attention_residual'),  # what --model-kwargs attention_residual=false gives
    (dict(attention_residual=0), 'attention_residual'),
    (dict(stage_modules=1), 'stage_modules'),                  # a scalar where a tuple per stage is expected
    (dict(stage_modules=(1, 1)), 'stage_modules'),             # wrong length
    (dict(stage_modules=(1, -1, 1)), 'stage_modules'),
    (dict(stage_units=(0, 1, 1)), 'stage_units'),
    (dict(stage_strides=(1, 0, 2)), 'stage_strides'),
    (dict(stage_chs=(64, 0, 256)), 'stage_chs'),
    (dict(stage_chs=()), 'stage_chs'),
    (dict(mask_levels=(1, -1, 1)), 'mask_levels'),
    (dict(stage_tail_units=(0, 0)), 'stage_tail_units'),
    (dict(p=-1), 'p'),
    (dict(t=0), 't'),
    (dict(r=0), 'r'),
    (dict(r=1.5), 'r'),
    (dict(groups=0), 'groups'),
    (dict(groups=3), 'groups'),                                # 16 bottleneck channels are not divisible by 3
    (dict(stem_chs=0), 'stem_chs'),
    (dict(bottle_ratio=0.001), 'bottle_ratio'),                # no channel left in the bottleneck
    (dict(bottle_ratio='0.25'), 'bottle_ratio'),
    (dict(mask_act='sigmoid'), 'mask_act'),
    (dict(mask_type='global'), 'mask_type'),
    (dict(max_pool='avg'), 'max_pool'),
    (dict(local_mask_units=(1, 0, 1), mask_type='local'), 'local_mask_units'),
])
def test_every_config_field_is_checked(kwargs, field):
    with pytest.raises(ConfigError, match=field) as e:
        timm.create_model(CIFAR, **kwargs)
    assert isinstance(e.value, ValueError)
    assert 'expected' in str(e.value) or 'needs' in str(e.value), e.value


def test_bool_switch_is_respected():
    model = timm.create_model(CIFAR, attention_residual=False)
    assert model.cfg.attention_residual is False
    assert all(not m.attention_residual for m in model.modules() if hasattr(m, 'attention_residual'))


def test_command_refuses_string_bool(tmp_path, capsys):
    img = tmp_path / 'a.png'
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    assert cli_main(['classify', str(img), '--model', CIFAR, '--model-kwargs', 'attention_residual=false']) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and 'attention_residual' in err and 'Traceback' not in err


@pytest.mark.parametrize('kwarg, needle', [
    ('checkpoint_path=/no/such.pth', 'not an architecture setting'),  # would bypass the checked loader
    ('num_classes=abc', 'num_classes'),
    ('drop_path_rate=2', 'drop_path_rate'),
])
def test_command_refuses_bad_constructor_kwargs(tmp_path, capsys, kwarg, needle):
    img = tmp_path / 'a.png'
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(img)
    assert cli_main(['classify', str(img), '--model', CIFAR, '--model-kwargs', kwarg]) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and needle in err and 'Traceback' not in err, err


def test_constructor_arguments_are_checked():
    for kwargs, field in [(dict(num_classes=-1), 'num_classes'), (dict(in_chans=0), 'in_chans'),
                          (dict(drop_rate=1.5), 'drop_rate'), (dict(num_classes=True), 'num_classes')]:
        with pytest.raises(ConfigError, match=field):
            timm.create_model(CIFAR, **kwargs)


# --- weight files: dtypes, values, and what they were written for ----------------------------------------------

@pytest.fixture(scope='module')
def cifar_weights():
    torch.manual_seed(0)
    return timm.create_model(CIFAR).state_dict()


def test_integer_tensor_refused(cifar_weights, tmp_path):
    sd = dict(cifar_weights)
    sd['stem.conv.weight'] = sd['stem.conv.weight'].round().to(torch.int32)  # would be cast, values lost
    save_file(sd, str(tmp_path / 'w.safetensors'))
    with pytest.raises(WeightsError, match=r'not floating point.*stem\.conv\.weight'):
        load_weights(timm.create_model(CIFAR), tmp_path / 'w.safetensors')


@pytest.mark.parametrize('bad', [float('nan'), float('inf')])
def test_non_finite_refused(cifar_weights, tmp_path, bad):
    sd = dict(cifar_weights)
    sd['head.fc.weight'] = sd['head.fc.weight'].clone()
    sd['head.fc.weight'][0, 0] = bad
    path = tmp_path / 'w.safetensors'
    save_file(sd, str(path))
    with pytest.raises(WeightsError, match=r'NaN or Inf.*head\.fc\.weight'):
        load_weights(timm.create_model(CIFAR), path)
    with pytest.raises(WeightsError, match='NaN or Inf'):  # the pretrained route runs the same checks
        timm.create_model(CIFAR, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def _narrow(name, **kwargs):
    return timm.create_model(name, **NARROW_IMAGENET, **kwargs).eval()


@pytest.mark.parametrize('src, dst', [('resattnet56_pcv', 'resattnet56'), ('resattnet56', 'resattnet56_pcv')])
def test_recorded_architecture_refuses_other_function(tmp_path, src, dst):
    torch.manual_seed(0)
    model = _narrow(src)
    path = save_state_dict(model.state_dict(), tmp_path / 'w.safetensors', metadata=model.weights_metadata())
    target = _narrow(dst)
    with pytest.raises(WeightsError) as e:
        load_weights(target, path)
    msg = str(e.value)
    assert src in msg and dst in msg and 'mask_wiring' in msg and 'max_pool' in msg
    with pytest.raises(WeightsError, match='mask_wiring'):
        timm.create_model(dst, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **NARROW_IMAGENET)
    # the same tensors without metadata (a plain state dict) load as before: same shapes
    plain = tmp_path / 'plain.safetensors'
    save_file(model.state_dict(), str(plain))
    load_weights(target, plain)


def test_recorded_switch_refuses_ablation(tmp_path):
    model = timm.create_model(CIFAR, attention_residual=False)
    path = save_state_dict(model.state_dict(), tmp_path / 'w.safetensors', metadata=model.weights_metadata())
    with pytest.raises(WeightsError, match='attention_residual'):
        load_weights(timm.create_model(CIFAR), path)
    load_weights(timm.create_model(CIFAR, attention_residual=False), path)


# --- commands: one `error:` line, status 2, no traceback ---------------------------------------------------------

@pytest.fixture(scope='module')
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp('img') / 'photo.png'
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (36, 40, 3), dtype=np.uint8)).save(path)
    return path


def _fails(argv, capsys, *needles):
    code = cli_main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith('error: ') and 'Traceback' not in err and len(err.strip().splitlines()) <= 2, err
    for needle in needles:
        assert needle in err, err
    return err


def test_checkpoint_of_another_variant_is_short(image, tmp_path, capsys):
    path = tmp_path / 'a92.safetensors'
    save_file(timm.create_model('resattnet92_cifar').state_dict(), str(path))
    err = _fails(['classify', image, '--model', CIFAR, '--checkpoint', path], capsys,
                 str(path), 'those of resattnet92_cifar')
    assert 'size mismatch' not in err and len(err) < 1500


def test_truncated_and_missing_checkpoint(image, cifar_weights, tmp_path, capsys):
    path = tmp_path / 'w.safetensors'
    save_file(cifar_weights, str(path))
    path.write_bytes(path.read_bytes()[:5000])
    _fails(['classify', image, '--model', CIFAR, '--checkpoint', path], capsys, str(path), 'truncated')
    _fails(['classify', image, '--model', CIFAR, '--checkpoint', tmp_path / 'nope.pth'], capsys,
           'checkpoint not found', 'nope.pth')


@pytest.mark.parametrize('flag', [['--topk', '-3'], ['--topk', '0'], ['--topk', 'x']])
def test_bad_topk(image, capsys, flag):
    code = cli_main(['classify', str(image), '--model', CIFAR, *flag])
    err = capsys.readouterr().err
    assert code == 2 and '--topk' in err and 'Traceback' not in err


def test_pretrained_without_network(image, monkeypatch, capsys):
    import timm.models._builder as builder

    def offline(*args, **kwargs):
        raise urllib.error.URLError('[Errno -3] Temporary failure in name resolution')
    monkeypatch.setattr(builder, 'download_cached_file', offline)
    _fails(['classify', image, '--model', 'resattnet56_pcv', '--pretrained'], capsys, '--pretrained', 'network')


def test_decompression_bomb(tmp_path, capsys, monkeypatch):
    path = tmp_path / 'bomb.png'
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(path)
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 100)  # 4096 px > 2 x 100: Pillow's DecompressionBombError
    _fails(['classify', path, '--model', CIFAR], capsys, str(path))


def test_visualize_never_overwrites_its_input(image, capsys):
    before = image.read_bytes()
    _fails(['visualize', image, '--model', CIFAR, '--out', image], capsys, 'input', '--out')
    assert image.read_bytes() == before


def test_visualize_outputs_must_differ(image, tmp_path, capsys):
    """ --responses naming the --out file (not written yet) would overwrite the mask figure with the bar chart. """
    out = tmp_path / 'fig.png'
    _fails(['visualize', image, '--model', CIFAR, '--out', out, '--responses', out], capsys, '--responses', 'output')
    assert not out.exists()


@pytest.mark.parametrize('command', ['visualize', 'convert'])
def test_output_folder_must_exist(image, tmp_path, capsys, command):
    out = tmp_path / 'missing' / 'out.file'
    if command == 'visualize':
        argv = ['visualize', image, '--model', CIFAR, '--out', out]
    else:
        src = tmp_path / 'in.caffemodel'
        src.write_bytes(b'\x00')
        argv = ['convert', 'caffe', src, out, '--model', 'resattnet56']
    _fails(argv, capsys, 'does not exist', str(out.parent))
    assert not out.parent.exists()


def test_convert_input_must_be_a_readable_file(tmp_path, capsys):
    _fails(['convert', 'caffe', tmp_path, tmp_path / 'o.safetensors', '--model', 'resattnet56'], capsys,
           'IN.caffemodel', 'not a file')


def test_convert_checks_the_model_first(tmp_path, capsys):
    err = _fails(['convert', 'caffe', tmp_path / 'absent.caffemodel', tmp_path / 'o.safetensors', '--model', CIFAR],
                 capsys, 'resattnet56, resattnet92, resattnext56, resattnext92')
    assert 'absent' not in err and 'resattnet452_cifar' not in err


# --- smaller items -----------------------------------------------------------------------------------------------

def test_hub_save_refuses_folded_and_pruned(tmp_path):
    from timm_resattn.analysis.fuse import fuse_bn
    model = timm.create_model(CIFAR).eval()
    with pytest.raises(ExportError, match='fuse_bn'):
        save_pretrained(fuse_bn(model), tmp_path / 'folded')
    pruned = timm.create_model(CIFAR)
    pruned.prune_intermediate_layers(indices=[1])  # drops stages 2-3, the final norm and the head
    with pytest.raises(ExportError, match='prune'):
        save_pretrained(pruned, tmp_path / 'pruned')
    assert not (tmp_path / 'folded').exists() and not (tmp_path / 'pruned').exists()


def test_hub_save_protects_existing_files_and_permissions(tmp_path):
    model = timm.create_model(CIFAR, mask_act='spatial')
    out = tmp_path / 'export'
    out.mkdir()
    (out / 'README.md').write_text('my notes')
    (out / 'other.txt').write_text('keep')
    with pytest.raises(ExportError, match='README.md'):
        save_pretrained(model, out)
    assert (out / 'README.md').read_text() == 'my notes'
    save_pretrained(model, out, overwrite=True)
    assert (out / 'other.txt').read_text() == 'keep'
    umask = os.umask(0)
    os.umask(umask)
    for name in ('config.json', 'model.safetensors', 'README.md'):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o644 & ~umask, name
    assert json.loads((out / 'config.json').read_text())['model_args']['mask_act'] == 'spatial'
    with pytest.raises(WeightsError, match='mask_act'):  # the export records what it computes
        load_weights(timm.create_model(CIFAR), out / 'model.safetensors')
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')]  # no temporary folder left


def test_mask_recorder_belongs_to_its_thread():
    model = timm.create_model(CIFAR, stage_chs=(16, 32, 64), stem_chs=8).eval()
    inputs = {i: torch.full((1, 3, 32, 32), float(i)) for i in range(4)}
    results, barrier = {}, threading.Barrier(4)

    def work(i):
        with MaskRecorder(model, store_trunk=False) as rec, torch.no_grad():
            barrier.wait()
            for _ in range(3):
                model(inputs[i])
            results[i] = rec.records
    threads = [threading.Thread(target=work, args=(i,)) for i in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with torch.no_grad():
        for i, records in results.items():
            assert len(records) == 3 * 3  # 3 forwards x 3 Attention Modules, none from the other threads
            with MaskRecorder(model, store_trunk=False) as rec:
                model(inputs[i])
            assert torch.equal(records[0].mask, rec.records[0].mask)


def test_cifar_mask_figure_is_readable():
    header = 'resattnet56_cifar (UNTRAINED: random weights, masks meaningless) | soft mask M(x), channel mean'
    records = [MaskRecord(f'stages.{s}.1', s, torch.rand(1, 8, 16 >> s, 16 >> s)) for s in range(3)]
    grid = mask_grid(torch.rand(1, 3, 32, 32), records, ['a_long_image_name.png'], header=header)
    assert grid.width >= 4 * MIN_TILE and grid.height >= MIN_TILE
    from PIL import ImageDraw
    from timm_resattn.analysis.figures import PAD, _font
    lines = _wrap(ImageDraw.Draw(grid), header, grid.width - 2 * PAD, _font(), lines=2)
    assert 'UNTRAINED:' in ' '.join(lines) and not lines[-1].endswith('~')


def test_errors_are_one_family():
    for cls in (ConfigError, WeightsError, ExportError):
        assert issubclass(cls, ResAttnError)


@pytest.mark.parametrize('name, kwargs', [('resattnet56', NARROW_IMAGENET), (CIFAR, {})])
def test_features_only_checks_the_input_size(name, kwargs):
    model = timm.create_model(name, features_only=True, **kwargs).eval()
    full = timm.create_model(name, **kwargs)
    with pytest.raises(ValueError, match=f'minimum {full.min_input_size}x{full.min_input_size}'):
        model(torch.randn(1, 3, full.min_input_size - 1, 64))
    assert len(model(torch.randn(1, 3, full.min_input_size, full.min_input_size))) == len(full.feature_info)


def test_hub_export_keeps_output_stride(tmp_path):
    model = timm.create_model('resattnet56', output_stride=16, **NARROW_IMAGENET).eval()
    out = save_pretrained(model, tmp_path / 'os16')
    assert json.loads((out / 'config.json').read_text())['model_args']['output_stride'] == 16
    back = timm.create_model(f'local-dir:{out}', pretrained=True).eval()
    assert back.feature_info[-1]['reduction'] == 16
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)


# --- every command's outputs against all of its inputs (issue 17) ----------------------------------------------

@pytest.fixture()
def cifar_checkpoint(cifar_weights, tmp_path):
    path = tmp_path / 'w.safetensors'
    save_file(cifar_weights, str(path))
    return path


def test_visualize_out_symlinked_to_the_checkpoint(image, cifar_checkpoint, tmp_path, capsys):
    link = tmp_path / 'fig.png'
    link.symlink_to(cifar_checkpoint)
    before = cifar_checkpoint.read_bytes()
    _fails(['visualize', image, '--model', CIFAR, '--checkpoint', cifar_checkpoint, '--out', link], capsys,
           '--out', '--checkpoint', 'refusing to overwrite')
    assert cifar_checkpoint.read_bytes() == before and link.is_symlink()


def test_visualize_responses_hard_linked_to_the_checkpoint(image, cifar_checkpoint, tmp_path, capsys):
    link = tmp_path / 'chart.png'
    os.link(cifar_checkpoint, link)
    before = cifar_checkpoint.read_bytes()
    _fails(['visualize', image, '--model', CIFAR, '--checkpoint', cifar_checkpoint, '--out', tmp_path / 'fig.png',
            '--responses', link], capsys, '--responses', '--checkpoint')
    assert cifar_checkpoint.read_bytes() == before and not (tmp_path / 'fig.png').exists()


def test_export_force_never_replaces_the_checkpoint(cifar_checkpoint, tmp_path, capsys, monkeypatch):
    """ ``./w.safetensors`` and ``w.safetensors`` name one file: --force replaces earlier outputs, not inputs. """
    monkeypatch.chdir(tmp_path)
    before = cifar_checkpoint.read_bytes()
    _fails(['export', 'onnx', './' + cifar_checkpoint.name, '--model', CIFAR, '--checkpoint', cifar_checkpoint.name,
            '--force'], capsys, 'OUT.onnx', '--checkpoint')
    assert cifar_checkpoint.read_bytes() == before


def test_convert_force_never_replaces_a_hard_linked_input(tmp_path, capsys):
    src = tmp_path / 'in.caffemodel'
    src.write_bytes(b'\x00' * 16)
    os.link(src, tmp_path / 'out.safetensors')
    _fails(['convert', 'caffe', src, tmp_path / 'out.safetensors', '--model', 'resattnet56', '--force'], capsys,
           'OUT.safetensors', 'IN.caffemodel')
    assert src.read_bytes() == b'\x00' * 16


@pytest.mark.parametrize('command', ['visualize', 'export'])
def test_unwritable_output_folder_is_refused_before_any_work(image, tmp_path, capsys, monkeypatch, command,
                                                             unwritable_dir):
    import timm_resattn.cli.common as common

    def no_model(*args, **kwargs):
        raise AssertionError('the model was built before the output folder was checked')
    monkeypatch.setattr(common, 'create_model', no_model)
    if command == 'visualize':
        argv = ['visualize', image, '--model', CIFAR, '--out', '/sys/masks.png']
    else:
        argv = ['export', 'onnx', '/sys/net.onnx', '--model', CIFAR]
    _fails(argv, capsys, "can't write into the folder '/sys'")


# --- the device: one check, against what the machine has -------------------------------------------------------

def test_parse_device_against_the_device_count():
    from timm_resattn.cli.common import parse_device
    from timm_resattn.errors import CommandError
    assert parse_device('cpu') == torch.device('cpu')
    assert parse_device('cuda:1', device_count=2) == torch.device('cuda', 1)
    assert parse_device('cuda', device_count=1) == torch.device('cuda')
    for text, count, needle in (('cuda:2', 2, 'cuda:0..cuda:1'), ('cuda', 0, 'not available'),
                                ('cuda:0', 0, 'not available'), ('meta', 1, "'meta' device"),
                                ('xla', 1, "'xla' device"), ('gpu', 1, 'not a device'), ('cuda:-1', 4, 'device')):
        with pytest.raises(CommandError, match=needle):
            parse_device(text, device_count=count)


@pytest.mark.parametrize('device, needle', [('cuda:7', 'cuda'), ('xpu', 'xpu'), ('meta', 'meta')])
def test_visualize_device_checked_before_anything_is_read(image, tmp_path, capsys, monkeypatch, device, needle):
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    _fails(['visualize', tmp_path / 'absent.png', '--model', CIFAR, '--out', tmp_path / 'o.png', '--device', device],
           capsys, '--device', needle)
    assert not (tmp_path / 'o.png').exists()


# --- numeric flags: a range a real run can use ----------------------------------------------------------------

@pytest.mark.parametrize('argv, flag', [
    (['visualize', '{image}', '--model', CIFAR, '--out', '{out}', '--img-size', '100000'], '--img-size'),
    (['visualize', '{image}', '--model', CIFAR, '--out', '{out}', '--alpha', 'nan'], '--alpha'),
    (['export', 'onnx', '{out}', '--model', CIFAR, '--max-size', '65536'], '--max-size'),
    (['export', 'onnx', '{out}', '--model', CIFAR, '--opset', '99'], '--opset'),
    (['classify', '{image}', '--model', CIFAR, '--topk', str(2 ** 64)], None),
])
def test_numeric_flags_have_ranges(image, tmp_path, capsys, argv, flag):
    argv = [a.format(image=image, out=tmp_path / 'o.onnx') for a in argv]
    if flag is None:  # a huge --topk is fine: it prints every class
        assert cli_main(argv) == 0
        return
    code = cli_main(argv)
    err = capsys.readouterr().err
    assert code == 2 and err.startswith('error: ') and flag in err and 'Traceback' not in err, err
    assert not (tmp_path / 'o.onnx').exists()


# --- the model a command built against its own input ----------------------------------------------------------

@pytest.mark.parametrize('command, kwargs, needle', [
    ('classify', ['in_chans=4'], '4-channel'),
    ('visualize', ['in_chans=1'], '1-channel'),
    ('classify', ['mask_levels=(4, 4, 4)'], 'at least 61x61'),  # resattnet56_cifar's data config is 32 px
    ('visualize', ['mask_levels=(4, 4, 4)'], 'at least 61x61'),
])
def test_model_checked_against_the_input(image, tmp_path, capsys, command, kwargs, needle):
    argv = [command, image, '--model', CIFAR, '--model-kwargs', *kwargs]
    if command == 'visualize':
        argv += ['--out', tmp_path / 'o.png']
    _fails(argv, capsys, '--model-kwargs', needle)
    assert not (tmp_path / 'o.png').exists()


def test_classify_needs_a_classifier(image, capsys):
    _fails(['classify', image, '--model', CIFAR, '--model-kwargs', 'num_classes=0'], capsys, 'num_classes=0')


# --- images: scaled by their bit depth, or refused by mode ------------------------------------------------------

def _grey_ramp(dtype, high):
    return (np.linspace(0, 1, 32 * 32).reshape(32, 32) * high).astype(dtype)


def test_open_image_scales_16_bit_and_float_images(tmp_path):
    from timm_resattn.cli.common import open_image
    ramp8 = np.rint(np.linspace(0, 1, 32 * 32).reshape(32, 32) * 255)
    cases = {
        'png16.png': Image.fromarray(_grey_ramp(np.uint16, 65535)),                       # I;16
        'big_endian.tif': Image.frombytes('I;16B', (32, 32), _grey_ramp(np.uint16, 65535).astype('>u2').tobytes()),
        'int32.tif': Image.fromarray(_grey_ramp(np.int32, 65535), mode='I'),              # I holding 16 bits
        'float.tif': Image.fromarray(_grey_ramp(np.float32, 1.0), mode='F'),
    }
    for name, im in cases.items():
        im.save(tmp_path / name)
        rgb = np.asarray(open_image(str(tmp_path / name)))
        assert rgb.shape == (32, 32, 3) and rgb.dtype == np.uint8, name
        assert np.abs(rgb[..., 0].astype(float) - ramp8).max() <= 1, name  # Pillow's convert gave 255 or 0..1


@pytest.mark.parametrize('name, make, needle', [
    ('float255.tif', lambda: Image.fromarray(_grey_ramp(np.float32, 255.0), mode='F'), "'F'"),
    ('negative.tif', lambda: Image.fromarray(_grey_ramp(np.int32, 65535) - 5, mode='I'), "'I'"),
    ('lab.tif', lambda: Image.new('LAB', (8, 8)), "'LAB'"),
])
def test_open_image_refuses_modes_it_cannot_convert(tmp_path, capsys, name, make, needle):
    path = tmp_path / name
    make().save(path)
    _fails(['classify', path, '--model', CIFAR], capsys, str(path), needle)


# --- second probe: outputs that exist, repeated flags, placement, long names, frames, layouts ---------------------

@pytest.mark.parametrize('flag', ['--out', '--responses'])
def test_visualize_never_replaces_an_existing_file_without_force(image, tmp_path, capsys, flag):
    """ Any file at an output path (here a text file) survives unless --force is given, like convert and export. """
    notes = tmp_path / 'notes.txt'
    notes.write_text('mine')
    argv = ['visualize', image, '--model', CIFAR, '--out', tmp_path / 'masks.png']
    argv = [notes if a == tmp_path / 'masks.png' and flag == '--out' else a for a in argv]
    if flag == '--responses':
        argv += ['--responses', notes]
    _fails(argv, capsys, flag, 'exists', '--force')
    assert notes.read_text() == 'mine'
    assert cli_main([str(a) for a in argv + ['--force']]) == 0
    assert notes.read_bytes()[:4] == b'\x89PNG'


def test_model_kwargs_given_twice_are_joined(image, capsys):
    """ A second --model-kwargs flag adds to the first (it used to replace it silently): an unknown key in the first
    is still refused, and a key given once per flag counts as given twice. """
    _fails(['classify', image, '--model', CIFAR, '--model-kwargs', 'foo=1', '--model-kwargs',
            'attention_residual=False'], capsys, 'foo')
    _fails(['classify', image, '--model', CIFAR, '--model-kwargs', 'p=1', '--model-kwargs', 'p=2'], capsys,
           'p is given twice')
    from timm_resattn.cli.common import parse_model_kwargs
    from timm_resattn.cli import build_parser
    args = build_parser().parse_args(['classify', 'x.png', '--model', CIFAR, '--model-kwargs', 'p=2',
                                      '--model-kwargs', 'attention_residual=False'])
    assert parse_model_kwargs(args.model_kwargs) == dict(p=2, attention_residual=False)


@pytest.mark.parametrize('item, needle', [
    ("device='cuda'", 'the command places the model itself'),
    ("device='meta'", 'the command places the model itself'),
    ('dtype=None', 'the command places the model itself'),
    ("scriptable='yes'", "scriptable='yes' is invalid: expected True or False"),
    ('exportable=5', 'exportable=5 is invalid'),
])
def test_model_kwargs_placement_and_timm_switches(image, capsys, item, needle):
    _fails(['classify', image, '--model', CIFAR, '--model-kwargs', item], capsys, '--model-kwargs', needle)


def test_model_that_does_not_fit_in_memory(image, capsys, monkeypatch):
    """ An allocation failure while building is a user's setting (a huge width), not a traceback. """
    def oom(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:119] . DefaultCPUAllocator: can't allocate memory")
    monkeypatch.setattr(timm, 'create_model', oom)
    _fails(['classify', image, '--model', CIFAR], capsys, 'does not fit in memory')


@pytest.mark.parametrize('command', ['visualize', 'export'])
@pytest.mark.parametrize('name_len', [252, 300])
def test_output_name_too_long_is_refused_before_work(image, tmp_path, capsys, monkeypatch, command, name_len):
    """ A file name longer than the file system allows fails before the model is built (it used to fail when
    written, after the export, or in the temporary name atomic_write derived from it). """
    from timm_resattn.cli import common
    monkeypatch.setattr(common, 'create_model', None)  # building the model would be a TypeError: a traceback
    out = tmp_path / ('x' * name_len + ('.png' if command == 'visualize' else '.onnx'))
    argv = (['visualize', image, '--model', CIFAR, '--out', out] if command == 'visualize'
            else ['export', 'onnx', out, '--model', CIFAR])
    _fails(argv, capsys, 'bytes long', 'this file system allows')


def test_atomic_write_takes_any_name_the_file_system_allows(tmp_path):
    from timm_resattn.weights import atomic_write
    path = tmp_path / ('y' * 250)
    atomic_write(path, lambda tmp: Path(tmp).write_text('ok'))
    assert path.read_text() == 'ok' and [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize('fmt, ext', [('GIF', 'gif'), ('PNG', 'png'), ('WEBP', 'webp'), ('TIFF', 'tif')])
def test_multi_frame_images_are_refused(tmp_path, capsys, fmt, ext):
    """ An animation (GIF, APNG, WebP) or a multi-page TIFF: which frame is meant is not the command's guess. """
    frames = [Image.fromarray(np.full((40, 40, 3), v, np.uint8)) for v in (0, 128, 255)]
    path = tmp_path / f'anim.{ext}'
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:])
    _fails(['classify', path, '--model', CIFAR], capsys, 'holds 3 frames', str(path))


@pytest.mark.parametrize('layout', ['sparse_coo', 'sparse_csr'])
def test_sparse_tensors_are_refused(cifar_weights, tmp_path, capsys, image, layout):
    sd = dict(cifar_weights)
    sd['head.fc.weight'] = sd['head.fc.weight'].to_sparse() if layout == 'sparse_coo' else \
        sd['head.fc.weight'].to_sparse_csr()
    path = tmp_path / 'sparse.pth'
    torch.save(sd, path)
    with pytest.raises(WeightsError, match=f'not dense .*head.fc.weight: {layout}'):
        load_weights(timm.create_model(CIFAR), path)
    _fails(['classify', image, '--model', CIFAR, '--checkpoint', path], capsys, 'not dense')


@pytest.mark.parametrize('sizes, needle', [
    (['--min-size', '64', '--max-size', '32'], '--max-size 32 is below --min-size 64'),
    (['--max-size', '2'], '--min-size/--max-size: max_size must be an integer >= min_size'),  # the model's minimum
])
def test_export_size_range_names_its_flags(tmp_path, capsys, sizes, needle):
    pytest.importorskip('onnx')
    out = tmp_path / 'm.onnx'
    _fails(['export', 'onnx', out, '--model', CIFAR, *sizes], capsys, needle)
    assert not out.exists()
