""" Run one of timm's scripts with the Residual Attention Network models registered.

timm's ``train.py``, ``validate.py``, ``benchmark.py`` and ``inference.py`` live in the GitHub repository
``huggingface/pytorch-image-models`` (not in the ``timm`` wheel). timm has no plugin discovery, so a script only
knows ``resattnet56`` & co. once ``timm_resattn`` has been imported in its process. ``train.py`` can do that itself
(``--device-modules timm_resattn``); the other scripts can't, so run them through this module::

    python -m timm_resattn.scripts path/to/pytorch-image-models/validate.py /data/imagenet --model resattnet56 ...
    python -m timm_resattn.scripts path/to/pytorch-image-models/benchmark.py --model resattnet92 --bench inference
    torchrun --nproc_per_node=8 -m timm_resattn.scripts path/to/pytorch-image-models/train.py --model resattnet56 ...

It imports ``timm_resattn`` and then runs the script as ``__main__`` (``runpy.run_path``) with
``sys.argv = [SCRIPT, *ARGS]`` and the script's directory first on ``sys.path`` (in place of the current directory
that ``python -m`` put there), as ``python SCRIPT ARGS`` would. The script's own exit status is returned. Nothing
is installed anywhere: no ``.pth`` start-up hook, no change to other Python processes.
"""
import os
import runpy
import sys
from typing import List, Optional, Sequence

__all__ = ['run_script', 'main']

USAGE = 'usage: python -m timm_resattn.scripts PATH/TO/SCRIPT.py [SCRIPT ARGS ...]'
HELP = f"""{USAGE}

Import timm_resattn (registering the Residual Attention Network models with timm), then run a timm script
(train.py, validate.py, benchmark.py, inference.py from github.com/huggingface/pytorch-image-models) as
`python SCRIPT.py ARGS` would. Works under torchrun:
  torchrun --nproc_per_node=N -m timm_resattn.scripts train.py --model resattnet56 ...
"""


def _usage_error(message: str) -> 'SystemExit':
    sys.stderr.write(f'{USAGE}\ntimm_resattn.scripts: error: {message}\n')
    return SystemExit(2)


def run_script(script: str, args: Sequence[str] = (), replace_path0: bool = False) -> None:
    """ Run ``script`` as ``__main__`` with ``sys.argv = [script, *args]`` after registering the models.

    Args:
        script: Path of the Python script.
        args: Its command-line arguments.
        replace_path0: Replace ``sys.path[0]`` (the current directory under ``python -m``) with the script's
            directory instead of inserting it in front, exactly like ``python SCRIPT``.

    Raises:
        FileNotFoundError: ``script`` is not a file.
        SystemExit: Whatever the script raises (``sys.exit`` / argparse errors) propagates unchanged.
    """
    if not os.path.isfile(script):
        raise FileNotFoundError(f"script not found: '{script}'")
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


def main(argv: Optional[List[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        raise _usage_error('no script given (e.g. path/to/pytorch-image-models/validate.py)')
    if argv[0] in ('-h', '--help'):
        sys.stdout.write(HELP)
        return
    script, args = argv[0], argv[1:]
    if script.startswith('-'):
        raise _usage_error(f"expected a script path before any option, got '{script}'")
    if not os.path.isfile(script):
        hint = ''
        if os.path.basename(script) in ('train.py', 'validate.py', 'benchmark.py', 'inference.py'):
            hint = (' (timm\'s scripts are not part of the timm wheel: clone '
                    'https://github.com/huggingface/pytorch-image-models and pass the path of the script)')
        raise _usage_error(f"script not found: '{script}'{hint}")
    run_script(script, args, replace_path0=True)


if __name__ == '__main__':
    main()
