""" Peak memory of one model, measured alone in a fresh process.

The throughput runs keep every model resident at once (to interleave them), so peak memory is measured apart: the
benchmark starts ``python -m benchmarks.memory`` once per model. For each mode it builds the model, runs
``steps`` steps (eager, never ``torch.compile``d) and reports the peak of

* CUDA: ``torch.cuda.max_memory_allocated`` (reset before the model is built);
* CPU: the process's resident set (peak RSS, ``VmHWM``, reset through ``/proc/self/clear_refs`` before the model
  is built; ``ru_maxrss`` where that reset is unavailable), minus the RSS just before the model was built.

Either way the figure covers the weights, (fused copy,) input, activations, workspace, and in ``train`` the
gradients and the SGD momentum buffers: what running only this model costs, in MiB.

Usage (internal): ``python -m benchmarks.memory '<json config>'`` prints one JSON line ``{"infer": MiB, ...}``; the
config has ``model``, ``modes``, ``cfg`` (``BenchConfig`` fields) and optionally ``threads``, ``steps`` and
``model_kwargs`` (e.g. ``{"memory_efficient": true}``).

Hacked together by the timm-resattn authors, Apache-2.0.
"""
import gc
import json
import resource
import sys
from typing import Any, Dict, Optional, Sequence

import torch

from .common import BenchConfig, create_model, make_step, synchronize

__all__ = ['measure_peak_memory']

_MIB = float(1 << 20)


def _reset_rss_peak() -> bool:
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def _proc_status_kib(field: str) -> Optional[int]:
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _rss_bytes() -> int:
    kib = _proc_status_kib('VmRSS')
    return (kib or 0) * 1024


def _rss_peak_bytes(reset_ok: bool) -> int:
    kib = _proc_status_kib('VmHWM') if reset_ok else None
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib * 1024


def measure_peak_memory(
        name: str,
        modes: Sequence[str],
        cfg: BenchConfig,
        steps: int = 2,
        model_kwargs: Optional[Dict[str, Any]] = None,
) -> Dict[str, float]:
    """ Peak memory (MiB) of running ``steps`` steps of each mode of model ``name`` (built by
    ``common.create_model(name, **model_kwargs)``) alone in this process.
    """
    cuda = torch.device(cfg.device).type == 'cuda'
    out: Dict[str, float] = {}
    for mode in modes:
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            reset_ok = True
        else:
            reset_ok = _reset_rss_peak()
            base = _rss_bytes()
        step = make_step(create_model(name, **(model_kwargs or {})), mode, cfg, fuse_inplace=True)
        step.prepare()
        for _ in range(steps):
            step()
        synchronize(cfg.device)
        peak = torch.cuda.max_memory_allocated() if cuda else _rss_peak_bytes(reset_ok)
        out[mode] = max(peak - base, 0) / _MIB
        del step
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = json.loads((argv if argv is not None else sys.argv[1:])[0])
    if args.get('threads'):
        torch.set_num_threads(args['threads'])
    torch.manual_seed(0)
    cfg = BenchConfig(**{**args['cfg'], 'compile': False})
    if cfg.device == 'cuda':
        torch.backends.cudnn.benchmark = True
    result = measure_peak_memory(
        args['model'], args['modes'], cfg, steps=args.get('steps', 2), model_kwargs=args.get('model_kwargs'))
    print(json.dumps(result))


if __name__ == '__main__':
    main()
