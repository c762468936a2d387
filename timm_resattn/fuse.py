""" Compatibility name: inference BN folding moved to ``timm_resattn.analysis.fuse``; this module re-exports it. """
from .analysis.fuse import *  # noqa: F403
from .analysis.fuse import __all__  # noqa: F401
