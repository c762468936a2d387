""" Weight converters for the Residual Attention Network.

* ``timm_resattn.convert.caffe``: the authors' Caffe weights (``.caffemodel`` or pycaffe ``net.params``) of the
  official Attention-56/92 and AttentionNeXt-56/92 nets -> timm state_dicts (builds on the models).
* ``timm_resattn.convert.pytorchcv``: pytorchcv's ResAttNet names -> ours (a pure key map; the models'
  ``checkpoint_filter_fn`` calls it, so it imports nothing above the layers).

The names below are resolved on first use, so importing ``convert.pytorchcv`` (as the models do) does not import
``convert.caffe`` (which imports the models). Command line: ``timm-resattn convert caffe IN OUT --model M``.
"""
import importlib

__all__ = [
    'CaffeModelError', 'caffe_param_map', 'convert_caffe_blobs', 'read_caffemodel', 'convert_pytorchcv_state_dict',
    'is_pytorchcv_state_dict',
]

_SOURCES = {
    'CaffeModelError': 'caffe', 'caffe_param_map': 'caffe', 'convert_caffe_blobs': 'caffe',
    'read_caffemodel': 'caffe', 'convert_pytorchcv_state_dict': 'pytorchcv', 'is_pytorchcv_state_dict': 'pytorchcv',
}


def __getattr__(name: str):
    if name in _SOURCES:
        return getattr(importlib.import_module(f'.{_SOURCES[name]}', __name__), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
