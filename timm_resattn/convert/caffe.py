""" Convert the authors' Caffe weights of the Residual Attention Network to timm state_dicts

The official ImageNet nets (``fwang91/residual-attention-network``, ``imagenet_model/*-deploy.prototxt``) run on the
authors' Caffe fork (``buptwangfei/caffe``). Three things matter when moving their blobs to PyTorch:

* **BN blobs.** The fork's ``BN`` layer has 4 blobs ``[scale, shift, mean, inv_std]``, each (1,C,1,1) (older builds:
  (1,C)). Blob 3 is the moving average of ``1/sqrt(var + eps)``, *not* a variance, and the frozen (deploy) forward is
  ``y = scale * (x - mean) * inv_std + shift``, with no eps and no sqrt. A ``BatchNorm2d(eps=e)`` computes
  ``weight * (x - running_mean) / sqrt(running_var + e) + bias``, so ``running_var = inv_std**-2 - e`` reproduces
  the Caffe layer (computed in float64, stored as float32). Loading blob 3 as a variance is badly wrong
  (order-one relative logit errors).
* **Layer names -> modules.** Pre-activation units own their *input* BN-ReLU, which Caffe names after the blob it
  normalises (``<input blob>/bn``), so e.g. ``pre_res_1/bn`` is ``norm1`` of ``AttentionA_1/trunk/res1``. The map is
  built from the model config (``caffe_param_map``), so every Caffe layer with blobs maps to exactly one module and
  every model parameter and buffer is covered.
* **Everything else** is layout-identical: conv weights are (out, in/groups, kh, kw) as in PyTorch, no conv has a
  bias, and the ``classifier`` InnerProduct is (1000, 2048) + (1000,) like ``nn.Linear``.

``read_caffemodel`` decodes a binary ``.caffemodel`` (a serialised ``NetParameter``) with a small protobuf
wire-format decoder, so neither Caffe nor the ``protobuf`` package is needed.

Command line: ``timm-resattn convert caffe IN.caffemodel OUT.safetensors --model resattnet92``.

Copyright the timm-resattn authors, Apache-2.0.
"""
import math
import os
from typing import Any, Dict, List, Mapping, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import ConversionError
from ..models.config import ResAttnCfg
from ..models.resattnet import ResidualAttentionNet, model_cfgs

__all__ = [
    'CaffeModelError', 'caffe_param_map', 'convert_caffe_blobs', 'read_caffemodel', 'BLOB_COUNTS',
]

# Blobs per layer kind, in Caffe order.
BLOB_COUNTS = {
    'conv': 1,  # weight (out, in/groups, kh, kw); every official conv has bias_term: false
    'bn': 4,  # scale, shift, moving mean, moving average of 1/sqrt(var + eps)
    'fc': 2,  # weight (out, in), bias (out,)
}
_KIND_DESC = {
    'conv': 'Convolution without bias: [weight]',
    'bn': 'BN: [scale, shift, mean, inv_std]',
    'fc': 'InnerProduct: [weight, bias]',
}
_SHOW = 5  # names listed per error category


class CaffeModelError(ConversionError):
    """ A ``.caffemodel`` that is truncated, corrupt or not a binary Caffe ``NetParameter``. """


# ---------------------------------------------------------------------------------------------------------------------
# Caffe layer names -> timm modules


def _resolve_cfg(variant: Union[str, ResAttnCfg]) -> Tuple[str, ResAttnCfg]:
    if isinstance(variant, ResAttnCfg):
        return 'the given config', variant
    if variant not in model_cfgs:
        raise ConversionError(f'unknown model {variant!r}; the Caffe converter knows {sorted(model_cfgs)}')
    return repr(variant), model_cfgs[variant]


def _check_official_naming(name: str, cfg: ResAttnCfg) -> None:
    """ Raise if the official Caffe naming scheme cannot describe ``cfg``. """
    problems = []
    if cfg.unit not in ('preact', 'next'):
        problems.append(f"unit={cfg.unit!r} (the official files use 'preact' or 'next' units)")
    if cfg.stem_type != 'imagenet':
        problems.append(f"stem_type={cfg.stem_type!r} (the official nets have the 'imagenet' stem)")
    if cfg.mask_type != 'encoder_decoder':
        problems.append(f"mask_type={cfg.mask_type!r} (the official masks are 'encoder_decoder')")
    if cfg.mask_act != 'mixed':
        problems.append(f"mask_act={cfg.mask_act!r} (the official masks end in a Sigmoid, 'mixed')")
    if not cfg.attention_residual:
        problems.append('attention_residual=False (the official modules compute (1 + M) * T)')
    if getattr(cfg, 'mask_wiring', 'official') != 'official':
        problems.append(f"mask_wiring={cfg.mask_wiring!r} (same shapes as the official net, different function)")
    if getattr(cfg, 'max_pool', 'caffe') != 'caffe':
        problems.append(f"max_pool={cfg.max_pool!r} (Caffe pools in ceil mode without padding)")
    if cfg.p != 1:
        problems.append(f'p={cfg.p} (Caffe names one pre unit trunk/res1 and one post unit <module>)')
    n = len(cfg.stage_chs)
    if n < 2 or n > 27:
        problems.append(f'{n} stages (Attention<letter>_<i> modules, then one post_res stage)')
    for s in range(n - 1):
        if cfg.stage_units[s] != 1 or cfg.stage_modules[s] < 1:
            problems.append(
                f'stage {s}: {cfg.stage_units[s]} units + {cfg.stage_modules[s]} modules (Caffe has exactly one '
                f'pre_res_{s + 1} unit followed by Attention{chr(65 + s)}_1.. modules)'
            )
    if n and cfg.stage_modules[-1]:
        problems.append(f'last stage with {cfg.stage_modules[-1]} modules (the post_res stage has none)')
    if problems:
        raise ConversionError(
            f'the official Caffe naming cannot describe {name}: ' + '; '.join(problems)
        )


class _ParamMapBuilder:
    """ Walks the network in Caffe order, tracking the raw blob each unit reads (pre-act units own its BN). """

    def __init__(self, preact: bool):
        self.preact = preact
        self.map: Dict[str, Tuple[str, str]] = {}

    def add(self, caffe_name: str, kind: str, module: str) -> None:
        if caffe_name in self.map:
            raise RuntimeError(f'internal error: Caffe layer {caffe_name!r} mapped twice')
        self.map[caffe_name] = (kind, module)

    def unit(self, u: str, x: str, prefix: str, proj: bool = False) -> str:
        """ Residual unit ``u`` (Caffe ``u/branch1/...``, ``u/branch2/...``) reading the raw blob ``x``. """
        b1, b2 = f'{u}/branch1', f'{u}/branch2'
        if self.preact:
            # a = ReLU(BN(x)) is the BN layer named after x; both branches read a
            self.add(f'{x}/bn', 'bn', f'{prefix}.norm1')
            self.add(f'{b1}/conv1_1x1', 'conv', f'{prefix}.conv1')
            self.add(f'{b1}/conv1_1x1/bn', 'bn', f'{prefix}.norm2')
            self.add(f'{b1}/conv2_3x3', 'conv', f'{prefix}.conv2')
            self.add(f'{b1}/conv2_3x3/bn', 'bn', f'{prefix}.norm3')
            self.add(f'{b1}/conv3_1x1', 'conv', f'{prefix}.conv3')
            if proj:
                self.add(f'{b2}/conv1_1x1', 'conv', f'{prefix}.downsample')
        else:
            for i, conv in enumerate(('conv1_1x1', 'conv2_3x3', 'conv3_1x1'), start=1):
                self.add(f'{b1}/{conv}', 'conv', f'{prefix}.conv{i}')
                self.add(f'{b1}/{conv}/bn', 'bn', f'{prefix}.norm{i}')
            if proj:
                self.add(f'{b2}/conv1_1x1', 'conv', f'{prefix}.downsample.conv')
                self.add(f'{b2}/conv1_1x1/bn', 'bn', f'{prefix}.downsample.norm')
        return u  # the unit's output blob is the Eltwise named after it

    def attention_module(self, m: str, x: str, prefix: str, cfg: ResAttnCfg, levels: int) -> str:
        down, up = ('down_sample', 'up_sample') if self.preact else ('down', 'up')
        x1 = self.unit(f'{m}/trunk/res1', x, f'{prefix}.pre.0')
        h = x1
        for j in range(cfg.t):
            h = self.unit(f'{m}/trunk/res{j + 2}', h, f'{prefix}.trunk.{j}')
        # encoder: level k = i + 1 reads max-pool k; r units per level, 2r at the lowest
        h, feats = x1, []
        for i in range(levels):
            k = i + 1
            h = f'{m}/mask/{down}/pool{k}_3x3_s2'
            for j in range(2 * cfg.r if i == levels - 1 else cfg.r):
                h = self.unit(f'{m}/mask/{down}/res{k}_{j + 1}', h, f'{prefix}.mask.down.{i}.{j}')
            feats.append(h)
        # decoder, deepest merge first: merge level k = L - 1 - i, skip unit on the encoder output of level k
        for i in range(levels - 1):
            k = levels - 1 - i
            self.unit(f'{m}/mask/skip/res{k}', feats[k - 1], f'{prefix}.mask.up.{i}.skip')
            h = f'{m}/mask/{up}{k}'  # Eltwise SUM of skip and interp
            for j in range(cfg.r):
                h = self.unit(f'{m}/mask/{up}/res{k}_{j + 1}', h, f'{prefix}.mask.up.{i}.up.{j}')
        if self.preact:
            self.add(f'{m}/mask/{up}/interp_1/bn', 'bn', f'{prefix}.mask.head.norm1')
        self.add(f'{m}/mask/linear_1', 'conv', f'{prefix}.mask.head.conv1')
        self.add(f'{m}/mask/linear_1/bn', 'bn', f'{prefix}.mask.head.norm2')
        self.add(f'{m}/mask/linear_2', 'conv', f'{prefix}.mask.head.conv2')
        # (1 + M) * T is "<m>/fusion"; the post unit carries the module's own name
        return self.unit(m, f'{m}/fusion', f'{prefix}.post.0')


def caffe_param_map(variant: Union[str, ResAttnCfg]) -> Dict[str, Tuple[str, str]]:
    """ Map every Caffe layer with blobs of an official net to its timm module.

    Built from the architecture config with the naming scheme of the official deploy files, so a variant with
    other stage/module counts, ``t`` or ``r`` that follows the same scheme maps too.

    Args:
        variant: A ``model_cfgs`` name (``'resattnet56'``, ...) or a ``ResAttnCfg``.

    Returns:
        ``{caffe_layer_name: (kind, module_path)}`` in Caffe order, kind being ``'conv'``, ``'bn'`` or ``'fc'``.

    Raises:
        ValueError: Unknown variant, or a config the official naming cannot describe (local masks, p != 1, ...).
    """
    name, cfg = _resolve_cfg(variant)
    _check_official_naming(name, cfg)
    b = _ParamMapBuilder(preact=cfg.unit == 'preact')
    b.add('conv1', 'conv', 'stem.conv')
    b.add('conv1/bn', 'bn', 'stem.norm')
    x = 'pool1_3x3_s2'
    prev_chs = cfg.stem_chs
    last = len(cfg.stage_chs) - 1
    for s, chs in enumerate(cfg.stage_chs):
        proj = prev_chs != chs or cfg.stage_strides[s] != 1
        if s < last:
            x = b.unit(f'pre_res_{s + 1}', x, f'stages.{s}.0', proj=proj)
            for i in range(cfg.stage_modules[s]):
                x = b.attention_module(f'Attention{chr(65 + s)}_{i + 1}', x, f'stages.{s}.{1 + i}', cfg,
                                       cfg.mask_levels[s])
        else:
            for j in range(cfg.stage_units[s]):
                x = b.unit(f'post_res_{s + 1}_{j + 1}', x, f'stages.{s}.{j}', proj=proj and j == 0)
        prev_chs = chs
    if b.preact:
        b.add(f'{x}/bn', 'bn', 'norm')  # the final BN-ReLU
    b.add('classifier', 'fc', 'head.fc')
    return b.map


def _param_names(variant: str) -> set:
    try:
        return set(caffe_param_map(variant))
    except ValueError:  # a registered variant outside the official naming
        return set()


# ---------------------------------------------------------------------------------------------------------------------
# blobs -> state_dict


def _to_tensor(blob: Any) -> torch.Tensor:
    """ A fresh CPU float tensor (float64 stays float64) from a numpy array, tensor or pycaffe ``Blob``. """
    if isinstance(blob, torch.Tensor):
        t = blob.detach().to('cpu', copy=True)
    else:
        if not isinstance(blob, np.ndarray) and hasattr(blob, 'data'):
            blob = blob.data  # a pycaffe Blob
        arr = np.asarray(blob)
        if arr.dtype.kind not in 'fiu':
            raise TypeError(f'expected a numeric array, got dtype {arr.dtype}')
        t = torch.from_numpy(arr.astype(np.float64 if arr.dtype == np.float64 else np.float32))  # copies
    if not t.is_floating_point():
        t = t.float()
    return t


def _fmt_names(items: Sequence[str], what: str, sep: str = ', ') -> str:
    shown = sep.join(items[:_SHOW])
    more = f'{sep}... ({len(items) - _SHOW} more)' if len(items) > _SHOW else ''
    return f'{len(items)} {what}: {shown}{more}'


def _non_finite(caffe_name: str, blobs: Sequence[Tuple[int, str, torch.Tensor]], invalid: List[str]) -> bool:
    """ Record each blob (index, role, value as stored: float32) holding NaN/Inf in ``invalid``; whether any did.
    A float64 blob beyond float32's range becomes Inf here, and would make every output of the net NaN/Inf. """
    found = False
    for i, role, t in blobs:
        n_bad = int((~torch.isfinite(t)).sum())
        if n_bad:
            invalid.append(f'{caffe_name!r} blob {i} ({role}) has {n_bad} NaN/Inf values (as float32)')
            found = True
    return found


def _fc_shapes(shape: Tuple[int, ...]) -> Tuple[Tuple[int, ...], ...]:
    """ Accepted Caffe shapes of an InnerProduct blob with PyTorch shape ``shape`` (legacy blobs are 4-D). """
    return (shape, (1,) * (4 - len(shape)) + shape)


def convert_caffe_blobs(
        blobs: Mapping[str, Sequence[Any]],
        variant: Union[str, ResAttnCfg],
) -> Dict[str, torch.Tensor]:
    """ Convert the blobs of an official Caffe net to a state_dict that loads strictly into ``variant``.

    BN layers (4 blobs ``[scale, shift, mean, inv_std]``, each (1,C,1,1), (1,C) or (C,)) become
    ``weight = scale``, ``bias = shift``, ``running_mean = mean`` and ``running_var = inv_std**-2 - eps`` (float64,
    stored as float32), with ``eps`` the model's BN eps (1e-5), because the fork's frozen BN computes
    ``scale * (x - mean) * inv_std + shift`` while PyTorch divides by ``sqrt(running_var + eps)``.
    ``num_batches_tracked`` is 0. Conv weights and the classifier are copied as they are.

    Args:
        blobs: Caffe layer name -> list of its blobs in Caffe order, as pycaffe's ``net.params`` or
            ``read_caffemodel`` give them (numpy arrays, torch tensors or pycaffe ``Blob`` objects). Layers with
            an empty blob list are ignored.
        variant: A ``model_cfgs`` name (``'resattnet56'``, ``'resattnet92'``, ``'resattnext56'``,
            ``'resattnext92'``) or a ``ResAttnCfg`` that follows the official naming.

    Returns:
        The state_dict (float32 tensors, int64 ``num_batches_tracked``), with exactly the model's keys.

    Raises:
        ValueError: Unknown, missing or misshapen blobs, a wrong blob count, NaN/Inf values (as float32, the dtype
            they are stored in), or an ``inv_std`` that is non-positive, non-finite or so far from 1 that
            ``1/sqrt(running_var + eps)`` is not finite in float32, all problems listed in one message (the first
            few names of each kind and how many).
    """
    name, cfg = _resolve_cfg(variant)
    pmap = caffe_param_map(cfg)
    with torch.device('meta'):
        model = ResidualAttentionNet(cfg)  # shapes and BN eps only; num_classes=1000 like the Caffe classifier
    expected = model.state_dict()
    modules = dict(model.named_modules())

    given = {k: list(v) for k, v in blobs.items() if v is not None and len(v)}
    unknown = [k for k in given if k not in pmap]
    missing = [k for k in pmap if k not in given]
    wrong_count, misshapen, invalid = [], [], []
    out: Dict[str, torch.Tensor] = {}
    for caffe_name, (kind, module) in pmap.items():
        if caffe_name not in given:
            continue
        layer_blobs = given[caffe_name]
        if len(layer_blobs) != BLOB_COUNTS[kind]:
            wrong_count.append(
                f'{caffe_name!r} has {len(layer_blobs)} blobs, expected {BLOB_COUNTS[kind]} ({_KIND_DESC[kind]})'
            )
            continue
        try:
            ts = [_to_tensor(b) for b in layer_blobs]
        except TypeError as e:
            invalid.append(f'{caffe_name!r}: {e}')
            continue
        shapes = [tuple(t.shape) for t in ts]

        if kind == 'conv':
            want = tuple(expected[f'{module}.weight'].shape)
            if shapes[0] != want:
                misshapen.append(f'{caffe_name!r} blob 0 is {shapes[0]}, expected {want}')
                continue
            weight = ts[0].float().contiguous()
            if _non_finite(caffe_name, [(0, 'weights', weight)], invalid):
                continue
            out[f'{module}.weight'] = weight
        elif kind == 'fc':
            w_want, b_want = tuple(expected[f'{module}.weight'].shape), tuple(expected[f'{module}.bias'].shape)
            bad = [
                f'{caffe_name!r} blob {i} is {s}, expected {want}'
                for i, (s, want) in enumerate(zip(shapes, (w_want, b_want))) if s not in _fc_shapes(want)
            ]
            if bad:
                misshapen.extend(bad)
                continue
            weight, bias = ts[0].float().reshape(w_want).contiguous(), ts[1].float().reshape(b_want).contiguous()
            if _non_finite(caffe_name, [(0, 'weights', weight), (1, 'bias', bias)], invalid):
                continue
            out[f'{module}.weight'], out[f'{module}.bias'] = weight, bias
        else:
            c = expected[f'{module}.weight'].shape[0]
            bad = [
                f'{caffe_name!r} blob {i} is {s}, expected (1, {c}, 1, 1), (1, {c}) or ({c},)'
                for i, s in enumerate(shapes) if s not in ((1, c, 1, 1), (1, c), (c,))
            ]
            if bad:
                misshapen.extend(bad)
                continue
            scale, shift, mean, inv_std = (t.reshape(c) for t in ts)
            inv_std = inv_std.double()
            n_bad = int((~torch.isfinite(inv_std) | (inv_std <= 0)).sum())
            if n_bad:
                invalid.append(
                    f'{caffe_name!r} blob 3 (inv_std, the moving average of 1/sqrt(var + eps)) has {n_bad} '
                    f'non-positive or non-finite values'
                )
                continue
            eps = modules[module].eps
            scale, shift, mean = (t.float().contiguous() for t in (scale, shift, mean))
            running_var = (inv_std.pow(-2) - eps).float()
            if _non_finite(caffe_name, [(0, 'scale', scale), (1, 'shift', shift), (2, 'mean', mean)], invalid):
                continue
            # what BatchNorm2d computes in float32: 1/sqrt(running_var + eps) must be finite (an inv_std far from
            # 1 can overflow running_var, or cancel to running_var + eps == 0 in float32)
            denom = running_var + eps
            n_bad = int((~torch.isfinite(running_var) | ~(denom > 0) | ~torch.isfinite(denom.clamp_min(0).rsqrt()))
                        .sum())
            if n_bad:
                invalid.append(
                    f'{caffe_name!r} blob 3 (inv_std) has {n_bad} values that give a non-finite 1/sqrt(running_var '
                    f'+ eps) in float32 (inv_std out of range: min {float(inv_std.min()):.4g}, max '
                    f'{float(inv_std.max()):.4g})'
                )
                continue
            out[f'{module}.weight'] = scale
            out[f'{module}.bias'] = shift
            out[f'{module}.running_mean'] = mean
            out[f'{module}.running_var'] = running_var
            out[f'{module}.num_batches_tracked'] = torch.zeros((), dtype=torch.long)

    problems = []
    if unknown:
        problems.append(_fmt_names([repr(k) for k in unknown], 'unknown layers (not in the official deploy file)'))
    if missing:
        problems.append(_fmt_names([repr(k) for k in missing], 'missing layers'))
    if wrong_count:
        problems.append(_fmt_names(wrong_count, 'layers with the wrong number of blobs', sep='; '))
    if misshapen:
        problems.append(_fmt_names(misshapen, 'misshapen blobs', sep='; '))
    if invalid:
        problems.append(_fmt_names(invalid, 'invalid blobs', sep='; '))
    if problems:
        hint = ''
        if unknown or missing:
            matches = [v for v in model_cfgs if v != variant and _param_names(v) == set(given)]
            if matches:
                hint = f'\n  (the layer names are those of {matches[0]!r}: wrong model?)'
        raise ConversionError(
            f'the Caffe blobs do not match {name} ({len(given)} layers with blobs given, {len(pmap)} expected):\n  '
            + '\n  '.join(problems) + hint
        )

    if set(out) != set(expected):  # the map and the model disagree: a bug, not a user error
        diff = sorted(set(out) ^ set(expected))
        raise RuntimeError(f'internal error: converted keys differ from the model state_dict: {diff[:10]}')
    return {k: out[k] for k in expected}


# ---------------------------------------------------------------------------------------------------------------------
# .caffemodel reading: a minimal protobuf wire-format decoder
#
# caffe.proto, the fields used (everything else is skipped):
#   NetParameter     { string name = 1; repeated LayerParameter layer = 100; repeated V1LayerParameter layers = 2; }
#   LayerParameter   { string name = 1; string type = 2; repeated BlobProto blobs = 7; }
#   V1LayerParameter { string name = 4; repeated BlobProto blobs = 6; }
#   BlobProto        { BlobShape shape = 7; repeated float data = 5 [packed]; repeated double double_data = 8 [packed];
#                      int32 num = 1, channels = 2, height = 3, width = 4; }   (legacy 4-D shape)
#   BlobShape        { repeated int64 dim = 1 [packed]; }

_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = 0, 1, 2, 3, 4, 5


class _DecodeError(Exception):
    pass


def _read_varint(buf: bytes, pos: int, end: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise _DecodeError('truncated varint')
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise _DecodeError('varint longer than 10 bytes')


def _next_field(buf: bytes, pos: int, end: int) -> Tuple[int, int, int, int, int]:
    """ Decode one field at ``pos``: ``(number, wire_type, a, b, next_pos)``.

    ``a`` is the value of a varint, the offset of a fixed32/fixed64 value, or the payload start of a
    length-delimited field (``b`` its end). Groups (wire types 3/4, deprecated) are skipped whole.
    """
    key, pos = _read_varint(buf, pos, end)
    num, wt = key >> 3, key & 7
    if num == 0:
        raise _DecodeError('field number 0')
    if wt == _VARINT:
        a, pos = _read_varint(buf, pos, end)
        return num, wt, a, pos, pos
    if wt in (_I64, _I32):
        size = 8 if wt == _I64 else 4
        if pos + size > end:
            raise _DecodeError(f'truncated fixed{size * 8} field {num}')
        return num, wt, pos, pos + size, pos + size
    if wt == _LEN:
        n, pos = _read_varint(buf, pos, end)
        if pos + n > end:
            raise _DecodeError(f'length-delimited field {num} of {n} bytes runs past the end of its message')
        return num, wt, pos, pos + n, pos + n
    if wt == _SGROUP:
        start = pos
        while True:
            if pos >= end:
                raise _DecodeError(f'unterminated group {num}')
            inner, _, _, _, nxt = _next_field_or_end(buf, pos, end)
            if inner == -num:
                return num, wt, start, pos, nxt
            if inner < 0:
                raise _DecodeError(f'group {num} closed by end-group {-inner}')
            pos = nxt
    if wt == _EGROUP:
        raise _DecodeError(f'unexpected end of group {num}')
    raise _DecodeError(f'invalid wire type {wt} (field {num})')


def _next_field_or_end(buf: bytes, pos: int, end: int) -> Tuple[int, int, int, int, int]:
    """ Like ``_next_field`` but returns ``-number`` for an end-group tag (used while skipping groups). """
    key, nxt = _read_varint(buf, pos, end)
    if key & 7 == _EGROUP:
        return -(key >> 3), _EGROUP, 0, 0, nxt
    return _next_field(buf, pos, end)


def _expect(wt: int, want: int, what: str) -> None:
    if wt != want:
        raise _DecodeError(f'{what} has wire type {wt}, expected {want}')


def _fixed_run(buf: bytes, pos: int, end: int, tag: int, width: int) -> int:
    """ Number of consecutive unpacked ``[tag byte][width bytes]`` records at ``pos`` (vectorised scan). """
    rec = width + 1
    n_max = (end - pos) // rec
    count, chunk = 0, 256
    while count < n_max:
        n = min(chunk, n_max - count)
        tags = np.frombuffer(buf, np.uint8, count=n * rec, offset=pos + count * rec)[::rec]
        ok = tags == tag
        if not ok.all():
            return count + int(np.argmin(ok))
        count += n
        chunk *= 2
    return count


def _unpacked_values(buf: bytes, pos: int, count: int, width: int, dtype: str) -> np.ndarray:
    rec = np.frombuffer(buf, np.uint8, count=count * (width + 1), offset=pos).reshape(count, width + 1)
    return np.ascontiguousarray(rec[:, 1:]).view(dtype).reshape(count)


def _parse_blob_shape(buf: bytes, pos: int, end: int) -> List[int]:
    dims = []
    while pos < end:
        num, wt, a, b, pos = _next_field(buf, pos, end)
        if num != 1:
            continue
        if wt == _LEN:  # packed
            p = a
            while p < b:
                d, p = _read_varint(buf, p, b)
                dims.append(d)
        else:
            _expect(wt, _VARINT, 'BlobShape.dim')
            dims.append(a)
    for d in dims:
        if d >= 1 << 62:
            raise _DecodeError(f'negative or huge blob dimension {d}')
    return dims


def _parse_blob(buf: bytes, pos: int, end: int) -> np.ndarray:
    shape = None
    legacy: Dict[int, int] = {}
    chunks: Dict[int, List[np.ndarray]] = {5: [], 8: []}
    while pos < end:
        num, wt, a, b, nxt = _next_field(buf, pos, end)
        if num == 7:
            _expect(wt, _LEN, 'BlobProto.shape')
            shape = _parse_blob_shape(buf, a, b)
        elif num in (5, 8):
            dtype, width, fixed = ('<f4', 4, _I32) if num == 5 else ('<f8', 8, _I64)
            if wt == _LEN:  # packed
                if (b - a) % width:
                    raise _DecodeError(f'packed {"data" if num == 5 else "double_data"} of {b - a} bytes')
                chunks[num].append(np.frombuffer(buf, dtype, count=(b - a) // width, offset=a))
            else:
                _expect(wt, fixed, 'BlobProto.data' if num == 5 else 'BlobProto.double_data')
                # a run of records [1-byte tag][value]: read at once (this one included unless its key is padded)
                n = _fixed_run(buf, pos, end, (num << 3) | fixed, width)
                if n:
                    chunks[num].append(_unpacked_values(buf, pos, n, width, dtype))
                    nxt = pos + n * (width + 1)
                else:
                    chunks[num].append(np.frombuffer(buf, dtype, count=1, offset=a))
        elif num in (1, 2, 3, 4):
            _expect(wt, _VARINT, 'BlobProto num/channels/height/width')
            legacy[num] = a - (1 << 64) if a >= 1 << 63 else a
        pos = nxt

    if chunks[5] and chunks[8]:
        raise _DecodeError('blob has both float data and double_data')
    parts = chunks[5] or chunks[8]
    dtype = np.float32 if chunks[5] or not chunks[8] else np.float64
    values = np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)  # copies: native, writable
    if shape is None:
        if legacy:
            # legacy 4-D (num, channels, height, width); unset entries taken as 1
            shape = [legacy.get(i, 1) for i in (1, 2, 3, 4)]
            if any(d < 0 for d in shape):
                raise _DecodeError(f'negative legacy blob dimension in {shape}')
        else:
            shape = [values.size]
    count = math.prod(shape)
    if count != values.size:
        raise _DecodeError(f'blob shape {tuple(shape)} holds {count} values but the blob has {values.size}')
    return values.reshape(shape)


def _parse_layer(buf: bytes, pos: int, end: int, name_field: int, blobs_field: int) -> Tuple[str, List[np.ndarray]]:
    name, blobs = None, []
    while pos < end:
        num, wt, a, b, pos = _next_field(buf, pos, end)
        if num == name_field:
            _expect(wt, _LEN, 'layer name')
            try:
                name = buf[a:b].decode('utf-8')
            except UnicodeDecodeError:
                raise _DecodeError('layer name is not UTF-8') from None
        elif num == blobs_field:
            _expect(wt, _LEN, 'layer blob')
            try:
                blobs.append(_parse_blob(buf, a, b))
            except _DecodeError as e:
                raise _DecodeError(f'blob {len(blobs)}: {e}') from None
    return name, blobs


def read_caffemodel(path: Union[str, os.PathLike]) -> Dict[str, List[np.ndarray]]:
    """ Read the blobs of a binary ``.caffemodel`` (a serialised Caffe ``NetParameter``).

    A self-contained protobuf wire-format decoder: no Caffe and no ``protobuf`` package needed. Reads both the
    current ``layer`` (LayerParameter) and the legacy ``layers`` (V1LayerParameter) entries; blob shapes come from
    ``BlobShape`` or, for legacy blobs, from num/channels/height/width. Packed and unpacked repeated fields are
    accepted and unknown fields of every wire type are skipped.

    Args:
        path: The ``.caffemodel`` file.

    Returns:
        Layer name -> list of its blobs in Caffe order (float32 numpy arrays; float64 for ``double_data``), in file
        order. Layers without blobs (ReLU, Pooling, ...) are left out.

    Raises:
        CaffeModelError: Truncated or corrupt file, or no layer with blobs in it (the message names the file).
        OSError: The file cannot be read.
    """
    path = os.fspath(path)
    with open(path, 'rb') as f:
        buf = f.read()
    out: Dict[str, List[np.ndarray]] = {}
    pos, end, index = 0, len(buf), 0
    try:
        while pos < end:
            num, wt, a, b, pos = _next_field(buf, pos, end)
            if num not in (100, 2):
                continue
            _expect(wt, _LEN, 'NetParameter.layer')
            try:
                name, blobs = _parse_layer(buf, a, b, *((1, 7) if num == 100 else (4, 6)))
            except _DecodeError as e:
                raise _DecodeError(f'layer #{index}: {e}') from None
            index += 1
            if not blobs:
                continue
            if not name:
                raise _DecodeError(f'layer #{index - 1} has blobs but no name')
            if name in out:
                raise _DecodeError(f'two layers named {name!r} have blobs')
            out[name] = blobs
    except RecursionError:
        raise CaffeModelError(
            f'{path}: cannot decode the Caffe weights: groups nested too deeply (corrupt file)'
        ) from None
    except _DecodeError as e:
        raise CaffeModelError(
            f'{path}: cannot decode the Caffe weights: {e} (truncated or corrupt file, or not a binary '
            f'.caffemodel)'
        ) from None
    if not out:
        raise CaffeModelError(
            f'{path}: no layers with blobs found ({index} layers read); is this a binary .caffemodel '
            f'(not a .prototxt)?'
        )
    return out
