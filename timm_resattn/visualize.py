""" ``python -m timm_resattn.visualize IMAGE ... --model M --out OUT.png``: the ``visualize`` command
(``timm_resattn.cli.visualize``); the drawing functions live in ``timm_resattn.analysis.figures``. """
import sys
from typing import List, Optional

from .analysis.figures import *  # noqa: F403
from .analysis.figures import __all__ as _figures
from .cli import command_main

__all__ = ['main', *_figures]


def main(argv: Optional[List[str]] = None) -> int:
    return command_main('visualize', argv, prog='python -m timm_resattn.visualize')


if __name__ == '__main__':
    sys.exit(main())
