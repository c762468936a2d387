""" Writing models out for others: the Hugging Face Hub layout (``hub``), and for deployment ``torch.export``
programs (``program``), ONNX files (``onnx``) and AOTInductor packages (``aoti``) with a dynamic batch, height and
width.

The ONNX functions need the ``export`` extra (onnx, onnxscript; onnxruntime to verify); they import it when called.
"""
from .aoti import compile_aoti, load_aoti
from .onnx import export_onnx, require_onnx, verify_onnx
from .program import (
    DEFAULT_MAX_SIZE, dynamic_shapes, export_min_size, export_program, model_in_chans, program_size_range,
    resolve_size_range,
)

__all__ = [
    'export_program', 'dynamic_shapes', 'export_min_size', 'resolve_size_range', 'model_in_chans', 'DEFAULT_MAX_SIZE',
    'program_size_range', 'export_onnx', 'verify_onnx', 'require_onnx', 'compile_aoti', 'load_aoti',
]
