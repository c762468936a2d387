from .attention import (
    AttentionModule, EncoderDecoderMask, LocalConvMask, MaskActivation, MaskHead, interpolate_like,
)
from .units import NeXtBottleneck, PreActBottleneck, create_unit, register_unit
