""" What every command shares: argument types, the KEY=VALUE parser, the error style.

A command module exposes ``configure(parser)`` (adds its arguments) and ``run(args) -> int``. User errors are raised
as ``timm_resattn.errors.ResAttnError`` subclasses (``CommandError`` for a bad flag value, naming the flag); the
dispatcher in ``timm_resattn.cli`` prints them as one ``error: ...`` line and exits with status 2.
"""
import argparse
import ast
from typing import Dict, Sequence

from ..errors import CommandError

__all__ = ['parse_model_kwargs', 'positive_int', 'non_negative_int']


def parse_model_kwargs(items: Sequence[str], flag: str = '--model-kwargs') -> Dict[str, object]:
    """ ``['attention_residual=False', 'stage_chs=(16, 32, 64)', 'mask_act=spatial']`` -> kwargs.

    Values are Python literals where they parse as one (``False``, ``3``, ``(1, 2)``), else the raw string; the
    model's config then checks each value's type, so ``attention_residual=false`` is refused, not read as truthy.
    """
    kwargs = {}
    for item in items:
        key, sep, value = item.partition('=')
        key = key.strip()
        if not sep or not key.isidentifier():
            raise CommandError(f'{flag} expects KEY=VALUE with KEY a name, got {item!r}')
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            kwargs[key] = value
    return kwargs


def positive_int(text: str) -> int:
    """ argparse type: an int >= 1. """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {text!r}') from None
    if value < 1:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {value}')
    return value


def non_negative_int(text: str) -> int:
    """ argparse type: an int >= 0. """
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a non-negative integer, got {text!r}') from None
    if value < 0:
        raise argparse.ArgumentTypeError(f'expected a non-negative integer, got {value}')
    return value
