""" AOTInductor packages (``torch._inductor.aoti_compile_and_package``) of the exported programs: ahead-of-time
compiled C++ (CPU) or CUDA code with a dynamic batch, height and width, loadable in a fresh process without the
model's Python code.

Compiling takes minutes on a small CPU (inductor generates and builds C++ for every kernel), too long for the test
suite: ``docs/benchmarks.md`` has the check (a package loaded in a fresh process against eager) and how to rerun it.

Input sizes (measured with torch 2.14, ``docs/benchmarks.md``): with ``AOTI_RUNTIME_CHECK_INPUTS=1`` in
the environment of the process that runs the package, AOTInductor checks every input against bounds of its own,
which are stricter than the exported program's: a batch of 1 is refused (``expected it to be >= 2``) and, for
``resattnet56_cifar`` (program range 5..1024), heights below 13. Without it nothing is checked (the default): a
below-minimum input runs into whatever the kernels do (a 4x4 input failed inside a conv). Check ``min_input_size``
before calling.

Copyright the timm-resattn authors, Apache-2.0.
"""
import os
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
import torch.nn as nn

from ..errors import CommandError, MissingFileError
from .program import DEFAULT_MAX_SIZE, export_program

__all__ = ['compile_aoti', 'load_aoti']


def compile_aoti(
        model: Union[nn.Module, 'torch.export.ExportedProgram'],
        path: Union[str, os.PathLike],
        min_size: Optional[int] = None,
        max_size: int = DEFAULT_MAX_SIZE,
        dynamic_batch: bool = True,
        inductor_configs: Optional[Dict[str, Any]] = None,
) -> Path:
    """ Export ``model`` (eval mode; or take an ``ExportedProgram`` of it) and compile it into an AOTInductor
    package at ``path`` (``*.pt2``). Load it with ``load_aoti`` (or ``torch._inductor.aoti_load_package``).
    """
    path = Path(path)
    if path.suffix != '.pt2':
        raise CommandError(f'the AOTInductor package path must end in .pt2, got {str(path)!r}')
    if not path.parent.is_dir():
        raise MissingFileError(f'the folder of the package path {str(path)!r} does not exist')
    if isinstance(model, torch.export.ExportedProgram):
        ep = model
    else:
        ep = export_program(model, min_size=min_size, max_size=max_size, dynamic_batch=dynamic_batch)
    out = torch._inductor.aoti_compile_and_package(ep, package_path=str(path), inductor_configs=inductor_configs)
    return Path(out)


def load_aoti(path: Union[str, os.PathLike]):
    """ Load an AOTInductor package written by ``compile_aoti``; call the result with the input tensor. """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f'AOTInductor package {str(path)!r} does not exist')
    return torch._inductor.aoti_load_package(str(path))
