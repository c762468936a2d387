""" What every command shares: argument types, the KEY=VALUE parser, the error style.

A command module exposes ``configure(parser)`` (adds its arguments) and ``run(args) -> int``. User errors are raised
as ``timm_resattn.errors.ResAttnError`` subclasses (``CommandError`` for a bad flag value, naming the flag); the
dispatcher in ``timm_resattn.cli`` prints them as one ``error: ...`` line and exits with status 2.
"""
import argparse
import ast
import importlib
import math
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..errors import CommandError, MissingFileError, ResAttnError, WeightsError
from ..schema import Bool, Schema

__all__ = [
    'CommandParser', 'one_line', 'parse_model_kwargs', 'positive_int', 'non_negative_int', 'unit_interval',
    'resattn_models', 'check_model_name', 'create_model', 'add_model_arguments', 'model_from_args', 'open_image',
    'model_kwargs_argument', 'check_output_path', 'PathUse', 'declare_paths', 'input_argument', 'output_argument',
    'check_paths', 'same_file',
    'parse_device', 'device_argument', 'check_model_input', 'seed_int', 'workers_int', 'image_size_int',
    'positive_float', 'number_type', 'MAX_IMAGE_SIZE', 'MAX_SEED', 'max_workers',
]


def one_line(message: object) -> str:
    """ A (multi-line) error message as the one line the command layer prints after ``error:``. """
    return ' '.join(part.strip() for part in str(message).splitlines() if part.strip())


class CommandParser(argparse.ArgumentParser):
    """ argparse with the command layer's error style: a usage error is one ``error: ...`` line naming the
    argument (and where to find the usage), exit status 2, instead of argparse's usage block. """

    def error(self, message: str):
        self.exit(2, f'error: {message} (see {self.prog} --help)\n')


# timm.create_model arguments that load weights or wrap the model: the commands' own flags do that, checked
_WEIGHT_KWARGS = ('pretrained', 'pretrained_cfg', 'pretrained_cfg_overlay', 'checkpoint_path', 'cache_dir',
                  'features_only')
# where the model is built and in what dtype: the command's --device (checked against the machine) decides
_PLACEMENT_KWARGS = ('device', 'dtype')
# timm.create_model's own switches (layer config), bools like every switch
_TIMM_SWITCHES = Schema(dict(scriptable=Bool(), exportable=Bool(), no_jit=Bool()), error=CommandError,
                        what='timm.create_model switch')


def parse_model_kwargs(items: Sequence[str], flag: str = '--model-kwargs') -> Dict[str, object]:
    """ ``['attention_residual=False', 'stage_chs=(16, 32, 64)', 'mask_act=spatial']`` -> kwargs.

    Values are Python literals where they parse as one (``False``, ``3``, ``(1, 2)``), else the raw string. Each
    argument of the network is checked here against the same description as from Python and ``torch.hub``
    (``models.config.MODEL_ARGS``), so ``attention_residual=false`` is refused, not read as truthy, and
    ``num_classes=None`` is refused rather than dropped; rules between arguments are the model's. A key given twice
    is an error.
    """
    from ..models.config import MODEL_ARGS

    kwargs = {}
    for item in items:
        key, sep, value = item.partition('=')
        key = key.strip()
        if not sep or not key.isidentifier():
            raise CommandError(f'{flag} expects KEY=VALUE with KEY a name, got {item!r}')
        if key in _WEIGHT_KWARGS:
            raise CommandError(
                f'{flag} {key}=...: not an architecture setting; weights come from --pretrained or --checkpoint '
                f'(read and checked by timm_resattn.weights)')
        if key in _PLACEMENT_KWARGS:
            raise CommandError(f'{flag} {key}=...: not an architecture setting; the command places the model '
                               f'itself (--device where it has one)')
        if key in kwargs:
            raise CommandError(f'{flag}: {key} is given twice ({key}={kwargs[key]!r:.100} and {item!r:.100}); '
                               f'give each key once')
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            kwargs[key] = value
        if key in MODEL_ARGS:
            kwargs[key] = MODEL_ARGS.check_value(key, kwargs[key], source=flag)
        elif key in _TIMM_SWITCHES:
            kwargs[key] = _TIMM_SWITCHES.check_value(key, kwargs[key], source=flag)
    return kwargs


def number_type(cast, minimum, maximum=None, what='a number', minimum_open=False, maximum_open=False):
    """ An argparse type: ``cast(text)`` within ``[minimum, maximum]`` (open at an end with ``minimum_open`` /
    ``maximum_open``), finite, else a message saying what was expected. """
    def parse(text: str):
        try:
            value = cast(text)
        except (ValueError, OverflowError):
            value = None
        bad = value is None or (isinstance(value, float) and not math.isfinite(value)) or value < minimum or \
            (minimum_open and value == minimum) or (maximum is not None and value > maximum) or \
            (maximum_open and value == maximum)
        if bad:
            raise argparse.ArgumentTypeError(f'expected {what}, got {text!r}')
        return value
    return parse


MAX_IMAGE_SIZE = 4096  # the largest input side a command accepts (--img-size, export's --min/--max-size)
MAX_SEED = 2 ** 32 - 1  # numpy's and CUDA's seed range


def max_workers() -> int:
    """ The most data-loading worker processes a command starts: the CPUs this process may run on. """
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not Linux
        return max(os.cpu_count() or 1, 1)


positive_int = number_type(int, 1, what='a positive integer')
non_negative_int = number_type(int, 0, what='a non-negative integer')
unit_interval = number_type(float, 0.0, 1.0, what='a number in [0, 1]')
positive_float = number_type(float, 0.0, what='a finite number > 0', minimum_open=True)
seed_int = number_type(int, 0, MAX_SEED, what=f'a seed in [0, {MAX_SEED}]')
image_size_int = number_type(int, 1, MAX_IMAGE_SIZE, what=f'an image side in [1, {MAX_IMAGE_SIZE}] px')


def workers_int(text: str) -> int:
    """ ``--workers``: 0 (load in the main process) .. the CPUs this process may use. """
    return number_type(int, 0, max_workers(), what=f'a number of worker processes in [0, {max_workers()}] (the CPUs '
                                               f'this process may use)')(text)


# --- the device -----------------------------------------------------------------------------------------------

def parse_device(text: str, flag: str = '--device', device_count: Optional[int] = None) -> torch.device:
    """ THE check of a ``--device`` value: ``cpu``, ``cuda`` / ``cuda:N`` with ``N`` below the number of CUDA
    devices (``device_count``: ``torch.cuda.device_count()`` unless given), ``mps`` where PyTorch has it; anything
    else (``meta``, a device this machine lacks, a typo) is a ``CommandError`` naming the flag. """
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError) as e:
        raise CommandError(f'{flag} {text!r}: not a device ({one_line(e)}); expected cpu, cuda or cuda:N') from None
    if device.type == 'cpu':
        return torch.device('cpu')
    if device.type == 'cuda':
        count = torch.cuda.device_count() if device_count is None else device_count
        if count < 1:
            raise CommandError(f'{flag} {text}: CUDA is not available on this machine (use --device cpu)')
        if device.index is not None and device.index >= count:
            raise CommandError(f'{flag} {text}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}')
        return device
    if device.type == 'mps':
        if not torch.backends.mps.is_available():
            raise CommandError(f'{flag} {text}: Apple MPS is not available on this machine (use --device cpu)')
        return device
    raise CommandError(f'{flag} {text}: a {device.type!r} device cannot run a command; expected cpu, cuda or cuda:N')


def device_argument(parser: argparse.ArgumentParser, default: str = 'cpu', help: str = 'torch device') -> None:
    """ ``--device``, checked by ``parse_device`` when parsed (before any file is read). """
    def parse(text: str) -> torch.device:
        try:
            return parse_device(text)
        except CommandError as e:
            raise argparse.ArgumentTypeError(str(e).split(': ', 1)[-1]) from None
    parser.add_argument('--device', type=parse, default=default,
                        help=f'{help}: cpu, cuda, cuda:N (default: {default})')


def resattn_models() -> List[str]:
    """ The Residual Attention Networks registered with timm. """
    import timm
    return timm.list_models(module='resattnet')


def check_model_name(name: str, flag: str = '--model') -> str:
    known = resattn_models()
    if name not in known:
        raise CommandError(f'{flag}: unknown model {name!r}; the registered Residual Attention Networks: '
                           f'{", ".join(known)}')
    return name


def _network_errors() -> tuple:
    """ Exception types a failed download raises (urllib, sockets, huggingface_hub / its HTTP client). """
    errors: list = [OSError]
    try:
        from huggingface_hub import errors as hf_errors
        errors += [getattr(hf_errors, n) for n in ('HfHubHTTPError', 'LocalEntryNotFoundError', 'OfflineModeIsEnabled')
                   if hasattr(hf_errors, n)]
    except ImportError:
        pass
    for client in ('httpx', 'requests'):
        try:
            module = importlib.import_module(client)
        except ImportError:
            continue
        base = getattr(module, 'HTTPError', None) or getattr(getattr(module, 'exceptions', None), 'RequestException',
                                                             None)
        if isinstance(base, type):
            errors.append(base)
    return tuple(errors)


def create_model(
        name: str,
        pretrained: bool = False,
        checkpoint: Optional[str] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
) -> nn.Module:
    """ Build a registered model for a command, with its published weights or a ``--checkpoint`` file.

    Every failure a user can cause becomes a ``ResAttnError`` naming the flag or file: an unknown model, invalid
    ``--model-kwargs`` (the config's own ``ConfigError``), missing/corrupt/mismatched weight files (the checked
    loader of ``timm_resattn.weights``, the same as every other route), no published weights, no network.
    """
    import timm

    from ..weights import load_weights

    check_model_name(name)
    kwargs = dict(model_kwargs or {})
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except ResAttnError:
        raise
    except MemoryError:
        raise CommandError(f'--model {name} --model-kwargs: the model does not fit in memory') from None
    except RuntimeError as e:
        if "can't allocate memory" not in str(e) and 'out of memory' not in str(e):
            raise
        raise CommandError(f'--model {name} --model-kwargs: the model does not fit in memory ({e})') from None
    except TypeError as e:  # an unknown --model-kwargs key
        raise CommandError(f'--model-kwargs: {e}') from None
    except _network_errors() as e:
        if not pretrained:
            raise
        raise CommandError(
            f"--pretrained: can't download the weights of {name} (no network access?): {type(e).__name__}: "
            f"{' '.join(str(e).split())[:200]}") from None
    if checkpoint:
        if not os.path.exists(checkpoint):
            raise MissingFileError(f'--checkpoint: checkpoint not found: {checkpoint!r}')
        try:
            load_weights(model, checkpoint)
        except WeightsError as e:
            raise WeightsError(f'--checkpoint: cannot load checkpoint into {name}: {e}') from None
    return model


def add_model_arguments(parser: argparse.ArgumentParser, default: Optional[str] = None) -> None:
    """ ``--model``, ``--pretrained | --checkpoint``, ``--model-kwargs``: how every command picks a model and its
    weights (``model_from_args`` builds it). """
    if default:
        parser.add_argument('--model', default=default, help='model name (default: %(default)s)')
    else:
        parser.add_argument('--model', required=True, help='model name, e.g. resattnet56')
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument('--pretrained', action='store_true', help="load the model's published weights")
    weights.add_argument('--checkpoint', metavar='FILE',
                         help='load weights from this file (.safetensors, or a .pth), checked against the model')
    declare_paths(parser, inputs=lambda args: [PathUse('--checkpoint', p) for p in _values(args, 'checkpoint')])
    model_kwargs_argument(parser)


def model_kwargs_argument(parser: argparse.ArgumentParser,
                          example: str = 'architecture overrides, e.g. attention_residual=False') -> None:
    """ ``--model-kwargs KEY=VALUE ...``; given more than once, the lists are joined (a key given twice in all is
    an error, ``parse_model_kwargs``). """
    parser.add_argument('--model-kwargs', nargs='*', action='extend', default=[], metavar='KEY=VALUE',
                        help=f'{example} (values are Python literals; the flag may be repeated)')


def model_from_args(args: argparse.Namespace) -> nn.Module:
    """ The model the ``add_model_arguments`` flags ask for (``create_model``). """
    return create_model(args.model, args.pretrained, args.checkpoint, parse_model_kwargs(args.model_kwargs))


# Modes whose conversion to RGB is Pillow's own and faithful: 8 bits per channel (alpha is dropped, as timm's
# loaders drop it), palettes, CMYK and YCbCr.
_RGB_MODES = ('1', 'L', 'LA', 'La', 'P', 'PA', 'RGB', 'RGBA', 'RGBa', 'RGBX', 'CMYK', 'YCbCr')
_UINT16_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N')


def _to_rgb(im, flag: str, path: str):
    """ ``im`` as an 8-bit RGB image, scaled by its bit depth: 16-bit grey (``I;16*``, and ``I`` holding values in
    [0, 65535] as Pillow reads 16-bit PNGs) by 255/65535, float grey (``F``) from [0, 1]; any other mode, or
    values outside those ranges, is refused naming the mode (Pillow's ``convert('RGB')`` would clip them to white
    or black). """
    import numpy as np
    from PIL import Image

    mode = im.mode
    if mode in _RGB_MODES:
        return im.convert('RGB')
    if mode in _UINT16_MODES or mode in ('I', 'F'):
        values = np.asarray(im)
        if mode == 'F':
            low, high, what = 0.0, 1.0, 'floating-point values in [0, 1]'
        else:
            low, high, what = 0, 65535, 'integer values in [0, 65535] (16 bits)'
        finite = bool(np.isfinite(values).all()) if values.dtype.kind == 'f' else True
        if values.size and (not finite or values.min() < low or values.max() > high):
            found = f'[{values.min()}, {values.max()}]' if finite else 'NaN or Inf'
            raise CommandError(f"{flag}: {path!r} is a {mode!r} (single-channel {values.dtype}) image with values "
                               f"{found}; expected {what}: convert it to 8-bit RGB first")
        grey = np.rint(values.astype(np.float64) * (255.0 / high)).astype(np.uint8)
        return Image.fromarray(grey, mode='L').convert('RGB')
    raise CommandError(f'{flag}: {path!r} has the image mode {mode!r}, which this command cannot convert to RGB '
                       f'faithfully; convert it to 8-bit RGB first')


def open_image(path: str, flag: str = 'IMAGE'):
    """ Read an image as 8-bit RGB (``_to_rgb``: 16-bit and float images scaled by their range, unconvertible
    modes refused by name); a missing, unreadable, multi-frame or decompression-bomb file is a ``CommandError``. """
    from PIL import Image, UnidentifiedImageError

    if not os.path.exists(path):
        raise MissingFileError(f'{flag}: image not found: {path!r}')
    if not os.path.isfile(path):
        raise CommandError(f'{flag}: {path!r} is not a file')
    try:
        with Image.open(path) as im:
            frames = getattr(im, 'n_frames', 1)
            if frames > 1:  # animated GIF/PNG/WebP, multi-page TIFF: which frame was meant is not ours to guess
                raise CommandError(f'{flag}: {path!r} holds {frames} frames (an animation or a multi-page file); '
                                   f'expected a single image: save the frame you mean on its own')
            im.load()
            return _to_rgb(im, flag, path)
    except CommandError:
        raise
    except Image.DecompressionBombError as e:
        raise CommandError(f'{flag}: refused {path!r}: {e}') from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise CommandError(f'{flag}: cannot read image {path!r}: {" ".join(str(e).split())[:200]}') from None


def check_model_input(model: nn.Module, name: str, input_size: Optional[int] = None, size_flag: str = '',
                      ranks_classes: bool = True, in_chans: int = 3) -> None:
    """ THE check of a built model against what the command will feed it, before any data is read: ``in_chans``
    channels (RGB images and CIFAR data: 3), at least one class where the command ranks or trains classes, and an
    input side ``input_size`` (the data config's unless given) that a fixed-size model takes (timm's
    ``fixed_input_size``, e.g. a ViT) and no smaller than the model's ``min_input_size``. A
    mismatch is a ``CommandError`` naming ``--model-kwargs`` (or ``size_flag``). """
    from ..export.program import model_in_chans
    model_chans = model_in_chans(model)
    if model_chans != in_chans:
        raise CommandError(f'--model {name} --model-kwargs: the model takes {model_chans}-channel inputs '
                           f'(in_chans={model_chans}); this command feeds it {in_chans}-channel RGB images')
    num_classes = getattr(model, 'num_classes', None)
    if ranks_classes and isinstance(num_classes, int) and num_classes < 1:
        raise CommandError(f'--model {name} --model-kwargs: num_classes={num_classes} leaves the model without a '
                           f'classifier; this command ranks classes (expected num_classes >= 1)')
    if input_size is None:
        from timm.data import resolve_data_config
        input_size = int(resolve_data_config({}, model=model)['input_size'][-1])
        size_flag = 'its data config'
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    if cfg.get('fixed_input_size') and cfg.get('input_size') and int(cfg['input_size'][-1]) != input_size:
        fixed = int(cfg['input_size'][-1])
        where = size_flag or 'the data'
        raise CommandError(f'--model {name}: the model takes only {fixed}x{fixed} px inputs (a fixed input size), '
                           f'{where} gives {input_size}x{input_size}')
    min_size = int(getattr(model, 'min_input_size', 1) or 1)
    if input_size < min_size:
        where = size_flag or 'the data'
        raise CommandError(f'--model {name} --model-kwargs: this configuration needs inputs of at least '
                           f'{min_size}x{min_size} px, {where} gives {input_size}x{input_size}')


# --- what a command reads and writes ---------------------------------------------------------------------------

@dataclass(frozen=True)
class PathUse:
    """ One file a command reads (an input) or writes (an output), with the flag that names it.

    ``replace``: for an output, an existing file there may be replaced (an earlier result: ``--force``); for an
    input, the command continues it and writes it again (``train-cifar --resume OUT/last.pth.tar``). ``hint``: what
    to pass to replace an existing output. ``create_folder``: the output's folder is created by the command. """
    flag: str
    path: str
    replace: bool = False
    hint: str = 'pass --force to overwrite it'
    create_folder: bool = False


PathsFn = Callable[[argparse.Namespace], Sequence[PathUse]]


def declare_paths(parser: argparse.ArgumentParser, inputs: Optional[PathsFn] = None,
                  outputs: Optional[PathsFn] = None) -> None:
    """ Record how to find, in the parsed arguments, the files a command reads (``inputs``) and writes
    (``outputs``); ``check_paths`` checks them all before the command runs. Every path-valued argument is declared
    here (``input_argument``, ``output_argument``, ``add_model_arguments`` call it). """
    ins, outs = parser.get_default('_path_inputs') or (), parser.get_default('_path_outputs') or ()
    parser.set_defaults(_path_inputs=ins + ((inputs,) if inputs else ()),
                        _path_outputs=outs + ((outputs,) if outputs else ()))


def _values(args: argparse.Namespace, dest: str) -> List[str]:
    value = getattr(args, dest, None)
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def input_argument(parser: argparse.ArgumentParser, *flags: str, label: Optional[str] = None, **kwargs):
    """ ``parser.add_argument`` for a file the command reads (declared with ``declare_paths``). """
    action = parser.add_argument(*flags, **kwargs)
    name = label or (action.option_strings[0] if action.option_strings else action.metavar or action.dest)
    declare_paths(parser, inputs=lambda args: [PathUse(name, p) for p in _values(args, action.dest)])
    return action


def output_argument(parser: argparse.ArgumentParser, *flags: str, force_flag: str, label: Optional[str] = None,
                    **kwargs):
    """ ``parser.add_argument`` for a file the command writes (declared with ``declare_paths``). An existing file
    there (an earlier result, or anything else) is replaced only if ``force_flag`` (e.g. ``force`` for ``--force``)
    is set. Never an input. """
    action = parser.add_argument(*flags, **kwargs)
    name = label or (action.option_strings[0] if action.option_strings else action.metavar or action.dest)

    def outputs(args):
        return [PathUse(name, p, replace=bool(getattr(args, force_flag))) for p in _values(args, action.dest)]
    declare_paths(parser, outputs=outputs)
    return action


def same_file(a: str, b: str) -> bool:
    """ ``a`` and ``b`` name one file: the same inode when both exist (hard links, symlinks), else the same real
    path (``./x`` vs ``x``, a symlinked folder). """
    if os.path.exists(a) and os.path.exists(b):
        try:
            return os.path.samefile(a, b)
        except OSError:
            pass
    return os.path.realpath(a) == os.path.realpath(b)


def _check_writable(folder: str, flag: str, path: str) -> None:
    """ Create and remove a file in ``folder``: the only check that holds for every user (root too) and every
    file system (read-only mounts). """
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix='.timm-resattn-probe-')
    except OSError as e:
        raise CommandError(f"{flag} {path!r}: can't write into the folder {folder!r} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)


def _check_name_length(path: str, flag: str) -> None:
    """ Every part of ``path`` within the file system's name limit (``PC_NAME_MAX``, 255 bytes on most), checked
    before the work: a longer name fails only when the file is written. """
    folder = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)  # the nearest existing folder: its file system
    try:
        limit = os.pathconf(folder, 'PC_NAME_MAX')
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows) or no limit known
        limit = 255
    for part in os.path.abspath(path).split(os.sep):
        if len(os.fsencode(part)) > limit:
            raise CommandError(f'{flag} {path!r}: the name {part[:40]!r}... is {len(os.fsencode(part))} bytes long; '
                               f'this file system allows {limit}')


def check_output_path(path: str, flag: str, inputs: Sequence[str] = (), force: bool = True,
                      hint: str = 'pass --force to overwrite it', create_folder: bool = False) -> str:
    """ Refuse an output path whose folder does not exist (unless the command creates it) or can't be written, that
    is a folder, that is one of ``inputs`` (a file the command reads, or another of its outputs: it would overwrite
    it), or that exists when ``force`` is False. """
    folder = os.path.dirname(os.path.abspath(path))
    _check_name_length(path, flag)
    if create_folder:
        while not os.path.exists(folder) and os.path.dirname(folder) != folder:
            folder = os.path.dirname(folder)  # the command creates the rest
    if not os.path.isdir(folder):
        what = 'is not a folder' if os.path.exists(folder) else 'does not exist'
        raise CommandError(f'{flag} {path!r}: the folder {folder!r} {what}')
    if os.path.isdir(path):
        raise CommandError(f'{flag} {path!r} is a folder; expected a file path')
    for src in inputs:
        if same_file(path, src):
            raise CommandError(f'{flag} {path!r} is also an input file or another output; refusing to overwrite it')
    if not force and (os.path.exists(path) or os.path.islink(path)):
        raise CommandError(f'{flag} {path!r} exists; {hint}')
    _check_writable(folder, flag, path)
    return path


def check_paths(args: argparse.Namespace) -> Tuple[List[PathUse], List[PathUse]]:
    """ THE guard of every command, before it reads or writes anything: each output (``declare_paths``) is checked
    against every input and every other output (the same file by any name: ``samefile``, symlinks, hard links,
    ``./x`` vs ``x``), its folder must exist (or be created by the command) and be writable, and an existing file
    there is replaced only where the command allows it (``--force``), never when it is an input. Returns
    ``(inputs, outputs)``. """
    inputs = [use for fn in getattr(args, '_path_inputs', None) or () for use in fn(args)]
    outputs = [use for fn in getattr(args, '_path_outputs', None) or () for use in fn(args)]
    for i, out in enumerate(outputs):
        for src in inputs:
            if same_file(out.path, src.path) and not src.replace:
                raise CommandError(f'{out.flag} {out.path!r} is the input {src.flag} {src.path!r}; refusing to '
                                   f'overwrite a file the command reads')
        for other in outputs[:i]:
            if same_file(out.path, other.path):
                raise CommandError(f'{out.flag} {out.path!r} is also the output {other.flag} {other.path!r}; one '
                                   f'would overwrite the other')
        continued = any(src.replace and same_file(out.path, src.path) for src in inputs)
        check_output_path(out.path, out.flag, force=out.replace or continued, hint=out.hint,
                          create_folder=out.create_folder)
    return inputs, outputs
