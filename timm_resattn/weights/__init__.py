""" Weight files: reading them safely, checking them against a model, loading them through one checked path.

* ``files``: :func:`read_weight_file` / :func:`load_state_dict_file` (safetensors, or ``torch.load(weights_only=True)``;
  never unrestricted unpickling) and :func:`save_state_dict` (atomic safetensors with metadata);
* ``checks``: :func:`check_weights`, every check in one place: :func:`check_state_dict` (keys, shapes, dtypes,
  which architecture the keys belong to), :func:`check_values` (finite after the cast to the model's dtype, BN
  ``running_var + eps > 0``) and :func:`check_metadata` (the architecture and switches a file was written for,
  parsed with a schema by :func:`parse_metadata`);
* ``loading``: :func:`load_checked`, the one loader behind every route, :func:`load_weights`, and the pretrained
  route's hooks (:func:`pretrained_kwargs`, :func:`checked_pretrained_filter`).

This layer never imports the models: a model brings its own ``checkpoint_filter_fn`` and ``weights_metadata``.
"""
from ..errors import WeightsError
from .checks import (
    ARCH_CFG_KEY, ARCHITECTURE_KEY, check_metadata, check_state_dict, check_values, check_weights, parse_metadata,
)
from .files import (
    METADATA_KEY, atomic_write, load_state_dict_file, read_checkpoint, read_weight_file, read_weight_metadata,
    save_state_dict, unwrap_state_dict,
)
from .loading import (
    checked_pretrained_filter, has_weights, load_checked, load_weights, no_weights_error, pretrained_kwargs,
)

__all__ = [
    'WeightsError', 'read_weight_file', 'read_weight_metadata', 'read_checkpoint', 'load_state_dict_file',
    'save_state_dict', 'atomic_write', 'unwrap_state_dict',
    'check_weights', 'check_state_dict', 'check_values', 'check_metadata', 'parse_metadata',
    'load_checked', 'load_weights', 'has_weights', 'no_weights_error', 'checked_pretrained_filter', 'pretrained_kwargs',
    'METADATA_KEY', 'ARCHITECTURE_KEY', 'ARCH_CFG_KEY',
]
