""" Run one of timm's scripts (train.py, validate.py, benchmark.py, inference.py) with the models registered.

timm's scripts live in the GitHub repository ``huggingface/pytorch-image-models`` (not in the ``timm`` wheel). timm
has no plugin discovery, so a script only knows ``resattnet56`` & co. once ``timm_resattn`` has been imported in its
process. ``train.py`` can do that itself (``--device-modules timm_resattn``); the other scripts can't::

    timm-resattn run path/to/pytorch-image-models/validate.py /data/imagenet --model resattnet56 ...
    torchrun --nproc_per_node=8 -m timm_resattn run path/to/pytorch-image-models/train.py --model resattnet56 ...

It imports ``timm_resattn`` and then runs the script as ``__main__`` (``runpy.run_path``) with
``sys.argv = [SCRIPT, *ARGS]`` and the script's directory first on ``sys.path`` (in place of the current directory
that ``python -m`` put there), as ``python SCRIPT ARGS`` would. The script's own exit status is returned. Nothing
is installed anywhere: no ``.pth`` start-up hook, no change to other Python processes.
"""
import argparse
import os
import runpy
import sys
import zipfile
from typing import Sequence

from ..errors import CommandError, MissingFileError
from .common import input_argument

__all__ = ['run_script', 'configure', 'run']

_TIMM_SCRIPTS = ('train.py', 'validate.py', 'benchmark.py', 'inference.py')


def _check_script(script: str) -> None:
    """ What ``python SCRIPT`` runs: a Python source file, a folder or zip file with a ``__main__.py``; anything
    else (an image, a weight file) is refused before it runs, not met with the interpreter's traceback. """
    if os.path.isdir(script):
        if os.path.isfile(os.path.join(script, '__main__.py')):
            return
        raise CommandError(f"SCRIPT '{script}' is a folder without a __main__.py; expected a Python script")
    if not os.path.isfile(script):
        hint = ''
        if os.path.basename(script) in _TIMM_SCRIPTS:
            hint = (" (timm's scripts are not part of the timm wheel: clone "
                    "https://github.com/huggingface/pytorch-image-models and pass the path of the script)")
        raise MissingFileError(f"script not found: '{script}'{hint}")
    if zipfile.is_zipfile(script):  # a zip application runs through its __main__.py (a torch.save file has none)
        try:
            with zipfile.ZipFile(script) as z:
                if '__main__.py' in z.namelist():
                    return
        except (zipfile.BadZipFile, OSError):
            pass
        raise CommandError(f"SCRIPT '{script}' is a zip file without a __main__.py; expected a Python script")
    try:
        with open(script, 'rb') as f:
            compile(f.read(), script, 'exec', dont_inherit=True)
    except (SyntaxError, ValueError) as e:  # ValueError: null bytes (Python < 3.12)
        raise CommandError(f"SCRIPT '{script}' is not a Python script ({type(e).__name__}: "
                           f"{' '.join(str(e).split())[:150]})") from None
    except OSError as e:
        raise CommandError(f"SCRIPT '{script}': can't read it ({e.strerror or e})") from None


def run_script(script: str, args: Sequence[str] = (), replace_path0: bool = False) -> None:
    """ Run ``script`` as ``__main__`` with ``sys.argv = [script, *args]`` after registering the models.

    Args:
        script: Path of the Python script.
        args: Its command-line arguments.
        replace_path0: Replace ``sys.path[0]`` (the current directory under ``python -m``) with the script's
            directory instead of inserting it in front, exactly like ``python SCRIPT``.

    Raises:
        MissingFileError: ``script`` is not a file (a ``FileNotFoundError``).
        SystemExit: Whatever the script raises (``sys.exit`` / argparse errors) propagates unchanged.
    """
    _check_script(script)
    import timm_resattn  # noqa: F401  (registers the models with timm)

    script_dir = os.path.dirname(os.path.realpath(script))
    if getattr(sys.flags, 'safe_path', False):
        pass  # python -P / PYTHONSAFEPATH: `python SCRIPT` would not prepend the script's directory either
    elif replace_path0 and sys.path and sys.path[0] in ('', os.getcwd()):
        sys.path[0] = script_dir
    else:
        sys.path.insert(0, script_dir)
    sys.argv = [script, *args]
    runpy.run_path(script, run_name='__main__')


def configure(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ('Works under torchrun: torchrun --nproc_per_node=N -m timm_resattn run train.py '
                     '--model resattnet56 ...')
    input_argument(parser, 'script', metavar='SCRIPT.py',
                   help='the script, e.g. path/to/pytorch-image-models/validate.py')
    parser.add_argument('script_args', nargs=argparse.REMAINDER, metavar='ARGS', help="the script's own arguments")


def run(args: argparse.Namespace) -> int:
    try:
        run_script(args.script, args.script_args, replace_path0=True)
    except SystemExit as e:  # the script's own exit status
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    return 0
