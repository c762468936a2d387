""" Building blocks of the Residual Attention Network: residual units and the Attention Module (timm layers only). """
from .attention import (
    AttentionModule, EncoderDecoderMask, LocalConvMask, MaskActivation, MaskHead, interpolate_like,
)
from .units import NeXtBottleneck, PreActBottleneck, PreActInceptionUnit, ResidualUnit, create_unit, register_unit

__all__ = [
    'AttentionModule', 'EncoderDecoderMask', 'LocalConvMask', 'MaskActivation', 'MaskHead', 'interpolate_like',
    'NeXtBottleneck', 'PreActBottleneck', 'PreActInceptionUnit', 'ResidualUnit', 'create_unit', 'register_unit',
]
