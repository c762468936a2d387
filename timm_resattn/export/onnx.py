""" ONNX export through ``torch.export`` (``torch.onnx.export(..., dynamo=True)``) with a dynamic batch, height and
width, and an onnxruntime check of the written file.

Needs the ``onnx`` and ``onnxscript`` packages (``pip install "timm-resattn[export]"``), ``verify_onnx`` also
``onnxruntime``; none of them is needed to use the models.

What the ONNX model does with an input below the network's minimum size: ONNX has no place for the range of a
dimension, so the file has none and onnxruntime runs such an input without an error (the deepest max-pools then see
empty or all-padding windows and the outputs are meaningless). Check the size before calling the session (the
minimum is ``model.min_input_size``, also written into the file's metadata as ``min_input_size``).

Copyright the timm-resattn authors, Apache-2.0.
"""
import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from ..errors import CommandError, ConfigError, MissingExtraError, MissingFileError
from ..weights import atomic_write
from .program import DEFAULT_MAX_SIZE, export_program, model_in_chans, program_size_range, resolve_size_range

__all__ = [
    'export_onnx', 'verify_onnx', 'require_onnx', 'fuse_pad_into_max_pool', 'DEFAULT_OPSET',
]

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
        raise MissingExtraError(
            f'ONNX export needs {", ".join(missing)}: pip install "timm-resattn[export]" '
            f'(or pip install {" ".join(missing)})'
        )


def _check_path(path: Union[str, os.PathLike]) -> Path:
    path = Path(path)
    if path.suffix != '.onnx':
        raise CommandError(f'the ONNX output path must end in .onnx, got {str(path)!r}')
    if os.path.isdir(path):  # os.path: a name too long for the file system is no folder (Path.is_dir raises)
        raise CommandError(f'the ONNX output path {str(path)!r} is a directory; expected a file name')
    if not os.path.isdir(path.parent):
        raise MissingFileError(f'the folder of the ONNX output path {str(path)!r} does not exist')
    return path


def fuse_pad_into_max_pool(proto) -> int:
    """ Fold each ``Pad(-inf, right/bottom only) -> MaxPool`` pair of ``proto`` (in place) into one ``MaxPool``
    with ``pads=[0, 0, b, r]``; returns the number of pairs folded.

    The exported Caffe pools are ``max_pool_padded`` (a ``-inf`` pad then a floor-mode pool); ONNX's ``MaxPool``
    pads with values that never win the max, so the folded pool computes the same outputs without the copy of its
    input that the ``Pad`` makes. A ``Pad`` whose output has another consumer or whose pads/value are not constant
    initializers is left as it is.
    """
    import numpy as np
    from onnx import helper, numpy_helper
    graph = proto.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: Dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in graph.output}
    removed = []
    for node in graph.node:
        if node.op_type != 'Pad' or len(node.input) < 3 or node.input[1] not in inits or node.input[2] not in inits:
            continue
        mode = next((helper.get_attribute_value(a) for a in node.attribute if a.name == 'mode'), b'constant')
        pads = numpy_helper.to_array(inits[node.input[1]])
        value = numpy_helper.to_array(inits[node.input[2]])
        users = consumers.get(node.output[0], [])
        if (mode != b'constant' or pads.shape != (8,) or np.any(pads[:6] != 0) or np.any(pads < 0)
                or not (value.size == 1 and np.isneginf(value).all()) or node.output[0] in graph_outputs
                or not users or any(u.op_type != 'MaxPool' for u in users)):
            continue
        ok = True
        for u in users:
            attrs = {a.name: helper.get_attribute_value(a) for a in u.attribute}
            if (attrs.get('auto_pad', b'NOTSET') != b'NOTSET' or any(attrs.get('pads', [0, 0, 0, 0]))
                    or len(u.output) != 1):
                ok = False
        if not ok:
            continue
        for u in users:
            kept = [a for a in u.attribute if a.name != 'pads']
            del u.attribute[:]
            u.attribute.extend(kept + [helper.make_attribute('pads', [0, 0, int(pads[6]), int(pads[7])])])
            u.input[0] = node.input[0]
        removed.append(node)
    for node in removed:
        graph.node.remove(node)
    if removed:  # the pads / value initializers no node reads any more
        used = {name for node in graph.node for name in node.input}
        for init in [t for t in graph.initializer if t.name not in used]:
            graph.initializer.remove(init)
    return len(removed)


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
        optimize: Run the exporter's ONNX graph optimisation (constant folding, redundant-op removal), then fold
            the Caffe pools' ``-inf`` pads into their ``MaxPool`` s (``fuse_pad_into_max_pool``).
        program: An ``ExportedProgram`` of ``model`` from ``export_program`` to translate instead of exporting
            again (``min_size``/``max_size``/``dynamic_batch`` are then those it was exported with, and the metadata
            records its range).

    Returns:
        ``path`` as a ``Path``.
    """
    require_onnx()
    path = _check_path(path)
    if isinstance(opset, bool) or not isinstance(opset, int) or not 17 <= opset <= 23:
        raise ConfigError(f'opset must be an ONNX opset version between 17 and 23, got {opset!r}')
    if program is None:
        min_size, max_size = resolve_size_range(model, min_size, max_size)
        program = export_program(model, min_size=min_size, max_size=max_size, dynamic_batch=dynamic_batch)
    else:  # the metadata records the range the program was exported with
        min_size, max_size = program_size_range(program) or resolve_size_range(model, min_size, max_size)
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
    proto = onnx_program.model_proto
    if optimize:
        fuse_pad_into_max_pool(proto)
    meta = {'min_input_size': str(min_size), 'max_input_size': str(max_size), 'input_layout': 'NCHW',
            'producer': 'timm_resattn.export.export_onnx'}
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    return atomic_write(path, lambda tmp: onnx.save_model(proto, tmp))


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
