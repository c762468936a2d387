""" ``python -m timm_resattn COMMAND ...``: the ``timm-resattn`` command (see ``timm_resattn.cli``), for an
environment without the console script, or under ``torchrun -m timm_resattn run SCRIPT ...``. """
import sys

from .cli import main

if __name__ == '__main__':
    sys.exit(main(prog='python -m timm_resattn'))
