""" Residual units of the Residual Attention Network

The network is built from one kind of residual unit, used everywhere: on the trunk, in the soft-mask branch and
in the transitions between stages. Which unit is a per-variant choice (``ResAttnCfg.unit``):

* ``'preact'``: the pre-activation bottleneck of He et al. 2016 (Attention-56/92, the CIFAR family).
* ``'next'``: the post-activation ResNeXt bottleneck, cardinality 32 (AttentionNeXt-56/92).

The layouts follow the authors' Caffe deploy files (``fwang91/residual-attention-network``, ``imagenet_model/``)
exactly: stride in the 3x3 conv, no conv biases, a 1x1 projection shortcut only where shape changes.

Dilation (``output_stride`` 8/16, see ``ResidualAttentionNet``): every unit takes ``dilation`` and
``first_dilation`` like the blocks of timm's ResNet. Each 3x3 conv of a unit sits at or before its stride, so all of
them use ``first_dilation`` (default: ``dilation``) as dilation and padding, as the 3x3 conv of timm's
``Bottleneck`` does; the first unit of a dilated stage gets the previous stage's dilation there, later units the
stage's own. The default 1 builds the official layout; parameter shapes never depend on the dilation.

Copyright the timm-resattn authors, Apache-2.0.
"""
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple, Type

import torch
import torch.nn as nn

from timm.layers import BatchNormAct2d, DropPath, LayerType, get_act_layer

from ..errors import check_choice

__all__ = [
    'ResidualUnit', 'UnitSpec', 'PreActUnit', 'PreActBottleneck', 'NeXtBottleneck', 'PreActInceptionUnit',
    'bottleneck_layers', 'UNIT_TYPES', 'get_unit_type', 'dilation_kwargs',
]


@dataclass(frozen=True)
class UnitSpec:
    """ A unit's constructor arguments, resolved: what ``ResidualUnit._build`` builds from. """
    in_chs: int
    out_chs: int
    mid_chs: int  # out_chs * bottle_ratio: the bottleneck width
    stride: int
    groups: int
    dilation: int  # of every 3x3 conv: first_dilation, else dilation
    act_layer: LayerType
    norm_layer: Type[nn.Module]
    dd: Dict[str, Any]

    @property
    def projects(self) -> bool:
        """ True where the shortcut changes shape and so needs a 1x1 projection. """
        return self.in_chs != self.out_chs or self.stride != 1


class ResidualUnit(nn.Module):
    """ Base of every residual unit: the one constructor signature every unit type has (``UNIT_TYPES``), and drop-path.

    ``bottle_ratio`` and ``groups`` default to the unit type's official values (``default_bottle_ratio``,
    ``default_groups``). ``first_dilation`` (default: ``dilation``) dilates the unit's 3x3 convs, see the module
    docstring. Subclasses build their layers in ``_build``, in the official parameter order.

    Args:
        in_chs: Input channels.
        out_chs: Output channels.
        stride: Stride of the unit (of its 3x3 convs and its projection shortcut).
        bottle_ratio: Bottleneck width / ``out_chs``.
        groups: Groups of the 3x3 conv (cardinality).
        act_layer: Activation of the BN-activation layers.
        norm_layer: Norm + activation layer (timm's ``BatchNormAct2d`` signature).
        drop_path_rate: Stochastic depth on the residual branch.
        dilation: Dilation of the unit's stage.
        first_dilation: Dilation of this unit's 3x3 convs, where it differs from ``dilation`` (first unit of a
            dilated stage).
    """
    default_bottle_ratio: float = 0.25
    default_groups: int = 1
    # True if the unit applies its own BN-ReLU to its input, so that its output is a raw sum and whoever consumes it
    # next (the mask head) must normalise it first
    preactivates_input: bool = False

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            stride: int = 1,
            bottle_ratio: Optional[float] = None,
            groups: Optional[int] = None,
            act_layer: LayerType = nn.ReLU,
            norm_layer: Type[nn.Module] = BatchNormAct2d,
            drop_path_rate: float = 0.,
            dilation: int = 1,
            first_dilation: Optional[int] = None,
            device=None,
            dtype=None,
    ):
        super().__init__()
        bottle_ratio = self.default_bottle_ratio if bottle_ratio is None else bottle_ratio
        self._build(UnitSpec(
            in_chs=in_chs,
            out_chs=out_chs,
            mid_chs=int(out_chs * bottle_ratio),
            stride=stride,
            groups=self.default_groups if groups is None else groups,
            dilation=first_dilation or dilation,
            act_layer=act_layer,
            norm_layer=norm_layer,
            dd={'device': device, 'dtype': dtype},
        ))
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()

    def _build(self, s: UnitSpec) -> None:
        raise NotImplementedError


def bottleneck_layers(s: UnitSpec) -> Tuple[nn.Module, ...]:
    """ The path both bottlenecks share, as ``(conv1x1, BN-act, conv3x3, BN-act, conv1x1)``: ``in -> mid`` 1x1,
    the 3x3 with the unit's stride, groups and dilation, ``mid -> out`` 1x1; no conv biases.
    """
    return (
        nn.Conv2d(s.in_chs, s.mid_chs, 1, bias=False, **s.dd),
        s.norm_layer(s.mid_chs, act_layer=s.act_layer, **s.dd),
        nn.Conv2d(
            s.mid_chs, s.mid_chs, 3, stride=s.stride, padding=s.dilation, dilation=s.dilation, groups=s.groups,
            bias=False, **s.dd),
        s.norm_layer(s.mid_chs, act_layer=s.act_layer, **s.dd),
        nn.Conv2d(s.mid_chs, s.out_chs, 1, bias=False, **s.dd),
    )


class PreActUnit(ResidualUnit):
    """ The pre-activation skeleton shared by ``PreActBottleneck`` and ``PreActInceptionUnit``::

        a   = ReLU(BN(x))                                   # norm1, Caffe's "<input blob>/bn"
        out = residual(a) + x                               # identity
        out = residual(a) + conv1x1(a, stride)              # downsample: reads the pre-activated input, no BN

    Subclasses build their layers in ``_build_residual`` (between ``norm1`` and ``downsample``, the official
    parameter order) and implement ``residual``.
    """
    preactivates_input = True

    def _build(self, s: UnitSpec) -> None:
        self.norm1 = s.norm_layer(s.in_chs, act_layer=s.act_layer, **s.dd)
        self._build_residual(s)
        if s.projects:
            self.downsample = nn.Conv2d(s.in_chs, s.out_chs, 1, stride=s.stride, bias=False, **s.dd)
        else:
            self.downsample = None

    def _build_residual(self, s: UnitSpec) -> None:
        raise NotImplementedError

    def residual(self, x_preact: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_preact = self.norm1(x)
        shortcut = x
        if self.downsample is not None:
            shortcut = self.downsample(x_preact)
        return self.drop_path(self.residual(x_preact)) + shortcut


class PreActBottleneck(PreActUnit):
    """ Pre-activation bottleneck unit (He et al. 2016, "Identity Mappings in Deep Residual Networks").

    Official Caffe layout (``<U>/branch1/conv{1_1x1,2_3x3,3_1x1}``, ``<U>/branch2/conv1_1x1``)::

        a   = ReLU(BN(x))                       # the BN Caffe names "<input blob>/bn"
        y   = conv1x1(a) -> BN-ReLU -> conv3x3(stride) -> BN-ReLU -> conv1x1
        out = y + x                             # identity
        out = y + conv1x1(a, stride)            # projection reads the *pre-activated* input, no BN

    The output is the raw sum, no norm or activation after the add: the next consumer brings its own. Width is
    ``out_chs * bottle_ratio`` (0.25 officially).
    """
    default_bottle_ratio = 0.25

    def _build_residual(self, s: UnitSpec) -> None:
        self.conv1, self.norm2, self.conv2, self.norm3, self.conv3 = bottleneck_layers(s)

    def zero_init_last(self):
        nn.init.zeros_(self.conv3.weight)

    def residual(self, x_preact: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x_preact)
        x = self.conv2(self.norm2(x))
        return self.conv3(self.norm3(x))


class NeXtBottleneck(ResidualUnit):
    """ Post-activation ResNeXt bottleneck unit (Xie et al. 2017), as in the official AttentionNeXt files.

    Official Caffe layout (``<U>/branch1/conv{1,2,3}(/bn)``, ``<U>/branch2/conv1_1x1(/bn)``)::

        y   = conv1x1 -> BN-ReLU -> grouped conv3x3(stride) -> BN-ReLU -> conv1x1 -> BN
        out = ReLU(y + x)                       # identity
        out = ReLU(y + BN(conv1x1(x, stride)))  # projection

    Width is ``out_chs * bottle_ratio`` (0.5 officially: 32x4d for 256 output channels).
    """
    default_bottle_ratio = 0.5
    default_groups = 32

    def _build(self, s: UnitSpec) -> None:
        if s.mid_chs % s.groups:
            raise ValueError(f'NeXtBottleneck: width {s.mid_chs} is not divisible by groups={s.groups}')
        self.conv1, self.norm1, self.conv2, self.norm2, self.conv3 = bottleneck_layers(s)
        self.norm3 = s.norm_layer(s.out_chs, apply_act=False, **s.dd)
        if s.projects:
            self.downsample = nn.Sequential()
            self.downsample.add_module('conv', nn.Conv2d(s.in_chs, s.out_chs, 1, stride=s.stride, bias=False, **s.dd))
            self.downsample.add_module('norm', s.norm_layer(s.out_chs, apply_act=False, **s.dd))
        else:
            self.downsample = None
        self.act = get_act_layer(s.act_layer)(inplace=True)

    def zero_init_last(self):
        nn.init.zeros_(self.norm3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        if self.downsample is not None:
            shortcut = self.downsample(x)
        x = self.conv1(x)
        x = self.conv2(self.norm1(x))
        x = self.norm3(self.conv3(self.norm2(x)))
        return self.act(self.drop_path(x) + shortcut)


class PreActInceptionUnit(PreActUnit):
    """ Simplified pre-activation Inception-ResNet unit for AttentionInception-56 (paper §4.2, Table 7).

    The paper gives no definition ("we simplify the Inception"), and none exists in the official repository. This is
    our design: Inception-ResNet-A's three branches (1x1 / 1x1-3x3 / 1x1-3x3-3x3), narrowed so that the unit costs
    what the bottleneck it replaces costs, pre-activated like it, merged by a 1x1 conv and added to the shortcut.
    With ``C = out_chs`` (``bottle_ratio`` = 1/8 sets the branch width)::

        a   = ReLU(BN(x))
        b0  = conv1x1(a, C/8, stride)
        b1  = conv1x1(a, C/8)  -> BN-ReLU -> conv3x3(C/8, stride)
        b2  = conv1x1(a, C/16) -> BN-ReLU -> conv3x3(C/8) -> BN-ReLU -> conv3x3(C/8, stride)
        y   = conv1x1(ReLU(BN(concat(b0, b1, b2))), C)          # 3C/8 -> C
        out = y + x   (or + conv1x1(a, C, stride) where the shape changes, as in the pre-act bottleneck)

    It has 1.04 C^2 weights against the pre-act bottleneck's 1.06 C^2 (1x1 in: 0.31, 3x3: 0.35, merge: 0.38).
    """
    default_bottle_ratio = 0.125

    def _build_residual(self, s: UnitSpec) -> None:
        w, w_half, dil, dd = s.mid_chs, s.mid_chs // 2, s.dilation, s.dd  # w = C/8 by default
        self.branch0 = nn.Conv2d(s.in_chs, w, 1, stride=s.stride, bias=False, **dd)
        self.branch1 = nn.Sequential(
            nn.Conv2d(s.in_chs, w, 1, bias=False, **dd),
            s.norm_layer(w, act_layer=s.act_layer, **dd),
            nn.Conv2d(w, w, 3, stride=s.stride, padding=dil, dilation=dil, bias=False, **dd),
        )
        self.branch2 = nn.Sequential(
            nn.Conv2d(s.in_chs, w_half, 1, bias=False, **dd),
            s.norm_layer(w_half, act_layer=s.act_layer, **dd),
            nn.Conv2d(w_half, w, 3, padding=dil, dilation=dil, bias=False, **dd),
            s.norm_layer(w, act_layer=s.act_layer, **dd),
            nn.Conv2d(w, w, 3, stride=s.stride, padding=dil, dilation=dil, bias=False, **dd),
        )
        self.norm2 = s.norm_layer(3 * w, act_layer=s.act_layer, **dd)
        self.conv_merge = nn.Conv2d(3 * w, s.out_chs, 1, bias=False, **dd)

    def zero_init_last(self):
        nn.init.zeros_(self.conv_merge.weight)

    def residual(self, x_preact: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.branch0(x_preact), self.branch1(x_preact), self.branch2(x_preact)], dim=1)
        return self.conv_merge(self.norm2(x))


def dilation_kwargs(first_dilation: int, dilation: int) -> Dict[str, int]:
    """ Unit kwargs for a dilated unit; none for an undilated one (so units without these arguments still build). """
    if first_dilation == 1 and dilation == 1:
        return {}
    return {'dilation': dilation, 'first_dilation': first_dilation}


# ``ResAttnCfg.unit`` -> unit type. A new unit type is a ``ResidualUnit`` subclass (it implements ``_build`` and
# says whether it pre-activates its input) added here.
UNIT_TYPES: Dict[str, Type[ResidualUnit]] = {
    'preact': PreActBottleneck,
    'next': NeXtBottleneck,
    'inception': PreActInceptionUnit,
}


def get_unit_type(name: str) -> Type[ResidualUnit]:
    """ The unit type ``ResAttnCfg.unit`` names (a ``ConfigError`` listing the known names otherwise). """
    check_choice('unit', name, tuple(UNIT_TYPES))
    return UNIT_TYPES[name]
