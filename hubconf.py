""" torch.hub entrypoints for timm-resattn.

    model = torch.hub.load('<owner>/timm-resattn', 'resattnet56')            # from GitHub
    model = torch.hub.load('/path/to/checkout', 'resattnet56', source='local')

Every model registered by ``timm_resattn`` is exposed under its timm name; kwargs (``pretrained``, ``num_classes``,
``in_chans``, ``drop_path_rate``, ...) are those of ``timm.create_model``.
"""
dependencies = ['torch', 'timm']

import timm as _timm

import timm_resattn as _timm_resattn  # noqa: F401  (registers the models with timm)
from timm.models import model_entrypoint as _model_entrypoint

globals().update({_name: _model_entrypoint(_name) for _name in _timm.list_models(module='resattnet')})
