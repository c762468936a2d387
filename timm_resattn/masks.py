""" Compatibility name: the soft-mask recorders and Fig. 4 responses moved to ``timm_resattn.analysis.masks``;
this module re-exports them. """
from .analysis.masks import *  # noqa: F403
from .analysis.masks import __all__  # noqa: F401
