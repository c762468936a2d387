""" List the registered Residual Attention Networks: params, GMACs at the input size, input sizes, weights. """
import argparse
import sys
from typing import List

from ..analysis.summary import model_summary
from ..errors import CommandError

__all__ = ['print_model_table', 'configure', 'run']


def print_model_table(names: List[str], file=None) -> None:
    file = file or sys.stdout
    header = f"{'model':<22} {'params':>12} {'GMACs':>7} {'input':>9} {'test':>9} {'classes':>7}  weights"
    print(header, file=file)
    print('-' * len(header), file=file)
    for name in names:
        s = model_summary(name)
        weights = ', '.join(s['weights']) if s['weights'] else 'none (architecture only)'
        print(
            f"{s['model']:<22} {s['params']:>12,d} {s['gmacs']:>7.3f} {s['input_size'][-1]:>9d} "
            f"{s['test_input_size'][-1]:>9d} {s['num_classes']:>7d}  {weights}",
            file=file,
        )
    print('\nGMACs: multiply-accumulates of one image at the default input size (FlopCounterMode / 2).', file=file)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--filter', default='*', metavar='PATTERN',
                        help='list only the models matching this wildcard pattern (default: all)')


def run(args: argparse.Namespace) -> int:
    import timm
    names = timm.list_models(args.filter, module='resattnet')
    if not names:
        raise CommandError(f'--filter {args.filter!r} matches no registered model')
    print_model_table(names)
    return 0
