""" Deployment exports (``timm_resattn.export``): torch.export with a dynamic batch/height/width for every registered
net, the export-friendly Caffe max-pool, and an ONNX round trip through onnxruntime.

Exports trace hundreds of ops with symbolic sizes (seconds each on a small CPU), so every registered model is exported
in a shallow form: one unit or Attention Module where it has several (t = r = 1, no pre/post units p = 0: they are the
same residual units as the trunk's; narrow ImageNet widths), every other field (unit type, stem, mask wiring, max-pool,
mask levels, activation) as registered. Models that are the same after that (e.g. the CIFAR family, which differs only
in depth) share one export; ``test_every_model_is_covered`` checks that the shallow forms of all registered models are
exactly the ones exported.
"""
import dataclasses
import os

import pytest
import torch
import torch.nn as nn

import timm
from timm_resattn.errors import CommandError, ConfigError, MissingFileError
from timm_resattn.export import (
    export_min_size, export_onnx, export_program, program_size_range, resolve_size_range, verify_onnx,
)
from timm_resattn.layers.attention import AttentionModule, create_max_pool, max_pool_padded
from timm_resattn.models.resattnet import model_cfgs


def _shallow_kwargs(name):
    """ kwargs of ``timm.create_model(name, ...)`` for the shallow form of a registered net (see module docstring). """
    cfg = model_cfgs[name]
    kw = {
        'stage_units': tuple(1 for _ in cfg.stage_units),
        'stage_modules': tuple(min(m, 1) for m in cfg.stage_modules),
        'p': 0, 't': 1, 'r': 1,
    }
    if cfg.stage_tail_units is not None:
        kw['stage_tail_units'] = tuple(min(n, 1) for n in cfg.stage_tail_units)
    if cfg.stem_type == 'imagenet':
        kw.update(stem_chs=32, stage_chs=(64, 128, 256, 512))
    return kw


def _shallow_cfg(name):
    cfg = model_cfgs[name]
    return dataclasses.replace(cfg, **_shallow_kwargs(name)).validate()


# one registered name per distinct shallow form
EXPORTED = ['resattnet56', 'resattnext56', 'resattninc56', 'resattnet56_pcv', 'resattnet56_cifar']


def test_every_model_is_covered():
    names = timm.list_models(module='resattnet')
    assert len(names) >= 12
    exported = {_shallow_cfg(n) for n in EXPORTED}
    assert len(exported) == len(EXPORTED)  # all distinct
    for name in names:
        assert _shallow_cfg(name) in exported, name


@pytest.mark.parametrize('h', range(1, 41))
def test_max_pool_padded_is_caffe_ceil_mode(one_thread, h):
    """ -inf pad right/bottom + floor mode == nn.MaxPool2d(3, 2, ceil_mode=True), bit for bit, at every size. """
    ref = nn.MaxPool2d(3, 2, ceil_mode=True)
    gen = torch.Generator().manual_seed(h)
    for w in range(1, 41):
        x = torch.randn(2, 3, h, w, generator=gen)  # channels > 1: MaxPool2dCpuFast's channels_last path
        x[0, 0, -1, :] = float('-inf')  # a -inf row/column and a NaN must come through unchanged
        x[1, 1, :, -1] = float('-inf')
        x[1, 2, h // 2, w // 2] = float('nan')
        if h < 2 or w < 2:  # a 1-pixel side has no ceil-mode window that starts inside: both refuse it
            with pytest.raises(RuntimeError):
                ref(x)
            with pytest.raises(RuntimeError):
                max_pool_padded(x, 3, 2, 0, ceil_mode=True)
            continue
        expected = ref(x)
        got = max_pool_padded(x, 3, 2, 0, ceil_mode=True)
        assert got.shape == expected.shape
        assert torch.equal(got.nan_to_num(), expected.nan_to_num()), (h, w)
        assert torch.equal(got.isnan(), expected.isnan())
        # the pytorchcv pool (padding 1, floor) has no rewrite: the same call as nn.MaxPool2d
        torch_pool = create_max_pool('torch')
        assert torch.equal(
            max_pool_padded(x, 3, 2, 1, ceil_mode=False).nan_to_num(),
            nn.MaxPool2d(3, 2, padding=1)(x).nan_to_num())
        assert torch.equal(torch_pool(x).nan_to_num(), nn.MaxPool2d(3, 2, padding=1)(x).nan_to_num())


def test_max_pool_padded_refuses_other_pools():
    with pytest.raises(ValueError, match='3x3/s2'):
        max_pool_padded(torch.randn(1, 1, 8, 8), 2, 2, 0, ceil_mode=True)


@pytest.fixture(scope='module')
def programs(one_thread):
    """ name -> (eager model, ExportedProgram), exported on first use and shared by the tests below. """
    cache = {}

    def get(name):
        if name not in cache:
            torch.manual_seed(0)
            model = timm.create_model(name, num_classes=10, **_shallow_kwargs(name)).eval()
            cache[name] = model, export_program(model, max_size=1024)
        return cache[name]

    return get


@pytest.mark.timeout(120)
@pytest.mark.parametrize('name', EXPORTED)
def test_export_program_dynamic_size(programs, name):
    model, ep = programs(name)
    mod = ep.module()
    lo = export_min_size(model)
    assert lo == (17 if name == 'resattnet56_pcv' else model.min_input_size)  # see export_min_size
    sizes = [(lo, lo), (lo + 2, 2 * lo + 9), (67, 50)]  # the minimum, odd and non-square, even/odd mix
    with torch.no_grad():
        for (h, w), b in zip(sizes, (1, 3, 2)):
            x = torch.randn(b, 3, h, w)
            assert torch.equal(mod(x), model(x)), (h, w, b)
    # the mask branches are in the graph: one mask activation (sigmoid) per Attention Module
    sigmoids = [n for n in ep.graph.nodes if n.op == 'call_function' and 'sigmoid' in str(n.target)]
    assert len(sigmoids) == sum(isinstance(m, AttentionModule) for m in model.modules()) > 0
    # the minimum size is part of the program: a smaller height or width is refused
    for h, w in ((lo - 1, 64), (64, lo - 1)):
        with pytest.raises((AssertionError, RuntimeError), match=r'>= ' + str(lo)):
            mod(torch.randn(1, 3, h, w))
    with pytest.raises((AssertionError, RuntimeError), match='<= 1024'):
        mod(torch.randn(1, 3, 1025, lo))


def test_export_program_bad_arguments():
    model = timm.create_model('resattnet56_cifar', num_classes=10, **_shallow_kwargs('resattnet56_cifar'))
    with pytest.raises(ConfigError, match='eval'):
        export_program(model)
    model.eval()
    lo = model.min_input_size
    with pytest.raises(ConfigError, match=f'min_size={lo - 1} is below the smallest input size {lo}'):
        export_program(model, min_size=lo - 1)
    with pytest.raises(ConfigError, match='max_size'):
        export_program(model, max_size=lo - 1)
    with pytest.raises(ConfigError, match='example_input'):
        export_program(model, example_input=torch.randn(1, 3, lo - 1, 64))
    with pytest.raises(ConfigError, match='min_size'):
        resolve_size_range(timm.create_model('resnet18'))  # a model without min_input_size needs it given
    assert resolve_size_range(timm.create_model('resnet18'), 32, 64) == (32, 64)


@pytest.mark.timeout(180)
def test_onnx_round_trip(programs, tmp_path):
    pytest.importorskip('onnxscript')
    pytest.importorskip('onnxruntime')
    import onnx
    import onnxruntime as ort
    model, ep = programs('resattnet56_cifar')
    lo = export_min_size(model)
    assert program_size_range(ep) == (lo, 1024)
    # with a program, its own range is what the file records (a different max_size argument can't change it)
    path = export_onnx(model, tmp_path / 'net.onnx', program=ep, max_size=512)
    assert sorted(os.listdir(tmp_path)) == ['net.onnx']  # no temporary file left behind
    errors = verify_onnx(path, model, sizes=[(lo, lo), (33, 17), (40, 64), (65, 65)], batch_size=2, threads=1)
    assert max(errors.values()) < 1e-4, errors
    proto = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta['min_input_size'] == str(lo) and meta['max_input_size'] == '1024'
    # the Caffe pools' -inf pads are folded into the MaxPools (fuse_pad_into_max_pool): no Pad op is left
    ops = [n.op_type for n in proto.graph.node]
    assert 'Pad' not in ops and ops.count('MaxPool') == 3
    # ONNX carries no size range: onnxruntime runs a below-minimum input without an error (documented)
    sess = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    out = sess.run(None, {'input': torch.randn(1, 3, lo - 1, lo - 1).numpy()})[0]
    assert out.shape == (1, 10)


def test_onnx_bad_arguments_and_atomic_write(tmp_path, monkeypatch):
    pytest.importorskip('onnxscript')
    import onnx
    from onnx import TensorProto, helper
    model = timm.create_model('resattnet56_cifar', num_classes=10, **_shallow_kwargs('resattnet56_cifar')).eval()
    with pytest.raises(CommandError, match=r'\.onnx'):
        export_onnx(model, tmp_path / 'net.pt')
    with pytest.raises(MissingFileError, match='does not exist'):
        export_onnx(model, tmp_path / 'no_such_dir' / 'net.onnx')
    with pytest.raises(ConfigError, match='opset'):
        export_onnx(model, tmp_path / 'net.onnx', opset=9)
    with pytest.raises(ConfigError, match='min_size'):
        export_onnx(model, tmp_path / 'net.onnx', min_size=model.min_input_size - 1)

    # a failure while writing leaves neither the target nor a temporary file (the export itself is stubbed out)
    class _FakeProgram:
        example_inputs = ((torch.zeros(1, 3, 8, 8),), {})

    class _FakeOnnx:
        model_proto = helper.make_model(helper.make_graph(
            [helper.make_node('Identity', ['input'], ['output'])], 'g',
            [helper.make_tensor_value_info('input', TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info('output', TensorProto.FLOAT, [1])]))

    monkeypatch.setattr(torch.onnx, 'export', lambda *a, **k: _FakeOnnx())

    def failing_save(proto, f, *a, **k):
        with open(f, 'wb') as fh:
            fh.write(b'partial')
        raise OSError('disk full')

    monkeypatch.setattr(onnx, 'save_model', failing_save)
    with pytest.raises(OSError, match='disk full'):
        export_onnx(model, tmp_path / 'net.onnx', program=_FakeProgram())
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    monkeypatch.setattr(torch.onnx, 'export', lambda *a, **k: _FakeOnnx())
    export_onnx(model, tmp_path / 'net.onnx', program=_FakeProgram())
    assert os.listdir(tmp_path) == ['net.onnx']


@pytest.mark.timeout(180)
def test_export_command(tmp_path, capsys, one_thread):
    pytest.importorskip('onnxscript')
    pytest.importorskip('onnxruntime')
    from timm_resattn.cli import main
    from timm_resattn.weights import save_state_dict
    kwargs = _shallow_kwargs('resattnet56_cifar')
    model = timm.create_model('resattnet56_cifar', **kwargs)
    weights = save_state_dict(model.state_dict(), tmp_path / 'w.safetensors', metadata=model.weights_metadata())
    argv = ['export', 'onnx', str(tmp_path / 'net.onnx'), '--model', 'resattnet56_cifar', '--checkpoint', str(weights),
            '--max-size', '64', '--model-kwargs', *[f'{k}={v!r}' for k, v in kwargs.items()]]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert 'wrote' in out and 'H, W in [5, 64]' in out and 'onnxruntime vs eager' in out
    # user errors: one line, status 2 (an existing output without --force; a checkpoint of another architecture)
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith('error: OUT.onnx')
    argv[2], argv[argv.index('--checkpoint') + 1] = str(tmp_path / 'other.onnx'), str(tmp_path / 'missing.pth')
    assert main(argv) == 2
    assert 'checkpoint not found' in capsys.readouterr().err
    assert not (tmp_path / 'other.onnx').exists()
