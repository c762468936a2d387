""" Independent reference for the Caffe converter tests.

Nothing here imports the converter or the model code. It provides:

* ``official_graph(variant)``: the layer graph of the authors' deploy files
  (``fwang91/residual-attention-network``, ``imagenet_model/*-deploy.prototxt``), generated layer by layer in file
  order. The graphs were checked once, offline, to equal the published prototxts for all four nets (names, types,
  bottoms, tops and layer parameters; the training-only ``param { lr_mult decay_mult }`` blocks left out), with
  AttentionNeXt-92's broken ``classifier`` bottom ``ave_pool_gather`` read as ``ave_pool``.
* ``random_caffe_blobs(layers)``: random blobs in Caffe order and shapes for every layer with parameters.
* ``run_caffe_net(layers, blobs, x)``: an executor with the Caffe fork's layer semantics (frozen BN with a stored
  inverse std, ceil-mode max pooling, align-corners Interp, ...), written from the Caffe C++ sources.
* A minimal protobuf *encoder* for ``NetParameter`` (the converter has its own decoder).

Copyright the timm-resattn authors, Apache-2.0.
"""
import math
import struct
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    'OFFICIAL_NETS', 'Layer', 'official_graph', 'param_layers', 'random_caffe_blobs', 'run_caffe_net',
    'encode_blob', 'encode_layer', 'encode_v1_layer', 'encode_net', 'encode_caffemodel',
]

# variant -> (unit type, attention modules in stages 1/2/3); the official deploy files, nothing else.
OFFICIAL_NETS = {
    'resattnet56': ('preact', (1, 1, 1)),
    'resattnet92': ('preact', (1, 2, 3)),
    'resattnext56': ('next', (1, 1, 1)),
    'resattnext92': ('next', (1, 2, 3)),
}
_STAGE_CHS = (256, 512, 1024, 2048)
_MASK_LEVELS = (3, 2, 1)


@dataclass
class Layer:
    """ One Caffe layer: ``params`` is the flattened ``*_param`` block with typed values. """
    name: str
    type: str
    bottoms: Tuple[str, ...]
    tops: Tuple[str, ...]
    params: Dict[str, Any] = field(default_factory=dict)


class _GraphBuilder:
    def __init__(self, unit: str):
        self.unit = unit
        self.layers: List[Layer] = []

    def add(self, name, type_, bottoms, tops=None, **params) -> str:
        tops = (name,) if tops is None else tuple(tops)
        self.layers.append(Layer(name, type_, tuple(bottoms), tops, params))
        return tops[0]

    def conv(self, name, bottom, n, k, s=1, p=0, group=1) -> str:
        params = dict(num_output=n, pad=p, kernel_size=k, stride=s, bias_term=False)
        if group != 1:
            params['group'] = group
        return self.add(name, 'Convolution', [bottom], **params)

    def bn(self, bottom, name=None, relu=True) -> str:
        """ ``<bottom>/bn`` (+ in-place ``<bottom>/bn/relu``), the naming of both nets. """
        name = name or f'{bottom}/bn'
        self.add(name, 'BN', [bottom], frozen=True)
        if relu:
            self.add(f'{name}/relu', 'ReLU', [name], [name])
        return name

    def residual_unit(self, u: str, x: str, out_chs: int, stride: int = 1, proj: bool = False) -> str:
        """ A residual unit named ``u`` reading the blob ``x``; returns its output blob (``u``). """
        if self.unit == 'preact':
            width = out_chs // 4
            a = self.bn(x)  # pre-activation: the BN-ReLU named after the unit's input blob
            h = self.conv(f'{u}/branch1/conv1_1x1', a, width, 1)
            h = self.conv(f'{u}/branch1/conv2_3x3', self.bn(h), width, 3, s=stride, p=1)
            h = self.conv(f'{u}/branch1/conv3_1x1', self.bn(h), out_chs, 1)
            if proj:
                sc = self.conv(f'{u}/branch2/conv1_1x1', a, out_chs, 1, s=stride)
                return self.add(u, 'Eltwise', [sc, h], operation='SUM')
            return self.add(u, 'Eltwise', [h, x], operation='SUM')
        width, groups = out_chs // 2, 32
        h = self.conv(f'{u}/branch1/conv1_1x1', x, width, 1)
        h = self.conv(f'{u}/branch1/conv2_3x3', self.bn(h), width, 3, s=stride, p=1, group=groups)
        h = self.conv(f'{u}/branch1/conv3_1x1', self.bn(h), out_chs, 1)
        h = self.bn(h, relu=False)
        if proj:
            sc = self.bn(self.conv(f'{u}/branch2/conv1_1x1', x, out_chs, 1, s=stride), relu=False)
            self.add(u, 'Eltwise', [sc, h], operation='SUM')
        else:
            self.add(u, 'Eltwise', [h, x], operation='SUM')
        self.add(f'{u}/relu', 'ReLU', [u], [u])
        return u

    def max_pool(self, name, bottom) -> str:
        return self.add(name, 'Pooling', [bottom], pool='MAX', kernel_size=3, stride=2)

    def attention_module(self, m: str, x: str, chs: int, levels: int) -> str:
        preact = self.unit == 'preact'
        down, up = ('down_sample', 'up_sample') if preact else ('down', 'up')
        x1 = self.residual_unit(f'{m}/trunk/res1', x, chs)
        t = self.residual_unit(f'{m}/trunk/res2', x1, chs)
        t = self.residual_unit(f'{m}/trunk/res3', t, chs)
        h, feats = x1, []
        for k in range(1, levels + 1):
            h = self.max_pool(f'{m}/mask/{down}/pool{k}_3x3_s2', h)
            h = self.residual_unit(f'{m}/mask/{down}/res{k}_1', h, chs)
            if k == levels:
                h = self.residual_unit(f'{m}/mask/{down}/res{k}_2', h, chs)
            feats.append(h)
        for k in range(levels - 1, 0, -1):
            skip_in = feats[k - 1]
            i = self.add(f'{m}/mask/{up}/interp_{k + 1}', 'Interp', [h, skip_in])
            s = self.residual_unit(f'{m}/mask/skip/res{k}', skip_in, chs)
            merged = self.add(f'{m}/mask/{up}{k}', 'Eltwise', [s, i], operation='SUM')
            h = self.residual_unit(f'{m}/mask/{up}/res{k}_1', merged, chs)
        h = self.add(f'{m}/mask/{up}/interp_1', 'Interp', [h, t])
        if preact:
            h = self.bn(h)
        h = self.conv(f'{m}/mask/linear_1', h, chs, 1)
        h = self.conv(f'{m}/mask/linear_2', self.bn(h), chs, 1)
        mask = self.add(f'{m}/mask', 'Sigmoid', [h])
        prod = self.add(f'{m}_residual' if preact else f'{m}/attention_residual', 'Eltwise', [t, mask],
                        operation='PROD')
        fused = self.add(f'{m}/fusion', 'Eltwise', [prod, t], operation='SUM')
        return self.residual_unit(m, fused, chs)


def official_graph(variant: str) -> List[Layer]:
    """ The layer graph of the official deploy file of ``variant``, in file order. """
    unit, modules = OFFICIAL_NETS[variant]
    g = _GraphBuilder(unit)
    x = g.conv('conv1', 'data', 64, 7, s=2, p=3)
    x = g.max_pool('pool1_3x3_s2', g.bn(x))
    for s, (chs, n) in enumerate(zip(_STAGE_CHS[:3], modules)):
        x = g.residual_unit(f'pre_res_{s + 1}', x, chs, stride=1 if s == 0 else 2, proj=True)
        for i in range(n):
            x = g.attention_module(f'Attention{"ABC"[s]}_{i + 1}', x, chs, _MASK_LEVELS[s])
    for j in range(3):
        x = g.residual_unit(f'post_res_4_{j + 1}', x, _STAGE_CHS[3], stride=2 if j == 0 else 1, proj=j == 0)
    if unit == 'preact':
        x = g.bn(x)
    x = g.add('ave_pool', 'Pooling', [x], pool='AVE', kernel_size=7, stride=1)
    x = g.add('classifier', 'InnerProduct', [x], num_output=1000)
    g.add('cls', 'Softmax', [x])
    return g.layers


def param_layers(layers: Iterable[Layer]) -> List[Layer]:
    """ The layers that carry blobs (what ``net.params`` / a ``.caffemodel`` hold). """
    return [layer for layer in layers if layer.type in ('Convolution', 'BN', 'InnerProduct')]


def random_caffe_blobs(
        layers: Sequence[Layer],
        seed: int = 0,
        in_chans: int = 3,
        bn_blob_shape: str = '1c11',
) -> Dict[str, List[np.ndarray]]:
    """ Random blobs in Caffe order and shape, scaled so that activations stay O(1) through the whole net.

    BN: ``[scale, shift, mean, inv_std]`` shaped (1,C,1,1) (``bn_blob_shape='1c11'``), (1,C) (``'1c'``) or (C,).
    """
    rng = np.random.default_rng(seed)
    chs = {'data': in_chans}
    blobs = {}

    def randn(*shape, std=1.0):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    def uniform(*shape, low, high):
        return rng.uniform(low, high, shape).astype(np.float32)

    for layer in layers:
        c_in = chs[layer.bottoms[0]] if layer.bottoms else None
        if layer.type == 'Convolution':
            n, k, g = layer.params['num_output'], layer.params['kernel_size'], layer.params.get('group', 1)
            fan_in = c_in // g * k * k
            blobs[layer.name] = [randn(n, c_in // g, k, k, std=1.0 / math.sqrt(fan_in))]
            chs[layer.tops[0]] = n
        elif layer.type == 'BN':
            shape = {'1c11': (1, c_in, 1, 1), '1c': (1, c_in), 'c': (c_in,)}[bn_blob_shape]
            blobs[layer.name] = [
                uniform(*shape, low=0.5, high=1.5),  # scale
                randn(*shape, std=0.2),  # shift
                randn(*shape, std=0.2),  # moving mean
                uniform(*shape, low=0.5, high=1.5),  # moving average of 1/sqrt(var + eps)
            ]
            chs[layer.tops[0]] = c_in
        elif layer.type == 'InnerProduct':
            n = layer.params['num_output']
            blobs[layer.name] = [randn(n, c_in, std=1.0 / math.sqrt(c_in)), randn(n, std=0.1)]
            chs[layer.tops[0]] = n
        else:
            for t in layer.tops:
                chs[t] = c_in
    return blobs


def _caffe_pool_out(size: int, k: int, s: int, p: int) -> int:
    """ pooling_layer.cpp: ceil, then drop the last window if it starts in the padding. """
    out = int(math.ceil((size + 2 * p - k) / s)) + 1
    if p and (out - 1) * s >= size + p:
        out -= 1
    return out


def _caffe_max_pool(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """ Caffe MAX pooling without padding: windows start at 0, s, 2s, ... and the last one may be clipped. """
    h, w = x.shape[-2:]
    oh, ow = _caffe_pool_out(h, k, s, 0), _caffe_pool_out(w, k, s, 0)
    # extend by -inf on the bottom/right so that floor-mode windows cover the clipped Caffe windows
    x = F.pad(x, (0, (ow - 1) * s + k - w, 0, (oh - 1) * s + k - h), value=-math.inf)
    return F.max_pool2d(x, k, s)


def _caffe_interp(x: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """ caffe_cpu_interp2 of the authors' fork (util/interp.cpp), vectorised.

    ``ratio = (in - 1) / (out - 1)`` in float32, source index ``ratio * i`` truncated, the right/bottom neighbour
    clamped at the border; equal sizes copy.
    """
    h, w = x.shape[-2:]
    if (h, w) == (out_h, out_w):
        return x.clone()

    def axis(n_in, n_out):
        ratio = np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0)
        src = np.arange(n_out, dtype=np.float32) * ratio
        i0 = src.astype(np.int64)
        step = (i0 < n_in - 1).astype(np.int64)
        lam1 = torch.from_numpy(src - i0.astype(np.float32)).to(x.dtype)
        return torch.from_numpy(i0), torch.from_numpy(i0 + step), 1 - lam1, lam1

    h0, h1, hl0, hl1 = axis(h, out_h)
    w0, w1, wl0, wl1 = axis(w, out_w)
    rows0, rows1 = x[..., h0, :], x[..., h1, :]
    top = rows0[..., w0] * wl0 + rows0[..., w1] * wl1
    bottom = rows1[..., w0] * wl0 + rows1[..., w1] * wl1
    return top * hl0[:, None] + bottom * hl1[:, None]


def run_caffe_net(
        layers: Sequence[Layer],
        blobs: Dict[str, List[np.ndarray]],
        x: torch.Tensor,
        dtype: torch.dtype = torch.float64,
        output: str = 'classifier',
) -> torch.Tensor:
    """ Execute a deploy graph with the semantics of the authors' Caffe fork and return the blob ``output``.

    * BN (frozen): ``y = scale * (x - mean) * inv_std + shift``, blob 3 being the stored inverse std (no eps).
    * Pooling MAX: Caffe ceil mode. Pooling AVE: the 7x7/s1 ``ave_pool`` is global at 224 (7x7 maps); at other
      sizes it is applied as a global average, the reading that keeps the 2048-input classifier.
    * Interp (two bottoms): bilinear, align-corners, resized to bottom[1]'s size.
    """
    def p(name, i):
        return torch.as_tensor(np.asarray(blobs[name][i])).to(dtype)

    env = {'data': x.to(dtype)}
    for layer in layers:
        b = [env[n] for n in layer.bottoms]
        if layer.type == 'Convolution':
            y = F.conv2d(b[0], p(layer.name, 0), None, layer.params.get('stride', 1), layer.params.get('pad', 0), 1,
                         layer.params.get('group', 1))
        elif layer.type == 'BN':
            c = b[0].shape[1]
            scale, shift, mean, inv_std = (p(layer.name, i).reshape(1, c, 1, 1) for i in range(4))
            y = scale * (b[0] - mean) * inv_std + shift
        elif layer.type == 'ReLU':
            y = b[0].clamp_min(0)
        elif layer.type == 'Pooling':
            k, s = layer.params['kernel_size'], layer.params['stride']
            if layer.params['pool'] == 'MAX':
                y = _caffe_max_pool(b[0], k, s)
            elif b[0].shape[-2:] == (k, k) and s == 1:
                y = F.avg_pool2d(b[0], k, s)
            else:
                y = b[0].mean((2, 3), keepdim=True)
        elif layer.type == 'Interp':
            y = _caffe_interp(b[0], *b[1].shape[-2:])
        elif layer.type == 'Eltwise':
            y = b[0]
            for other in b[1:]:
                y = y * other if layer.params['operation'] == 'PROD' else y + other
        elif layer.type == 'Sigmoid':
            y = torch.sigmoid(b[0])
        elif layer.type == 'InnerProduct':
            y = F.linear(b[0].flatten(1), p(layer.name, 0), p(layer.name, 1))
        elif layer.type == 'Softmax':
            y = torch.softmax(b[0], dim=1)
        else:
            raise NotImplementedError(layer.type)
        env[layer.tops[0]] = y
    return env[output]


# --- protobuf encoding (wire format), enough to write a NetParameter ---

def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int32/int64 are encoded as 10-byte two's complement
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(num: int, wire_type: int) -> bytes:
    return _varint(num << 3 | wire_type)


def _ld(num: int, payload: bytes) -> bytes:
    """ A length-delimited field (wire type 2). """
    return _key(num, 2) + _varint(len(payload)) + payload


def unknown_fields(num: int = 1000) -> bytes:
    """ One field of each wire type under unused numbers: varint, fixed64, length-delimited, group, fixed32. """
    group = _key(num + 3, 3) + _key(1, 0) + _varint(7) + _ld(2, b'nested') + _key(num + 3, 4)
    return (
        _key(num, 0) + _varint(2 ** 40 + 5)
        + _key(num + 1, 1) + struct.pack('<d', 1.5)
        + _ld(num + 2, b'\x08\x96\x01unknown payload')
        + group
        + _key(num + 4, 5) + struct.pack('<f', 2.5)
    )


def encode_blob(
        arr: np.ndarray,
        shape_format: str = 'packed',
        packed: bool = True,
        double: bool = False,
        dims: Optional[Sequence[int]] = None,
        extra: bytes = b'',
) -> bytes:
    """ A BlobProto.

    Args:
        arr: The values (and, unless ``dims`` is given, the shape).
        shape_format: ``'packed'`` / ``'unpacked'``: a BlobShape (field 7) with packed or unpacked ``dim``;
            ``'legacy'``: num/channels/height/width (fields 1-4, ``arr`` padded to 4-D with leading 1s);
            ``'none'``: no shape at all.
        packed: Packed (one length-delimited field) or unpacked (one tagged record per value) values.
        double: ``double_data`` (field 8) instead of float ``data`` (field 5).
        dims: The shape to announce instead of ``arr.shape``.
        extra: Bytes (e.g. unknown fields) put in front.
    """
    arr = np.asarray(arr)
    dims = tuple(arr.shape if dims is None else dims)
    out = bytearray(extra)
    if shape_format == 'legacy':
        dims = (1,) * (4 - len(dims)) + dims
        for num, d in zip((1, 2, 3, 4), dims):
            out += _key(num, 0) + _varint(d)
    elif shape_format == 'packed':
        out += _ld(7, _ld(1, b''.join(_varint(d) for d in dims)))
    elif shape_format == 'unpacked':
        out += _ld(7, b''.join(_key(1, 0) + _varint(d) for d in dims))
    else:
        assert shape_format == 'none', shape_format
    num, fmt = (8, '<f8') if double else (5, '<f4')
    values = np.ascontiguousarray(arr, dtype=fmt).reshape(-1)
    if packed:
        out += _ld(num, values.tobytes())
    else:
        width = values.dtype.itemsize
        rec = np.empty((values.size, 1 + width), dtype=np.uint8)
        rec[:, 0] = (num << 3) | (1 if double else 5)
        rec[:, 1:] = values.view(np.uint8).reshape(-1, width)
        out += rec.tobytes()
    return bytes(out)


def encode_layer(name: str, type_: str, blobs: Sequence[bytes] = (), extra: bytes = b'') -> bytes:
    """ A LayerParameter (name = 1, type = 2, blobs = 7), as NetParameter field 100. """
    body = extra + _ld(1, name.encode()) + _ld(2, type_.encode()) + b''.join(_ld(7, b) for b in blobs)
    return _ld(100, body)


def encode_v1_layer(name: str, blobs: Sequence[bytes] = (), extra: bytes = b'') -> bytes:
    """ A legacy V1LayerParameter (name = 4, type = 5 enum, blobs = 6), as NetParameter field 2. """
    body = extra + _ld(4, name.encode()) + _key(5, 0) + _varint(4) + b''.join(_ld(6, b) for b in blobs)
    return _ld(2, body)


def encode_net(name: str, layers: Sequence[bytes], extra: bytes = b'') -> bytes:
    """ A NetParameter: name (field 1) and the already-encoded layer fields. """
    return _ld(1, name.encode()) + extra + b''.join(layers)


def encode_caffemodel(
        layers: Sequence[Layer],
        blobs: Dict[str, List[np.ndarray]],
        name: str = 'net',
) -> bytes:
    """ A ``.caffemodel`` for a graph: every layer in order, blobs where it has them (packed float data). """
    out = []
    for layer in layers:
        out.append(encode_layer(layer.name, layer.type, [encode_blob(b) for b in blobs.get(layer.name, [])]))
    return encode_net(name, out)
