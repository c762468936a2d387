""" Safe, validated loading of weight files for timm-resattn models.

``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=PATH))`` (and train.py's
``--pretrained --pretrained-path PATH``) reads ``PATH`` through :func:`load_state_dict_file`:

* ``.safetensors`` (preferred; also recognised by content under another extension) is read with ``safetensors``,
  which holds tensors only and never runs code;
* anything else (``.pth``, ``.pth.tar``, ``.bin``, ``.pt``, ...) is read with ``torch.load(weights_only=True)``:
  a pickle that needs Python code (``__reduce__`` to an arbitrary callable) is refused with :class:`WeightsError`
  before anything in it runs. There is no fallback to ``weights_only=False``.

Corrupt or truncated files, files that hold no state dict, and state dicts that do not fit the model
(missing/unexpected keys, wrong shapes, another architecture) raise :class:`WeightsError` naming the file and
summarising the problem (first keys and counts, not a full key dump); :func:`check_state_dict` does the model check,
and says which registered Residual Attention Network the keys belong to when they fit another one.

Training checkpoints (timm's ``CheckpointSaver``: ``state_dict``, ``state_dict_ema``, ``optimizer``, ``args``, ...)
are unwrapped the way timm's own ``load_state_dict`` does: the EMA weights when present (``use_ema=True``), else
``state_dict`` / ``model``; ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes are stripped.
"""
import argparse
import functools
import pickle
import pickletools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch

__all__ = ['WeightsError', 'load_state_dict_file', 'check_state_dict', 'load_weights']

_NUM_SHOWN = 5
_STATE_DICT_KEYS = ('state_dict_ema', 'model_ema', 'state_dict', 'model')
_WRAPPER_PREFIXES = ('module.', '_orig_mod.')


class WeightsError(RuntimeError):
    """ A weight file that can't be read safely, or whose tensors don't fit the model. """


def _first(items: Sequence[str], n: int = _NUM_SHOWN) -> str:
    items = list(items)
    shown = ', '.join(items[:n])
    return shown + (f', ... (+{len(items) - n} more)' if len(items) > n else '')


def _looks_like_safetensors(path: Path) -> bool:
    """ safetensors files start with an 8-byte little-endian header length followed by a JSON object. """
    try:
        with path.open('rb') as f:
            head = f.read(9)
        size = path.stat().st_size
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b'{':
        return False
    return 0 < int.from_bytes(head[:8], 'little') <= size - 8


def _pickle_globals(path: Path, max_ops: int = 1_000_000) -> List[str]:
    """ Globals a plain (non-zip) pickle would import, found by reading its opcodes without executing any. """
    found = []
    strings: List[str] = []
    try:
        with path.open('rb') as f:
            for i, (op, arg, _) in enumerate(pickletools.genops(f)):
                if i >= max_ops:
                    break
                if op.name in ('GLOBAL', 'INST'):
                    found.append(str(arg).replace(' ', '.'))
                elif op.name == 'STACK_GLOBAL' and len(strings) >= 2:
                    found.append(f'{strings[-2]}.{strings[-1]}')
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # truncated / not a pickle: report what was found so far
        pass
    return list(dict.fromkeys(found))


def _unsafe_globals(path: Path) -> List[str]:
    getter = getattr(torch.serialization, 'get_unsafe_globals_in_checkpoint', None)
    if getter is not None:
        try:
            return list(getter(str(path)))
        except Exception:
            pass  # not a zip checkpoint
    allowed = {'collections.OrderedDict', 'torch._utils._rebuild_tensor_v2', 'torch._utils._rebuild_parameter',
               'argparse.Namespace'}
    return [g for g in _pickle_globals(path) if g not in allowed and not g.startswith('torch.')]


def _torch_load_safe(path: Path) -> Any:
    try:
        if hasattr(torch.serialization, 'safe_globals'):
            # timm's training checkpoints store train.py's argparse.Namespace under 'args' (plain data)
            with torch.serialization.safe_globals([argparse.Namespace]):
                return torch.load(str(path), map_location='cpu', weights_only=True)
        return torch.load(str(path), map_location='cpu', weights_only=True)
    except TypeError as e:  # torch without weights_only: never fall back to an unsafe load
        raise WeightsError(
            f"Can't load '{path}' safely: torch=={torch.__version__} has no torch.load(weights_only=True). "
            f"Convert the file to .safetensors with a trusted tool, or upgrade PyTorch."
        ) from e
    except pickle.UnpicklingError as e:
        unsafe = _unsafe_globals(path)
        if unsafe or 'GLOBAL' in str(e):
            names = f' ({_first(unsafe)})' if unsafe else ''
            raise WeightsError(
                f"Refused to load '{path}': it is a pickle that calls Python code{names} when unpickled. "
                f"timm-resattn only reads .pth/.bin files with torch.load(weights_only=True), which refuses such "
                f"files without running anything in them. If you trust where the file came from, convert it once "
                f"in a separate process: sd = torch.load(path, weights_only=False); "
                f"safetensors.torch.save_file(sd, 'weights.safetensors'), and load the .safetensors file."
            ) from None
        raise WeightsError(
            f"Can't read '{path}' ({path.stat().st_size} bytes) as a PyTorch checkpoint: the file is corrupt, "
            f"truncated or not a torch.save() file ({_short(e)})."
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, KeyError, IndexError) as e:
        raise WeightsError(
            f"Can't read '{path}' ({path.stat().st_size} bytes) as a PyTorch checkpoint: the file is corrupt or "
            f"truncated (an interrupted download or copy?) ({_short(e)})."
        ) from None


def _short(e: BaseException, n: int = 200) -> str:
    msg = str(e)
    detail = re.search(r'WeightsUnpickler error:\s*(.*?)(?:\n\s*\n|Check the documentation|$)', msg, re.S)
    if detail:  # drop torch's generic weights_only advice, keep what went wrong
        msg = detail.group(1)
    msg = ' '.join(msg.split())
    msg = f'{type(e).__name__}: {msg}' if msg else type(e).__name__
    return msg if len(msg) <= n else msg[:n] + '...'


def _unwrap(obj: Any, path: Path, use_ema: bool) -> Dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = [k for k in _STATE_DICT_KEYS if (use_ema or 'ema' not in k) and isinstance(obj.get(k), Mapping)]
        if keys:
            obj = obj[keys[0]]
    if not isinstance(obj, Mapping):
        raise WeightsError(
            f"'{path}' holds a {type(obj).__name__}, not a state dict (a mapping of parameter names to tensors).")
    if not obj:
        raise WeightsError(f"'{path}' holds an empty state dict (no tensors).")
    bad = [f'{k} ({type(v).__name__})' for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightsError(
            f"'{path}' is not a state dict: {len(bad)} of its {len(obj)} entries are not tensors "
            f"({_first(bad)}). Expected parameter names mapped to tensors, or a training checkpoint with one of "
            f"the entries {list(_STATE_DICT_KEYS)}."
        )
    out = {}
    for k, v in obj.items():
        k = str(k)
        while k.startswith(_WRAPPER_PREFIXES):
            k = k.split('.', 1)[1]
        out[k] = v
    return out


def load_state_dict_file(path: Union[str, Path], use_ema: bool = True) -> Dict[str, torch.Tensor]:
    """ Read a state dict from ``path`` without running code from it.

    Args:
        path: ``.safetensors`` (preferred) or a ``torch.save`` file (``.pth``, ``.pth.tar``, ``.bin``, ...).
        use_ema: For training checkpoints, take ``state_dict_ema`` / ``model_ema`` when present (as timm does).

    Returns:
        Parameter names (without ``module.`` / ``_orig_mod.`` prefixes) mapped to CPU tensors.

    Raises:
        FileNotFoundError: No file at ``path``.
        WeightsError: The file is corrupt/truncated, needs code to unpickle, or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Weight file not found: '{path}'")
    if path.stat().st_size == 0:
        raise WeightsError(f"Weight file '{path}' is empty (0 bytes).")
    if path.suffix == '.safetensors' or _looks_like_safetensors(path):
        import safetensors.torch
        try:
            obj = safetensors.torch.load_file(str(path), device='cpu')
        except Exception as e:
            raise WeightsError(
                f"Can't read '{path}' ({path.stat().st_size} bytes) as safetensors: the file is corrupt or "
                f"truncated (an interrupted download or copy?) ({_short(e)})."
            ) from None
    else:
        obj = _torch_load_safe(path)
    return _unwrap(obj, path, use_ema)


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


def _cfg_block_counts(cfg: Any) -> Optional[Tuple[int, ...]]:
    try:
        tails = cfg.stage_tail_units or (0,) * len(cfg.stage_units)
        return tuple(u + m + t for u, m, t in zip(cfg.stage_units, cfg.stage_modules, tails))
    except Exception:
        return None


@functools.lru_cache(maxsize=None)
def _registered_signature(name: str, classifiers: Tuple[str, ...]) -> Tuple[Tuple[str, Tuple[int, ...]], ...]:
    """ Key/shape signature of a registered architecture with its default arguments (built on the meta device). """
    import timm
    m = timm.create_model(name, device='meta')
    return tuple(sorted(_signature(m.state_dict(), classifiers).items()))


def _matching_architectures(state_dict: Mapping, model: torch.nn.Module, classifiers: Tuple[str, ...]) -> List[str]:
    """ Registered architectures of the model's module whose default build has exactly these keys and shapes. """
    import sys
    import timm
    module = type(model).__module__
    arch_cfgs = getattr(sys.modules.get(module), 'model_cfgs', None) or {}
    sig = tuple(sorted(_signature(state_dict, classifiers).items()))
    blocks = _block_counts(state_dict.keys())
    found = []
    for name in timm.list_models(module=module.split('.')[-1]):
        want = _cfg_block_counts(arch_cfgs[name]) if name in arch_cfgs else None
        if want is not None and want != blocks:
            continue  # cheap pre-filter: another number of blocks per stage
        try:
            if _registered_signature(name, classifiers) == sig:
                found.append(name)
        except Exception:
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
    missing, unexpected, shapes = [], [], []
    for k, v in model_sd.items():
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
        want, got = tuple(model_sd[k].shape), tuple(v.shape)
        if want == got:
            continue
        if adapt_in_chans and k in first_convs and len(want) == len(got) == 4 and \
                want[:1] + want[2:] == got[:1] + got[2:]:
            continue  # timm adapts the input channels of the first conv
        shapes.append(f'{k}: {got} in the weights vs {want} in the model')
    if not (missing or unexpected or shapes):
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
    lines.append(f'  ({len(state_dict)} tensors in the weights, {len(model_sd)} in the model)')
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


def load_weights(
        model: torch.nn.Module,
        path: Union[str, Path],
        use_ema: bool = True,
        strict: bool = True,
) -> torch.nn.Module:
    """ Safely read ``path`` (:func:`load_state_dict_file`), validate it and load it into ``model`` as is.

    The validated counterpart of ``timm.models.load_checkpoint`` (validate.py ``--checkpoint``): no classifier or
    input-channel adaptation; use ``timm.create_model(name, pretrained=True, num_classes=..., in_chans=...,
    pretrained_cfg_overlay=dict(file=path))`` for fine-tuning.
    """
    from .models.resattnet import checkpoint_filter_fn
    state_dict = checkpoint_filter_fn(load_state_dict_file(path, use_ema=use_ema), model)
    if strict:
        check_state_dict(state_dict, model, source=f"weight file '{path}'", drop_classifier=False, adapt_in_chans=False)
    model.load_state_dict(state_dict, strict=strict)
    return model
