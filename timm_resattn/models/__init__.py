""" The Residual Attention Networks as timm models (importing this registers them). """
from .config import ResAttnCfg
from .resattnet import ResidualAttentionNet, checkpoint_filter_fn, model_cfgs

__all__ = ['ResAttnCfg', 'ResidualAttentionNet', 'checkpoint_filter_fn', 'model_cfgs']
