""" ``python -m timm_resattn.train_cifar ARGS``: CIFAR-10/100 training of the Residual Attention Network (§4.1).

A thin entry point: the command is ``timm_resattn.cli.train_cifar`` (arguments, ``run``), the library is
``timm_resattn.train`` (data in ``train.cifar_data``, the loop, evaluation and checkpoints in ``train.loop``; its
docstring describes the recipe and where we differ from the paper: per-channel normalisation with the model's data
config instead of the per-pixel mean image). The names below stay importable from here.

Hacked together by the timm-resattn authors, Apache-2.0.
"""
import argparse
import sys
from typing import Dict, Optional, Sequence

import timm_resattn  # noqa: F401  (registers the models)

from .cli import command_main
from .cli.common import CommandParser, one_line
from .cli.train_cifar import configure, parse_milestones, train_from_args
from .errors import ResAttnError
from .train.cifar_data import (  # noqa: F401  (public names of this module before the split)
    LAYOUT as _LAYOUT, NUM_CLASSES, TrainBatches, apply_label_noise, augment_batch, load_cifar, normalize,
    pixel_mean,
)
from .train.cifar_data import stream_seed as _stream_seed  # noqa: F401
from .train.loop import TrainingDiverged, build_checkpoint, evaluate, lr_at, save_checkpoint_file  # noqa: F401

__all__ = [
    'load_cifar', 'apply_label_noise', 'pixel_mean', 'augment_batch', 'lr_at', 'main',
]

_parse_milestones = parse_milestones


def build_parser() -> argparse.ArgumentParser:
    return configure(CommandParser(prog='python -m timm_resattn.train_cifar'))


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """ Parse ``argv``, train, return the summary. A user error prints ``error: <message>`` to stderr and exits
    with status 2 (``SystemExit``), as argparse does for an unparsable flag.
    """
    args = build_parser().parse_args(argv)
    try:
        return train_from_args(args)
    except ResAttnError as e:
        print(f'error: {one_line(e)}', file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == '__main__':
    sys.exit(command_main('train-cifar', prog='python -m timm_resattn.train_cifar'))
