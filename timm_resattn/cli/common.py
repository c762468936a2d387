""" What every command shares: argument types, the KEY=VALUE parser, the error style.

A command module exposes ``configure(parser)`` (adds its arguments) and ``run(args) -> int``. User errors are raised
as ``timm_resattn.errors.ResAttnError`` subclasses (``CommandError`` for a bad flag value, naming the flag); the
dispatcher in ``timm_resattn.cli`` prints them as one ``error: ...`` line and exits with status 2.
"""
import argparse
import ast
import importlib
import os
from typing import Any, Dict, List, Optional, Sequence

import torch.nn as nn

from ..errors import CommandError, MissingFileError, ResAttnError, WeightsError

__all__ = [
    'CommandParser', 'one_line', 'parse_model_kwargs', 'positive_int', 'non_negative_int', 'unit_interval',
    'resattn_models', 'check_model_name', 'create_model', 'add_model_arguments', 'model_from_args', 'open_image',
    'check_output_path',
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
        if key in kwargs:
            raise CommandError(f'{flag}: {key} is given twice ({key}={kwargs[key]!r:.100} and {item!r:.100}); '
                               f'give each key once')
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            kwargs[key] = value
        if key in MODEL_ARGS:
            kwargs[key] = MODEL_ARGS.check_value(key, kwargs[key], source=flag)
    return kwargs


def _number(cast, minimum, maximum=None, what='a number'):
    """ An argparse type: ``cast(text)`` within ``[minimum, maximum]``, else a message saying what was expected. """
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or value != value or value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f'expected {what}, got {text!r}')
        return value
    return parse


positive_int = _number(int, 1, what='a positive integer')
non_negative_int = _number(int, 0, what='a non-negative integer')
unit_interval = _number(float, 0.0, 1.0, what='a number in [0, 1]')


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
    parser.add_argument('--model-kwargs', nargs='*', default=[], metavar='KEY=VALUE',
                        help='architecture overrides, e.g. attention_residual=False (Python literals)')


def model_from_args(args: argparse.Namespace) -> nn.Module:
    """ The model the ``add_model_arguments`` flags ask for (``create_model``). """
    return create_model(args.model, args.pretrained, args.checkpoint, parse_model_kwargs(args.model_kwargs))


def open_image(path: str, flag: str = 'IMAGE'):
    """ Read an image as RGB; a missing, unreadable or decompression-bomb file is a ``CommandError``. """
    from PIL import Image, UnidentifiedImageError

    if not os.path.exists(path):
        raise MissingFileError(f'{flag}: image not found: {path!r}')
    if not os.path.isfile(path):
        raise CommandError(f'{flag}: {path!r} is not a file')
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert('RGB')
    except Image.DecompressionBombError as e:
        raise CommandError(f'{flag}: refused {path!r}: {e}') from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise CommandError(f'{flag}: cannot read image {path!r}: {" ".join(str(e).split())[:200]}') from None


def check_output_path(path: str, flag: str, inputs: Sequence[str] = (), force: bool = True) -> str:
    """ Refuse an output path whose folder does not exist, that is a folder, that is one of ``inputs`` (a file the
    command reads, or another of its outputs: it would overwrite it), or that exists when ``force`` is False. """
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CommandError(f'{flag} {path!r}: the folder {folder!r} does not exist')
    if os.path.isdir(path):
        raise CommandError(f'{flag} {path!r} is a folder; expected a file path')
    for src in inputs:
        same = os.path.samefile(path, src) if os.path.exists(path) and os.path.exists(src) else \
            os.path.realpath(path) == os.path.realpath(src)  # another output of the same run, not written yet
        if same:
            raise CommandError(f'{flag} {path!r} is also an input file or another output; refusing to overwrite it')
    if not force and os.path.exists(path):
        raise CommandError(f'{flag} {path!r} exists; pass --force to overwrite it')
    return path
