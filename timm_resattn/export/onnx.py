""" ONNX export through ``torch.export`` (``torch.onnx.export(..., dynamo=True)``) with a dynamic batch, height and
width, and an onnxruntime check of the written file.

Needs the ``onnx`` and ``onnxscript`` packages (``pip install "timm-resattn[export]"``), ``verify_onnx`` also
``onnxruntime``; none of them is needed to use the models.

What the ONNX model does with an input below the network's minimum size: ONNX has no place for the range of a
dimension, so the file has none and onnxruntime runs such an input without an error (the deepest max-pools then see
empty or all-padding windows and the outputs are meaningless). Check the size before calling the session (the
minimum is ``model.min_input_size``, also written into the file's metadata as ``min_input_size``).

Hacked together by the timm-resattn authors, Apache-2.0.
"""
import os
import tempfile
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..errors import CommandError, ConfigError, MissingFileError
from .program import DEFAULT_MAX_SIZE, export_program, model_in_chans, resolve_size_range

__all__ = ['export_onnx', 'verify_onnx', 'require_onnx', 'DEFAULT_OPSET']

DEFAULT_OPSET = 18
INPUT_NAME = 'input'
OUTPUT_NAME = 'output'


def require_onnx(runtime: bool = False) -> None:
    """ Import-check the ONNX packages, with an error that names the extra to install. """
    names = ['onnx', 'onnxscript'] + (['onnxruntime'] if runtime else [])
    missing = []
    for name in names:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ModuleNotFoundError(
            f'ONNX export needs {", ".join(missing)}: pip install "timm-resattn[export]" '
            f'(or pip install {" ".join(missing)})'
        )


def _check_path(path: Union[str, os.PathLike]) -> Path:
    path = Path(path)
    if path.suffix != '.onnx':
        raise CommandError(f'the ONNX output path must end in .onnx, got {str(path)!r}')
    if path.is_dir():
        raise CommandError(f'the ONNX output path {str(path)!r} is a directory; expected a file name')
    if not path.parent.is_dir():
        raise MissingFileError(f'the folder of the ONNX output path {str(path)!r} does not exist')
    return path


def export_onnx(
        model: nn.Module,
        path: Union[str, os.PathLike],
        min_size: Optional[int] = None,
        max_size: int = DEFAULT_MAX_SIZE,
        dynamic_batch: bool = True,
        opset: int = DEFAULT_OPSET,
        optimize: bool = True,
        program: Optional['torch.export.ExportedProgram'] = None,
) -> Path:
    """ Write ``model`` (eval mode) as an ONNX file that takes NCHW inputs of any height and width in
    ``[min_size, max_size]`` (and any batch if ``dynamic_batch``).

    The model is exported with ``export_program`` (``torch.export``, see ``timm_resattn.export.program``) and
    translated by ``torch.onnx.export(..., dynamo=True)``. Input ``'input'``, output ``'output'``; the file's
    metadata records ``min_input_size``/``max_input_size``. Written atomically: to a temporary file in the same
    folder, renamed over ``path`` only when complete (no partial file if anything fails).

    Args:
        model: The network, in eval mode.
        path: Output file, ``*.onnx``; its folder must exist. An existing file is replaced.
        min_size: Smallest height/width (default and lower limit ``model.min_input_size``).
        max_size: Largest height/width (default 1024).
        dynamic_batch: Symbolic batch dimension (else batch 1).
        opset: ONNX opset version (default 18).
        optimize: Run the exporter's ONNX graph optimisation (constant folding, redundant-op removal).
        program: An ``ExportedProgram`` of ``model`` from ``export_program`` to translate instead of exporting
            again (``min_size``/``max_size``/``dynamic_batch`` are then those it was exported with).

    Returns:
        ``path`` as a ``Path``.
    """
    require_onnx()
    path = _check_path(path)
    if isinstance(opset, bool) or not isinstance(opset, int) or not 17 <= opset <= 23:
        raise ConfigError(f'opset must be an ONNX opset version between 17 and 23, got {opset!r}')
    min_size, max_size = resolve_size_range(model, min_size, max_size)
    if program is None:
        program = export_program(model, min_size=min_size, max_size=max_size, dynamic_batch=dynamic_batch)
    example = program.example_inputs[0] if program.example_inputs else None
    onnx_program = torch.onnx.export(
        program,
        example,
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME],
        opset_version=opset,
        dynamo=True,
        optimize=optimize,
        verbose=False,
    )
    import onnx
    meta = {'min_input_size': str(min_size), 'max_input_size': str(max_size), 'input_layout': 'NCHW',
            'producer': 'timm_resattn.export.export_onnx'}
    proto = onnx_program.model_proto
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    os.close(fd)
    try:
        onnx.save_model(proto, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def verify_onnx(
        path: Union[str, os.PathLike],
        model: nn.Module,
        sizes: Sequence[Tuple[int, int]] = ((224, 224),),
        batch_size: int = 2,
        threads: Optional[int] = None,
        seed: int = 0,
) -> Dict[Tuple[int, int], float]:
    """ Run the ONNX file at ``sizes`` (height, width) with onnxruntime (CPU) and return, per size, the relative
    error ``max|onnx - eager| / max|eager|`` against ``model`` (eval mode, fp32) on the same random input.
    """
    require_onnx(runtime=True)
    import numpy as np
    import onnxruntime as ort
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f'ONNX file {str(path)!r} does not exist')
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(str(path), opts, providers=['CPUExecutionProvider'])
    name = sess.get_inputs()[0].name
    gen = torch.Generator().manual_seed(seed)
    errors = {}
    for h, w in sizes:
        x = torch.randn(batch_size, model_in_chans(model), h, w, generator=gen)
        with torch.no_grad():
            ref = model(x).float().numpy()
        out = sess.run(None, {name: x.numpy()})[0]
        errors[(h, w)] = float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-12))
    return errors
