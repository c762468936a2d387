""" The architecture config of a Residual Attention Network: one record per variant, checked in one place.

``ResAttnCfg`` holds every architectural choice (``model_cfgs`` in ``resattnet.py`` has one row per registered
variant; ``timm.create_model(name, **kwargs)`` overrides fields). ``MODEL_ARGS`` is the one typed description of
every argument of the network (each config field and each constructor argument: type, range, choices); ``validate``
checks a config against it and then the rules between fields. The config does the arithmetic the network and its
users need once: blocks per stage, the units of a local mask, the stride/dilation schedule for ``output_stride``,
the minimum input size, and the fields recorded with saved weights.
"""
import math
from dataclasses import dataclass, fields, replace
from typing import Any, Dict, List, Literal, Optional, Tuple

import torch
import torch.nn as nn
from timm.layers import get_act_layer

from ..errors import ConfigError
from ..layers.attention import MASK_ACTS, MASK_TYPES, MASK_WIRINGS, MAX_POOLS
from ..layers.units import UNIT_TYPES
from ..schema import Any_, Bool, Choice, Float, Int, IntTuple, Nullable, Schema

__all__ = ['ResAttnCfg', 'OUTPUT_STRIDES', 'POOL_TYPES', 'MODEL_ARGS', 'CONSTRUCTOR_ARGS', 'check_model_args']

CONV_INITS = ('kaiming_normal_fan_out', 'kaiming_uniform_fan_in')
STEM_TYPES = ('imagenet', 'cifar')
OUTPUT_STRIDES = (8, 16, 32)
# timm's global pool types (``timm.layers.SelectAdaptivePool2d``): '' (no pooling: the head returns the unpooled
# features, with num_classes=0 only), the adaptive pools, and their 'fast' forms (the same pools as a mean/amax over
# H and W). Lower case only: timm lower-cases the name to pick the pool but not to count 'catavgmax''s features.
_POOLS = ('avg', 'max', 'avgmax', 'catavgmax')
POOL_TYPES = ('',) + _POOLS + ('fast',) + tuple(f'fast{p}' for p in _POOLS)


def _pool_out(size: int, mode: str = 'caffe') -> int:
    """ Output size of the 3x3/s2 max-pool: ceil mode without padding (``'caffe'``; 0 if the input is too small)
    or floor mode with padding 1 (``'torch'``: ceil(size / 2), any size >= 1 works).
    """
    if mode == 'torch':
        return (size + 1) // 2
    if size < 2:
        return 0
    return (size - 2) // 2 + 1


def _is_act_layer(value: Any) -> bool:
    """ What timm's ``get_act_layer`` resolves to a layer: a name it knows, an ``nn.Module`` class, a factory. """
    if isinstance(value, str):
        try:
            return get_act_layer(value) is not None  # '' resolves to None: a net without activations
        except KeyError:
            return False
    if isinstance(value, type):
        return issubclass(value, nn.Module)
    return callable(value) and not isinstance(value, nn.Module)  # a module instance is not a layer factory


def _is_device(value: Any) -> bool:
    """ None, or a device torch accepts that this machine has (a CUDA index below the device count, MPS where
    available; 'meta' and 'cpu' always). """
    if value is None:
        return True
    if isinstance(value, bool) or not isinstance(value, (str, int, torch.device)):
        return False
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError, TypeError):
        return False
    if device.type == 'cuda':
        return (device.index or 0) < torch.cuda.device_count()
    if device.type == 'mps':
        return torch.backends.mps.is_available()
    return True


def _is_dtype(value: Any) -> bool:
    return value is None or (isinstance(value, torch.dtype) and value.is_floating_point)


# Upper bounds, far above any published net, that keep a mistyped value from building a net that can't fit in
# memory (``r=10**20``) or overflows torch (``num_classes=2**63``)
MAX_WIDTH = 65536  # channels: stem_chs, stage_chs, in_chans, groups
MAX_STRIDE = 64
MAX_REPEATS = 1000  # units or modules of one kind in one place: stage_units, p, t, r, ...
MAX_MASK_LEVELS = 16
MAX_CLASSES = 10 ** 7

# One typed description of every argument of a Residual Attention Network: the ``ResAttnCfg`` fields (overridable
# as keyword arguments) and the constructor's own arguments. ``ResAttnCfg.validate`` and ``check_model_args`` check
# values against it (Python, ``timm.create_model``, ``torch.hub``, ``--model-kwargs``); cross-field rules (lengths per
# stage, widths vs groups, mask levels vs mask type, the minimum input size) stay in ``ResAttnCfg.validate``.
_CFG_SPECS = dict(
    unit=Choice(lambda: tuple(UNIT_TYPES)),  # read at each check: a unit type added to UNIT_TYPES counts
    stem_type=Choice(STEM_TYPES),
    stem_chs=Int(1, MAX_WIDTH),
    stage_chs=IntTuple(1, per='stage', maximum=MAX_WIDTH),
    stage_strides=IntTuple(1, per='stage', maximum=MAX_STRIDE),
    stage_units=IntTuple(1, per='stage', maximum=MAX_REPEATS),  # the first unit of a stage sets its width and stride
    stage_modules=IntTuple(0, per='stage', maximum=MAX_REPEATS),
    stage_tail_units=Nullable(IntTuple(0, per='stage', maximum=MAX_REPEATS), none_means='no tail units'),
    mask_levels=IntTuple(0, per='stage', maximum=MAX_MASK_LEVELS),
    p=Int(0, MAX_REPEATS),
    t=Int(1, MAX_REPEATS),
    r=Int(1, MAX_REPEATS),
    bottle_ratio=Float(0, 16, minimum_open=True),
    groups=Int(1, MAX_WIDTH),
    attention_residual=Bool(),
    mask_act=Choice(MASK_ACTS),
    mask_type=Choice(MASK_TYPES),
    local_mask_units=Nullable(
        IntTuple(1, per='stage', maximum=MAX_REPEATS), none_means='matched to the encoder-decoder mask'),
    mask_wiring=Choice(MASK_WIRINGS),
    max_pool=Choice(MAX_POOLS),
    conv_init=Choice(CONV_INITS),
    memory_efficient=Bool(),
)
_CONSTRUCTOR_SPECS = dict(
    num_classes=Int(0, MAX_CLASSES),
    in_chans=Int(1, MAX_WIDTH),
    global_pool=Choice(POOL_TYPES),
    drop_rate=Float(0, 1, maximum_open=True),
    drop_path_rate=Float(0, 1, maximum_open=True),
    act_layer=Any_(_is_act_layer, "an activation name timm.layers.get_act_layer knows ('relu', 'silu', 'gelu', ...), "
                                  "an nn.Module class, or a function returning a module"),
    zero_init_last=Bool(),
    output_stride=Nullable(Choice(OUTPUT_STRIDES), none_means="the net's own"),
    device=Any_(_is_device, "None, or a device this machine has: a torch.device or a name torch.device accepts ('cpu', "
                            "'cuda:0' where a GPU is, 'meta')"),
    dtype=Any_(_is_dtype, 'None or a floating-point torch.dtype'),
)
CONSTRUCTOR_ARGS = tuple(_CONSTRUCTOR_SPECS)
# the fields with one value per stage (as many as ``stage_chs``)
_PER_STAGE = ('stage_strides', 'stage_units', 'stage_modules', 'mask_levels', 'stage_tail_units', 'local_mask_units')
MODEL_ARGS = Schema({**_CFG_SPECS, **_CONSTRUCTOR_SPECS}, error=ConfigError, what='model argument')


def check_model_args(**values: Any) -> Dict[str, Any]:
    """ ``values`` (any of ``MODEL_ARGS``: constructor arguments, config fields) checked and normalised (numpy
    scalars to Python ones, lists to tuples); a ``ConfigError`` names the first bad one and what was expected. """
    return MODEL_ARGS.check(values)


@dataclass(frozen=True)
class ResAttnCfg:
    """ Architecture of a Residual Attention Network. A variant is one row of ``model_cfgs``.

    Every field can be overridden from ``timm.create_model(name, **kwargs)`` (and the commands' ``--model-kwargs``).
    :meth:`validate` checks every field's type and range against ``MODEL_ARGS`` (the one description of them), then
    the rules between fields, and raises a ``ConfigError`` (a ``ValueError``) naming the field and what was expected.
    numpy scalars are accepted and normalised (``np.int64(2)`` -> ``2``); bools are not integers and strings are not
    bools (``attention_residual='false'`` is refused).

    Args:
        unit: Residual unit type: ``'preact'`` (pre-activation bottleneck), ``'next'`` (ResNeXt, post-act) or
            ``'inception'`` (our pre-activation Inception-ResNet unit); see ``layers.units``.
        stem_type: ``'imagenet'`` (7x7/2 conv, BN-ReLU, 3x3/2 ceil-mode max-pool) or ``'cifar'`` (3x3/1 conv).
        stem_chs: Stem output channels.
        stage_chs: Output channels of each stage.
        stage_strides: Stride of each stage's first unit.
        stage_units: Plain residual units at the start of each stage (the first one changes width/stride).
        stage_modules: Attention Modules following them in each stage.
        stage_tail_units: Plain residual units after the modules of each stage (None: none).
        mask_levels: Max-pool levels of the encoder-decoder mask in each stage (0 where there is no module).
        p: Pre-processing units before the trunk/mask split, and post-processing units after the merge.
        t: Trunk units.
        r: Units between adjacent pooling layers of the mask (2r at the lowest resolution).
        bottle_ratio: Bottleneck width / output width of each unit.
        groups: Groups of each unit's 3x3 conv (cardinality of the NeXt units).
        attention_residual: ``(1 + M) * T`` (attention residual learning) if True, else ``M * T``.
        mask_act: Mask activation: ``'mixed'`` (sigmoid), ``'channel'`` (L2 over channels), ``'spatial'``.
        mask_type: ``'encoder_decoder'`` (bottom-up top-down) or ``'local'`` (units at full resolution).
        local_mask_units: Full-resolution units of each ``'local'`` mask per stage (None: as many as match the MACs of
            the encoder-decoder mask's units, which run at 1/4, 1/16, ... of the area; at least one).
        mask_wiring: How the encoder-decoder mask adds up: ``'official'`` (the Caffe files: ``skip(s)`` merges,
            ``M = head(up)``) or ``'pytorchcv'`` (pytorchcv's ResAttNet, the net of the one public ImageNet checkpoint:
            ``s + skip(s)`` merges and ``M = head(up + T)``; ``PytorchcvEncoderDecoderMask``). Same parameters.
        max_pool: The 3x3/s2 max-pools of the stem and the masks: ``'caffe'`` (no padding, ceil mode; official) or
            ``'torch'`` (padding 1, floor mode; pytorchcv).
        conv_init: Conv weight init for training from scratch: ``'kaiming_normal_fan_out'`` (timm's ResNet
            convention) or ``'kaiming_uniform_fan_in'`` (pytorchcv's ``nn.init.kaiming_uniform_``).
        memory_efficient: Keep fewer tensors for backward in training (``layers.memory``): each block of each stage
            runs under a selective activation checkpoint (public ``torch.utils.checkpoint`` APIs) that keeps the
            convolutions' outputs and recomputes BN, ReLU, sigmoid, adds and resampling in backward. Same outputs
            (bit-identical), same gradients (equal to plain autocast's under AMP), BN statistics updated once; works
            in fp32 and under bf16/fp16 autocast, eager and under ``torch.compile``, with SyncBN, channels_last,
            drop_path, ``features_only`` and DDP (tested in one process); eval, no-grad, TorchScript, FX and
            torch.export run the plain path; ``set_grad_checkpointing`` (whole blocks, keeps less) takes precedence.
            Not part of the paper. What it saves and costs: ``docs/training.md`` (measured by
            ``benchmarks/activations.py`` and ``benchmarks/lean_speed.py``). Off by default: the backward reruns
            each block's non-convolution ops, a cost over the 5% a default may take.
    """
    unit: str = 'preact'
    stem_type: Literal['imagenet', 'cifar'] = 'imagenet'
    stem_chs: int = 64
    stage_chs: Tuple[int, ...] = (256, 512, 1024, 2048)
    stage_strides: Tuple[int, ...] = (1, 2, 2, 2)
    stage_units: Tuple[int, ...] = (1, 1, 1, 3)
    stage_modules: Tuple[int, ...] = (1, 1, 1, 0)
    stage_tail_units: Optional[Tuple[int, ...]] = None
    mask_levels: Tuple[int, ...] = (3, 2, 1, 0)
    p: int = 1
    t: int = 2
    r: int = 1
    bottle_ratio: float = 0.25
    groups: int = 1
    attention_residual: bool = True
    mask_act: Literal['mixed', 'channel', 'spatial'] = 'mixed'
    mask_type: Literal['encoder_decoder', 'local'] = 'encoder_decoder'
    local_mask_units: Optional[Tuple[int, ...]] = None
    mask_wiring: Literal['official', 'pytorchcv'] = 'official'
    max_pool: Literal['caffe', 'torch'] = 'caffe'
    conv_init: Literal['kaiming_normal_fan_out', 'kaiming_uniform_fan_in'] = 'kaiming_normal_fan_out'
    memory_efficient: bool = False

    # fields that change how the net is trained or run, not what it computes (not recorded with its weights)
    NON_FUNCTIONAL = ('conv_init', 'memory_efficient')

    @classmethod
    def from_overrides(cls, base: 'ResAttnCfg', overrides: Dict[str, Any]) -> 'ResAttnCfg':
        """ ``base`` with ``overrides`` (kwargs of ``timm.create_model``) applied; lists become tuples. """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(
                f'ResidualAttentionNet got unexpected keyword argument(s) {unknown}; '
                f'architecture fields that can be overridden: {sorted(names)}'
            )
        return replace(base, **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})

    @classmethod
    def cifar(cls, m: int, p: int = 1, t: int = 2, r: int = 1) -> 'ResAttnCfg':
        """ CIFAR Attention-(36m+20) (paper §4.1): ResNet-164's pre-act bottleneck widths (16/32/64, outputs
        64/128/256) at 32/16/8 px, ``m`` modules per stage, one mask max-pool per stage (32->16, 16->8, 8->4), three
        tail units. The paper gives neither the widths nor the mask pooling: both are our reading.

        Trunk depth: stem conv + 3 x 3 layers (stage-entry units) + 3m x 3(2p+t) (modules) + 3 x 3 (tail units)
        + fc = 20 + 9m(2p+t), i.e. 36m+20 for p=1 t=2 and 452 for m=6 p=2 t=4.
        """
        return cls(
            unit='preact',
            stem_type='cifar',
            stem_chs=16,
            stage_chs=(64, 128, 256),
            stage_strides=(1, 2, 2),
            stage_units=(1, 1, 1),
            stage_modules=(m, m, m),
            stage_tail_units=(0, 0, 3),
            mask_levels=(1, 1, 1),
            p=p,
            t=t,
            r=r,
        )

    @property
    def num_stages(self) -> int:
        return len(self.stage_chs)

    def tail_units(self, stage_idx: int) -> int:
        return self.stage_tail_units[stage_idx] if self.stage_tail_units else 0

    def blocks_per_stage(self) -> Tuple[int, ...]:
        """ Blocks (plain units + Attention Modules + tail units) of each stage, in ``stages.<i>``. """
        return tuple(
            self.stage_units[i] + self.stage_modules[i] + self.tail_units(i) for i in range(self.num_stages))

    def local_units(self, stage_idx: int) -> int:
        """ Units of a ``'local'`` mask: explicit, or the full-resolution equivalent of the encoder-decoder mask. """
        if self.local_mask_units is not None:
            return self.local_mask_units[stage_idx]
        levels, r = self.mask_levels[stage_idx], self.r
        # area of each encoder-decoder unit relative to the trunk: r (2r lowest) after pool k at 4^-k,
        # one skip and r up units at each level above the lowest
        area = sum((2 * r if k == levels else r) * 4.0 ** -k for k in range(1, levels + 1))
        area += sum((1 + r) * 4.0 ** -k for k in range(1, levels))
        return max(1, round(area))

    def stride_schedule(self, output_stride: Optional[int] = None) -> List[Tuple[int, int, int, int]]:
        """ Per stage ``(stride, first_dilation, dilation, reduction)`` for ``output_stride`` (None: the net's own).

        timm's ResNet rule (``resnet.make_blocks``): a stage whose stride would take the net past ``output_stride``
        keeps its input's resolution (stride 1) and multiplies the dilation by that stride instead, and so do all
        stages after it; its first unit keeps the previous dilation (``first_dilation``), the later ones use the new
        one. ``reduction`` is the stride of the stage's output relative to the input (``feature_info``). This is the
        one place ``output_stride`` is checked against the net (its type and value: ``MODEL_ARGS``).
        """
        output_stride = MODEL_ARGS.check_value('output_stride', output_stride)
        stem_stride = 4 if self.stem_type == 'imagenet' else 1
        native = stem_stride * math.prod(self.stage_strides)
        if output_stride is not None and self.stem_type != 'imagenet':
            raise ConfigError(
                f"output_stride={output_stride!r}: a net with stem_type={self.stem_type!r} runs at stride "
                f"{native} overall (stem stride {stem_stride}, stage_strides={self.stage_strides}), below any "
                f"output stride, so there is nothing to dilate. output_stride applies to the ImageNet-layout nets "
                f"(stem_type='imagenet') only; leave it unset here."
            )
        net_stride, dilation = stem_stride, 1
        schedule = []
        for stride in self.stage_strides:
            first_dilation = dilation
            if output_stride is not None and (dilation > 1 or net_stride * stride > output_stride):
                dilation *= stride
                stride = 1
            else:
                net_stride *= stride
            schedule.append((stride, first_dilation, dilation, net_stride))
        if output_stride is not None and net_stride != output_stride:
            if native < output_stride:
                why = f'reach only stride {native}, and dilation can only keep a resolution, never reduce it further'
            else:
                why = f'reach stride {native}, and with whole stages dilated the closest it gets is {net_stride}'
            raise ConfigError(
                f'output_stride={output_stride} does not fit this net: its stem (stride {stem_stride}) and '
                f'stage_strides={self.stage_strides} {why}'
            )
        return schedule

    def min_input_size(self, output_stride: Optional[int] = None, min_upsampled: int = 1) -> int:
        """ The smallest square input every max-pool of the network accepts (found by walking the spatial sizes), at
        ``output_stride`` (``stride_schedule``: dilated stages have stride 1 and keep their input's size).
        ``min_upsampled``: also require every map a mask upsamples to (the trunk's and each level above the
        deepest) to be at least this wide (2 for exported programs, see ``export.program.export_min_size``). """
        strides = [stage[0] for stage in self.stride_schedule(output_stride)]

        def fits(size: int) -> bool:
            if self.stem_type == 'imagenet':
                size = _pool_out((size + 1) // 2, self.max_pool)  # 7x7/2 conv pad 3, then the stem max-pool
            for stride, modules, levels in zip(strides, self.stage_modules, self.mask_levels):
                size = (size + stride - 1) // stride  # 3x3 conv, padding = dilation, stride 1 or 2
                if size < 1:
                    return False
                if modules and self.mask_type == 'encoder_decoder':
                    h = size
                    for _ in range(levels):
                        if h < min_upsampled:
                            return False
                        h = _pool_out(h, self.max_pool)
                        if h < 1:
                            return False
            return True

        for s in range(1, 4097):
            if fits(s):
                return s
        raise ConfigError('no input size up to 4096 fits this architecture (too many strides and mask levels)')

    def function_fields(self) -> Dict[str, Any]:
        """ Every field that changes what the network computes (all but ``NON_FUNCTIONAL``), JSON-ready. """
        return {
            f.name: list(v) if isinstance(v, tuple) else v
            for f in fields(self) for v in (getattr(self, f.name),) if f.name not in self.NON_FUNCTIONAL
        }

    def validate(self) -> 'ResAttnCfg':
        """ Check every field (its type and range against ``MODEL_ARGS``, then the rules between fields); returns
        the config with its values normalised (numpy scalars to Python ones, lists to tuples). """
        self = replace(self, **MODEL_ARGS.check({f.name: getattr(self, f.name) for f in fields(self)}))

        def fail(name: str, expected: str) -> None:
            raise ConfigError(f'{name}={getattr(self, name)!r} is invalid: expected {expected}')

        n = len(self.stage_chs)
        for name in _PER_STAGE:
            value = getattr(self, name)
            if value is not None and len(value) != n:
                fail(name, f'a tuple of {n} values, one per stage (stage_chs has {n} stages)')
        ratio = self.bottle_ratio
        min_width = 2 if self.unit == 'inception' else 1  # the inception unit's narrowest branch is half the width
        for chs in self.stage_chs:
            width = int(chs * ratio)
            if width < min_width:
                fail('bottle_ratio', f'a ratio that gives every unit at least {min_width} channel(s) (stage width '
                                     f'{chs} x {ratio} = {chs * ratio:g})')
            if self.unit != 'inception' and width % self.groups:
                raise ConfigError(f'groups={self.groups} is invalid: expected a divisor of the 3x3 conv width {width} '
                                  f'(stage width {chs} x bottle_ratio {ratio})')
        for i, (modules, levels) in enumerate(zip(self.stage_modules, self.mask_levels)):
            if modules and self.mask_type == 'encoder_decoder' and levels < 1:
                raise ConfigError(f'mask_levels={self.mask_levels!r} is invalid: stage {i} has Attention Modules, '
                                  f'and an encoder-decoder mask needs mask_levels >= 1 there')
        if self.mask_wiring != 'official' and self.mask_type != 'encoder_decoder':
            raise ConfigError(f"mask_wiring={self.mask_wiring!r} only applies to mask_type='encoder_decoder'")
        self.min_input_size()
        return self
