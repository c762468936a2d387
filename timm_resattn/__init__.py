""" timm-resattn: the Residual Attention Network (Wang et al., CVPR 2017) as a timm model-zoo plugin.

``import timm_resattn`` registers every model with timm: ``timm.create_model('resattnet56')``.

The package, bottom to top (each layer imports only from the ones below it):

* ``errors``: the one family of errors a user's input can cause;
* ``layers``: residual units, mask branches, the Attention Module (imports timm only);
* ``weights``: reading weight files safely, checking them against a model, the one checked loader;
  ``convert.pytorchcv``: pytorchcv's parameter names -> ours;
* ``models``: ``ResAttnCfg``, ``ResidualAttentionNet``, the pretrained cfgs and timm entrypoints;
* ``analysis`` (masks, figures, MACs, BN folding), ``convert.caffe``, ``export`` (Hugging Face Hub),
  ``train`` (the CIFAR recipe): libraries built on the models;
* ``cli``: the ``timm-resattn`` command, one error style; ``__main__`` runs it as ``python -m timm_resattn``.
"""
from .models import ResAttnCfg, ResidualAttentionNet
from .version import __version__

__all__ = ['ResAttnCfg', 'ResidualAttentionNet', '__version__']
