""" Compatibility name: the Hugging Face Hub export moved to ``timm_resattn.export.hub``; this module re-exports it. """
from .export.hub import *  # noqa: F403
from .export.hub import __all__  # noqa: F401
