""" Checking a state dict against a model before it is loaded, with messages a user can act on.

:func:`check_state_dict` refuses, listing the offending tensors (first few names and counts, never a full dump):
missing and unexpected keys, shape mismatches, non-floating tensors where the model has floating ones (an integer
tensor would silently be cast), and NaN/Inf values. When the keys fit another registered architecture it says
which. :func:`check_metadata` compares what a file says it was written for with what the model computes.
"""
import functools
import json
import re
from collections.abc import Mapping
from typing import Dict, Iterable, List, Optional, Tuple, Union

import torch

from ..errors import WeightsError
from .files import _first

__all__ = ['check_state_dict', 'check_metadata', 'ARCHITECTURE_KEY', 'ARCH_CFG_KEY']

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
    its input channels when ``adapt_in_chans``. A missing BN ``num_batches_tracked`` counter is fine.

    Args:
        state_dict: Parameter names mapped to tensors (after any key remapping).
        model: The model the weights are for (not a features_only wrapper).
        source: How to name the weights in the message (e.g. "weight file '/path/x.safetensors'").
        drop_classifier: Whether the classifier weights will be dropped (None: decide from num_classes).
        adapt_in_chans: Whether a first conv with other input channels will be adapted.
    """
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    classifiers = _as_tuple(cfg.get('classifier'))
    first_convs = {f'{c}.weight' for c in _as_tuple(cfg.get('first_conv'))}
    if drop_classifier is None:
        pretrained_classes = cfg.get('num_classes')
        drop_classifier = pretrained_classes is not None and getattr(model, 'num_classes', None) != pretrained_classes
    skip_classifier = drop_classifier or bool(cfg.get('label_offset'))

    model_sd = model.state_dict()
    missing, unexpected, shapes, dtypes, non_finite = [], [], [], [], []
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
        if model_sd[k].is_floating_point() and not v.is_floating_point():
            dtypes.append(f'{k}: {v.dtype}')
        elif v.is_floating_point() and v.device.type != 'meta' and not bool(torch.isfinite(v).all()):
            non_finite.append(k)
        want, got = tuple(model_sd[k].shape), tuple(v.shape)
        if want == got:
            continue
        if adapt_in_chans and k in first_convs and len(want) == len(got) == 4 and \
                want[:1] + want[2:] == got[:1] + got[2:]:
            continue  # timm adapts the input channels of the first conv
        shapes.append(f'{k}: {got} in the weights vs {want} in the model')
    if not (missing or unexpected or shapes or dtypes or non_finite):
        return
    unexpected.sort(key=lambda k: k.endswith('num_batches_tracked'))  # the informative keys first

    arch = cfg.get('architecture') or type(model).__name__
    lines = [f"Can't load {source} into {arch} (num_classes={getattr(model, 'num_classes', '?')}):"]
    if missing:
        lines.append(f'  {len(missing)} missing key(s) (in the model, not in the weights): {_first(missing)}')
    if unexpected:
        lines.append(f'  {len(unexpected)} unexpected key(s) (in the weights, not in the model): {_first(unexpected)}')
    if shapes:
        lines.append(f'  {len(shapes)} shape mismatch(es): {_first(shapes, 3)}')
    if dtypes:
        lines.append(
            f'  {len(dtypes)} tensor(s) are not floating point where the model has floating-point ones (loading would '
            f'cast them and lose their values): {_first(dtypes, 3)}')
    if non_finite:
        lines.append(f'  {len(non_finite)} tensor(s) hold NaN or Inf values: {_first(non_finite)}')
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




def _describe(arch: str, cfg: dict, fields: Iterable[str]) -> str:
    settings = ', '.join(f'{f}={cfg.get(f)!r}' for f in fields)
    return f"{arch or 'an unnamed architecture'} ({settings})"


def check_metadata(metadata: Mapping[str, str], model: torch.nn.Module, source: str) -> None:
    """ Refuse weights whose metadata says they were written for a model that computes something else.

    Files written by this package record the architecture and every config field that changes the network's
    function (``ResidualAttentionNet.weights_metadata``). Files without that metadata (plain state dicts) pass.
    """
    recorded = metadata.get(ARCH_CFG_KEY)
    expected_meta = getattr(model, 'weights_metadata', None)
    if not recorded or expected_meta is None:
        return
    expected_meta = expected_meta()
    try:
        got = json.loads(recorded)
    except ValueError:
        raise WeightsError(
            f'{source} has unreadable architecture metadata ({ARCH_CFG_KEY}={recorded[:80]!r})') from None
    want = json.loads(expected_meta[ARCH_CFG_KEY])
    differ = [f for f in want if f in got and got[f] != want[f]]
    if not differ:
        return
    have_arch, want_arch = metadata.get(ARCHITECTURE_KEY, ''), expected_meta.get(ARCHITECTURE_KEY, '')
    hint = f" Create the model the file was written for: timm.create_model('{have_arch}', ...)" if have_arch else ''
    raise WeightsError(
        f"Can't load {source}: it was written for {_describe(have_arch, got, differ)}, and this model is "
        f"{_describe(want_arch, want, differ)}. These compute different functions (even where the tensor shapes "
        f"agree), so the weights would run but give wrong outputs.{hint}"
    )
