""" Benchmark the Residual Attention Networks against timm's ResNet peers, side by side in one run.

    python -m benchmarks.run --device cpu --threads 2 --batch-size 8 --img-size 224 --out benchmarks/results/cpu

For every model: parameters, MACs (``FlopCounterMode`` total / 2 at ``--img-size``), inference and training
throughput (images/s; train = forward + backward + SGD step in train mode) and peak memory after warm-up (see
``benchmarks/memory.py``). Eager models all stay resident and are timed round-robin (repeat 1 of every model and
mode, then repeat 2, ...), so slow drifts of a shared machine hit them alike; warm-up steps are excluded and the
median over the repeats is reported. With ``--compile`` the models are timed one at a time, dynamo's caches reset
(``torch.compiler.reset``) before each, since all the nets share one ``forward`` code object and dynamo's cache limit
would otherwise send the later ones to eager; the timed steps run under ``torch.compiler.set_stance(
'fail_on_recompile')`` and dynamo's recompile limit raises (``common.no_eager_fallback``), so a step that is not the
compiled one fails instead of being timed.

Writes to ``--out`` (default: a folder under ``benchmarks/results/`` named from every setting that changes the
numbers, see ``run_tag``; an earlier run's results there are kept unless ``--overwrite``): ``results.csv`` (one row
per model and mode), ``results.json`` (config, environment with the TF32/cuDNN flags, raw per-repeat times,
medians), ``results.md`` (tables, with each net's speed-up over its ResNet peer beside the MAC ratio) and
``throughput_vs_gmacs.png`` (skipped, with a note, where matplotlib is missing).

Copyright the timm-resattn authors, Apache-2.0.
"""
import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

import timm

from .common import (
    MODES, PRECISIONS, REPO_ROOT, RUNTIMES, TF32_SETTINGS, BenchConfig, Step, compile_label, count_macs, count_params,
    create_model, environment, make_runtime_step, make_step, no_eager_fallback, set_tf32, synchronize,
)
from .activations import activation_rows
from .report import OUTPUT_FILES, write_csv, write_json, write_markdown, write_plot

__all__ = ['main', 'parse_args', 'run', 'run_tag', 'plan_blocks', 'time_blocks', 'OUR_MODELS', 'DEFAULT_PEERS',
           'PEER_OF']

OUR_MODELS = ('resattnet56', 'resattnet92', 'resattnext56', 'resattninc56')
DEFAULT_PEERS = ('resnet152', 'resnet200', 'resnetv2_152')
# each of our nets against the ResNet of about its accuracy in the paper (Attention-56 ~ ResNet-152, -92 ~ -200)
PEER_OF = {
    'resattnet56': 'resnet152',
    'resattnext56': 'resnet152',
    'resattninc56': 'resnet152',
    'resattnet92': 'resnet200',
    'resattnext92': 'resnet200',
}


def _csv_list(s: str) -> List[str]:
    return [v.strip() for v in s.split(',') if v.strip()]


def _default_models() -> List[str]:
    available = set(timm.list_models('resatt*'))
    return [m for m in OUR_MODELS if m in available]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog='python -m benchmarks.run',
        description='Throughput, MACs and peak memory of the Residual Attention Networks vs timm ResNets.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument('--models', type=_csv_list, default=None,
                   help=f'our models, comma-separated (default: those of {",".join(OUR_MODELS)} that are registered)')
    p.add_argument('--peers', type=_csv_list, default=list(DEFAULT_PEERS),
                   help='timm peer models, comma-separated')
    p.add_argument('--peer-map', type=_csv_list, default=[],
                   help='ours=peer overrides of the peer each net is compared with, comma-separated; a net whose '
                        'peer is not in the run is compared with the first of --peers')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', choices=('cpu', 'cuda'))
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--precision', default='fp32', choices=tuple(PRECISIONS), help='fp32, or autocast to bf16/fp16')
    p.add_argument('--channels-last', action='store_true', help='channels_last model and input')
    p.add_argument('--compile', action='store_true',
                   help='torch.compile every model (default mode); the models are then timed one at a time, '
                        'dynamo reset before each')
    p.add_argument('--compile-backend', default='inductor',
                   help='torch.compile backend with --compile (inductor; eager and aot_eager trace without code '
                        'generation)')
    p.add_argument('--tf32', default='default', choices=TF32_SETTINGS,
                   help='CUDA fp32: TF32 in convolutions and matmuls on/off, or torch\'s defaults (recorded either '
                        'way)')
    p.add_argument('--fuse-bn', action='store_true',
                   help='inference: fold each BN that follows a conv into it '
                        '(timm_resattn.analysis.fuse.fuse_bn), peers too')
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (default: torch\'s choice)')
    p.add_argument('--repeats', type=int, default=5, help='timed repeats per model and mode (median reported)')
    p.add_argument('--warmup', type=int, default=2, help='untimed steps per model and mode before the repeats')
    p.add_argument('--iters', type=int, default=3, help='steps per timed repeat')
    p.add_argument('--modes', type=_csv_list, default=list(MODES), help='infer and/or train, comma-separated')
    p.add_argument('--runtimes', type=_csv_list, default=['eager'],
                   help='how each model runs, comma-separated: eager (PyTorch), export (its torch.export program, '
                        'ExportedProgram.module()), onnxruntime (its ONNX file, CPU); the last two infer only')
    p.add_argument('--out', type=Path, default=None,
                   help='output folder (default: benchmarks/results/<every setting that changes the numbers>, '
                        'see run_tag)')
    p.add_argument('--overwrite', action='store_true', help='replace the results of an earlier run in --out')
    p.add_argument('--no-memory', action='store_true', help='skip the per-model peak-memory subprocesses')
    p.add_argument('--memory-warmup', type=int, default=1,
                   help='untimed steps per mode in the peak-memory subprocess before the peak is reset '
                        '(cuDNN autotuning happens here)')
    p.add_argument('--memory-steps', type=int, default=2, help='measured steps per mode in the peak-memory subprocess')
    p.add_argument('--no-activations', action='store_true',
                   help='skip the saved-activation-bytes table (benchmarks/activations.py; deterministic, CPU, in the '
                        'run\'s precision)')
    p.add_argument('--memory-budget-gib', type=float, default=16.,
                   help='memory budget of the "largest batch that fits" column of the saved-activations table')
    p.add_argument('--no-plot', action='store_true', help='skip the PNG plot (skipped anyway without matplotlib)')
    p.add_argument('--no-progress', action='store_true', help='no progress bar (per-step lines are still printed)')
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args(argv)

    if args.models is None:
        args.models = _default_models()
    for m in args.modes:
        if m not in MODES:
            p.error(f'--modes: unknown mode {m!r}; expected {",".join(MODES)}')
    for r in args.runtimes:
        if r not in RUNTIMES:
            p.error(f'--runtimes: unknown runtime {r!r}; expected {",".join(RUNTIMES)}')
    if not args.runtimes:
        p.error('--runtimes: give at least one runtime')
    if set(args.runtimes) - {'eager'}:
        if args.compile or args.channels_last or args.precision != 'fp32':
            p.error('--runtimes export/onnxruntime: benchmarked in fp32, without --compile and --channels-last')
        if 'infer' not in args.modes:
            p.error('--runtimes export/onnxruntime: they run inference, add infer to --modes')
        if 'onnxruntime' in args.runtimes and args.device != 'cpu':
            p.error('--runtimes onnxruntime: CPU only (--device cpu)')
    for n, v in (('--batch-size', args.batch_size), ('--img-size', args.img_size), ('--repeats', args.repeats),
                 ('--iters', args.iters), ('--memory-steps', args.memory_steps)):
        if v < 1:
            p.error(f'{n} must be >= 1')
    if args.warmup < 0 or (args.compile and args.warmup < 1):
        p.error('--warmup must be >= 0 (>= 1 with --compile, whose first step compiles)')
    if args.memory_warmup < 0 or (args.device == 'cuda' and args.memory_warmup < 1):
        p.error('--memory-warmup must be >= 0 (>= 1 on cuda, where the first step runs cuDNN\'s autotuner)')
    if args.device == 'cuda' and not torch.cuda.is_available():
        p.error('--device cuda: CUDA is not available')
    names = list(dict.fromkeys(args.models + args.peers))
    if not names:
        p.error('no models to run')
    unknown = [n for n in names if not timm.is_model(n)]
    if unknown:
        p.error(f'unknown model(s) {unknown}')
    args.peer_overrides = {}
    for item in args.peer_map:
        ours, sep, peer = item.partition('=')
        if not sep:
            p.error(f'--peer-map: expected ours=peer, got {item!r}')
        args.peer_overrides[ours.strip()] = peer.strip()
    if args.out is None:
        args.out = REPO_ROOT / 'benchmarks' / 'results' / run_tag(args)
    if (args.out / OUTPUT_FILES['json']).exists() and not args.overwrite:
        p.error(f'--out {args.out}: holds the results of an earlier run ({OUTPUT_FILES["json"]}); choose another '
                'folder or pass --overwrite')
    return args


def run_tag(args: argparse.Namespace) -> str:
    """ The default output folder's name: every setting that changes the numbers, e.g.
    ``cuda_bf16_cl_compile-inductor_b128_224`` or ``cpu_fp32_t2_b8_224``. TF32 is named for CUDA fp32 runs
    (``tf32-default|on|off``), the thread count for CPU runs (torch's default when ``--threads`` is not given), the
    deployed runtimes when other than eager.
    """
    device = str(args.device).replace(':', '')
    parts = [device, args.precision]
    if args.device.startswith('cuda') and args.precision == 'fp32':
        parts.append(f'tf32-{args.tf32}')
    if args.channels_last:
        parts.append('cl')
    if args.compile:
        parts.append(f'compile-{args.compile_backend}')
    if args.fuse_bn:
        parts.append('fusebn')
    if list(args.runtimes) != ['eager']:
        parts.append('rt-' + '-'.join(args.runtimes))
    if args.device == 'cpu':
        parts.append(f't{args.threads or torch.get_num_threads()}')
    parts += [f'b{args.batch_size}', str(args.img_size)]
    return '_'.join(parts)


class _Progress:
    """ A tqdm bar on stderr when it is a terminal and tqdm is installed (it comes with huggingface_hub); one line per
    measurement either way.
    """

    def __init__(self, total: int, enabled: bool = True):
        self.bar = None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm import tqdm
                self.bar = tqdm(total=total, file=sys.stderr, unit='run', dynamic_ncols=True)
            except ImportError:
                pass
        self.total, self.done = total, 0

    def log(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def update(self, desc: str) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.set_description(desc)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _label(key: tuple) -> str:
    name, mode, rt = key
    return f'{name} {mode}' if rt == 'eager' else f'{name} {mode} [{rt}]'


def _time_steps(step: Step, iters: int, device: str) -> Tuple[float, float]:
    """ Wall-clock and process CPU seconds of ``iters`` steps. """
    step.prepare()
    synchronize(device)
    c0 = time.process_time()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    synchronize(device)
    return time.perf_counter() - t0, time.process_time() - c0


def _loadavg() -> Optional[float]:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _peer_for(name: str, args: argparse.Namespace) -> Optional[str]:
    peer = args.peer_overrides.get(name, PEER_OF.get(name))
    if peer in args.peers:
        return peer
    return args.peers[0] if args.peers else None


def _measure_memory(name: str, args: argparse.Namespace, cfg: BenchConfig) -> Dict[str, Optional[Dict[str, Any]]]:
    payload = json.dumps({
        'model': name, 'modes': args.modes, 'threads': args.threads, 'warmup': args.memory_warmup,
        'steps': args.memory_steps, 'tf32': args.tf32, 'cfg': {**vars(cfg), 'compile': False},
    })
    proc = subprocess.run(
        [sys.executable, '-m', 'benchmarks.memory', payload], cwd=REPO_ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f'peak-memory run of {name} failed:\n{proc.stderr[-2000:]}', file=sys.stderr)
        return dict.fromkeys(args.modes)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def plan_blocks(names: Sequence[str], compile: bool) -> List[List[str]]:
    """ The models timed together: all of them, round-robin, in eager; one at a time under ``torch.compile``
    (dynamo's caches are reset before each block, see ``time_blocks``).
    """
    return [[n] for n in names] if compile else [list(names)]


def time_blocks(
        blocks: Sequence[Sequence[str]],
        runs: Sequence[Tuple[str, str]],
        build: Callable[[str], Dict[tuple, Step]],
        timer: Callable[[Step, int], Tuple[float, float]],
        warmup: int,
        repeats: int,
        iters: int,
        reset: Optional[Callable[[], None]] = None,
        timed_ctx: Callable[[], Any] = contextlib.nullcontext,
        log: Callable[[str, tuple, Optional[float]], None] = lambda *a: None,
) -> Tuple[Dict[tuple, List[float]], Dict[tuple, List[float]]]:
    """ Time every ``(name, mode, runtime)`` step: per block, ``reset()`` (when given), ``build(name)`` of each of
    its models, ``warmup`` untimed steps of each key, then ``repeats`` round-robin passes over the block's keys of
    ``timer(step, iters)`` (wall, CPU seconds) inside ``timed_ctx()``; a block's steps are dropped before the next
    block is built. Returns per-key lists of wall and CPU seconds.
    """
    times: Dict[tuple, List[float]] = {}
    cpu: Dict[tuple, List[float]] = {}
    for block in blocks:
        if reset is not None:
            reset()
        steps: Dict[tuple, Step] = {}
        for name in block:
            steps.update(build(name))
        keys = [(name, mode, rt) for name in block for mode, rt in runs]
        if warmup:
            for key in keys:
                t, _ = timer(steps[key], warmup)
                log('warm-up', key, t)
        for key in keys:
            times[key], cpu[key] = [], []
        with timed_ctx():
            for r in range(repeats):
                for key in keys:
                    t, c = timer(steps[key], iters)
                    times[key].append(t)
                    cpu[key].append(c)
                    log(f'{r + 1}/{repeats}', key, t)
        steps.clear()
    return times, cpu


def _saved_activations(names: Sequence[str], ours: Sequence[str], args: argparse.Namespace) -> list:
    """ ``activations.activation_rows`` in the run's precision (the table's column says which). """
    return activation_rows(names, ours, args.img_size, args.memory_budget_gib, precision=args.precision)


def run(args: argparse.Namespace) -> Dict[str, Any]:
    """ Run the benchmark described by ``args`` (see ``parse_args``) and write the outputs; returns the JSON data. """
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == 'cuda':
        torch.backends.cudnn.benchmark = True
        set_tf32(args.tf32)
    torch.manual_seed(args.seed)
    cfg = BenchConfig(
        device=args.device, batch_size=args.batch_size, img_size=args.img_size, precision=args.precision,
        channels_last=args.channels_last, compile=args.compile, fuse_bn=args.fuse_bn,
        compile_backend=args.compile_backend,
    )
    ours = list(dict.fromkeys(args.models))
    names = list(dict.fromkeys(ours + args.peers))
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    load_start = _loadavg()

    # params and MACs on the plain fp32 model of each name, kept (on the CPU) until its block builds its steps
    # (mode, runtime) pairs: every mode in eager, inference in the deployed runtimes
    runs = [(mode, rt) for rt in args.runtimes for mode in args.modes if rt == 'eager' or mode == 'infer']
    models: Dict[str, Dict[str, Any]] = {}
    modules: Dict[str, torch.nn.Module] = {}
    for name in names:
        model = create_model(name)
        info = {'kind': 'ours' if name in ours else 'peer', 'params': count_params(model),
                'macs': count_macs(model, args.img_size), 'setup_seconds': {}}
        models[name], modules[name] = info, model
        print(f'{name}: {info["params"] / 1e6:.2f} M params, {info["macs"] / 1e9:.2f} GMACs', file=sys.stderr)
    for name, info in models.items():
        if info['kind'] == 'ours':
            peer = _peer_for(name, args)
            info['peer'] = peer
            info['mac_ratio'] = models[peer]['macs'] / info['macs'] if peer else None

    workdir = tempfile.TemporaryDirectory(prefix='resattn_bench_') if 'onnxruntime' in args.runtimes else None

    def build(name: str) -> Dict[tuple, Step]:
        model, info = modules.pop(name), models[name]  # the block's steps hold it from here on
        programs: Dict[int, Any] = {}
        steps = {}
        for mode, rt in runs:
            if rt == 'eager':
                steps[(name, mode, rt)] = make_step(model, mode, cfg)
                continue
            steps[(name, mode, rt)], secs = make_runtime_step(
                model, rt, cfg, workdir=workdir.name if workdir else None, programs=programs)
            info['setup_seconds'][rt] = round(secs, 1)
            print(f'{name}: {rt} set up in {secs:.1f} s', file=sys.stderr, flush=True)
        return steps

    keys = [(name, mode, rt) for name in names for mode, rt in runs]
    progress = _Progress(len(keys) * (args.repeats + (1 if args.warmup else 0)), enabled=not args.no_progress)

    def log(what: str, key: tuple, t: float) -> None:
        if what == 'warm-up':
            progress.log(f'[warm-up] {_label(key)}: {args.warmup} steps in {t:.2f} s')
        else:
            progress.log(f'[{what}] {_label(key)}: {args.batch_size * args.iters / t:.2f} img/s '
                         f'({1000 * t / args.iters:.1f} ms/step)')
        progress.update(f'{what} {_label(key)}')

    with no_eager_fallback() if args.compile else contextlib.nullcontext():
        times, cpu_times = time_blocks(
            plan_blocks(names, args.compile), runs, build,
            timer=lambda step, n: _time_steps(step, n, args.device),
            warmup=args.warmup, repeats=args.repeats, iters=args.iters,
            reset=torch.compiler.reset if args.compile else None,
            timed_ctx=(lambda: torch.compiler.set_stance('fail_on_recompile')) if args.compile else
            contextlib.nullcontext,
            log=log,
        )
    progress.close()
    if workdir is not None:
        workdir.cleanup()

    memory: Dict[str, Dict[str, Any]] = {}
    if not args.no_memory:
        for name in names:
            print(f'peak memory: {name} ...', file=sys.stderr, flush=True)
            memory[name] = _measure_memory(name, args, cfg)

    activations: List[Dict[str, Any]] = []
    notes: List[str] = []
    if not args.no_activations:
        print('saved activations ...', file=sys.stderr, flush=True)
        activations = _saved_activations(names, ours, args)
    saved_plain = {r['model']: r['saved_mib_per_img'] for r in activations if r['variant'] == 'plain'}

    rows: List[Dict[str, Any]] = []
    results: List[Dict[str, Any]] = []
    medians = {k: statistics.median(args.batch_size * args.iters / t for t in v) for k, v in times.items()}
    env = environment(args.device)
    env['loadavg_1min_start'], env['loadavg_1min_end'] = load_start, _loadavg()
    for key in keys:
        name, mode, rt = key
        info = models[name]
        ips = [args.batch_size * args.iters / t for t in times[key]]
        peer = info.get('peer')
        speedup = medians[key] / medians[(peer, mode, rt)] if peer else None
        mem = (memory.get(name) or {}).get(mode) if rt == 'eager' else None  # the memory run is eager
        mem = mem or {}
        row = {
            'model': name, 'kind': info['kind'], 'mode': mode, 'runtime': rt,
            'params_m': round(info['params'] / 1e6, 3), 'gmacs': round(info['macs'] / 1e9, 4),
            'img_s_median': round(medians[key], 3), 'img_s_min': round(min(ips), 3),
            'img_s_max': round(max(ips), 3),
            'ms_per_step_median': round(1000 * statistics.median(times[key]) / args.iters, 2),
            'peak_mem_mib': None if mem.get('peak_mib') is None else round(mem['peak_mib'], 1),
            'peak_reserved_mib': None if mem.get('reserved_mib') is None else round(mem['reserved_mib'], 1),
            'peer': peer, 'speedup_vs_peer': None if speedup is None else round(speedup, 4),
            'mac_ratio_peer_over_ours': None if info.get('mac_ratio') is None else round(info['mac_ratio'], 4),
            'device': args.device, 'device_name': env['device_name'], 'precision': args.precision,
            'tf32': args.tf32 if args.device == 'cuda' else None,
            'batch_size': args.batch_size, 'img_size': args.img_size, 'channels_last': args.channels_last,
            'compile': compile_label(cfg), 'fuse_bn': args.fuse_bn, 'threads': env['threads'],
            'repeats': args.repeats, 'iters': args.iters, 'warmup': args.warmup,
            'saved_act_mib_per_img': saved_plain.get(name),
        }
        rows.append(row)
        results.append({
            'model': name, 'mode': mode, 'runtime': rt, 'repeat_seconds': times[key], 'repeat_img_s': ips,
            'repeat_cpu_seconds': cpu_times[key],
            'cpu_over_wall_median': statistics.median(c / t for c, t in zip(cpu_times[key], times[key])),
            'img_s_median': medians[key], 'peak_mem_mib': row['peak_mem_mib'],
            'peak_reserved_mib': row['peak_reserved_mib'], 'memory_step_ms': mem.get('step_ms'),
        })

    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    config['runs'] = [list(r) for r in runs]
    config['compile_label'] = compile_label(cfg)
    config['schedule'] = (
        'one model at a time, torch.compiler.reset() before each, timed steps under '
        "torch.compiler.set_stance('fail_on_recompile'), the recompile limit an error, not an eager fallback"
        if args.compile else
        'all models resident, round-robin')
    plot = not args.no_plot
    if plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            plot = False
            notes.append('plot skipped: matplotlib is not installed (pip install matplotlib)')
    data = {
        'config': config,
        'env': env,
        'timestamp': datetime.now(timezone.utc).isoformat(timespec='seconds'),
        'wall_seconds': round(time.time() - t_start, 1),
        'memory_method': (
            'not measured' if args.no_memory else
            f'torch.cuda.max_memory_allocated (and max_memory_reserved) of the model run alone in a fresh process '
            f'(eager, {args.precision}), peak reset after {args.memory_warmup} warm-up step(s), over '
            f'{args.memory_steps} step(s), minus what was allocated before the model was built'
            if args.device == 'cuda' else
            f'peak RSS increase (VmHWM) of a fresh process running the model alone (eager, {args.precision}), peak '
            f'reset after {args.memory_warmup} warm-up step(s), over {args.memory_steps} step(s): weights, input, '
            'activations, and in train grads + SGD momentum'
        ),
        'notes': notes,
        'models': models,
        'results': results,
        'rows': rows,
        'activations': activations,
    }
    out = args.out
    write_csv(rows, out / OUTPUT_FILES['csv'])
    write_json(data, out / OUTPUT_FILES['json'])
    write_markdown(data, out / OUTPUT_FILES['md'])
    if plot:
        write_plot(data, out / OUTPUT_FILES['png'])
    for note in notes:
        print(note, file=sys.stderr)
    print((out / OUTPUT_FILES['md']).read_text())
    print(f'wrote {", ".join(str(out / f) for k, f in OUTPUT_FILES.items() if k != "png" or plot)}',
          file=sys.stderr)
    return data


def main(argv: Optional[Sequence[str]] = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == '__main__':
    sys.exit(main())
