""" torch.hub entrypoints for timm-resattn.

    model = torch.hub.load('<owner>/timm-resattn', 'resattnet56')            # from GitHub
    model = torch.hub.load('/path/to/checkout', 'resattnet56', source='local')

Every model registered by ``timm_resattn`` is exposed under its timm name, and builds through
``timm.create_model(name, pretrained=..., **kwargs)``: the same kwargs (``num_classes``, ``in_chans``,
``drop_path_rate``, architecture fields, ...), checked the same way (``timm_resattn.models.config.MODEL_ARGS``) as from
Python or the commands' ``--model-kwargs``.
"""
dependencies = ['torch', 'timm']

import timm as _timm

import timm_resattn as _timm_resattn  # noqa: F401  (registers the models with timm)
from timm.models import model_entrypoint as _model_entrypoint


def _hub_entrypoint(name: str):
    def entrypoint(pretrained: bool = False, **kwargs):
        return _timm.create_model(name, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = _model_entrypoint(name).__doc__
    return entrypoint


globals().update({_name: _hub_entrypoint(_name) for _name in _timm.list_models(module='resattnet')})
