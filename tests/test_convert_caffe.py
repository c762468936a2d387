""" Tests of the Caffe weights converter (``timm_resattn.convert.caffe``, ``timm-resattn convert caffe``).

The reference (``caffe_reference.py``) is independent of the converter: it regenerates the official deploy graphs
layer by layer and executes them with the Caffe fork's layer semantics, so "converted timm model == Caffe net" is
checked end to end on random blobs. Nets run at small sizes (plus Attention-56 at 224 and Attention-92 at an odd
size, where the Interp ratios are not 2).
"""
import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

import timm
import timm_resattn  # noqa: F401  (registers the models)
from timm_resattn.cli import main
from timm_resattn.convert.caffe import CaffeModelError, caffe_param_map, convert_caffe_blobs, read_caffemodel
from timm_resattn.models.resattnet import ResidualAttentionNet, model_cfgs

from helpers import rel_err
from caffe_reference import (
    OFFICIAL_NETS, encode_blob, encode_caffemodel, encode_layer, encode_net, encode_v1_layer, official_graph,
    param_layers, random_caffe_blobs, run_caffe_net, unknown_fields,
)

OFFICIAL = list(OFFICIAL_NETS)
_KIND = {'Convolution': 'conv', 'BN': 'bn', 'InnerProduct': 'fc'}


# one intra-op thread: on a small shared CPU, OpenMP spin-waiting makes these big convs 10x slower
pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def net56():
    """ Graph and random blobs of the official Attention-56. """
    graph = official_graph('resattnet56')
    return graph, random_caffe_blobs(graph, seed=56)


# --- the name map ---

@pytest.mark.parametrize('variant', OFFICIAL)
def test_param_map_is_the_official_graph(variant):
    """ Every Caffe layer with blobs maps to one module (Caffe order), and the modules cover the whole model. """
    pmap = caffe_param_map(variant)
    layers = param_layers(official_graph(variant))
    assert list(pmap) == [layer.name for layer in layers]
    assert [kind for kind, _ in pmap.values()] == [_KIND[layer.type] for layer in layers]
    modules = [m for _, m in pmap.values()]
    assert len(set(modules)) == len(modules)

    with torch.device('meta'):
        model = ResidualAttentionNet(model_cfgs[variant])
    owners = {k.rsplit('.', 1)[0] for k in model.state_dict()}
    assert owners == set(modules)


def test_param_map_follows_the_config():
    """ A non-official variant in the same naming scheme (more modules, t=1, r=2) still maps completely. """
    cfg = replace(model_cfgs['resattnet56'], stage_modules=(2, 1, 1, 0), t=1, r=2)
    pmap = caffe_param_map(cfg)
    assert 'AttentionA_2/mask/down_sample/res3_4/branch1/conv1_1x1' in pmap  # 2r units at the lowest level
    assert pmap['AttentionA_1/mask/up_sample/res1_1/bn'] == ('bn', 'stages.0.1.mask.up.1.up.1.norm1')
    assert 'AttentionA_1/trunk/res3/branch1/conv1_1x1' not in pmap  # t=1: only trunk/res2
    with torch.device('meta'):
        model = ResidualAttentionNet(cfg)
    assert {k.rsplit('.', 1)[0] for k in model.state_dict()} == {m for _, m in pmap.values()}


@pytest.mark.parametrize('override,match', [
    (dict(p=2), 'p=2'),
    (dict(mask_type='local'), "mask_type='local'"),
    (dict(stem_type='cifar'), "stem_type='cifar'"),
    (dict(stage_units=(2, 1, 1, 3)), 'stage 0: 2 units'),
    (dict(attention_residual=False), 'attention_residual=False'),
    (dict(mask_wiring='pytorchcv'), "mask_wiring='pytorchcv'"),
    (dict(max_pool='torch'), "max_pool='torch'"),
])
def test_param_map_rejects_unofficial_layouts(override, match):
    cfg = replace(model_cfgs['resattnet56'], **override)
    with pytest.raises(ValueError, match='official Caffe naming cannot describe') as e:
        caffe_param_map(cfg)
    assert match in str(e.value)
    with pytest.raises(ValueError, match='unknown model'):
        caffe_param_map('resnet50')


# --- conversion reproduces the Caffe net ---

@pytest.mark.parametrize('variant,sizes,bn_shape,as_tensors', [
    pytest.param('resattnet56', (64, 224), '1c11', False, id='resattnet56', marks=pytest.mark.slow),
    # 100 px: odd maps (25, 13, 7) and Interp ratios other than 2
    pytest.param('resattnet92', (64, 100), '1c', False, id='resattnet92'),
    pytest.param('resattnext56', (64,), 'c', True, id='resattnext56'),
    pytest.param('resattnext92', (64,), '1c11', True, id='resattnext92'),
])
def test_converted_model_matches_caffe(variant, sizes, bn_shape, as_tensors):
    graph = official_graph(variant)
    blobs = random_caffe_blobs(graph, seed=sum(map(ord, variant)), bn_blob_shape=bn_shape)
    if as_tensors:
        blobs = {k: [torch.from_numpy(b) for b in v] for k, v in blobs.items()}
    state_dict = convert_caffe_blobs(blobs, variant)

    model = timm.create_model(variant)
    model.load_state_dict(state_dict, strict=True)
    model.eval()
    for size in sizes:
        x = torch.randn(2 if size < 128 else 1, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            out = model(x)
            ref = run_caffe_net(graph, blobs, x)  # float64 execution of the deploy graph
        assert out.shape == ref.shape == (x.shape[0], 1000)
        assert rel_err(out, ref) < 1e-5, (variant, size)


def test_bn_inv_std_becomes_running_var(net56):
    """ Blob 3 is a stored 1/sqrt(var + eps): running_var = inv_std**-2 - eps, and the BN output is Caffe's. """
    _, blobs = net56
    sd = convert_caffe_blobs(blobs, 'resattnet56')
    scale, shift, mean, inv_std = (torch.from_numpy(b).double().flatten() for b in blobs['conv1/bn'])
    want = (inv_std.pow(-2) - 1e-5).float()
    assert torch.equal(sd['stem.norm.running_var'], want)
    assert torch.equal(sd['stem.norm.weight'], scale.float()) and torch.equal(sd['stem.norm.bias'], shift.float())
    assert torch.equal(sd['stem.norm.running_mean'], mean.float())
    assert sd['stem.norm.num_batches_tracked'].dtype == torch.long

    bn = torch.nn.BatchNorm2d(64, eps=1e-5).eval()
    bn.load_state_dict({k[len('stem.norm.'):]: v for k, v in sd.items() if k.startswith('stem.norm.')})
    x = torch.randn(2, 64, 5, 5)
    caffe = scale.float().view(1, -1, 1, 1) * (x - mean.float().view(1, -1, 1, 1)) * \
        inv_std.float().view(1, -1, 1, 1) + shift.float().view(1, -1, 1, 1)
    torch.testing.assert_close(bn(x), caffe, rtol=1e-5, atol=1e-5)
    # the converted tensors own their memory (no aliasing of the caller's arrays)
    blobs['conv1'][0][0, 0, 0, 0] += 1
    assert sd['stem.conv.weight'][0, 0, 0, 0] != torch.from_numpy(blobs['conv1'][0])[0, 0, 0, 0]
    blobs['conv1'][0][0, 0, 0, 0] -= 1


def test_pycaffe_blob_objects_accepted(net56):
    """ ``net.params`` gives Blob objects with a ``.data`` array. """
    class Blob:
        def __init__(self, data):
            self.data = data

    _, blobs = net56
    sd = convert_caffe_blobs({k: [Blob(b) for b in v] for k, v in blobs.items()}, 'resattnet56')
    assert torch.equal(sd['head.fc.bias'], torch.from_numpy(blobs['classifier'][1]))


# --- errors ---

def test_unknown_and_missing_blobs(net56):
    _, blobs = net56
    extra = dict(blobs, **{f'foo/conv{i}': [np.zeros(1, np.float32)] for i in range(7)})
    with pytest.raises(ValueError) as e:
        convert_caffe_blobs(extra, 'resattnet56')
    msg = str(e.value)
    assert '7 unknown layers' in msg and "'foo/conv0'" in msg and '(2 more)' in msg
    assert 'missing' not in msg

    missing = {k: v for k, v in blobs.items() if k not in ('conv1', 'classifier')}
    with pytest.raises(ValueError, match=r"2 missing layers: 'conv1', 'classifier'"):
        convert_caffe_blobs(missing, 'resattnet56')


def test_wrong_model_is_hinted(net56):
    _, blobs = net56
    with pytest.raises(ValueError) as e:
        convert_caffe_blobs(blobs, 'resattnext56')
    assert 'unknown layers' in str(e.value) and "names are those of 'resattnet56'" in str(e.value)


def test_misshapen_blobs(net56):
    _, blobs = net56
    bad = dict(blobs)
    bad['conv1'] = [blobs['conv1'][0].transpose(1, 0, 2, 3)]
    bad['conv1/bn'] = [b.reshape(-1)[:32] for b in blobs['conv1/bn']]
    bad['classifier'] = [blobs['classifier'][0].T, blobs['classifier'][1]]
    with pytest.raises(ValueError) as e:
        convert_caffe_blobs(bad, 'resattnet56')
    msg = str(e.value)
    assert '6 misshapen blobs' in msg
    assert "'conv1' blob 0 is (3, 64, 7, 7), expected (64, 3, 7, 7)" in msg
    assert "'conv1/bn' blob 0 is (32,), expected (1, 64, 1, 1), (1, 64) or (64,)" in msg
    assert '(1 more)' in msg


def test_wrong_blob_count(net56):
    _, blobs = net56
    bad = dict(blobs)
    bad['conv1'] = blobs['conv1'] + [np.zeros(64, np.float32)]  # a conv bias the official nets do not have
    bad['pre_res_1/bn'] = blobs['pre_res_1/bn'][:3]  # a 3-blob (mean, var, factor) Caffe BatchNorm
    with pytest.raises(ValueError) as e:
        convert_caffe_blobs(bad, 'resattnet56')
    msg = str(e.value)
    assert '2 layers with the wrong number of blobs' in msg
    assert "'conv1' has 2 blobs, expected 1" in msg and "'pre_res_1/bn' has 3 blobs, expected 4" in msg


def test_non_positive_inv_std(net56):
    _, blobs = net56
    bad = dict(blobs)
    inv_std = blobs['conv1/bn'][3].copy()
    inv_std.flat[:2] = (0.0, -1.0)
    bad['conv1/bn'] = blobs['conv1/bn'][:3] + [inv_std]
    with pytest.raises(ValueError, match=r"'conv1/bn' blob 3 \(inv_std.*2 non-positive"):
        convert_caffe_blobs(bad, 'resattnet56')


def _with_blob(blobs, layer, index, edit, dtype=None):
    """ A copy of ``blobs`` where blob ``index`` of ``layer`` is ``edit``ed (on a copy, optionally cast first). """
    bad = dict(blobs)
    blob = blobs[layer][index].astype(dtype or blobs[layer][index].dtype)
    edit(blob)
    bad[layer] = blobs[layer][:index] + [blob] + blobs[layer][index + 1:]
    return bad


@pytest.mark.parametrize('layer, index, value, dtype, match', [
    ('conv1', 0, np.nan, None, r"'conv1' blob 0 \(weights\) has 1 NaN/Inf"),
    ('classifier', 1, np.inf, None, r"'classifier' blob 1 \(bias\) has 1 NaN/Inf"),
    ('conv1/bn', 0, np.nan, None, r"'conv1/bn' blob 0 \(scale\) has 1 NaN/Inf"),
    ('conv1/bn', 2, -np.inf, None, r"'conv1/bn' blob 2 \(mean\) has 1 NaN/Inf"),
    # finite as float64, Inf as the float32 it is stored in
    ('classifier', 0, 1e300, np.float64, r"'classifier' blob 0 \(weights\) has 1 NaN/Inf values \(as float32\)"),
    ('conv1/bn', 1, -1e40, np.float64, r"'conv1/bn' blob 1 \(shift\) has 1 NaN/Inf"),
])
def test_non_finite_blobs_refused(net56, layer, index, value, dtype, match):
    """ A blob that would hold NaN/Inf in the converted state_dict is refused, naming the layer and the blob. """
    _, blobs = net56

    def edit(b):
        b.flat[0] = value
    with pytest.raises(ValueError, match=match):
        convert_caffe_blobs(_with_blob(blobs, layer, index, edit, dtype), 'resattnet56')


@pytest.mark.parametrize('inv_std', [
    1e-30,  # running_var = 1e60: Inf in float32
    1e8,  # running_var = 1e-16 - eps: running_var + eps cancels to 0 in float32, 1/sqrt(0) = Inf
])
def test_inv_std_out_of_float32_range(net56, inv_std):
    """ inv_std > 0 and finite, yet BatchNorm2d would compute 1/sqrt(running_var + eps) = Inf in float32. """
    _, blobs = net56

    def edit(b):
        b.flat[3] = inv_std
    with pytest.raises(ValueError, match=r"'conv1/bn' blob 3 \(inv_std\) has 1 values that give a non-finite"):
        convert_caffe_blobs(_with_blob(blobs, 'conv1/bn', 3, edit, np.float64), 'resattnet56')


def test_slightly_negative_running_var_is_kept(net56):
    """ inv_std a little above 1/sqrt(eps) gives a slightly negative running_var: legitimate, converted as is, and the
    checked loader accepts it (running_var + eps > 0). """
    from timm_resattn.weights import check_weights
    _, blobs = net56

    def edit(b):
        b.flat[0] = 1.01 / math.sqrt(1e-5)
    sd = convert_caffe_blobs(_with_blob(blobs, 'conv1/bn', 3, edit, np.float64), 'resattnet56')
    assert -1e-5 < float(sd['stem.norm.running_var'][0]) < 0
    check_weights(sd, timm.create_model('resattnet56', device='meta'), 'the converted blobs')


# --- .caffemodel reading ---

def test_read_caffemodel_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    conv = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    bn = [rng.standard_normal((1, 4, 1, 1)).astype(np.float32) for _ in range(4)]
    fc_w, fc_b = rng.standard_normal((5, 4)).astype(np.float32), rng.standard_normal(5).astype(np.float32)
    dbl = rng.standard_normal((2, 3))
    legacy = rng.standard_normal((1, 1, 5, 4)).astype(np.float32)
    flat = rng.standard_normal(6).astype(np.float32)
    # one blob's values split over an empty packed chunk, an unpacked run, unknown fields and a packed chunk
    # (repeated fields merge)
    split = (
        encode_blob(np.zeros(0, np.float32), dims=conv.shape)
        + encode_blob(conv.reshape(-1)[:50], shape_format='none', packed=False)
        + unknown_fields(50)
        + encode_blob(conv.reshape(-1)[50:], shape_format='none')
    )

    layers = [
        encode_layer('data', 'Input'),  # no blobs: left out
        encode_layer('conv', 'Convolution', [encode_blob(conv, shape_format='unpacked', packed=False)],
                     extra=unknown_fields()),
        encode_layer('bn', 'BN', [encode_blob(b, extra=unknown_fields(60)) for b in bn]),
        encode_layer('relu', 'ReLU', extra=unknown_fields(70)),
        encode_layer('double', 'Convolution', [encode_blob(dbl, double=True),
                                               encode_blob(dbl, double=True, packed=False)]),
        encode_layer('fc', 'InnerProduct', [encode_blob(fc_w), encode_blob(fc_b, shape_format='legacy')]),
        encode_v1_layer('v1', [encode_blob(legacy, shape_format='legacy'), encode_blob(flat, shape_format='none')],
                        extra=unknown_fields(80)),
        encode_layer('split', 'Convolution', [split]),
    ]
    path = tmp_path / 'tiny.caffemodel'
    path.write_bytes(encode_net('tiny', layers, extra=unknown_fields(200)))

    got = read_caffemodel(path)
    assert list(got) == ['conv', 'bn', 'double', 'fc', 'v1', 'split']

    def same(a, b, dtype=np.float32):
        assert a.dtype == dtype and a.shape == b.shape and np.array_equal(a, b)
        assert a.flags.writeable

    same(got['conv'][0], conv)
    for a, b in zip(got['bn'], bn):
        same(a, b)
    same(got['double'][0], dbl, np.float64)
    same(got['double'][1], dbl, np.float64)
    same(got['fc'][0], fc_w)
    same(got['fc'][1], fc_b.reshape(1, 1, 1, 5))  # legacy blobs are 4-D
    same(got['v1'][0], legacy)
    same(got['v1'][1], flat)
    same(got['split'][0], conv)


def test_read_caffemodel_errors(tmp_path, net56):
    graph, blobs = net56
    small = [layer for layer in graph if layer.name in ('conv1', 'conv1/bn', 'conv1/bn/relu', 'classifier')]
    data = encode_caffemodel(small, blobs)
    path = tmp_path / 'net.caffemodel'
    path.write_bytes(data)
    assert list(read_caffemodel(path)) == ['conv1', 'conv1/bn', 'classifier']

    for cut in (1, 7, len(data) // 2, len(data) - 3):
        path.write_bytes(data[:cut])
        with pytest.raises(CaffeModelError, match='truncated') as e:
            read_caffemodel(path)
        assert str(path) in str(e.value)

    # wire type 7 does not exist; a blob whose shape disagrees with its data; an empty file; a text prototxt
    for bad, match in [
        (data + b'\x0f', 'invalid wire type 7'),
        (encode_net('x', [encode_layer('c', 'Convolution', [encode_blob(np.zeros((2, 3), np.float32))[:-4]])]),
         'layer #0: blob 0: length-delimited field 5 of 24 bytes runs past the end'),
        (b'', 'no layers with blobs'),
        (b'name: "Attention-56"\ninput: "data"\n', str(path)),
    ]:
        path.write_bytes(bad)
        with pytest.raises(CaffeModelError, match=match) as e:
            read_caffemodel(path)
        assert str(path) in str(e.value)
    assert issubclass(CaffeModelError, ValueError)


def test_inconsistent_blob_shape(tmp_path):
    blob = encode_blob(np.zeros((2, 3), np.float32), dims=(2, 4))
    path = tmp_path / 'shape.caffemodel'
    path.write_bytes(encode_net('x', [encode_layer('conv', 'Convolution', [blob])]))
    with pytest.raises(CaffeModelError, match=r"layer #0: blob 0: blob shape \(2, 4\) holds 8 values but .* 6"):
        read_caffemodel(path)


# --- command line ---

@pytest.mark.subprocess
def test_cli_end_to_end(tmp_path, net56):
    """ .caffemodel -> safetensors through ``python -m``, loaded back with timm's pretrained machinery. """
    graph, blobs = net56
    src, dst = tmp_path / 'Attention-56.caffemodel', tmp_path / 'resattnet56.safetensors'
    src.write_bytes(encode_caffemodel(graph, blobs, name='Attention-56'))
    cmd = [sys.executable, '-m', 'timm_resattn', 'convert', 'caffe', str(src), str(dst), '--model', 'resattnet56']
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert str(dst) in proc.stdout and '31,810,728 parameters' in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([src.name, dst.name])  # no temp files left

    model = timm.create_model('resattnet56', pretrained=True, pretrained_cfg_overlay=dict(file=str(dst)))
    want = convert_caffe_blobs(blobs, 'resattnet56')
    got = model.state_dict()
    assert list(got) == list(want)
    assert all(torch.equal(got[k], want[k]) for k in want)

    # refuses to overwrite without --force (status 2, file untouched), overwrites with it
    mtime = dst.stat().st_mtime_ns
    assert main(cmd[3:]) == 2
    assert dst.stat().st_mtime_ns == mtime
    assert main(cmd[3:] + ['--force']) == 0
    src.unlink()  # 2 x 127 MB: do not leave them in pytest's kept temp dirs
    dst.unlink()


def test_cli_errors(tmp_path, capsys):
    src, dst = tmp_path / 'in.caffemodel', tmp_path / 'out.safetensors'
    dst.write_bytes(b'x')
    assert main(['convert', 'caffe', str(src), str(dst), '--model', 'resattnet56']) == 2
    assert 'exists; pass --force' in capsys.readouterr().err

    dst.unlink()
    assert main(['convert', 'caffe', str(src), str(dst), '--model', 'resattnet56']) == 2  # no such input
    assert str(src) in capsys.readouterr().err

    src.write_bytes(encode_net('x', [encode_layer('conv1', 'Convolution', [encode_blob(np.zeros(3, np.float32))])])
                    [:-2])
    assert main(['convert', 'caffe', str(src), str(dst), '--model', 'resattnet56']) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and str(src) in err and 'truncated' in err

    src.write_bytes(encode_net('x', [encode_layer('conv1', 'Convolution', [encode_blob(np.zeros(3, np.float32))])]))
    assert main(['convert', 'caffe', str(src), str(dst), '--model', 'resattnet56']) == 2
    err = capsys.readouterr().err
    assert 'missing layers' in err and "'conv1' blob 0 is (3,)" in err

    assert main(['convert', 'caffe', str(src), str(dst), '--model', 'resnet50']) == 2
    assert 'unknown model' in capsys.readouterr().err
    assert main(['convert', 'caffe', str(src)]) == 2  # argparse: missing arguments
    assert not dst.exists()
