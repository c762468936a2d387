""" timm-resattn: the Residual Attention Network (Wang et al., CVPR 2017) as a timm model-zoo plugin.

``import timm_resattn`` registers every model with timm: ``timm.create_model('resattnet56')``.
"""
from .version import __version__
from .models import ResAttnCfg, ResidualAttentionNet
