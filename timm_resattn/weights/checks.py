""" Checking weights against a model before they are loaded, with messages a user can act on.

:func:`check_weights` runs every check, in one place, for every loading route (``loading.load_checked`` and the
pretrained filter of ``hf-hub:`` / ``local-dir:``); its parts:

* :func:`check_state_dict` refuses, listing the offending tensors (first few names and counts, never a full dump):
  missing and unexpected keys, shape mismatches, non-floating tensors where the model has floating ones (an integer
  tensor would silently be cast), and bad values (:func:`check_values`). When the keys fit another registered
  architecture it says which.
* :func:`check_values`: each floating tensor (any floating dtype, float8 included) cast to the model's dtype must be
  finite, and a BN ``running_var`` must have ``running_var + eps > 0``.
* :func:`parse_metadata` reads what a file says it was written for, with a schema (wrong JSON types are refused);
  :func:`check_metadata` compares it with what the model computes.
"""
import functools
import json
import re
import contextlib
import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, Callable, Dict, Iterable, List, Literal, Optional, Sequence, Tuple, Union

import torch

from ..errors import WeightsError
from ..schema import Any_, Bool, Float, Int, IntTuple, Nullable, Schema, Spec, Str
from .files import _NUM_SHOWN, _first

__all__ = [
    'check_weights', 'check_state_dict', 'check_values', 'check_metadata', 'parse_metadata', 'compare_metadata',
    'ARCHITECTURE_KEY', 'ARCH_CFG_KEY',
]

# metadata keys of the files this package writes (see ``ResidualAttentionNet.weights_metadata``)
ARCHITECTURE_KEY = 'timm_resattn.architecture'
ARCH_CFG_KEY = 'timm_resattn.arch_cfg'


def _as_tuple(names: Union[None, str, Iterable[str]]) -> Tuple[str, ...]:
    if not names:
        return ()
    return (names,) if isinstance(names, str) else tuple(names)


def _is_classifier_key(key: str, classifiers: Tuple[str, ...]) -> bool:
    return any(key in (f'{c}.weight', f'{c}.bias') for c in classifiers)


def _signature(state_dict: Mapping, classifiers: Tuple[str, ...]) -> Dict[str, Tuple[int, ...]]:
    """ Key -> shape, without the classifier and BN ``num_batches_tracked`` counters. """
    return {
        k: tuple(v.shape) for k, v in state_dict.items()
        if not _is_classifier_key(k, classifiers) and not k.endswith('num_batches_tracked')
    }


@functools.cache
def _registered_signature(name: str, classifiers: Tuple[str, ...]) -> Tuple[Tuple[str, Tuple[int, ...]], ...]:
    """ Key/shape signature of a registered architecture with its default arguments (built on the meta device). """
    import timm
    m = timm.create_model(name, device='meta')
    return tuple(sorted(_signature(m.state_dict(), classifiers).items()))


_BLOCK_RE = re.compile(r'^stages\.(\d+)\.(\d+)\.')


def _block_counts(keys: Iterable[str]) -> Tuple[int, ...]:
    """ Blocks per stage of a ResidualAttentionNet state dict (``stages.<stage>.<block>.*`` keys). """
    counts: Dict[int, int] = {}
    for k in keys:
        m = _BLOCK_RE.match(k)
        if m:
            stage, block = int(m.group(1)), int(m.group(2))
            counts[stage] = max(counts.get(stage, 0), block + 1)
    return tuple(counts.get(i, 0) for i in range(max(counts) + 1)) if counts else ()


def _matching_architectures(state_dict: Mapping, model: torch.nn.Module, classifiers: Tuple[str, ...]) -> List[str]:
    """ Registered architectures of the model's timm module whose default build has exactly these keys and shapes.

    Candidates whose config (``type(model).registered_configs()``, where the model class offers it) has another
    number of blocks per stage are skipped without building them.
    """
    import timm
    sig = tuple(sorted(_signature(state_dict, classifiers).items()))
    configs = getattr(type(model), 'registered_configs', dict)()
    blocks = _block_counts(state_dict.keys())
    found = []
    for name in timm.list_models(module=type(model).__module__.split('.')[-1]):
        if name in configs and configs[name].blocks_per_stage() != blocks:
            continue
        try:
            if _registered_signature(name, classifiers) == sig:
                found.append(name)
        except Exception:  # noqa: S112 (an architecture that can't be built with defaults simply doesn't match)
            continue
    return found


_CHECKABLE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _bn_eps(model: torch.nn.Module) -> Dict[str, float]:
    """ ``<module>.running_var`` -> the module's ``eps``, for every normalisation layer with running statistics. """
    out = {}
    for name, m in model.named_modules():
        eps = getattr(m, 'eps', None)
        if isinstance(getattr(m, 'running_var', None), torch.Tensor) and isinstance(eps, (int, float)):
            out[f'{name}.running_var' if name else 'running_var'] = float(eps)
    return out


def _cast_for_check(value: torch.Tensor, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """ ``value`` as the model will hold it (cast to the model tensor's ``dtype``), in a dtype that ``isfinite`` and
    arithmetic support (float8 and the like go on to float32, exactly); None if it can't be cast. """
    try:
        cast = value.to(dtype)
        return cast if cast.dtype in _CHECKABLE_DTYPES else cast.float()
    except (RuntimeError, TypeError, NotImplementedError):  # e.g. packed float4 has no copy kernel
        return None


def _value_problems(
        state_dict: Mapping, model_sd: Mapping[str, torch.Tensor], bn_eps: Mapping[str, float], keys: Iterable[str],
) -> Tuple[List[str], List[str], List[str]]:
    """ For the floating tensors at ``keys`` (present in both, same shape): those that can't be cast to the model's
    dtype, those with NaN/Inf after the cast, and BN ``running_var`` with ``running_var + eps <= 0`` (or so close to
    0 that ``1/sqrt(running_var + eps)`` overflows): every output of such a layer is NaN or Inf. """
    uncastable, non_finite, bad_var = [], [], []
    for k in keys:
        v, want = state_dict[k], model_sd[k]
        if not (isinstance(v, torch.Tensor) and want.is_floating_point()) or v.layout != torch.strided:
            continue  # a non-tensor or a sparse tensor: refused by the structure check
        if not v.is_floating_point():  # an integer tensor would be cast and lose its values
            uncastable.append(f'{k}: {v.dtype}, not floating point')
            continue
        if v.device.type == 'meta':  # no values to load (fine only into a model on the meta device)
            if want.device.type != 'meta':
                uncastable.append(f'{k}: a meta tensor, which holds no values')
            continue
        cast = _cast_for_check(v, want.dtype)
        if cast is None:
            uncastable.append(f'{k}: {v.dtype}')
            continue
        if not bool(torch.isfinite(cast).all()):
            non_finite.append(f'{k} ({v.dtype} -> {want.dtype})' if v.dtype != want.dtype else k)
            continue
        eps = bn_eps.get(k)
        if eps is not None and cast.numel():
            denom = cast + eps
            ok = (denom > 0) & torch.isfinite(torch.rsqrt(denom.clamp_min(0)))
            if not bool(ok.all()):
                worst = float(cast.min())
                bad_var.append(f'{k} ({int((~ok).sum())} of {cast.numel()} values; min {worst:.4g}, eps={eps:g})')
    return uncastable, non_finite, bad_var


def _count_lines(entries: Sequence[Tuple[List[str], str, int]]) -> List[str]:
    """ One message line ``'  N <what>: <first items>'`` per non-empty ``(items, what, shown)`` entry. """
    return [f'  {len(items)} {what}: {_first(items, shown)}' for items, what, shown in entries if items]


def _value_lines(uncastable: List[str], non_finite: List[str], bad_var: List[str], dtype_note: str) -> List[str]:
    return _count_lines([
        (uncastable, "tensor(s) can't be cast to the model's dtype", 3),
        (non_finite, f'tensor(s) hold NaN or Inf values{dtype_note}', _NUM_SHOWN),
        (bad_var, 'BatchNorm running_var tensor(s) with running_var + eps <= 0 (every output of the layer would be '
                  'NaN)', 3),
    ])


def check_values(
        state_dict: Mapping,
        model: torch.nn.Module,
        source: str = 'the state dict',
        keys: Optional[Iterable[str]] = None,
) -> None:
    """ Refuse values that make the model compute NaN/Inf, checked as the model will hold them.

    Each floating tensor is cast to the dtype of the model's tensor first (a float64 ``1e300`` is ``inf`` in a
    float32 model), whatever its floating dtype (float8/16, bfloat16, float32/64); then it must be finite, and a
    normalisation layer's ``running_var`` must have ``running_var + eps > 0`` with the layer's own ``eps`` (slightly
    negative variances, as the Caffe converter writes, are fine). ``keys``: the tensors to check (default: every
    key that the model has with the same shape).
    """
    model_sd = model.state_dict()
    if keys is None:
        keys = [k for k, v in state_dict.items() if k in model_sd and isinstance(v, torch.Tensor)
                and tuple(v.shape) == tuple(model_sd[k].shape)]
    lines = _value_lines(*_value_problems(state_dict, model_sd, _bn_eps(model), keys), _dtype_note(model_sd))
    if lines:
        cfg = getattr(model, 'pretrained_cfg', None) or {}
        arch = cfg.get('architecture') or type(model).__name__
        raise WeightsError('\n'.join([f"Can't load {source} into {arch}:", *lines]))


def _dtype_note(model_sd: Mapping[str, torch.Tensor]) -> str:
    dtypes = sorted({str(v.dtype).replace('torch.', '') for v in model_sd.values() if v.is_floating_point()})
    return f" (after casting to the model's {'/'.join(dtypes)})" if dtypes else ''


def check_state_dict(
        state_dict: Mapping,
        model: torch.nn.Module,
        source: str = 'the state dict',
        drop_classifier: Optional[bool] = None,
        adapt_in_chans: bool = True,
) -> None:
    """ Raise a :class:`WeightsError` summarising why ``state_dict`` does not fit ``model``.

    Mirrors what timm's ``load_pretrained`` will adapt: the classifier (``pretrained_cfg['classifier']``) is ignored
    when it is going to be dropped (``drop_classifier``; default: the model's ``num_classes`` differs from the
    weights' ``pretrained_cfg['num_classes']``), and the first conv (``pretrained_cfg['first_conv']``) may differ in
    its input channels when ``adapt_in_chans``. A missing BN ``num_batches_tracked`` counter is fine. The values are
    checked as :func:`check_values` does (finite after the cast to the model's dtype, ``running_var + eps > 0``).

    Args:
        state_dict: Parameter names mapped to tensors (after any key remapping).
        model: The model the weights are for (not a features_only wrapper).
        source: How to name the weights in the message (e.g. "weight file '/path/x.safetensors'").
        drop_classifier: Whether the classifier weights will be dropped (None: decide from num_classes).
        adapt_in_chans: Whether a first conv with other input channels will be adapted.
    """
    _check_structure(state_dict, model, source, drop_classifier, adapt_in_chans, values=True)


def _check_structure(
        state_dict: Mapping,
        model: torch.nn.Module,
        source: str,
        drop_classifier: Optional[bool],
        adapt_in_chans: bool,
        values: bool,
) -> List[str]:
    """ Keys, shapes and dtypes (and the values where ``values``), one message listing every problem; returns the
    keys that will be loaded. """
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    classifiers = _as_tuple(cfg.get('classifier'))
    first_convs = {f'{c}.weight' for c in _as_tuple(cfg.get('first_conv'))}
    if drop_classifier is None:
        pretrained_classes = cfg.get('num_classes')
        drop_classifier = pretrained_classes is not None and getattr(model, 'num_classes', None) != pretrained_classes
    skip_classifier = drop_classifier or bool(cfg.get('label_offset'))

    model_sd = model.state_dict()
    missing, unexpected, shapes, dtypes, layouts, fitting = [], [], [], [], [], []
    for k in model_sd:
        if k.endswith('num_batches_tracked') or (skip_classifier and _is_classifier_key(k, classifiers)):
            continue
        if k not in state_dict:
            missing.append(k)
    for k, v in state_dict.items():
        if skip_classifier and _is_classifier_key(k, classifiers):
            continue
        if k not in model_sd:
            unexpected.append(k)
            continue
        if not isinstance(v, torch.Tensor):
            shapes.append(f'{k}: {type(v).__name__}, not a tensor')
            continue
        if v.layout != torch.strided:  # sparse or other layouts: not the dense tensor a parameter or buffer is
            layouts.append(f'{k}: {str(v.layout).replace("torch.", "")}')
            continue
        if model_sd[k].is_floating_point() and not v.is_floating_point():
            dtypes.append(f'{k}: {v.dtype}')  # reported once, here (not again by the value checks)
            continue
        want, got = tuple(model_sd[k].shape), tuple(v.shape)
        if want == got:
            fitting.append(k)
            continue
        if adapt_in_chans and k in first_convs and len(want) == len(got) == 4 and \
                want[:1] + want[2:] == got[:1] + got[2:]:
            fitting.append(k)  # timm adapts its input channels after this check: its values are checked as they are
            continue
        shapes.append(f'{k}: {got} in the weights vs {want} in the model')
    value_lines = []
    if values and not (missing or unexpected or shapes):
        value_lines = _value_lines(*_value_problems(state_dict, model_sd, _bn_eps(model), fitting),
                                   _dtype_note(model_sd))
    if not (missing or unexpected or shapes or dtypes or layouts or value_lines):
        return fitting
    unexpected.sort(key=lambda k: k.endswith('num_batches_tracked'))  # the informative keys first

    arch = cfg.get('architecture') or type(model).__name__
    lines = [f"Can't load {source} into {arch} (num_classes={getattr(model, 'num_classes', '?')}):"]
    lines += _count_lines([
        (missing, 'missing key(s) (in the model, not in the weights)', _NUM_SHOWN),
        (unexpected, 'unexpected key(s) (in the weights, not in the model)', _NUM_SHOWN),
        (shapes, 'shape mismatch(es)', 3),
        (dtypes, 'tensor(s) are not floating point where the model has floating-point ones (loading would cast them '
                 'and lose their values)', 3),
        (layouts, 'tensor(s) are not dense (a parameter or buffer holds a strided tensor)', 3),
    ])
    lines.extend(value_lines)
    lines.append(f'  ({len(state_dict)} tensors in the weights, {len(model_sd)} in the model)')
    if not (missing or unexpected or shapes):
        raise WeightsError('\n'.join(lines))
    matches = _matching_architectures(state_dict, model, classifiers)
    if arch in matches:
        lines.append(
            f'The weights fit {arch} with its default architecture arguments: this model was built with other '
            f'ones (model_args / --model-kwargs); build it with the arguments the weights were trained with.')
    elif matches:
        lines.append(
            f"The weights' keys and shapes are those of {' / '.join(matches)}: create that model instead "
            f"(timm.create_model('{matches[0]}', ...)).")
    raise WeightsError('\n'.join(lines))


def _spec_for(tp: Any) -> Spec:
    """ The schema spec of a config field from its type annotation (``Optional``, ``Literal``, ``bool``, ``int``,
    ``float``, ``str``, ``Tuple[int, ...]``); any JSON value for an annotation it does not know. """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return Nullable(_spec_for(rest[0]) if len(rest) == 1 else _ANY_JSON)
    if origin is Literal:  # the type of its values (a value outside them differs from the model's: refused then)
        kinds = {type(a) for a in args}
        return _spec_for(kinds.pop()) if len(kinds) == 1 else _ANY_JSON
    if origin is tuple and args and all(a is int or a is Ellipsis for a in args):
        return IntTuple(minimum=0, length=None if Ellipsis in args else len(args))
    return {bool: Bool(), int: Int(), float: Float(), str: Str()}.get(tp, _ANY_JSON)


_ANY_JSON = Any_(lambda v: v is None or isinstance(v, (str, int, float, bool, list)), 'a JSON value')
_HEADER_SCHEMA = Schema(
    {ARCHITECTURE_KEY: Str(), ARCH_CFG_KEY: Str(non_empty=True)}, error=WeightsError, what='metadata field')


def _field_schema(model: torch.nn.Module, names: Iterable[str]) -> Schema:
    """ The schema of the recorded architecture fields ``names``: typed from the annotations of the model's config
    dataclass (``model.cfg``) where it has one. """
    cfg = getattr(model, 'cfg', None)
    hints: Dict[str, Any] = {}
    if dataclasses.is_dataclass(cfg):
        with contextlib.suppress(NameError, TypeError):  # unresolvable annotations: any JSON value then
            hints = typing.get_type_hints(type(cfg))
    return Schema({n: _spec_for(hints.get(n)) for n in names}, error=WeightsError, what='architecture field')


def _json_kind(value: Any) -> str:
    return {dict: 'an object', list: 'a list', str: 'a string', bool: 'a boolean', int: 'a number',
            float: 'a number', type(None): 'null'}.get(type(value), type(value).__name__)


def _expected_metadata(model: torch.nn.Module) -> Optional[Mapping[str, str]]:
    get = getattr(model, 'weights_metadata', None)
    return get() if callable(get) else None


def parse_metadata(
        metadata: Any, model: torch.nn.Module, source: str,
) -> Optional[Tuple[str, Dict[str, Any]]]:
    """ ``(architecture, fields)`` that ``metadata`` records (see ``weights_metadata``), checked with a schema; None
    for weights without such metadata (plain state dicts) or a model that records none.

    The metadata must be a mapping; this package's entries must be strings, the architecture fields a JSON object
    whose known fields have the types of the model's config (unknown fields, from another version, are ignored).
    Anything else is refused with a :class:`WeightsError` naming ``source`` and the field.
    """
    expected = _expected_metadata(model)
    if expected is None or metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise WeightsError(
            f'{source}: its metadata is {type(metadata).__name__}, expected a mapping of metadata fields to strings')
    ours = _HEADER_SCHEMA.check(
        {k: metadata[k] for k in (ARCHITECTURE_KEY, ARCH_CFG_KEY) if k in metadata}, source=f'{source} metadata')
    if ARCH_CFG_KEY not in ours:
        return None
    try:
        fields = json.loads(ours[ARCH_CFG_KEY])
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        raise WeightsError(
            f'{source} metadata: {ARCH_CFG_KEY}={ours[ARCH_CFG_KEY][:80]!r} is not valid JSON') from None
    if not isinstance(fields, dict):
        raise WeightsError(
            f'{source} metadata: {ARCH_CFG_KEY}={ours[ARCH_CFG_KEY][:80]!r} is invalid: expected a JSON object of '
            f'architecture fields, got {_json_kind(fields)}')
    want_names = json.loads(expected[ARCH_CFG_KEY])
    schema = _field_schema(model, want_names)
    fields = schema.check({k: v for k, v in fields.items() if k in schema}, source=f'{source} metadata')
    return ours.get(ARCHITECTURE_KEY, ''), fields


def _own_metadata(model: torch.nn.Module) -> Optional[Tuple[str, Dict[str, Any]]]:
    expected = _expected_metadata(model)
    return None if expected is None else parse_metadata(expected, model, 'the model')


def _describe(arch: str, cfg: Mapping[str, Any], fields: Iterable[str]) -> str:
    settings = ', '.join(f'{f}={_shown(cfg.get(f))}' for f in fields)
    return f"{arch or 'an unnamed architecture'} ({settings})"


def _shown(value: Any) -> str:
    return repr(list(value) if isinstance(value, tuple) else value)


def _differing(got: Mapping[str, Any], want: Mapping[str, Any]) -> List[str]:
    """ Fields recorded in both with other values (a field one side does not record is not compared). """
    return [f for f in want if f in got and got[f] != want[f]]


def compare_metadata(
        got: Optional[Tuple[str, Dict[str, Any]]],
        want: Optional[Tuple[str, Dict[str, Any]]],
        message: Callable[[str, str], str],
) -> None:
    """ Refuse when two parsed descriptions (:func:`parse_metadata`) differ in a field both record, with
    ``message(got, want)`` (each the architecture with the differing fields). """
    if got is None or want is None:
        return
    differ = _differing(got[1], want[1])
    if differ:
        raise WeightsError(message(_describe(got[0], got[1], differ), _describe(want[0], want[1], differ)))


def _mismatch_message(source: str, have_arch: str) -> Callable[[str, str], str]:
    hint = f" Create the model the file was written for: timm.create_model('{have_arch}', ...)." if have_arch else ''
    return lambda got, want: (
        f"Can't load {source}: it was written for {got}, and this model is {want}. These compute different "
        f"functions (even where the tensor shapes agree), so the weights would run but give wrong outputs.{hint}"
    )


def check_metadata(metadata: Any, model: torch.nn.Module, source: str) -> None:
    """ Refuse weights whose metadata says they were written for a model that computes something else.

    Files written by this package record the architecture and every config field that changes the network's
    function (``ResidualAttentionNet.weights_metadata``); :func:`parse_metadata` checks their types. Files without
    that metadata (plain state dicts) pass.
    """
    got = parse_metadata(metadata, model, source)
    if got is not None:
        compare_metadata(got, _own_metadata(model), _mismatch_message(source, got[0]))


def check_weights(
        state_dict: Mapping,
        model: torch.nn.Module,
        source: str,
        metadata: Any = None,
        *,
        strict: bool = True,
        drop_classifier: Optional[bool] = None,
        adapt_in_chans: bool = True,
        declared: Sequence[Tuple[Any, str]] = (),
) -> None:
    """ Every check of weights against the model they are loaded into, in one place; every loading route calls it.

    1. the metadata (the file's, and each ``declared`` description such as a Hub folder's ``config.json``) is parsed
       with a schema (:func:`parse_metadata`);
    2. keys, shapes and dtypes (``strict``; otherwise only the tensors whose name and shape the model has are
       loaded, and only those are checked);
    3. what the weights were written for: each ``declared`` description against the file's metadata and against the
       model, and the file's metadata against the model (:func:`check_metadata`);
    4. the values, as the model will hold them (:func:`check_values`).

    Args:
        state_dict: Parameter names mapped to tensors (after any key remapping).
        model: The model (not a features_only wrapper).
        source: How to name the weights in messages.
        metadata: The file's metadata (``read_weight_file``), or None.
        strict: Require the keys and shapes to fit (with the adaptations below).
        drop_classifier, adapt_in_chans: As in :func:`check_state_dict`.
        declared: ``(metadata, where)`` pairs: other records of what the weights are for (``where`` names them).
    """
    recorded = parse_metadata(metadata, model, source)
    claims = [(parse_metadata(meta, model, where), where) for meta, where in declared]
    if strict:
        fitting = _check_structure(state_dict, model, source, drop_classifier, adapt_in_chans, values=False)
    else:  # only what will be loaded: the tensors whose name and shape the model has
        fitting = None
    own = _own_metadata(model)
    for claim, where in claims:
        compare_metadata(claim, recorded, lambda got, want, where=where: (
            f"Can't load {source}: {where} describes {got}, but the weights' metadata says they were written for "
            f"{want}. The two contradict each other: fix or re-export the folder."))
    if recorded is not None:
        compare_metadata(recorded, own, _mismatch_message(source, recorded[0]))
    for claim, where in claims:
        compare_metadata(claim, own, lambda got, want, where=where: (
            f"Can't load {source}: {where} describes {got}, and this model is {want}. These compute different "
            f"functions (even where the tensor shapes agree): build the model it describes (without arguments that "
            f"override it)."))
    check_values(state_dict, model, source, keys=fitting)
