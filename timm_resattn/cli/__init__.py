""" The command layer: ``timm-resattn COMMAND ...``, one error style for every command.

    timm-resattn list [--filter PATTERN]                     every model: params, GMACs, input size, weights
    timm-resattn classify IMAGE --model M [--checkpoint F]   top-k classes of one image
    timm-resattn visualize IMAGE ... --model M --out OUT.png the soft masks over the images
    timm-resattn convert caffe IN.caffemodel OUT.safetensors --model M
    timm-resattn export onnx --model M [--checkpoint F] OUT.onnx
    timm-resattn train-cifar --dataset cifar10 --data-dir D  the paper's CIFAR recipe
    timm-resattn run path/to/timm/validate.py ARGS ...      a timm script with the models registered

Every command declares the files it reads and writes where it declares its arguments (``common.input_argument``,
``output_argument``, ``declare_paths``); before it runs, one guard (``common.check_paths``) refuses an output that is
one of its inputs or another output (by any name), an output folder that is missing or can't be written, and an
existing output unless the command allows replacing it (``--force``), never an input.

A user's mistake (a bad flag value, a missing, unreadable, corrupt or mismatched file, an unknown model, no network,
an output folder that does not exist) raises a ``timm_resattn.errors.ResAttnError`` somewhere below; :func:`main`
prints it as one ``error: ...`` line naming the argument or file and returns exit status 2. argparse's own usage
errors also exit with 2. Any other exception is a bug and keeps its traceback.

Commands are modules with ``configure(parser)`` and ``run(args) -> int``; this package imports everything else,
nothing imports it except ``timm_resattn.__main__`` (``python -m timm_resattn COMMAND``).
"""
import argparse
import importlib
import sys
from typing import Optional, Sequence

from ..errors import ResAttnError
from .common import CommandParser, check_paths, one_line

__all__ = ['main', 'build_parser', 'run_command', 'COMMANDS']

# command -> (module, one-line help)
COMMANDS = {
    'list': ('models_table', 'list the registered models: params, GMACs, input sizes, weights'),
    'classify': ('classify', 'print the top-k classes of an image'),
    'visualize': ('visualize', "draw every Attention Module's soft mask over images (PNG)"),
    'convert': ('convert', "convert other weights (the authors' Caffe files) to safetensors"),
    'export': ('export', 'write a model for deployment (ONNX with dynamic sizes)'),
    'train-cifar': ('train_cifar', "train on CIFAR-10/100 with the paper's recipe (§4.1)"),
    'run': ('run', "run one of timm's scripts (train.py, validate.py, ...) with the models registered"),
}


def _command_module(name: str):
    return importlib.import_module(f'.{COMMANDS[name][0]}', __name__)


def _summary(module) -> Optional[str]:
    return module.__doc__.strip().splitlines()[0] if module.__doc__ else None


def build_parser(prog: str = 'timm-resattn') -> argparse.ArgumentParser:
    parser = CommandParser(
        prog=prog, description='The Residual Attention Network (Wang et al., CVPR 2017) as timm models.')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True
    for name, (_, help_text) in COMMANDS.items():
        module = _command_module(name)
        cmd = sub.add_parser(name, help=help_text, description=_summary(module))
        module.configure(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def run_command(run, args: argparse.Namespace) -> int:
    """ Check the command's inputs and outputs (``common.check_paths``), then call its ``run(args)``; a
    ``ResAttnError`` becomes ``error: <message>`` on stderr and status 2, Ctrl-C ``error: interrupted`` and 130. """
    try:
        check_paths(args)
        return int(run(args) or 0)
    except ResAttnError as e:
        print(f'error: {one_line(e)}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print('error: interrupted', file=sys.stderr)
        return 130


def _parse(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]):
    try:
        return parser.parse_args(argv), None
    except SystemExit as e:  # argparse: usage errors (2) and --help (0)
        return None, e.code if isinstance(e.code, int) else 0


def main(argv: Optional[Sequence[str]] = None, prog: str = 'timm-resattn') -> int:
    """ ``timm-resattn COMMAND ARGS``; returns the exit status. """
    args, code = _parse(build_parser(prog), list(sys.argv[1:] if argv is None else argv))
    if args is None:
        return code
    return run_command(args._run, args)


def entry_point() -> None:  # the console script
    sys.exit(main())
