""" Building blocks of the Residual Attention Network: residual units and the Attention Module (timm layers only). """
from .attention import (
    AttentionModule, EncoderDecoderMask, LocalConvMask, MaskActivation, MaskHead, interpolate_like,
)
from .units import UNIT_TYPES, NeXtBottleneck, PreActBottleneck, PreActInceptionUnit, ResidualUnit, get_unit_type

__all__ = [
    'AttentionModule', 'EncoderDecoderMask', 'LocalConvMask', 'MaskActivation', 'MaskHead', 'interpolate_like',
    'NeXtBottleneck', 'PreActBottleneck', 'PreActInceptionUnit', 'ResidualUnit', 'UNIT_TYPES', 'get_unit_type',
]
