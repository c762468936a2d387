""" Weight converters for the Residual Attention Network.

* ``timm_resattn.convert.caffe``: the authors' Caffe weights (``.caffemodel`` or pycaffe ``net.params``) of the
  official Attention-56/92 and AttentionNeXt-56/92 nets -> timm state_dicts (builds on the models).
* ``timm_resattn.convert.pytorchcv``: pytorchcv's ResAttNet names -> ours (a pure key map; the models'
  ``checkpoint_filter_fn`` calls it, so it imports nothing above the layers).

Command line: ``timm-resattn convert caffe IN OUT --model M``.
"""
