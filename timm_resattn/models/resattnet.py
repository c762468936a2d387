""" Residual Attention Network

Paper: `Residual Attention Network for Image Classification` - Fei Wang, Mengqing Jiang, Chen Qian, Shuo Yang,
Cheng Li, Honggang Zhang, Xiaogang Wang, Xiaoou Tang (CVPR 2017), https://arxiv.org/abs/1704.06904

The ImageNet nets reproduce the authors' official Caffe deploy definitions
(https://github.com/fwang91/residual-attention-network, ``imagenet_model/*-deploy.prototxt``) layer for layer:
same structure, same learnable-parameter count and the same function given the same weights
(``timm_resattn.convert.caffe`` maps the authors' Caffe blobs onto these modules). Where the paper and the official
files disagree, the files win; each entrypoint's docstring says where.

Hacked together by the timm-resattn authors, Apache-2.0.
"""
import math
import re
from dataclasses import dataclass, fields, replace
from functools import partial
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
from timm.layers import BatchNormAct2d, ClassifierHead, LayerType, get_act_layer, register_notrace_function
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._builder import resolve_pretrained_cfg
from timm.models._manipulate import checkpoint_seq

try:
    from timm.models._features import feature_take_indices
except ImportError:  # older timm
    from timm.layers import feature_take_indices

from ..layers.attention import (
    MASK_ACTS, MASK_TYPES, MASK_WIRINGS, MAX_POOLS, AttentionModule, EncoderDecoderMask, LocalConvMask,
    PytorchcvEncoderDecoderMask, create_max_pool,
)
from ..errors import ConfigError
from ..layers.memory import LeanMaxPool2d
from ..layers.units import create_unit, unit_preactivates_input

__all__ = [
    'ResAttnCfg', 'ResidualAttentionNet', 'model_cfgs', 'checkpoint_filter_fn', 'convert_pytorchcv_state_dict',
    'is_pytorchcv_state_dict',
]


CONV_INITS = ('kaiming_normal_fan_out', 'kaiming_uniform_fan_in')


@dataclass(frozen=True)
class ResAttnCfg:
    """ Architecture of a Residual Attention Network. A variant is one row of ``model_cfgs``.

    Every field can be overridden from ``timm.create_model(name, **kwargs)`` (and train.py's ``--model-kwargs``).

    Args:
        unit: Residual unit type: ``'preact'`` (pre-activation bottleneck) or ``'next'`` (ResNeXt, post-act).
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
        memory_efficient: Keep fewer tensors for backward in training (``layers.memory``): each BN-ReLU-conv keeps
            only BN's input and recomputes the ReLU output in backward, the max-pools keep a uint8 argmax. Same
            outputs (bit-identical), same gradients (up to fp32 summation order), same running stats; eval,
            no-grad, TorchScript, FX, ``torch.compile`` and autocast take the plain path. Not part of the paper.
            Saved activations at 224 (fp32, per image): Attention-56 157 -> 81 MiB, Attention-92 224 -> 115 MiB
            (``benchmarks/activations.py``). Off by default: the backward recomputes every BN-ReLU, and a training
            step measured ~1.0-1.27x the plain step's time on a shared 2-core CPU (``benchmarks/lean_speed.py``),
            over the 5% allowed for a default.
    """
    unit: str = 'preact'
    stem_type: str = 'imagenet'
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
    mask_act: str = 'mixed'
    mask_type: str = 'encoder_decoder'
    local_mask_units: Optional[Tuple[int, ...]] = None
    mask_wiring: str = 'official'
    max_pool: str = 'caffe'
    conv_init: str = 'kaiming_normal_fan_out'
    memory_efficient: bool = False

    def validate(self) -> 'ResAttnCfg':
        n = len(self.stage_chs)
        for name in ('stage_strides', 'stage_units', 'stage_modules', 'mask_levels'):
            if len(getattr(self, name)) != n:
                raise ValueError(f'{name}={getattr(self, name)} must have one entry per stage ({n} stages)')
        if self.stem_type not in ('imagenet', 'cifar'):
            raise ValueError(f"stem_type={self.stem_type!r} is not supported; expected 'imagenet' or 'cifar'")
        if self.mask_act not in MASK_ACTS:
            raise ValueError(f'mask_act={self.mask_act!r} is not supported; expected one of {MASK_ACTS}')
        if self.mask_type not in MASK_TYPES:
            raise ValueError(f'mask_type={self.mask_type!r} is not supported; expected one of {MASK_TYPES}')
        if self.mask_wiring not in MASK_WIRINGS:
            raise ValueError(f'mask_wiring={self.mask_wiring!r} is not supported; expected one of {MASK_WIRINGS}')
        if self.mask_wiring != 'official' and self.mask_type != 'encoder_decoder':
            raise ValueError(f"mask_wiring={self.mask_wiring!r} only applies to mask_type='encoder_decoder'")
        if self.max_pool not in MAX_POOLS:
            raise ValueError(f'max_pool={self.max_pool!r} is not supported; expected one of {MAX_POOLS}')
        if self.conv_init not in CONV_INITS:
            raise ValueError(f'conv_init={self.conv_init!r} is not supported; expected one of {CONV_INITS}')
        if self.p < 0 or self.t < 1 or self.r < 1:
            raise ValueError(f'need p >= 0, t >= 1 and r >= 1 (paper Fig. 2), got p={self.p}, t={self.t}, r={self.r}')
        for i, (units, modules, levels) in enumerate(zip(self.stage_units, self.stage_modules, self.mask_levels)):
            if units < 1:
                raise ValueError(f'stage {i}: stage_units must be >= 1 (the unit that sets width and stride)')
            if modules and self.mask_type == 'encoder_decoder' and levels < 1:
                raise ValueError(f'stage {i}: an encoder-decoder mask needs mask_levels >= 1, got {levels}')
        if self.stage_tail_units is not None and len(self.stage_tail_units) != n:
            raise ValueError(f'stage_tail_units={self.stage_tail_units} must have one entry per stage ({n} stages)')
        if self.local_mask_units is not None and len(self.local_mask_units) != n:
            raise ValueError(f'local_mask_units={self.local_mask_units} must have one entry per stage ({n})')
        if not isinstance(self.memory_efficient, bool):
            raise ConfigError(f'memory_efficient={self.memory_efficient!r} must be True or False')
        return self

    def tail_units(self, stage_idx: int) -> int:
        return self.stage_tail_units[stage_idx] if self.stage_tail_units else 0

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


def _pool_out(size: int, mode: str = 'caffe') -> int:
    """ Output size of the 3x3/s2 max-pool: ceil mode without padding (``'caffe'``; 0 if the input is too small)
    or floor mode with padding 1 (``'torch'``: ceil(size / 2), any size >= 1 works).
    """
    if mode == 'torch':
        return (size + 1) // 2
    if size < 2:
        return 0
    return (size - 2) // 2 + 1


def _min_input_size(cfg: ResAttnCfg) -> int:
    """ The smallest square input every max-pool of the network accepts (found by walking the spatial sizes). """
    def ok(size: int) -> bool:
        if cfg.stem_type == 'imagenet':
            size = _pool_out((size + 1) // 2, cfg.max_pool)  # 7x7/2 conv pad 3, then the stem max-pool
        for stride, modules, levels in zip(cfg.stage_strides, cfg.stage_modules, cfg.mask_levels):
            size = (size + stride - 1) // stride  # 3x3 conv pad 1 with stride 1 or 2
            if size < 1:
                return False
            if modules and cfg.mask_type == 'encoder_decoder':
                h = size
                for _ in range(levels):
                    h = _pool_out(h, cfg.max_pool)
                    if h < 1:
                        return False
        return True

    for s in range(1, 4097):
        if ok(s):
            return s
    raise ValueError('no input size up to 4096 fits this architecture')


@register_notrace_function
def check_input_size(x: torch.Tensor, min_size: int) -> torch.Tensor:
    """ Raise a ValueError naming the minimum if ``x`` is too small; returns ``x`` (so that FX keeps the check). """
    if x.shape[-2] < min_size or x.shape[-1] < min_size:
        raise ValueError(
            f'input spatial size {x.shape[-2]}x{x.shape[-1]} is below the minimum {min_size}x{min_size} '
            f'this network accepts (its mask branches max-pool the feature maps down to 1x1)'
        )
    return x


class ResidualAttentionNet(nn.Module):
    """ Residual Attention Network (Wang et al., CVPR 2017).

    Layout: ``stem`` -> ``stages.0..N-1`` (each ``nn.Sequential`` of residual units and Attention Modules) ->
    ``norm`` (final BN-ReLU of pre-activation nets) -> ``head`` (global pool, dropout, fc).
    """

    def __init__(
            self,
            cfg: ResAttnCfg,
            num_classes: int = 1000,
            in_chans: int = 3,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            act_layer: LayerType = nn.ReLU,
            zero_init_last: bool = False,
            device=None,
            dtype=None,
            **kwargs,
    ):
        """
        Args:
            cfg: Architecture config (a ``model_cfgs`` row).
            num_classes: Number of classifier outputs (0 for no classifier).
            in_chans: Number of input image channels.
            global_pool: Global pooling type ('avg', 'max', 'avgmax', 'catavgmax', or '' for none).
            drop_rate: Dropout rate before the classifier.
            drop_path_rate: Stochastic depth rate, linear over the trunk's blocks; mask-branch units never drop.
            act_layer: Activation layer of every BN-act (ReLU officially).
            zero_init_last: Zero-init the last BN/conv of each residual unit.
            **kwargs: Overrides of ``cfg`` fields (e.g. ``attention_residual=False``, ``mask_act='spatial'``).
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if kwargs:
            cfg_names = {f.name for f in fields(ResAttnCfg)}
            unknown = sorted(set(kwargs) - cfg_names)
            if unknown:
                raise TypeError(
                    f'ResidualAttentionNet got unexpected keyword argument(s) {unknown}; '
                    f'architecture fields that can be overridden: {sorted(cfg_names)}'
                )
            # lists (e.g. from train.py's --model-kwargs stage_modules=[1,2,3]) become tuples like the defaults
            cfg = replace(cfg, **{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})
        self.cfg = cfg = cfg.validate()
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        act_layer = get_act_layer(act_layer)
        norm_layer = BatchNormAct2d
        preact = unit_preactivates_input(cfg.unit)
        self.min_input_size = _min_input_size(cfg)

        # stem
        self.stem = nn.Sequential()
        if cfg.stem_type == 'imagenet':
            self.stem.add_module('conv', nn.Conv2d(in_chans, cfg.stem_chs, 7, stride=2, padding=3, bias=False, **dd))
            self.stem.add_module('norm', norm_layer(cfg.stem_chs, act_layer=act_layer, **dd))
            # Caffe max-pool, 3x3/s2 without padding in ceil mode: 112 -> 56 (not 55) at 224 (or pytorchcv's pad 1)
            self.stem.add_module('pool', create_max_pool(cfg.max_pool))
            self.feature_info = [dict(num_chs=cfg.stem_chs, reduction=2, module='stem.norm')]
            stride = 4
        else:
            self.stem.add_module('conv', nn.Conv2d(in_chans, cfg.stem_chs, 3, padding=1, bias=False, **dd))
            self.feature_info = [dict(num_chs=cfg.stem_chs, reduction=1, module='stem.conv')]
            stride = 1

        # stages
        unit_kwargs = dict(bottle_ratio=cfg.bottle_ratio, groups=cfg.groups, act_layer=act_layer, **dd)
        num_blocks = sum(cfg.stage_units) + sum(cfg.stage_modules) + sum(cfg.stage_tail_units or ())
        dpr = [drop_path_rate * i / max(num_blocks - 1, 1) for i in range(num_blocks)]
        block_idx = 0
        prev_chs = cfg.stem_chs
        stages = []
        for stage_idx, out_chs in enumerate(cfg.stage_chs):
            blocks = []
            for unit_idx in range(cfg.stage_units[stage_idx]):
                blocks.append(create_unit(
                    cfg.unit,
                    prev_chs,
                    out_chs,
                    stride=cfg.stage_strides[stage_idx] if unit_idx == 0 else 1,
                    drop_path_rate=dpr[block_idx],
                    **unit_kwargs,
                ))
                prev_chs = out_chs
                block_idx += 1
            for _ in range(cfg.stage_modules[stage_idx]):
                blocks.append(self._make_attention_module(cfg, stage_idx, out_chs, dpr[block_idx], unit_kwargs, preact))
                block_idx += 1
            for _ in range(cfg.tail_units(stage_idx)):
                blocks.append(create_unit(cfg.unit, out_chs, out_chs, drop_path_rate=dpr[block_idx], **unit_kwargs))
                block_idx += 1
            stride *= cfg.stage_strides[stage_idx]
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=out_chs, reduction=stride, module=f'stages.{stage_idx}'))
        self.stages = nn.Sequential(*stages)

        self.num_features = self.head_hidden_size = prev_chs
        # pre-activation nets end with BN-ReLU ("post_res_4_3/bn"); the NeXt units already end in a ReLU
        self.norm = norm_layer(prev_chs, act_layer=act_layer, **dd) if preact else nn.Identity()
        if preact:
            self.feature_info[-1]['module'] = 'norm'
        self.head = ClassifierHead(prev_chs, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)

        self.init_weights(zero_init_last=zero_init_last)
        if cfg.memory_efficient:
            self.set_memory_efficient(True)

    @staticmethod
    def _make_attention_module(
            cfg: ResAttnCfg,
            stage_idx: int,
            chs: int,
            drop_path_rate: float,
            unit_kwargs: Dict[str, Any],
            preact: bool,
    ) -> AttentionModule:
        def trunk_unit():
            return create_unit(cfg.unit, chs, chs, drop_path_rate=drop_path_rate, **unit_kwargs)

        def mask_unit():
            return create_unit(cfg.unit, chs, chs, **unit_kwargs)

        mask_kwargs = dict(
            preact_head=preact,
            mask_act=cfg.mask_act,
            act_layer=unit_kwargs['act_layer'],
            device=unit_kwargs['device'],
            dtype=unit_kwargs['dtype'],
        )
        if cfg.mask_type == 'encoder_decoder':
            mask_cls = PytorchcvEncoderDecoderMask if cfg.mask_wiring == 'pytorchcv' else EncoderDecoderMask
            mask = mask_cls(
                chs, cfg.mask_levels[stage_idx], mask_unit, r=cfg.r, max_pool=cfg.max_pool, **mask_kwargs)
        else:
            mask = LocalConvMask(chs, cfg.local_units(stage_idx), mask_unit, **mask_kwargs)
        return AttentionModule(
            pre=nn.Sequential(*[trunk_unit() for _ in range(cfg.p)]),
            trunk=nn.Sequential(*[trunk_unit() for _ in range(cfg.t)]),
            mask=mask,
            post=nn.Sequential(*[trunk_unit() for _ in range(cfg.p)]),
            attention_residual=cfg.attention_residual,
        )

    @torch.jit.ignore
    def init_weights(self, zero_init_last: bool = False):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if self.cfg.conv_init == 'kaiming_uniform_fan_in':
                    nn.init.kaiming_uniform_(m.weight)  # pytorchcv's ResAttNet._init_params
                else:
                    nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_last:
            for m in self.modules():
                if hasattr(m, 'zero_init_last'):
                    m.zero_init_last()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(
            stem=r'^stem',
            blocks=[
                (r'^stages\.(\d+)' if coarse else r'^stages\.(\d+)\.(\d+)', None),
                (r'^norm', (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def set_memory_efficient(self, enable: bool = True):
        """ Switch the memory-lean training path (``ResAttnCfg.memory_efficient``) on or off in place.

        Sets ``memory_efficient`` on every unit and mask head, and wraps (or unwraps) each max-pool in
        ``LeanMaxPool2d``. Parameters, buffers and outputs are unchanged.
        """
        for m in self.modules():
            if isinstance(getattr(m, 'memory_efficient', None), bool):
                m.memory_efficient = enable
        for parent in list(self.modules()):
            for child_name, child in list(parent.named_children()):
                if enable and isinstance(child, nn.MaxPool2d) and not isinstance(parent, LeanMaxPool2d):
                    setattr(parent, child_name, LeanMaxPool2d(child))
                elif not enable and isinstance(child, LeanMaxPool2d):
                    setattr(parent, child_name, child.pool)
        self.cfg = replace(self.cfg, memory_efficient=enable)

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """ Forward features that returns intermediates.

        Args:
            x: Input image tensor.
            indices: Take last n feature levels if int, all if None, select matching indices if sequence
                (0 = stem, i = stage i - 1).
            norm: Apply the final norm (pre-activation nets) to the last stage's intermediate.
            stop_early: Stop iterating over stages when the last desired intermediate is reached.
            output_fmt: Shape of intermediate feature outputs ('NCHW' only).
            intermediates_only: Only return intermediate features.
        """
        assert output_fmt in ('NCHW',), 'Output shape must be NCHW.'
        x = check_input_size(x, self.min_input_size)
        intermediates = []
        num_stages = len(self.stages)
        take_indices, max_index = feature_take_indices(num_stages + 1, indices)

        if hasattr(self.stem, 'norm'):
            x = self.stem.norm(self.stem.conv(x))
            if 0 in take_indices:
                intermediates.append(x)
            x = self.stem.pool(x)
        else:
            x = self.stem(x)
            if 0 in take_indices:
                intermediates.append(x)

        if torch.jit.is_scripting() or not stop_early:  # can't slice blocks in torchscript
            stages = self.stages
        else:
            stages = self.stages[:max_index]
        feat_idx = 0
        for feat_idx, stage in enumerate(stages, start=1):
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint_seq(stage, x)
            else:
                x = stage(x)
            if feat_idx in take_indices:
                if feat_idx == num_stages and norm:
                    intermediates.append(self.norm(x))
                else:
                    intermediates.append(x)

        if intermediates_only:
            return intermediates
        if feat_idx == num_stages:
            x = self.norm(x)
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ):
        """ Prune layers not required for specified intermediates. """
        num_stages = len(self.stages)
        take_indices, max_index = feature_take_indices(num_stages + 1, indices)
        self.stages = self.stages[:max_index]  # truncate blocks w/ stem as idx 0
        if prune_norm or max_index < num_stages:
            self.norm = nn.Identity()
        if max_index < num_stages:
            # features now end at the last kept level; the head was sized for the final features, so it goes too
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
            prune_head = True
        if prune_head:
            self.head = ClassifierHead(self.num_features, 0, pool_type='')
            self.num_classes = 0
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = check_input_size(x, self.min_input_size)
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            for stage in self.stages:
                x = checkpoint_seq(stage, x)
        else:
            x = self.stages(x)
        x = self.norm(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = self.forward_head(x)
        return x


def _cifar_arch(m: int, p: int = 1, t: int = 2, r: int = 1) -> ResAttnCfg:
    """ CIFAR Attention-(36m+20) (paper §4.1): ResNet-164's pre-act bottleneck widths (16/32/64, outputs 64/128/256)
    at 32/16/8 px, m modules per stage, one mask max-pool per stage (32->16, 16->8, 8->4), three tail units.

    Trunk depth: stem conv + 3 x 3 layers (stage-entry units) + 3m x 3(2p+t) (modules) + 3 x 3 (tail units) + fc
    = 20 + 9m(2p+t), i.e. 36m+20 for p=1 t=2 and 452 for m=6 p=2 t=4.
    """
    return ResAttnCfg(
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


model_cfgs = dict(
    # ImageNet nets of the official Caffe files
    resattnet56=ResAttnCfg(unit='preact', stage_modules=(1, 1, 1, 0)),
    resattnet92=ResAttnCfg(unit='preact', stage_modules=(1, 2, 3, 0)),
    resattnext56=ResAttnCfg(unit='next', stage_modules=(1, 1, 1, 0), bottle_ratio=0.5, groups=32),
    resattnext92=ResAttnCfg(unit='next', stage_modules=(1, 2, 3, 0), bottle_ratio=0.5, groups=32),
    # Attention-56 as pytorchcv wires it: the net of the one public ImageNet checkpoint (a community port)
    resattnet56_pcv=ResAttnCfg(
        unit='preact', stage_modules=(1, 1, 1, 0), mask_wiring='pytorchcv', max_pool='torch',
        conv_init='kaiming_uniform_fan_in',
    ),
    # AttentionInception-56: the Attention-56 skeleton with our simplified Inception unit (no official definition)
    resattninc56=ResAttnCfg(unit='inception', stage_modules=(1, 1, 1, 0), bottle_ratio=0.125),
    # CIFAR family (paper §4.1); widths and mask pooling are our reading (the paper gives neither)
    resattnet56_cifar=_cifar_arch(1),
    resattnet92_cifar=_cifar_arch(2),
    resattnet128_cifar=_cifar_arch(3),
    resattnet164_cifar=_cifar_arch(4),
    resattnet236_cifar=_cifar_arch(6),
    resattnet452_cifar=_cifar_arch(6, p=2, t=4, r=3),
)


# pytorchcv's ResAttNet (``pytorchcv.models.resattnet``) parameter names -> ours. Its residual unit (``ResBlock``)
# holds the same tensors as ``PreActBottleneck`` under other names.
_PCV_UNIT_RULES = (
    (re.compile(r'body\.conv([123])\.bn\.'), r'norm\1.'),
    (re.compile(r'body\.conv([123])\.conv\.'), r'conv\1.'),
    (re.compile(r'identity_conv\.'), 'downsample.'),
)
_PCV_TOP_LEVEL = (
    ('features.init_block.conv.conv.', 'stem.conv.'),
    ('features.init_block.conv.bn.', 'stem.norm.'),
    ('features.post_activ.bn.', 'norm.'),
    ('output.', 'head.fc.'),
)
_PCV_UNIT_KEY = re.compile(r'features\.stage(\d+)\.unit(\d+)\.(.+)')
_PCV_BLOCK = re.compile(r'block(\d+)\.(.+)')


def is_pytorchcv_state_dict(state_dict: Dict[str, Any]) -> bool:
    """ True if ``state_dict`` (already unwrapped, ``module.`` stripped) has pytorchcv's ResAttNet names. """
    return any(k.startswith('features.init_block.') for k in state_dict)


def _pcv_unit_key(rest: str) -> Optional[str]:
    for pattern, repl in _PCV_UNIT_RULES:
        if pattern.match(rest):
            return pattern.sub(repl, rest, count=1)
    return None


def _pcv_attention_key(rest: str, levels: int, r: int) -> Optional[str]:
    """ Map a key below one pytorchcv ``AttBlock`` (hourglass depth ``levels``) to our ``AttentionModule``.

    pytorchcv's hourglass, for depth L: ``down{l}`` = pool + r units (our ``mask.down.{l-1}``); ``up{l}`` = r units +
    x2 upsampling, where the deepest ``up{L}`` runs right after ``down{L}`` (the second half of our
    ``mask.down.{L-1}``'s 2r units) and ``up{l}``, l < L, follows the merge with ``skip{l+1}`` (our
    ``mask.up.{L-1-l}.up``); ``skip1`` is the trunk; ``skip{m}``, m >= 2, wraps one unit as ``skip1`` (our
    ``mask.up.{L-m}.skip``); ``middle_block`` is the mask head; ``final_block`` the post unit.
    """
    def units(prefix: str, tail: str, offset: int = 0) -> Optional[str]:
        m = _PCV_BLOCK.fullmatch(tail)
        if m is None:
            return None
        unit = _pcv_unit_key(m.group(2))
        return None if unit is None else f'{prefix}.{int(m.group(1)) - 1 + offset}.{unit}'

    m = re.fullmatch(r'init_blocks\.blocks\.(.+)', rest)
    if m:
        return units('pre', m.group(1))
    m = re.fullmatch(r'hg\.skip_seq\.skip1\.blocks\.(.+)', rest)
    if m:
        return units('trunk', m.group(1))
    m = re.fullmatch(r'hg\.skip_seq\.skip(\d+)\.skip1\.(.+)', rest)
    if m and 2 <= int(m.group(1)) <= levels:
        unit = _pcv_unit_key(m.group(2))
        return None if unit is None else f'mask.up.{levels - int(m.group(1))}.skip.{unit}'
    m = re.fullmatch(r'hg\.down_seq\.down(\d+)\.res_blocks\.blocks\.(.+)', rest)
    if m and 1 <= int(m.group(1)) <= levels:
        return units(f'mask.down.{int(m.group(1)) - 1}', m.group(2))
    m = re.fullmatch(r'hg\.up_seq\.up(\d+)\.res_blocks\.blocks\.(.+)', rest)
    if m and 1 <= int(m.group(1)) <= levels:
        level = int(m.group(1))
        if level == levels:
            return units(f'mask.down.{levels - 1}', m.group(2), offset=r)
        return units(f'mask.up.{levels - 1 - level}.up', m.group(2))
    m = re.fullmatch(r'middle_block\.conv([12])\.(bn|conv)\.(.+)', rest)
    if m:
        return f"mask.head.{'norm' if m.group(2) == 'bn' else 'conv'}{m.group(1)}.{m.group(3)}"
    m = re.fullmatch(r'final_block\.(.+)', rest)
    if m:
        unit = _pcv_unit_key(m.group(1))
        return None if unit is None else f'post.0.{unit}'
    return None


def _check_pytorchcv_target(model: nn.Module) -> ResAttnCfg:
    cfg = getattr(model, 'cfg', None)
    ok = (
        isinstance(cfg, ResAttnCfg) and cfg.mask_wiring == 'pytorchcv' and cfg.max_pool == 'torch'
        and cfg.unit == 'preact' and cfg.stem_type == 'imagenet' and cfg.mask_type == 'encoder_decoder'
        and cfg.p == 1 and cfg.attention_residual and cfg.mask_act == 'mixed' and not cfg.stage_tail_units
    )
    if not ok:
        what = (
            f"a model with mask_wiring={cfg.mask_wiring!r}, max_pool={cfg.max_pool!r}, unit={cfg.unit!r}"
            if isinstance(cfg, ResAttnCfg) else f'a {type(model).__name__}'
        )
        raise ValueError(
            f"these are pytorchcv ResAttNet weights (keys like 'features.init_block.conv.conv.weight'): they "
            f"compute pytorchcv's function only in an architecture wired like pytorchcv's, i.e. 'resattnet56_pcv' "
            f"(mask_wiring='pytorchcv', max_pool='torch', pre-activation units, p=1), not in {what}. The official "
            f"nets have the same parameter shapes but a different mask branch, so loading into them would run but "
            f"be wrong. Use timm.create_model('resattnet56_pcv', pretrained=True, "
            f"pretrained_cfg_overlay=dict(file='resattnet56.pth'))."
        )
    return cfg


def convert_pytorchcv_state_dict(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, Any]:
    """ Rename a pytorchcv ResAttNet state_dict (``pytorchcv.models.resattnet``, ``module.`` already stripped) to
    ``model``'s names. ``model`` must be wired like pytorchcv (``resattnet56_pcv``); unknown keys are an error.
    """
    cfg = _check_pytorchcv_target(model)
    out, unknown = {}, []
    for k, v in state_dict.items():
        new = None
        for src, dst in _PCV_TOP_LEVEL:
            if k.startswith(src):
                new = dst + k[len(src):]
                break
        if new is None:
            m = _PCV_UNIT_KEY.fullmatch(k)
            if m:
                stage, idx, rest = int(m.group(1)) - 1, int(m.group(2)) - 1, m.group(3)
                if 0 <= stage < len(cfg.stage_chs):
                    if idx < cfg.stage_units[stage]:
                        sub = _pcv_unit_key(rest)
                    else:
                        sub = _pcv_attention_key(rest, cfg.mask_levels[stage], cfg.r)
                    if sub is not None:
                        new = f'stages.{stage}.{idx}.{sub}'
        if new is None:
            unknown.append(k)
        else:
            out[new] = v
    if unknown:
        raise ValueError(
            f'{len(unknown)} pytorchcv key(s) have no counterpart in this {type(model).__name__} '
            f'(stage units {cfg.stage_units}, modules {cfg.stage_modules}, mask levels {cfg.mask_levels}): '
            f'{unknown[:5]}{" ..." if len(unknown) > 5 else ""}'
        )
    return out


def checkpoint_filter_fn(state_dict: Dict[str, Any], model: ResidualAttentionNet) -> Dict[str, torch.Tensor]:
    """ Unwrap training checkpoints (``state_dict`` / ``model`` / ``state_dict_ema`` entries) and strip the
    ``module.`` prefix DataParallel/DDP adds. Our own state_dicts pass through otherwise unchanged.

    pytorchcv ResAttNet weights (recognised by ``features.init_block.*`` keys; e.g. the community resattnet56
    checkpoint, a ``{'state_dict': {'module.features...': ...}, 'optimizer': ..., ...}`` training dict) are renamed
    to ours when ``model`` is wired like pytorchcv (``resattnet56_pcv``), and rejected with a ValueError otherwise.
    Caffe weights go through ``timm_resattn.convert.caffe`` first.
    """
    if isinstance(state_dict, dict):
        for key in ('state_dict', 'model', 'state_dict_ema'):
            if key in state_dict and isinstance(state_dict[key], dict):
                state_dict = state_dict[key]
                break
    out = {}
    for k, v in state_dict.items():
        if k.startswith('module.'):
            k = k[len('module.'):]
        out[k] = v
    if is_pytorchcv_state_dict(out):
        out = convert_pytorchcv_state_dict(out, model)
    return out


# Stands in for a local weight file's tensors in ``pretrained_cfg['state_dict']`` (see ``_prepare_pretrained``).
_LOADED_FILE_KEY = '__timm_resattn_loaded_file__'


def _weights_source(cfg) -> Optional[Tuple[str, str]]:
    """ (route, description) of the weights ``cfg`` points at, in the priority order of timm's
    ``_resolve_pretrained_source``: hf-hub / local-dir sources, then state_dict, file, hf_hub_id, url; None if none. """
    if cfg.source == 'hf-hub':
        return 'hf-hub', f"Hugging Face Hub weights 'hf-hub:{cfg.hf_hub_id}'"
    if cfg.source == 'local-dir':
        return 'local-dir', f"weights in 'local-dir:{cfg.file}'"
    if cfg.state_dict:
        return 'state_dict', "the state_dict given in the pretrained cfg"
    if cfg.file:
        return 'file', f"weight file '{cfg.file}'"
    if cfg.hf_hub_id:
        return 'hf-hub', f"Hugging Face Hub weights '{cfg.hf_hub_id}'"
    if cfg.url:
        return 'url', f"weights at '{cfg.url}'"
    return None


def _no_weights_error(variant: str, cfg) -> RuntimeError:
    """ The loud failure for ``pretrained=True`` on an architecture/tag that has no published weights. """
    import timm
    available = timm.list_pretrained('resatt*')
    name = f'{variant}.{cfg.tag}' if cfg.tag else variant
    return RuntimeError(
        f"No pretrained weights exist for '{name}': the authors never released ImageNet weights for this "
        f"architecture. Weights that do exist: {available or 'none'}. Use pretrained=False for random init, or "
        f"load a checkpoint of your own with timm.create_model('{variant}', pretrained=True, "
        f"pretrained_cfg_overlay=dict(file='path/to/weights.safetensors')) (or checkpoint_path=...). Caffe "
        f"weights of the official nets convert with `python -m timm_resattn.convert caffe IN.caffemodel "
        f"OUT.safetensors --model {variant}`."
    )


def _prepare_pretrained(variant: str, kwargs: Dict[str, Any]):
    """ Route ``pretrained=True`` loading through ``timm_resattn.weights``; fail loudly if there are no weights.

    A local ``file`` (``pretrained_cfg_overlay=dict(file=...)``, train.py ``--pretrained-path``) is read here with
    ``load_state_dict_file`` (safetensors, or ``torch.load(weights_only=True)``; clear errors for corrupt files and
    code-executing pickles). timm's ``load_pretrained`` still does the loading (``state_dict`` outranks ``file`` in
    its source resolution), so ``checkpoint_filter_fn``, in_chans adaptation and the classifier reset for another
    ``num_classes`` all still apply. The cfg carries only a one-entry stand-in for the tensors (timm deep-copies the
    cfg), which the filter swaps for the real ones. Every source (file, hf-hub, local-dir, url, state_dict) is then
    checked against the model by ``check_state_dict`` so that mismatches fail with a short, specific message.

    Returns:
        (kwargs for build_model_with_cfg, pretrained filter fn)
    """
    from ..weights import check_state_dict, load_state_dict_file

    cfg = resolve_pretrained_cfg(
        variant,
        pretrained_cfg=kwargs.get('pretrained_cfg'),
        pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'),
    )
    found = _weights_source(cfg)
    if found is None:
        raise _no_weights_error(variant, cfg)
    route, source = found
    loaded = None
    if route == 'file' and not cfg.custom_load:
        loaded = load_state_dict_file(cfg.file)
        overlay = dict(kwargs.get('pretrained_cfg_overlay') or {})
        overlay.update(state_dict={_LOADED_FILE_KEY: cfg.file}, custom_load=False)
        kwargs = dict(kwargs, pretrained_cfg_overlay=overlay)
    features_only = bool(kwargs.get('features_only', False))

    def _filter(state_dict: Dict[str, Any], model: ResidualAttentionNet) -> Dict[str, torch.Tensor]:
        if loaded is not None and isinstance(state_dict, dict) and _LOADED_FILE_KEY in state_dict:
            state_dict = loaded
        state_dict = checkpoint_filter_fn(state_dict, model)
        # features_only builds load with num_classes=0: the classifier is dropped
        check_state_dict(state_dict, model, source=source, drop_classifier=True if features_only else None)
        return state_dict

    return kwargs, _filter


def _forget_loaded_state_dict(model: nn.Module) -> None:
    """ Keep no tensors (nor their stand-in) in ``model.pretrained_cfg`` once loaded (EMA/deepcopy, hub export). """
    for attr in ('pretrained_cfg', 'default_cfg'):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, dict):
            cfg.pop('state_dict', None)


def _create_resattnet(variant: str, pretrained: bool = False, **kwargs) -> ResidualAttentionNet:
    filter_fn = checkpoint_filter_fn
    if pretrained:
        kwargs, filter_fn = _prepare_pretrained(variant, kwargs)
    num_stages = len(model_cfgs[variant].stage_chs)
    model = build_model_with_cfg(
        ResidualAttentionNet,
        variant,
        pretrained,
        model_cfg=model_cfgs[variant],
        pretrained_filter_fn=filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=tuple(range(num_stages + 1))),
        **kwargs,
    )
    if pretrained:
        _forget_loaded_state_dict(model)
    return model


def _cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return {
        'url': url,
        'num_classes': 1000,
        'input_size': (3, 224, 224),
        'pool_size': (7, 7),
        'crop_pct': 0.875,
        'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN,
        'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'stem.conv',
        'classifier': 'head.fc',
        'paper_ids': 'arXiv:1704.06904',
        'paper_name': 'Residual Attention Network for Image Classification',
        'origin_url': 'https://github.com/fwang91/residual-attention-network',
        'license': 'apache-2.0',
        **kwargs,
    }


def _cifar_cfg(url: str = '', **kwargs) -> Dict[str, Any]:
    return _cfg(
        url=url,
        num_classes=10,
        input_size=(3, 32, 32),
        pool_size=(8, 8),
        crop_pct=1.0,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        **kwargs,
    )


default_cfgs = generate_default_cfgs({
    # No weights were ever published by the authors for these architectures.
    'resattnet56.untrained': _cfg(),
    'resattnet92.untrained': _cfg(test_input_size=(3, 320, 320), test_crop_pct=1.0),
    'resattnext56.untrained': _cfg(),
    'resattnext92.untrained': _cfg(),
    # The one public ImageNet checkpoint of a Residual Attention Network: a community port, not the authors'.
    'resattnet56_pcv.pq_in1k': _cfg(
        url='https://github.com/phamquiluan/ResidualAttentionNetwork/releases/download/v0.1.0/resattnet56.pth',
        num_classes=1000,
        # its evaluation: Resize(256) + CenterCrop(224), bilinear (torchvision's default), ImageNet mean/std
        crop_pct=0.875,
        interpolation='bilinear',
        mean=IMAGENET_DEFAULT_MEAN,
        std=IMAGENET_DEFAULT_STD,
        origin_url='https://github.com/phamquiluan/ResidualAttentionNetwork',
        license='unknown',  # the repository declares no license
        notes=(
            'Weights of the community resattnet56 of phamquiluan/ResidualAttentionNetwork (release v0.1.0), '
            "trained with pytorchcv's ResAttNet-56 (not the authors' Caffe net, whose weights were never released).",
            'ImageNet-1k val 77.02 top-1 / 93.57 top-5 at 224 (Resize 256, CenterCrop 224), as reported by its '
            'author, not measured here.',
        ),
    ),
    'resattninc56.untrained': _cfg(input_size=(3, 299, 299), pool_size=(10, 10)),
    'resattnet56_cifar.untrained': _cifar_cfg(),
    'resattnet92_cifar.untrained': _cifar_cfg(),
    'resattnet128_cifar.untrained': _cifar_cfg(),
    'resattnet164_cifar.untrained': _cifar_cfg(),
    'resattnet236_cifar.untrained': _cifar_cfg(),
    'resattnet452_cifar.untrained': _cifar_cfg(),
})


@register_model
def resattnet56(pretrained: bool = False, **kwargs) -> ResidualAttentionNet:
    """ Attention-56 (ImageNet), pre-activation units; the official ``Attention-56-deploy.prototxt``.

    31,810,728 params (31.9M in the paper counts BN running statistics too), 6.27 GMACs at 224.
    Modules per stage 1/1/1, p=1 t=2 r=1, mask max-pool levels 3/2/1.
    Differs from the file only in the final pool: a global average pool at every size (the file's fixed 7x7
    AVE pool is global at 224 only).
    """
    return _create_resattnet('resattnet56', pretrained, **kwargs)


@register_model
def resattnet56_pcv(pretrained: bool = False, **kwargs) -> ResidualAttentionNet:
    """ Attention-56 wired as the ``pytorchcv`` package's ``resattnet56`` (v0.0.74), the architecture of the only
    public ImageNet checkpoint (``resattnet56_pcv.pq_in1k``: a community port's weights, phamquiluan/
    ResidualAttentionNetwork; 77.02 / 93.57 top-1/top-5 as reported by its author, not measured here).

    Same modules and parameter shapes as ``resattnet56`` (31,810,728 params), same pre-activation units, stem conv,
    mask head, ``(1 + M) * T`` and final BN-ReLU; given the same weights it computes pytorchcv's function, not the
    official one. Exactly how it differs from the official Caffe wiring:

    * every 3x3/s2 max-pool (stem and masks) pads by 1 in floor mode (official: no padding, ceil mode), so the
      windows sit one pixel to the left/up, and odd sizes round up (57 -> 29, official 57 -> 28);
    * each skip connection of the mask adds its own input: ``interp(x) + (s + unit(s))`` (official:
      ``interp(x) + unit(s)``);
    * the trunk output is added to the mask before the mask head: ``M = head(interp(x -> T) + T)`` (official:
      ``M = head(interp(x -> T))``);
    * conv weights init with ``kaiming_uniform_`` (fan-in), only relevant when training from scratch.

    Where pytorchcv itself can't run, this net still does: pytorchcv upsamples by a fixed factor 2 (fails unless
    every mask map has an even size: at 224 it works, at 200 or 72 it raises) and pools with a fixed 7x7 average
    (only 224 gives its classifier 2048 features); here upsampling resizes to the merged tensor's exact size
    (bilinear, ``align_corners=True``, identical where pytorchcv runs) and the pool is global.

    ``timm.create_model('resattnet56_pcv', pretrained=True)`` downloads the released file;
    ``checkpoint_filter_fn`` renames pytorchcv's parameter names to ours.
    """
    return _create_resattnet('resattnet56_pcv', pretrained, **kwargs)


@register_model
def resattnet92(pretrained: bool = False, **kwargs) -> ResidualAttentionNet:
    """ Attention-92 (ImageNet), pre-activation units; the official ``Attention-92-deploy.prototxt``.

    52,466,344 params and 10.53 GMACs at 224 (21.50 at 320). The paper's Table 7 says 51.3M params: the official
    file has 1.17M more, and we follow the file. The paper evaluates at 320x320, where the file's fixed 7x7 AVE pool
    would give 2048x4x4 features that its 2048-input classifier cannot take: we pool globally at every size, the
    reading that keeps the classifier.
    """
    return _create_resattnet('resattnet92', pretrained, **kwargs)


@register_model
def resattnext56(pretrained: bool = False, **kwargs) -> ResidualAttentionNet:
    """ AttentionNeXt-56 (ImageNet), ResNeXt 32x(C/64)d post-activation units; ``AttentionNeXt-56-deploy.prototxt``.

    31,318,824 params (the paper's 31.9M repeats Attention-56's figure; the file gives 31.3M), 6.42 GMACs at 224.
    """
    return _create_resattnet('resattnext56', pretrained, **kwargs)


@register_model
def resattnext92(pretrained: bool = False, **kwargs) -> ResidualAttentionNet:
    """ AttentionNeXt-92 (ImageNet), ResNeXt units; ``AttentionNeXt-92-deploy.prototxt`` (not in the paper).

    52,102,952 params, 10.70 GMACs at 224. The published file is broken: its classifier reads ``ave_pool_gather``,
    which no layer produces; we read the only sensible input, the average-pooled features ``ave_pool``.
    """
    return _create_resattnet('resattnext92', pretrained, **kwargs)


@register_model
def resattninc56(pretrained: bool = False, **kwargs) -> ResidualAttentionNet:
    """ AttentionInception-56 (paper §4.2, Table 7: 31.9M params, 6.3 GFLOPs, evaluated at 299x299).

    No official definition exists: this is the Attention-56 skeleton with our simplified pre-activation
    Inception-ResNet unit (``PreActInceptionUnit``: 1x1 / 1x1-3x3 / 1x1-3x3-3x3 branches of width C/8, C/8 and
    C/16-C/8-C/8, merged by a 1x1 conv, residual add). 31,095,432 params (-2.5% vs 31.9M) and 6.216 GMACs at 224
    (-1.3% vs 6.3); 12.3 GMACs at its default 299.
    """
    return _create_resattnet('resattninc56', pretrained, **kwargs)


@register_model
def resattnet56_cifar(pretrained: bool = False, **kwargs) -> ResidualAttentionNet:
    """ CIFAR Attention-56 (m=1, p=1 t=2 r=1). 1,068,186 params with 10 classes (not in the paper's tables). """
    return _create_resattnet('resattnet56_cifar', pretrained, **kwargs)


@register_model
def resattnet92_cifar(pretrained: bool = False, **kwargs) -> ResidualAttentionNet:
    """ CIFAR Attention-92 (m=2, p=1 t=2 r=1). 1,798,426 params with 10 classes (paper Table 6: 1.9M; -5.3%). """
    return _create_resattnet('resattnet92_cifar', pretrained, **kwargs)


@register_model
def resattnet128_cifar(pretrained: bool = False, **kwargs) -> ResidualAttentionNet:
    """ CIFAR Attention-128 (m=3, p=1 t=2 r=1). 2,528,666 params with 10 classes. """
    return _create_resattnet('resattnet128_cifar', pretrained, **kwargs)


@register_model
def resattnet164_cifar(pretrained: bool = False, **kwargs) -> ResidualAttentionNet:
    """ CIFAR Attention-164 (m=4, p=1 t=2 r=1). 3,258,906 params with 10 classes. """
    return _create_resattnet('resattnet164_cifar', pretrained, **kwargs)


@register_model
def resattnet236_cifar(pretrained: bool = False, **kwargs) -> ResidualAttentionNet:
    """ CIFAR Attention-236 (m=6, p=1 t=2 r=1). 4,719,386 params with 10 classes (paper Table 6: 5.1M; -7.5%). """
    return _create_resattnet('resattnet236_cifar', pretrained, **kwargs)


@register_model
def resattnet452_cifar(pretrained: bool = False, **kwargs) -> ResidualAttentionNet:
    """ CIFAR Attention-452 (m=6, p=2 t=4 r=3). 9,170,714 params with 10 classes (paper Table 6: 8.6M; +6.6%). """
    return _create_resattnet('resattnet452_cifar', pretrained, **kwargs)
