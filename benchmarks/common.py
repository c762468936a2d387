""" Shared pieces of the benchmark programs: model set-up, one timed step per mode, environment capture.

Copyright the timm-resattn authors, Apache-2.0.
"""
import contextlib
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import timm
import timm_resattn  # noqa: F401  (registers the models with timm)
from timm_resattn.analysis.flops import count_macs as _count_macs
from timm_resattn.analysis.fuse import fuse_bn
from timm_resattn.train.loop import backward_and_step

from .fuse_peers import register_timm_peers

register_timm_peers()  # --fuse-bn folds the ResNet peers' BNs like ours

__all__ = [
    'PRECISIONS', 'MODES', 'BenchConfig', 'autocast_ctx', 'create_model', 'count_params', 'count_macs',
    'Step', 'make_step', 'synchronize', 'environment', 'cpu_model_name', 'REPO_ROOT', 'RUNTIMES',
    'make_runtime_step', 'ort_session', 'TF32_SETTINGS', 'set_tf32', 'backend_flags', 'compile_label',
    'no_eager_fallback', 'lean_except',
]

PRECISIONS = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}
MODES = ('infer', 'train')
# how a model runs: eager PyTorch, its torch.export program (``ExportedProgram.module()``), or its ONNX file in
# onnxruntime (CPU); the last two for inference only
RUNTIMES = ('eager', 'export', 'onnxruntime')
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class BenchConfig:
    """ The settings every measured step shares. """
    device: str = 'cpu'
    batch_size: int = 8
    img_size: int = 224
    precision: str = 'fp32'
    channels_last: bool = False
    compile: bool = False
    fuse_bn: bool = False
    compile_backend: str = 'inductor'
    lr: float = 1e-4

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def autocast_ctx(cfg: BenchConfig):
    """ ``torch.autocast`` for bf16/fp16, a null context for fp32. """
    if cfg.precision == 'fp32':
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(cfg.device).type, dtype=PRECISIONS[cfg.precision])


@contextlib.contextmanager
def no_eager_fallback():
    """ Inside: dynamo raises when a frame reaches its recompile limit, instead of running it eagerly from then on
    (``torch._dynamo.config.fail_on_recompile_limit_hit``), so a step timed under a ``torch.compile`` label is a
    compiled one.
    """
    import torch._dynamo.config as dynamo_config
    with dynamo_config.patch(fail_on_recompile_limit_hit=True):
        yield


def compile_label(cfg: BenchConfig) -> str:
    """ What ran, in words: ``eager`` or ``torch.compile (<backend>, default mode)``. """
    return f'torch.compile ({cfg.compile_backend}, default mode)' if cfg.compile else 'eager'


# --tf32: leave torch's defaults (convolutions in TF32, matmuls in fp32), or switch both on or off
TF32_SETTINGS = ('default', 'on', 'off')


def set_tf32(setting: str) -> None:
    """ Allow TF32 in fp32 CUDA convolutions and matmuls (``on``), forbid it (``off``), or leave torch's defaults
    (``default``). No effect on the CPU or in bf16/fp16; ``backend_flags`` records what is in force.
    """
    if setting not in TF32_SETTINGS:
        raise ValueError(f'tf32={setting!r}; expected one of {TF32_SETTINGS}')
    if setting != 'default':
        torch.backends.cuda.matmul.allow_tf32 = setting == 'on'
        torch.backends.cudnn.allow_tf32 = setting == 'on'


def backend_flags() -> Dict[str, Any]:
    """ The torch backend settings that change CUDA numbers: TF32 in matmuls and convolutions, cuDNN autotuning and
    determinism.
    """
    return {
        'tf32_matmul': torch.backends.cuda.matmul.allow_tf32,
        'tf32_cudnn_conv': torch.backends.cudnn.allow_tf32,
        'float32_matmul_precision': torch.get_float32_matmul_precision(),
        'cudnn_enabled': torch.backends.cudnn.enabled,
        'cudnn_benchmark': torch.backends.cudnn.benchmark,
        'cudnn_deterministic': torch.backends.cudnn.deterministic,
    }


def synchronize(device: str) -> None:
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize()


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """ A randomly initialised timm model (1000 classes), on the CPU in fp32; ``kwargs`` go to
    ``timm.create_model`` (e.g. ``memory_efficient=True``).
    """
    return timm.create_model(name, pretrained=False, num_classes=1000, **kwargs)


def lean_except(model: nn.Module, plain_stages: Sequence[int] = ()) -> nn.Module:
    """ ``model.set_memory_efficient(True)``, then the stages at ``plain_stages`` (indices into ``model.stages``)
    switched back to the plain path (each stage's ``memory_efficient`` attribute): how much of the net trades
    recompute for memory. Returns ``model``. """
    model.set_memory_efficient(True)
    num_stages = len(model.stages)
    for i in plain_stages:
        if not 0 <= i < num_stages:
            raise ValueError(f'--plain-stages {i}: {type(model).__name__} has stages 0..{num_stages - 1}')
        model.stages[i].memory_efficient = False
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, img_size: int, in_chans: int = 3) -> int:
    """ Multiply-accumulates of one image's forward (eval mode): ``FlopCounterMode`` total / 2. """
    return _count_macs(model, (in_chans, img_size, img_size))


class Step:
    """ One benchmark step of a model in one mode: ``prepare()`` (outside the timed region) then ``step()``. """

    def __init__(self, model: nn.Module, training: bool, fn: Callable[[], None]):
        self.model = model
        self.training = training
        self.fn = fn

    def prepare(self) -> None:
        """ Put the model in this step's mode (infer and train may share one model). """
        if self.model.training != self.training:
            self.model.train(self.training)

    def __call__(self) -> None:
        self.fn()


def make_step(model: nn.Module, mode: str, cfg: BenchConfig, fuse_inplace: bool = False) -> Step:
    """ Prepare ``model`` for ``mode`` and return a ``Step`` running one step on a fixed random batch.

    * ``infer``: eval mode, ``torch.no_grad``, forward only (BN folded first when ``cfg.fuse_bn``: into a copy, the
      caller's model left as it is, unless ``fuse_inplace``).
    * ``train``: train mode, forward + cross-entropy + backward + SGD (momentum 0.9) step, optimizer state kept
      across steps; fp16 uses a ``GradScaler``.

    The model is moved to ``cfg.device`` / ``cfg.memory_format`` (in place) and wrapped in ``torch.compile`` when
    asked. Call ``Step.prepare()`` before timing a run of steps: it sets the mode the step needs.
    """
    if mode not in MODES:
        raise ValueError(f'mode={mode!r}; expected one of {MODES}')
    device = torch.device(cfg.device)
    model = model.to(device=device, memory_format=cfg.memory_format)
    x = torch.randn(cfg.batch_size, 3, cfg.img_size, cfg.img_size, device=device)
    x = x.contiguous(memory_format=cfg.memory_format)

    if mode == 'infer':
        model.eval()
        if cfg.fuse_bn:
            model = fuse_bn(model, inplace=fuse_inplace)
        fwd = torch.compile(model, backend=cfg.compile_backend) if cfg.compile else model

        def infer_step() -> None:
            with torch.no_grad(), autocast_ctx(cfg):
                fwd(x)

        return Step(model, False, infer_step)

    model.train()
    target = torch.randint(0, 1000, (cfg.batch_size,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == 'fp16' else None
    fwd = torch.compile(model, backend=cfg.compile_backend) if cfg.compile else model

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast_ctx(cfg):
            loss = F.cross_entropy(fwd(x), target)
        backward_and_step(loss, optimizer, scaler)

    return Step(model, True, train_step)


def cpu_model_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> Optional[str]:
    try:
        out = subprocess.run(
            ['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: str) -> Dict[str, Any]:
    """ Versions, hardware and threading settings of this run. """
    dev = torch.device(device)
    env: Dict[str, Any] = {
        'torch': torch.__version__,
        'timm': timm.__version__,
        'timm_resattn': timm_resattn.__version__,
        'python': platform.python_version(),
        'platform': platform.platform(),
        'cpu_model': cpu_model_name(),
        'cpu_count': os.cpu_count(),
        'threads': torch.get_num_threads(),
        'interop_threads': torch.get_num_interop_threads(),
        'mkldnn': torch.backends.mkldnn.is_available(),
        'git_commit': _git_commit(),
        **backend_flags(),
    }
    if dev.type == 'cuda':
        props = torch.cuda.get_device_properties(dev)
        env['device_name'] = torch.cuda.get_device_name(dev)
        env['device_capability'] = f'{props.major}.{props.minor}'
        env['device_memory_gib'] = round(props.total_memory / (1 << 30), 1)
        env['cuda'] = torch.version.cuda
        env['cudnn'] = torch.backends.cudnn.version()
    else:
        env['device_name'] = env['cpu_model']
    return env


def make_runtime_step(
        model: nn.Module,
        runtime: str,
        cfg: BenchConfig,
        workdir: Optional[Path] = None,
        programs: Optional[Dict[int, Any]] = None,
) -> Tuple[Step, float]:
    """ An inference ``Step`` of ``model`` in a deployed ``runtime`` (see ``RUNTIMES``), and the seconds its set-up
    (export, ONNX translation, session creation) took.

    * ``export``: ``timm_resattn.export.export_program`` (torch.export, dynamic batch/height/width) run through
      ``ExportedProgram.module()``: the exported ATen graph executed op by op by PyTorch, no compiler.
    * ``onnxruntime``: that program written by ``export_onnx`` to ``workdir`` and run by an onnxruntime
      ``InferenceSession`` (CPU provider, all graph optimisations, as many intra-op threads as torch uses).

    Our nets export from their minimum input size, the peers (no ``min_input_size``) from 32 px; up to
    ``max(1024, img_size)``. BN is folded first with ``cfg.fuse_bn``. ``programs`` caches the ExportedProgram per
    model (by ``id``) so both runtimes share one export.
    """
    from timm_resattn.export import export_onnx, export_program
    if runtime == 'eager':
        t0 = time.perf_counter()
        step = make_step(model, 'infer', cfg)
        return step, time.perf_counter() - t0
    if runtime not in RUNTIMES:
        raise ValueError(f'runtime={runtime!r}; expected one of {RUNTIMES}')
    if cfg.precision != 'fp32' or cfg.channels_last or cfg.compile:
        raise ValueError('the export and onnxruntime runtimes are benchmarked in fp32, contiguous, not compiled')
    device = torch.device(cfg.device)
    model = model.to(device=device).eval()
    programs = {} if programs is None else programs
    t0 = time.perf_counter()
    if id(model) not in programs:
        src = fuse_bn(model, inplace=False) if cfg.fuse_bn else model
        sizes = {'min_size': None if hasattr(src, 'min_input_size') else 32, 'max_size': max(1024, cfg.img_size)}
        programs[id(model)] = src, export_program(src, **sizes), sizes
    src, ep, sizes = programs[id(model)]
    x = torch.randn(cfg.batch_size, 3, cfg.img_size, cfg.img_size, device=device)
    if runtime == 'export':
        fwd = ep.module()

        def export_step() -> None:
            with torch.no_grad():
                fwd(x)

        return Step(model, False, export_step), time.perf_counter() - t0

    if device.type != 'cpu':
        raise ValueError('the onnxruntime runtime is benchmarked on the CPU only')
    if workdir is None:
        raise ValueError('the onnxruntime runtime needs a workdir for the ONNX file')
    path = Path(workdir) / f'{type(model).__name__}_{id(model)}.onnx'
    export_onnx(src, path, program=ep, **sizes)
    sess = ort_session(path)
    feed = {sess.get_inputs()[0].name: x.numpy()}

    def ort_step() -> None:
        sess.run(None, feed)

    return Step(model, False, ort_step), time.perf_counter() - t0


def ort_session(path: Path, threads: Optional[int] = None):
    """ The onnxruntime session the benchmarks run an ONNX file in: CPU provider, all graph optimisations,
    ``threads`` intra-op threads (default: as many as torch uses), one inter-op thread.
    """
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads() if threads is None else threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), opts, providers=['CPUExecutionProvider'])
