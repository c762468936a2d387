""" ``python -m timm_resattn.convert caffe IN.caffemodel OUT.safetensors --model M``: the ``convert`` command. """
import sys
from typing import List, Optional

from ..cli import command_main

__all__ = ['main']


def main(argv: Optional[List[str]] = None) -> int:
    return command_main('convert', argv, prog='python -m timm_resattn.convert')


if __name__ == '__main__':
    sys.exit(main())
