""" ``python -m timm_resattn.scripts SCRIPT.py ARGS``: the ``run`` command (``timm_resattn.cli.run``), kept under
its original name (also for ``torchrun -m timm_resattn.scripts train.py ...``). """
from typing import List, Optional

from .cli import command_main
from .cli.run import run_script

__all__ = ['main', 'run_script']


def main(argv: Optional[List[str]] = None) -> None:
    """ Run the command; like ``python SCRIPT`` it exits (``SystemExit``) with the script's non-zero status, and
    with 2 for a usage error. """
    code = command_main('run', argv, prog='python -m timm_resattn.scripts')
    if code:
        raise SystemExit(code)


if __name__ == '__main__':
    main()
