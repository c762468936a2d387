""" Reading weight files without running code from them, and writing them with what they were made for.

* ``.safetensors`` (preferred; also recognised by content under another extension) is read with ``safetensors``,
  which holds tensors only and never runs code;
* anything else (``.pth``, ``.pth.tar``, ``.bin``, ``.pt``, ...) is read with ``torch.load(weights_only=True)``:
  a pickle that needs Python code (``__reduce__`` to an arbitrary callable) is refused with :class:`WeightsError`
  before anything in it runs. There is no fallback to ``weights_only=False``.

Training checkpoints (timm's ``CheckpointSaver``: ``state_dict``, ``state_dict_ema``, ``optimizer``, ``args``, ...)
are unwrapped the way timm's own ``load_state_dict`` does: the EMA weights when present (``use_ema=True``), else
``state_dict`` / ``model``; ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes are stripped.

Files this package writes (:func:`save_state_dict`: the safetensors export, the Hub export, CIFAR training, the Caffe
converter) carry string metadata: in the safetensors header, or as the checkpoint entry ``METADATA_KEY`` of a
``torch.save`` dict. :func:`read_weight_file` returns it with the tensors.
"""
import argparse
import os
import pickle
import pickletools
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch

from ..errors import MissingFileError, WeightsError

__all__ = [
    'METADATA_KEY', 'read_weight_file', 'read_weight_metadata', 'read_checkpoint', 'load_state_dict_file',
    'save_state_dict', 'atomic_write',
    'unwrap_state_dict',
]

METADATA_KEY = 'timm_resattn_metadata'

_NUM_SHOWN = 5
_STATE_DICT_KEYS = ('state_dict_ema', 'model_ema', 'state_dict', 'model')
_WRAPPER_PREFIXES = ('module.', '_orig_mod.')


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
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:
        pass  # not a zip checkpoint (a legacy torch.save pickle): read the pickle's globals below
    allowed = {'collections.OrderedDict', 'torch._utils._rebuild_tensor_v2', 'torch._utils._rebuild_parameter',
               'argparse.Namespace'}
    return [g for g in _pickle_globals(path) if g not in allowed and not g.startswith('torch.')]


def _torch_load_safe(path: Path) -> Any:
    try:
        # timm's training checkpoints store train.py's argparse.Namespace under 'args' (plain data)
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(str(path), map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        unsafe = _unsafe_globals(path) or re.findall(r'GLOBAL (\S+) was not an allowed global', str(e))
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


def _select_state_dict(obj: Any, use_ema: bool = True) -> Any:
    """ The state dict inside a training checkpoint (EMA weights first if ``use_ema``, as timm), else ``obj``. """
    if isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        keys = [k for k in _STATE_DICT_KEYS if (use_ema or 'ema' not in k) and isinstance(obj.get(k), Mapping)]
        if keys:
            return obj[keys[0]]
    return obj


def _strip_wrapper_prefixes(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    out = {}
    for k, v in state_dict.items():
        k = str(k)
        while k.startswith(_WRAPPER_PREFIXES):
            k = k.split('.', 1)[1]
        out[k] = v
    return out


def unwrap_state_dict(obj: Any, use_ema: bool = True) -> Any:
    """ A checkpoint's state dict as parameter names: the entry a training checkpoint keeps it in
    (``state_dict_ema``, ``model_ema``, ``state_dict``, ``model``; EMA first if ``use_ema``, as timm does) and without
    the ``module.`` / ``_orig_mod.`` prefixes of DataParallel/DDP and ``torch.compile``. Anything else is returned
    as it is. """
    obj = _select_state_dict(obj, use_ema)
    return _strip_wrapper_prefixes(obj) if isinstance(obj, Mapping) else obj


def _unwrap(obj: Any, path: Path, use_ema: bool) -> Dict[str, torch.Tensor]:
    obj = _select_state_dict(obj, use_ema)
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
    return _strip_wrapper_prefixes(obj)


def _metadata_of(obj: Any) -> Any:
    """ The ``METADATA_KEY`` entry of a ``torch.save`` dict as it is (``checks.parse_metadata`` checks its types), or
    an empty mapping. """
    if isinstance(obj, Mapping) and METADATA_KEY in obj:
        return obj[METADATA_KEY]
    return {}


def read_weight_file(path: Union[str, Path], use_ema: bool = True) -> Tuple[Dict[str, torch.Tensor], Any]:
    """ Read a state dict and its metadata from ``path`` without running code from it.

    Args:
        path: ``.safetensors`` (preferred) or a ``torch.save`` file (``.pth``, ``.pth.tar``, ``.bin``, ...).
        use_ema: For training checkpoints, take ``state_dict_ema`` / ``model_ema`` when present (as timm does).

    Returns:
        ``(state_dict, metadata)``: parameter names (without ``module.`` / ``_orig_mod.`` prefixes) mapped to CPU
        tensors, and the file's metadata (empty for files not written by this package): the safetensors header's
        strings, or the ``METADATA_KEY`` entry of a ``torch.save`` dict as it is (``checks.parse_metadata`` checks
        it).

    Raises:
        MissingFileError: No file at ``path`` (a ``FileNotFoundError``).
        WeightsError: The file is a folder, unreadable, corrupt/truncated, needs code to unpickle, or holds no
            state dict.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"weight file not found: '{path}'")
    if not path.is_file():
        raise WeightsError(f"weight file '{path}' is not a file")
    try:
        size = path.stat().st_size
        with path.open('rb'):
            pass
    except OSError as e:
        raise WeightsError(f"can't read weight file '{path}': {e.strerror or e}") from None
    if size == 0:
        raise WeightsError(f"weight file '{path}' is empty (0 bytes).")
    if path.suffix == '.safetensors' or _looks_like_safetensors(path):
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework='pt', device='cpu') as f:
                metadata = dict(f.metadata() or {})
                obj = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        except Exception as e:
            raise WeightsError(
                f"Can't read '{path}' ({size} bytes) as safetensors: the file is corrupt or "
                f"truncated (an interrupted download or copy?) ({_short(e)})."
            ) from None
    else:
        obj = _torch_load_safe(path)
        metadata = _metadata_of(obj)
    return _unwrap(obj, path, use_ema), metadata


def read_weight_metadata(path: Union[str, Path]) -> Any:
    """ Only the metadata of a weight file (as :func:`read_weight_file` returns it): from the header of a safetensors
    file without reading its tensors, else from the whole ``torch.save`` file. """
    path = Path(path)
    if path.is_file() and (path.suffix == '.safetensors' or _looks_like_safetensors(path)):
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework='pt', device='cpu') as f:
                return dict(f.metadata() or {})
        except Exception:  # noqa: S110 (corrupt: the full read below raises the usual message)
            pass
    return read_weight_file(path)[1]


def read_checkpoint(path: Union[str, Path]) -> Any:
    """ The whole object of a ``torch.save`` file (e.g. a training checkpoint with its optimizer state), read with
    ``torch.load(weights_only=True)``; a missing, corrupt or code-executing file raises like ``read_weight_file``. """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: '{path}'")
    return _torch_load_safe(path)


def load_state_dict_file(path: Union[str, Path], use_ema: bool = True) -> Dict[str, torch.Tensor]:
    """ The state dict of :func:`read_weight_file`, without the metadata. """
    return read_weight_file(path, use_ema=use_ema)[0]


def _current_umask() -> int:
    """ The process umask, read without changing it where the OS tells it (Linux), else set-and-restore. """
    try:
        with open('/proc/self/status', encoding='ascii') as f:
            for line in f:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)  # briefly: another thread creating a file now would get 0022
    os.umask(umask)
    return umask


def atomic_write(path: Union[str, Path], write: Any, mode: int = 0o644) -> Path:
    """ Call ``write(tmp_path)`` for a temporary file beside ``path``, then move it into place.

    No partial file is ever left at ``path`` or beside it (the temporary file is removed on any failure), and the
    result gets normal permissions (``mode``, default 0644, less the umask), not ``mkstemp``'s 0600.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path('.')
    if not folder.is_dir():
        raise MissingFileError(f"can't write '{path}': the folder '{folder}' does not exist")
    # a short temporary name: any name the file system allows for ``path`` leaves room for it
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name[:32]}.', suffix='.tmp', dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, mode & ~_current_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_state_dict(
        state_dict: Mapping[str, torch.Tensor],
        path: Union[str, Path],
        metadata: Optional[Mapping[str, str]] = None,
) -> Path:
    """ Write ``state_dict`` as safetensors (atomically, 0644) with string ``metadata`` in its header.

    Tensors are made contiguous and shared storages are cloned (safetensors refuses shared tensors).
    """
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().clone() if isinstance(v, torch.Tensor) else v for k, v in state_dict.items()}
    meta = {'format': 'pt', **{str(k): str(v) for k, v in (metadata or {}).items()}}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
