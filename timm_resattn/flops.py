""" Compatibility name: the MAC counter moved to ``timm_resattn.analysis.flops``; this module re-exports it. """
from .analysis.flops import *  # noqa: F403
from .analysis.flops import __all__  # noqa: F401
