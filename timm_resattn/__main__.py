""" ``python -m timm_resattn``: the ``timm-resattn`` command, plus its original flags.

    python -m timm_resattn                                   # every model: params, GMACs, input size, weights
    python -m timm_resattn --filter '*cifar'
    python -m timm_resattn --image cat.jpg --model resattnet56 --checkpoint my_weights.safetensors
    python -m timm_resattn COMMAND ...                       # any command of `timm-resattn` (see timm_resattn.cli)
"""
import sys
from typing import List, Optional

from .cli import main as cli_main, run_command
from .cli import classify as classify_command
from .cli import models_table
from .cli.common import CommandParser

__all__ = ['main']


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and (argv[0] in ('-h', '--help') or not argv[0].startswith('-')):  # a command (or a typo of one)
        return cli_main(argv, prog='python -m timm_resattn')
    if not any(a == '--image' or a.startswith('--image=') for a in argv):  # the model table, maybe --filter'ed
        parser = CommandParser(prog='python -m timm_resattn', description=models_table.__doc__)
        models_table.configure(parser)
        command = models_table.run
    else:
        parser = CommandParser(prog='python -m timm_resattn', description=classify_command.__doc__)
        classify_command.configure(parser, image_flag=True)
        command = classify_command.run
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 0
    return run_command(command, args)


if __name__ == '__main__':
    sys.exit(main())
