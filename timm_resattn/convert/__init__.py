""" Weight converters for the Residual Attention Network.

* ``timm_resattn.convert.caffe``: the authors' Caffe weights (``.caffemodel`` or pycaffe ``net.params``) of the
  official Attention-56/92 and AttentionNeXt-56/92 nets -> timm state_dicts.

Command line: ``python -m timm_resattn.convert caffe IN.caffemodel OUT.safetensors --model resattnet92``.
"""
from .caffe import CaffeModelError, caffe_param_map, convert_caffe_blobs, read_caffemodel

__all__ = ['CaffeModelError', 'caffe_param_map', 'convert_caffe_blobs', 'read_caffemodel']
