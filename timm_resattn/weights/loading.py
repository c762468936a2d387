""" The one checked loader that every route reading a weight file goes through.

Routes and how they arrive here:

* ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=PATH))`` and train.py's
  ``--pretrained-path``: our pretrained cfgs set ``custom_load=True``, so timm's ``load_pretrained`` hands the file
  to ``ResidualAttentionNet.load_pretrained``, which calls :func:`load_checked` with ``adapt=True``;
* a weight URL (``resattnet56_pcv.pq_in1k``): timm downloads it into its cache, then the same;
* every command's ``--checkpoint`` and :func:`load_weights`: :func:`load_checked` with ``adapt=False``;
* ``hf-hub:`` / ``local-dir:`` (and a ``state_dict`` in the pretrained cfg): timm reads the files (safetensors, or
  ``torch.load(weights_only=True)``), then the model's pretrained filter (:func:`checked_pretrained_filter`) reads
  the metadata of the file timm read and what the folder's ``config.json`` describes (its architecture and
  ``model_args``), and runs the same :func:`check_weights`.

Every route ends in :func:`check_weights` (``checks``): metadata parsed with a schema and compared with the model,
keys/shapes/dtypes, and the values as the model will hold them. A new route calls it, and so can't skip a check.

The one route that can't be routed is ``timm.create_model(..., checkpoint_path=F)`` (and validate.py's
``--checkpoint``): timm loads it with its own ``load_checkpoint`` (``weights_only=True``, strict), so a mismatch
gives PyTorch's ``load_state_dict`` error rather than ours. Use ``pretrained_cfg_overlay=dict(file=F)`` or
:func:`load_weights` for the checked route.
"""
import json
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Union

import torch
import torch.nn as nn

from ..errors import ResAttnError, WeightsError
from .checks import _as_tuple, _is_classifier_key, check_weights
from .files import read_weight_file, read_weight_metadata

__all__ = [
    'load_checked', 'load_weights', 'has_weights', 'no_weights_error', 'checked_pretrained_filter',
    'pretrained_kwargs',
]

FilterFn = Callable[[Dict[str, Any], nn.Module], Dict[str, torch.Tensor]]


def _adapt_in_chans(state_dict: Dict[str, torch.Tensor], model: nn.Module, first_convs) -> None:
    """ timm's in_chans adaptation of the first conv (``adapt_input_conv``: sum for 1 channel, repeat and rescale
    for more), where the file's first conv has another number of input channels than the model's. """
    from timm.models import adapt_input_conv
    for name in first_convs:
        key = f'{name}.weight'
        if key not in state_dict:
            continue
        want = model.get_submodule(name).weight
        got = state_dict[key]
        if got.ndim == 4 and got.shape[1] != want.shape[1] and got.shape[:1] + got.shape[2:] == want.shape[:1] + \
                want.shape[2:]:
            state_dict[key] = adapt_input_conv(want.shape[1], got)


def load_checked(
        model: nn.Module,
        source: Union[str, Path, Mapping[str, torch.Tensor]],
        filter_fn: Optional[FilterFn] = None,
        adapt: bool = False,
        use_ema: bool = True,
        strict: bool = True,
) -> nn.Module:
    """ Read (if a path), convert, check and load weights into ``model``; the one loading path of this package.

    Args:
        model: The model (not a features_only wrapper).
        source: A weight file (see ``weights.files``) or a state dict.
        filter_fn: ``(state_dict, model) -> state_dict`` (unwrapping, key conversion); default: the model's own
            ``filter_state_dict`` method, if it has one.
        adapt: Apply timm's fine-tuning adaptation like ``timm.models.load_pretrained``: the classifier is dropped
            (left at its init) when the model's ``num_classes`` differs from ``pretrained_cfg['num_classes']``, and
            a first conv with other input channels is adapted. Otherwise the weights must fit exactly.
        use_ema: For training checkpoints, prefer the EMA weights (as timm does).
        strict: Check keys, shapes, dtypes and values and refuse any mismatch; ``False`` loads only the tensors
            whose name and shape the model has (the rest keep their init), after the metadata and value checks of
            those tensors.

    Raises:
        MissingFileError, WeightsError: With a message naming the file and what is wrong (see ``check_weights``).
    """
    if isinstance(source, Mapping):
        state_dict, metadata, what = dict(source), {}, 'the given state dict'
    else:
        state_dict, metadata = read_weight_file(source, use_ema=use_ema)
        what = f"weight file '{source}'"
    if filter_fn is None and hasattr(model, 'filter_state_dict'):
        def filter_fn(sd, m):  # timm's filter signature, (state_dict, model)
            return m.filter_state_dict(sd)
    if filter_fn is not None:
        try:
            state_dict = filter_fn(state_dict, model)
        except WeightsError:
            raise
        except ValueError as e:  # a converter that recognised the file but can't map it onto this model
            raise WeightsError(f"Can't load {what}: {e}") from None

    cfg = getattr(model, 'pretrained_cfg', None) or {}
    classifiers = _as_tuple(cfg.get('classifier'))
    drop_classifier = False
    if adapt:
        pretrained_classes = cfg.get('num_classes')
        model_classes = getattr(model, 'num_classes', None)
        # a classifier of another size, or none at all (a backbone): the file's is left out
        drop_classifier = pretrained_classes is not None and (model_classes != pretrained_classes or model_classes == 0)
        _adapt_in_chans(state_dict, model, _as_tuple(cfg.get('first_conv')))
    check_weights(
        state_dict, model, what, metadata, strict=strict, drop_classifier=drop_classifier, adapt_in_chans=False)
    if not strict:  # what fits: the tensors whose name and shape the model has; the rest keep their init
        own = model.state_dict()
        model.load_state_dict(
            {k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape}, strict=False)
        return model
    if drop_classifier:
        state_dict = {k: v for k, v in state_dict.items() if not _is_classifier_key(k, classifiers)}
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    left = [k for k in missing if not (drop_classifier and _is_classifier_key(k, classifiers))
            and not k.endswith('num_batches_tracked')]
    if left or unexpected:  # check_state_dict let nothing else through; a safeguard, not a user path
        raise WeightsError(f'{what}: keys left unloaded {left[:5]}, unexpected {unexpected[:5]}')
    return model


def load_weights(
        model: nn.Module,
        path: Union[str, Path],
        use_ema: bool = True,
        strict: bool = True,
) -> nn.Module:
    """ Safely read ``path``, check it and load it into ``model`` as it is (no classifier or in_chans adaptation).

    The checked counterpart of ``timm.models.load_checkpoint`` (validate.py ``--checkpoint``). For fine-tuning use
    ``timm.create_model(name, pretrained=True, num_classes=..., in_chans=..., pretrained_cfg_overlay=dict(file=path))``.
    ``strict=False`` skips the key/shape check and loads only the tensors whose name and shape fit.
    """
    return load_checked(model, path, adapt=False, use_ema=use_ema, strict=strict)


def has_weights(pretrained_cfg: Any) -> bool:
    """ Whether a resolved ``PretrainedCfg`` points at any weights: timm's ``has_weights`` (a URL, file or Hub id),
    a state dict, or a ``local-dir:`` / ``hf-hub:`` source. """
    if pretrained_cfg is None:
        return False
    return bool(pretrained_cfg.has_weights or pretrained_cfg.state_dict
                or pretrained_cfg.source in ('hf-hub', 'local-dir'))


def no_weights_error(variant: str, tag: Optional[str], hint: str = '') -> WeightsError:
    """ The loud failure for ``pretrained=True`` on an architecture/tag without published weights; ``hint`` (from
    the model family) says where weights could come from. """
    import timm
    available = timm.list_pretrained('resatt*')
    name = f'{variant}.{tag}' if tag else variant
    return WeightsError(
        f"No pretrained weights exist for '{name}': none were ever published for this architecture. Weights that do "
        f"exist: {available or 'none'}. Use pretrained=False for random init, or load a checkpoint of your own with "
        f"timm.create_model('{variant}', pretrained=True, pretrained_cfg_overlay=dict(file='path/to/"
        f"weights.safetensors')).{' ' + hint if hint else ''}"
    )


# the weight files timm's ``load_state_dict_from_path`` looks for in a ``local-dir:`` folder, in its order of
# preference, then the first file (sorted by name) of each extension (timm exports no public names for them;
# tests/test_weight_checks.py checks these against timm's own)
_HUB_PREFERRED_FILES = (
    'model.safetensors', 'pytorch_model.bin', 'pytorch_model.pth', 'model.pth', 'open_clip_model.safetensors',
    'open_clip_pytorch_model.safetensors', 'open_clip_pytorch_model.bin', 'open_clip_pytorch_model.pth',
)
_HUB_EXTENSIONS = ('.safetensors', '.pth', '.pth.tar', '.bin')


def _hub_weights_file(cfg: Mapping[str, Any], cache_dir: Optional[str] = None) -> Optional[Path]:
    """ The file timm's ``load_pretrained`` read for a ``local-dir:`` / ``hf-hub:`` source, found the way it finds
    it (timm's preferred file names, then the first file of each extension; on the Hub the file in the local cache,
    ``cache_dir`` when ``create_model`` was given one, safetensors first). None when it can't be located. """
    if cfg.get('source') == 'local-dir':
        folder = Path(cfg.get('file') or '')
        for name in _HUB_PREFERRED_FILES:
            if (folder / name).exists():
                return folder / name
        for ext in _HUB_EXTENSIONS:
            found = sorted(folder.glob(f'*{ext}'))
            if found:
                return found[0]
        return None
    if cfg.get('source') == 'hf-hub' and cfg.get('hf_hub_id'):
        from huggingface_hub import try_to_load_from_cache
        repo_id, _, revision = str(cfg['hf_hub_id']).partition('@')
        filename = cfg.get('hf_hub_filename') or 'pytorch_model.bin'
        names = [filename]  # the safetensors alternative first, as timm's load_state_dict_from_hf
        if filename == 'pytorch_model.bin':
            names.insert(0, 'model.safetensors')
        elif filename.endswith('.bin'):
            names.insert(0, filename[:-4] + '.safetensors')
        for name in names:
            found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir, revision=revision or None)
            if isinstance(found, str):
                return Path(found)
    return None


def _hub_model_args(cfg: Mapping[str, Any], where: str, cache_dir: Optional[str] = None) -> Optional[Dict[str, Any]]:
    """ The ``model_args`` of the ``config.json`` beside the weights of a ``local-dir:`` / ``hf-hub:`` source (for a
    timm that does not record them on the model as ``pretrained_model_args``); {} where the file has none, None
    where the file can't be found (no claim to check). """
    path: Optional[Path] = None
    if cfg.get('source') == 'local-dir':
        path = Path(cfg.get('file') or '') / 'config.json'
    elif cfg.get('hf_hub_id'):
        from huggingface_hub import try_to_load_from_cache
        repo_id, _, revision = str(cfg['hf_hub_id']).partition('@')
        found = try_to_load_from_cache(repo_id, 'config.json', cache_dir=cache_dir, revision=revision or None)
        path = Path(found) if isinstance(found, str) else None
    if path is None or not path.is_file():
        return None
    try:
        args = json.loads(path.read_text(encoding='utf-8')).get('model_args') or {}
    except (OSError, ValueError, AttributeError, RecursionError) as e:
        raise WeightsError(f'{where} is not a readable JSON object: {e}') from None
    if not isinstance(args, dict):
        raise WeightsError(f'{where}: model_args={args!r:.200} is invalid: expected a JSON object')
    return args


def _config_metadata(model: nn.Module, where: str, cache_dir: Optional[str] = None) -> Any:
    """ The metadata of the net that a Hub folder's ``config.json`` (``where``) describes: its ``architecture``
    built with its ``model_args`` (as timm parsed them, or read from the file where this timm does not record them)
    on the meta device; None when the model records none (or, on an older timm, the file can't be found). """
    arch = model.pretrained_cfg.get('architecture')
    if not arch or not callable(getattr(model, 'weights_metadata', None)):
        return None
    import timm
    if hasattr(model, 'pretrained_model_args'):  # newer timm (1.0.31) records them on the model
        args = model.pretrained_model_args or {}
    else:
        args = _hub_model_args(model.pretrained_cfg, where, cache_dir)
        if args is None:
            return None
    try:
        described = timm.create_model(arch, device='meta', **args)
    except (ResAttnError, TypeError, ValueError, RuntimeError) as e:
        raise WeightsError(
            f"{where} describes a net that can't be built ({arch} with model_args {args!r:.300}): {e}") from None
    return described.weights_metadata()


def checked_pretrained_filter(filter_fn: FilterFn, cache_dir: Optional[str] = None) -> FilterFn:
    """ The pretrained filter for the weights timm reads itself (``hf-hub:``, ``local-dir:``, a state dict in the
    cfg): ``filter_fn`` (the model's ``checkpoint_filter_fn``), then :func:`check_weights`, like every other route,
    naming where the weights came from. For ``hf-hub:`` / ``local-dir:`` it also reads the metadata of the weight
    file timm read and builds (on the meta device) the net that ``config.json`` describes (``architecture`` and
    ``model_args``): the file, the folder's config and the model must agree on what the weights compute.
    ``cache_dir``: the one given to ``timm.create_model`` (where timm downloaded ``hf-hub:`` files). A Hub weight
    file that can't be found where timm put it is a ``WeightsError``, never an unchecked load.
    """
    def pretrained_filter_fn(state_dict: Dict[str, Any], model: nn.Module) -> Dict[str, torch.Tensor]:
        cfg = model.pretrained_cfg
        source = f"Hugging Face Hub weights '{cfg.get('hf_hub_id')}'" if cfg.get('hf_hub_id') else (
            f"weights in '{cfg.get('source')}:{cfg.get('file') or ''}'" if cfg.get('source') else
            'the state_dict given in the pretrained cfg')
        metadata, declared = None, []
        if cfg.get('source') in ('hf-hub', 'local-dir'):
            path = _hub_weights_file(cfg, cache_dir)
            if path is not None:
                metadata = read_weight_metadata(path)
            elif cfg.get('source') == 'hf-hub':
                raise WeightsError(
                    f"{source}: can't find the weight file timm read in the Hub cache"
                    f"{f' {cache_dir!r}' if cache_dir else ''}, so its header can't be checked")
            where = f"config.json of '{cfg['hf_hub_id']}'" if cfg.get('source') == 'hf-hub' else \
                f"'{Path(cfg.get('file') or '') / 'config.json'}'"
            declared.append((_config_metadata(model, where, cache_dir), where))
        state_dict = filter_fn(state_dict, model)
        check_weights(state_dict, model, source, metadata, declared=declared)
        return state_dict
    return pretrained_filter_fn


def pretrained_kwargs(variant: str, kwargs: Dict[str, Any], no_weights_hint: str = '') -> Dict[str, Any]:
    """ ``timm.create_model`` kwargs for ``pretrained=True``, checked before anything is built or downloaded.

    Weights from a ``file`` or ``url`` (given in ``pretrained_cfg_overlay`` or ``pretrained_cfg``) are always loaded
    with ``custom_load=True`` (timm resets it for a new source, and a user's ``custom_load=False`` would hand the
    file to timm's own loader), so they go through the model's ``load_pretrained`` and so :func:`load_checked`, with
    every check; for a ``features_only`` net they are loaded as timm loads backbone weights (``num_classes=0``: the
    file's classifier is left out, whatever its size). A tag without weights raises :func:`no_weights_error` instead
    of building a randomly initialised model (with ``no_weights_hint`` appended).
    """
    from timm.models import resolve_pretrained_cfg
    weights_cfg = resolve_pretrained_cfg(
        variant,
        pretrained_cfg=kwargs.get('pretrained_cfg'),
        pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'),
    )
    if not has_weights(weights_cfg):
        raise no_weights_error(variant, weights_cfg.tag, no_weights_hint)
    from_file = weights_cfg.source not in ('hf-hub', 'local-dir') and not weights_cfg.state_dict and bool(
        weights_cfg.file or weights_cfg.url)  # timm's order of sources (its _resolve_pretrained_source)
    overlay = {}
    if from_file and not weights_cfg.custom_load:
        overlay['custom_load'] = True
    if from_file and kwargs.get('features_only'):
        overlay['num_classes'] = 0  # a backbone: the file's classifier, of any size, is not loaded (as timm does)
    if overlay:
        kwargs = {**kwargs, 'pretrained_cfg_overlay': {**(kwargs.get('pretrained_cfg_overlay') or {}), **overlay}}
    return kwargs
