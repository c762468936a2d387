""" Peak memory of one model's steady-state steps, measured alone (in a fresh process when run as a program).

The throughput runs keep every model resident at once (to interleave them), so peak memory is measured apart: the
benchmark starts ``python -m benchmarks.memory`` once per model. For each mode it

1. frees what it can and records the baseline (CUDA: ``memory_allocated`` / ``memory_reserved``; CPU: the RSS);
2. builds the model and runs ``warmup`` steps (eager, never ``torch.compile``d): cuDNN's autotuner
   (``cudnn.benchmark``) runs and frees its trial workspaces here, and the optimizer state is created;
3. synchronizes, returns the allocator's cached free blocks to the device (``torch.cuda.empty_cache``) and resets
   the peak (CUDA: ``reset_peak_memory_stats``; CPU: the resident-set high-water mark ``VmHWM`` through
   ``/proc/self/clear_refs``, ``ru_maxrss`` where that reset is unavailable);
4. runs ``steps`` more steps, each timed, and reports the peak minus the baseline.

So the figure is what steady-state training (or inference) of this model costs: weights, input, activations, the
workspace of the algorithms cuDNN settled on, and in ``train`` the gradients and SGD momentum, in the run's precision
(autocast to bf16/fp16 when asked), but not the autotuner's trial workspaces. On CUDA both ``max_memory_allocated``
(tensors) and ``max_memory_reserved`` (what the caching allocator held from the device) are reported.

Usage (internal): ``python -m benchmarks.memory '<json config>'`` prints one JSON line ``{"infer": {...}, ...}``
(``peak_mib``, ``reserved_mib`` (CUDA only), ``step_ms`` per mode); the config has ``model``, ``modes``, ``cfg``
(``BenchConfig`` fields) and optionally ``threads``, ``warmup``, ``steps`` and ``model_kwargs`` (e.g.
``{"memory_efficient": true}``).

Copyright the timm-resattn authors, Apache-2.0.
"""
import gc
import json
import resource
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from .common import BenchConfig, Step, create_model, make_step

__all__ = ['measure_peak_memory', 'measure_steps', 'CudaProbe', 'CpuProbe', 'probe_for']

_MIB = float(1 << 20)


class CudaProbe:
    """ The CUDA caching allocator's counters (``torch.cuda``). """
    has_reserved = True

    def __init__(self, device: str = 'cuda'):
        self.device = torch.device(device)

    def sync(self) -> None:
        torch.cuda.synchronize(self.device)

    def release(self) -> None:
        gc.collect()
        torch.cuda.empty_cache()

    def current(self) -> int:
        return torch.cuda.memory_allocated(self.device)

    def current_reserved(self) -> int:
        return torch.cuda.memory_reserved(self.device)

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        return torch.cuda.max_memory_allocated(self.device)

    def peak_reserved(self) -> int:
        return torch.cuda.max_memory_reserved(self.device)


class CpuProbe:
    """ The process's resident set (``/proc/self/status``; ``ru_maxrss`` where the high-water mark can't be reset). """
    has_reserved = False

    def __init__(self):
        self.reset_ok = False

    def sync(self) -> None:
        pass

    def release(self) -> None:
        gc.collect()

    def current(self) -> int:
        return (_proc_status_kib('VmRSS') or 0) * 1024

    def reset_peak(self) -> None:
        try:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')  # resets VmHWM to the current RSS
            self.reset_ok = True
        except OSError:
            self.reset_ok = False

    def peak(self) -> int:
        kib = _proc_status_kib('VmHWM') if self.reset_ok else None
        if kib is None:
            kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return kib * 1024


def _proc_status_kib(field: str) -> Optional[int]:
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def probe_for(device: str):
    """ The memory probe of ``device`` (``'cpu'``, ``'cuda'``, ``'cuda:1'``...). """
    dev = torch.device(device)
    if dev.type == 'cuda':
        return CudaProbe(device)
    if dev.type == 'cpu':
        return CpuProbe()
    raise ValueError(f'device={device!r}: peak memory is measured on cpu or cuda')


def measure_steps(
        build: Callable[[], Step],
        probe: Any,
        warmup: int = 1,
        steps: int = 2,
        clock: Callable[[], float] = time.perf_counter,
) -> Dict[str, Optional[float]]:
    """ Peak memory (MiB above the baseline taken before ``build()``) and per-step time of ``steps`` steps run after
    ``warmup`` untimed ones, the peak reset between them (the order is in the module docstring). ``probe`` is a
    ``CudaProbe``/``CpuProbe`` or anything with their methods.
    """
    if warmup < 0 or steps < 1:
        raise ValueError(f'warmup={warmup}, steps={steps}: expected warmup >= 0 and steps >= 1')
    probe.release()
    base = probe.current()
    base_reserved = probe.current_reserved() if probe.has_reserved else 0
    step = build()
    step.prepare()
    for _ in range(warmup):
        step()
    probe.sync()
    probe.release()
    probe.reset_peak()
    times: List[float] = []
    for _ in range(steps):
        t0 = clock()
        step()
        probe.sync()
        times.append(clock() - t0)
    peak = probe.peak()
    out: Dict[str, Optional[float]] = {
        'peak_mib': max(peak - base, 0) / _MIB,
        'reserved_mib': max(probe.peak_reserved() - base_reserved, 0) / _MIB if probe.has_reserved else None,
        'step_ms': 1000 * statistics.median(times),
    }
    del step
    probe.release()
    return out


def measure_peak_memory(
        name: str,
        modes: Sequence[str],
        cfg: BenchConfig,
        steps: int = 2,
        warmup: int = 1,
        model_kwargs: Optional[Dict[str, Any]] = None,
        probe: Any = None,
) -> Dict[str, Dict[str, Optional[float]]]:
    """ ``measure_steps`` of each mode of model ``name`` (built by ``common.create_model(name, **model_kwargs)``,
    eager), in this process: ``{mode: {'peak_mib', 'reserved_mib', 'step_ms'}}``.
    """
    probe = probe or probe_for(cfg.device)
    cfg = BenchConfig(**{**vars(cfg), 'compile': False})
    return {
        mode: measure_steps(
            lambda mode=mode: make_step(create_model(name, **(model_kwargs or {})), mode, cfg, fuse_inplace=True),
            probe, warmup=warmup, steps=steps)
        for mode in modes
    }


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = json.loads((argv if argv is not None else sys.argv[1:])[0])
    if args.get('threads'):
        torch.set_num_threads(args['threads'])
    torch.manual_seed(0)
    cfg = BenchConfig(**args['cfg'])
    if torch.device(cfg.device).type == 'cuda':
        torch.backends.cudnn.benchmark = True
        if args.get('tf32') is not None:
            from .common import set_tf32
            set_tf32(args['tf32'])
    result = measure_peak_memory(
        args['model'], args['modes'], cfg, steps=args.get('steps', 2), warmup=args.get('warmup', 1),
        model_kwargs=args.get('model_kwargs'))
    print(json.dumps(result))


if __name__ == '__main__':
    main()
