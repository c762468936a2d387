""" The GPU benchmark in one command, sized for 10 minutes on one H100 with torch and timm installed and no network.

    python -m benchmarks.gpu_suite --out benchmarks/results/gpu_suite_h100
    python -m benchmarks.gpu_suite --smoke --out /tmp/suite    # the same stages on the CPU at tiny sizes

Stages, in priority order; each writes ``NN_<stage>.json`` and ``NN_<stage>.md`` to ``--out`` as soon as it
finishes, and ``suite.json`` (every stage's status: ok, failed, skipped, or running if the process was killed in it)
and ``summary.md`` (all tables so far) are rewritten after every stage, so a timeout keeps what was measured:

1. ``env``: versions, GPU, CUDA/cuDNN, TF32 and cuDNN flags.
2. ``params_macs``: parameters and GMACs per image of the nets and their ResNet peers.
3. ``grads``: ``timm.create_model(name, memory_efficient=True)`` against the plain net with the same weights, one
   training forward + backward in fp32 and under bf16 autocast: max relative error of the output, of each gradient
   and of the BN running statistics, beside the same figures for two runs of the plain net (the noise floor of
   non-deterministic kernels).
4. ``throughput``: bf16 autocast, channels_last, batch 128, 224 px, inference and training images/s of resattnet56/92
   and resnet152/200, interleaved (``benchmarks.run``; its own files under ``throughput/``).
5. ``memory``: peak training memory (``max_memory_allocated`` and ``max_memory_reserved`` after warm-up, see
   ``benchmarks/memory.py``) and step time, plain vs ``memory_efficient``, bf16 and fp32, the peers plain.
6. ``compile``: the same throughput under ``torch.compile`` (inductor), one ``benchmarks.run --compile`` process per
   (pair, mode) while time remains; an item that would not fit is skipped and recorded.

``--time-budget-s`` (default 540) is the global deadline: a stage (or compile item) that would start with less time
left than it needs is skipped, and the skip recorded with the reason. ``--out`` must be new or empty; the folder of
an earlier suite run is replaced only with ``--overwrite``, any other non-empty folder is refused.

Copyright the timm-resattn authors, Apache-2.0.
"""
import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

__all__ = ['Profile', 'FULL', 'SMOKE', 'Suite', 'check_out', 'main', 'max_rel_err']

SUITE_JSON = 'suite.json'
SUMMARY_MD = 'summary.md'


@dataclass(frozen=True)
class Profile:
    """ The sizes of one suite run: ``FULL`` (one CUDA GPU) or ``SMOKE`` (CPU, tiny). """
    device: str
    pairs: Tuple[Tuple[str, str], ...]  # (ours, its ResNet peer)
    img_size: int
    batch_size: int
    grad_batch_size: int
    memory_batch_size: int
    warmup: int
    repeats: int
    iters: int
    memory_warmup: int
    memory_steps: int
    compile_backend: str
    compile_warmup: int
    time_budget_s: float
    threads: Optional[int] = None
    # seconds a stage needs at least; it is skipped when less is left
    min_seconds: Dict[str, float] = field(default_factory=dict)

    @property
    def ours(self) -> List[str]:
        return list(dict.fromkeys(o for o, _ in self.pairs))

    @property
    def peers(self) -> List[str]:
        return list(dict.fromkeys(p for _, p in self.pairs))


FULL = Profile(
    device='cuda', pairs=(('resattnet56', 'resnet152'), ('resattnet92', 'resnet200')), img_size=224,
    batch_size=128, grad_batch_size=8, memory_batch_size=64, warmup=5, repeats=5, iters=10, memory_warmup=2,
    memory_steps=3, compile_backend='inductor', compile_warmup=3, time_budget_s=540.,
    min_seconds={'params_macs': 10, 'grads': 20, 'throughput': 60, 'memory': 40, 'compile': 100},
)
# one pair of small nets, and dynamo without code generation (backend 'eager') for the compile stage
SMOKE = Profile(
    device='cpu', pairs=(('resattnet56_cifar', 'resnet18'),), img_size=32,
    batch_size=2, grad_batch_size=2, memory_batch_size=2, warmup=1, repeats=2, iters=1, memory_warmup=1,
    memory_steps=1, compile_backend='eager', compile_warmup=1, time_budget_s=75., threads=1,
    min_seconds={'params_macs': 1, 'grads': 2, 'throughput': 5, 'memory': 3, 'compile': 30},
)


def max_rel_err(a: Any, b: Any) -> float:
    """ ``max |a - b| / max |b|`` in float64 (0 when both are zero). """
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def check_out(out: Path, overwrite: bool) -> Optional[str]:
    """ Why ``out`` can't take this run's results (``None`` when it can). An earlier suite run's folder (it has
    ``suite.json``) is replaced only with ``overwrite``; any other non-empty folder or a file is refused.
    """
    if out.exists() and not out.is_dir():
        return f'--out {out}: is a file, expected a folder'
    if not out.exists() or not any(out.iterdir()):
        return None
    if not (out / SUITE_JSON).is_file():
        return f'--out {out}: is not empty and holds no {SUITE_JSON}; choose a new or empty folder'
    if not overwrite:
        return f'--out {out}: holds an earlier suite run ({SUITE_JSON}); choose another folder or pass --overwrite'
    return None


def _md_table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> List[str]:
    def cell(v: Any) -> str:
        if v is None:
            return '-'
        if isinstance(v, float):
            return '0' if v == 0 else f'{v:.2e}' if abs(v) < 0.01 else f'{v:,.2f}'
        return str(v)
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    lines += ['| ' + ' | '.join(cell(v) for v in r) + ' |' for r in rows]
    return lines


class Suite:
    """ Runs stages in order against a deadline and writes each one's results as soon as it finishes.

    A stage is ``fn(suite) -> (data, markdown_lines)``; it is skipped (and recorded so) when less than its
    ``min_seconds`` remain, and an exception is recorded as a failure with its traceback; neither stops the suite.
    """

    def __init__(self, out: Path, budget_s: float, meta: Dict[str, Any], clock: Callable[[], float] = time.monotonic):
        self.out = out
        self.clock = clock
        self.t0 = clock()
        self.budget_s = budget_s
        self.meta = meta
        self.stages: List[Dict[str, Any]] = []
        self.sections: List[List[str]] = []
        self.results: Dict[str, Any] = {}

    def remaining(self) -> float:
        return self.budget_s - (self.clock() - self.t0)

    def run_stage(self, name: str, fn: Callable[['Suite'], Tuple[Dict[str, Any], List[str]]],
                  min_seconds: float = 0.) -> Dict[str, Any]:
        idx = len(self.stages) + 1
        rec: Dict[str, Any] = {'stage': name, 'status': 'running', 'started_s': round(self.clock() - self.t0, 1)}
        self.stages.append(rec)
        left = self.remaining()
        if left < min_seconds:
            rec.update(status='skipped', reason=f'time budget: {left:.0f} s left, the stage needs about '
                                                f'{min_seconds:.0f} s')
            self._write_stage(idx, name, rec, {}, [])
            return rec
        self._write_index()  # 'running' on disk: a kill in this stage leaves it so
        t = self.clock()
        try:
            data, md = fn(self)
            rec['status'] = 'ok'
        except Exception as e:  # a failed stage is recorded, the suite goes on
            data = {'error': f'{type(e).__name__}: {e}', 'traceback': traceback.format_exc()[-4000:]}
            md = [f'failed: `{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ""}`']
            rec.update(status='failed', reason=data['error'][:500])
        rec['seconds'] = round(self.clock() - t, 1)
        self.results[name] = data
        self._write_stage(idx, name, rec, data, md)
        return rec

    def _write_stage(self, idx: int, name: str, rec: Dict[str, Any], data: Dict[str, Any], md: List[str]) -> None:
        stem = f'{idx:02d}_{name}'
        rec['files'] = [f'{stem}.json', f'{stem}.md']
        (self.out / f'{stem}.json').write_text(json.dumps({**rec, 'data': data}, indent=2, default=str) + '\n')
        head = [f'## {idx}. {name} ({rec["status"]}' + (f', {rec["seconds"]} s' if 'seconds' in rec else '') + ')', '']
        if rec.get('reason'):
            head += [f'{rec["status"]}: {rec["reason"]}', '']
        section = head + md + ['']
        (self.out / f'{stem}.md').write_text('\n'.join(section) + '\n')
        self.sections.append(section)
        self._write_index()

    def _write_index(self) -> None:
        index = {**self.meta, 'budget_s': self.budget_s, 'elapsed_s': round(self.clock() - self.t0, 1),
                 'stages': self.stages}
        (self.out / SUITE_JSON).write_text(json.dumps(index, indent=2, default=str) + '\n')
        lines = [f"# GPU suite: {self.meta.get('device_name', self.meta.get('device'))}", '',
                 f"`{self.meta['command']}`, {self.meta['timestamp']}, budget {self.budget_s:.0f} s. Stages: "
                 + ', '.join(f"{s['stage']} {s['status']}" for s in self.stages) + '.', '']
        for section in self.sections:
            lines += section
        (self.out / SUMMARY_MD).write_text('\n'.join(lines) + '\n')


# ---------------------------------------------------------------------------------------------------------------
# stages

def stage_env(prof: Profile) -> Callable[[Suite], Tuple[Dict[str, Any], List[str]]]:
    def fn(suite: Suite):
        from .common import environment
        env = environment(prof.device)
        keys = ['device_name', 'device_capability', 'device_memory_gib', 'torch', 'cuda', 'cudnn', 'timm',
                'timm_resattn', 'git_commit', 'python', 'cpu_model', 'threads', 'tf32_matmul', 'tf32_cudnn_conv',
                'float32_matmul_precision', 'cudnn_benchmark', 'cudnn_deterministic']
        md = _md_table(['setting', 'value'], [(k, env[k]) for k in keys if k in env])
        return env, md
    return fn


def stage_params_macs(prof: Profile):
    def fn(suite: Suite):
        from .common import count_macs, count_params, create_model
        rows = {}
        for name in prof.ours + prof.peers:
            m = create_model(name)
            rows[name] = {'params_m': count_params(m) / 1e6, 'gmacs': count_macs(m, prof.img_size) / 1e9}
        md = [f'Per image at {prof.img_size}x{prof.img_size} (MACs: `FlopCounterMode` total / 2).', '']
        md += _md_table(['model', 'params (M)', 'GMACs', 'peer', 'MAC ratio peer/ours'], [
            (f'`{n}`', r['params_m'], r['gmacs'], *((f'`{p}`', rows[p]['gmacs'] / r['gmacs'])
                                                   if (p := dict(prof.pairs).get(n)) else (None, None)))
            for n, r in rows.items()])
        return {'img_size': prof.img_size, 'models': rows}, md
    return fn


def _train_grads(model, x, target, precision: str) -> Tuple[Any, Dict[str, Any], Dict[str, Any]]:
    import torch.nn.functional as F
    from .common import BenchConfig, autocast_ctx
    model.zero_grad(set_to_none=True)
    with autocast_ctx(BenchConfig(device=str(x.device), precision=precision)):
        out = model(x)
    F.cross_entropy(out.float(), target).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    stats = {n: b.detach().clone() for n, b in model.named_buffers() if b.is_floating_point()}
    return out.detach().float(), grads, stats


def _compare(ref: Tuple, other: Tuple) -> Dict[str, Any]:
    out_a, g_a, s_a = ref
    out_b, g_b, s_b = other
    grad_errs = {n: max_rel_err(g_b[n], g_a[n]) for n in g_a if n in g_b}  # missing ones: grads_missing
    worst = max(grad_errs, key=grad_errs.get) if grad_errs else None
    return {
        'output_rel_err': max_rel_err(out_b, out_a),
        'grad_max_rel_err': grad_errs[worst] if worst else None,
        'grad_worst_param': worst if worst and grad_errs[worst] > 0 else None,
        'grads_missing': sorted(set(g_a) ^ set(g_b)),
        'bn_stats_max_rel_err': max((max_rel_err(s_b[n], s_a[n]) for n in s_a), default=None),
    }


def stage_grads(prof: Profile):
    def fn(suite: Suite):
        import torch
        from .common import create_model
        dev = torch.device(prof.device)
        results = []
        for name in prof.ours:
            for precision in ('fp32', 'bf16'):
                torch.manual_seed(0)
                plain = create_model(name)
                state = {k: v.clone() for k, v in plain.state_dict().items()}
                lean = create_model(name, memory_efficient=True)
                lean.load_state_dict(state)
                x = torch.randn(prof.grad_batch_size, 3, prof.img_size, prof.img_size, device=dev)
                target = torch.randint(0, 1000, (prof.grad_batch_size,), device=dev)
                runs = {}
                for key, model in (('plain', plain), ('plain_again', None), ('lean', lean)):
                    if model is None:  # a second plain run from the same weights and BN statistics
                        model = plain
                        model.load_state_dict(state)
                    model.to(dev).train()
                    runs[key] = _train_grads(model, x, target, precision)
                    model.cpu()
                noise = _compare(runs['plain'], runs['plain_again'])
                lean_err = _compare(runs['plain'], runs['lean'])
                results.append({'model': name, 'precision': precision, 'batch_size': prof.grad_batch_size,
                                'lean_vs_plain': lean_err, 'plain_vs_plain': noise})
                del plain, lean, runs
                if dev.type == 'cuda':
                    torch.cuda.empty_cache()
        md = [f'One training forward + backward (cross-entropy), batch {prof.grad_batch_size}, {prof.img_size} px, '
              f'{prof.device}; max relative error `max|a-b| / max|b|` against the plain net (worst gradient over '
              'all parameters); "plain again" = a second run of the plain net, the noise floor.', '']
        md += _md_table(
            ['model', 'precision', 'output', 'worst grad', 'worst param', 'BN stats', 'plain again: output',
             'plain again: worst grad'],
            [(f"`{r['model']}`", r['precision'], r['lean_vs_plain']['output_rel_err'],
              r['lean_vs_plain']['grad_max_rel_err'], r['lean_vs_plain']['grad_worst_param'],
              r['lean_vs_plain']['bn_stats_max_rel_err'], r['plain_vs_plain']['output_rel_err'],
              r['plain_vs_plain']['grad_max_rel_err']) for r in results])
        return {'results': results}, md
    return fn


def _bench_args(prof: Profile, out: Path, extra: Sequence[str]) -> List[str]:
    ours = ','.join(o for o, _ in prof.pairs)
    peers = ','.join(dict.fromkeys(p for _, p in prof.pairs))
    args = ['--device', prof.device, '--models', ours, '--peers', peers,
            '--peer-map', ','.join(f'{o}={p}' for o, p in prof.pairs),
            '--precision', 'bf16', '--channels-last', '--batch-size', str(prof.batch_size),
            '--img-size', str(prof.img_size), '--no-memory', '--no-activations', '--no-plot', '--no-progress',
            '--out', str(out)]
    if prof.threads:
        args += ['--threads', str(prof.threads)]
    return args + list(extra)


def _speedup_rows(data: Dict[str, Any]) -> List[Tuple]:
    rows = []
    for r in data['rows']:
        rows.append((f"`{r['model']}`", r['mode'], r['img_s_median'], r['ms_per_step_median'],
                     f"`{r['peer']}`" if r.get('peer') else None, r.get('speedup_vs_peer'),
                     r.get('mac_ratio_peer_over_ours')))
    return rows


_SPEEDUP_HEAD = ['model', 'mode', 'img/s', 'ms/step', 'peer', 'speed-up vs peer', 'MAC ratio']


def stage_throughput(prof: Profile):
    def fn(suite: Suite):
        from . import run as bench
        out = suite.out / 'throughput'
        args = bench.parse_args(_bench_args(prof, out, [
            '--modes', 'infer,train', '--warmup', str(prof.warmup), '--repeats', str(prof.repeats),
            '--iters', str(prof.iters)]))
        data = bench.run(args)
        md = [f"bf16 autocast, channels_last, eager, batch {prof.batch_size}, {prof.img_size} px, interleaved; median "
              f"of {prof.repeats} repeats of {prof.iters} steps after {prof.warmup} warm-up steps "
              f"(`benchmarks.run`, files in `throughput/`).", '']
        md += _md_table(_SPEEDUP_HEAD, _speedup_rows(data))
        return {'folder': 'throughput', 'rows': data['rows']}, md
    return fn


def stage_memory(prof: Profile):
    def fn(suite: Suite):
        import torch
        from .common import BenchConfig
        from .memory import measure_peak_memory
        items = [(n, lean, p) for p in ('bf16', 'fp32') for n in prof.ours for lean in (False, True)]
        items += [(n, False, p) for p in ('bf16', 'fp32') for n in prof.peers]
        results = []
        for name, lean, precision in items:
            cfg = BenchConfig(device=prof.device, batch_size=prof.memory_batch_size, img_size=prof.img_size,
                              precision=precision, channels_last=True)
            rec = {'model': name, 'variant': 'memory_efficient' if lean else 'plain', 'precision': precision}
            try:
                m = measure_peak_memory(name, ['train'], cfg, steps=prof.memory_steps, warmup=prof.memory_warmup,
                                        model_kwargs={'memory_efficient': True} if lean else None)['train']
                rec.update(m)
            except Exception as e:  # out of memory, above all: recorded, the other items go on
                rec['error'] = f'{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ""}'
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            results.append(rec)
        plain = {(r['model'], r['precision']): r for r in results if r['variant'] == 'plain'}
        rows = []
        for r in results:
            ref = plain.get((r['model'], r['precision']), {})
            ratio = (r['peak_mib'] / ref['peak_mib']) if r.get('peak_mib') and ref.get('peak_mib') else None
            time_ratio = (r['step_ms'] / ref['step_ms']) if r.get('step_ms') and ref.get('step_ms') else None
            rows.append((f"`{r['model']}`", r['variant'], r['precision'], r.get('peak_mib'), r.get('reserved_mib'),
                         r.get('step_ms'), ratio if r['variant'] != 'plain' else None,
                         time_ratio if r['variant'] != 'plain' else None, r.get('error')))
        md = [f"Training step (SGD), batch {prof.memory_batch_size}, {prof.img_size} px, channels_last, "
              f"{prof.device}; peak over {prof.memory_steps} step(s) after {prof.memory_warmup} warm-up step(s), "
              'minus what was allocated before the model was built (`benchmarks/memory.py`); step time: median of '
              'those steps.'
              + (' On the CPU (`--smoke`) the figure is the growth of the resident set of a process that already ran '
                 'the earlier items, whose freed memory it reuses: a check that the stage runs, not a measurement.'
                 if prof.device == 'cpu' else ''), '']
        md += _md_table(['model', 'variant', 'precision', 'peak MiB', 'peak reserved MiB', 'step ms',
                         'peak vs plain', 'time vs plain', 'error'], rows)
        return {'batch_size': prof.memory_batch_size, 'results': results}, md
    return fn


def _run_child(cmd: List[str], timeout: float, cwd: Path) -> Tuple[Optional[int], str]:
    """ Run ``cmd`` in its own process group; kill the group at ``timeout`` (returns ``None`` then). """
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out


def stage_compile(prof: Profile):
    def fn(suite: Suite):
        from .common import REPO_ROOT
        items = [(pair, mode) for mode in ('infer', 'train') for pair in prof.pairs]
        need = prof.min_seconds.get('compile', 0)
        records, rows = [], []
        for (ours, peer), mode in items:
            folder = f'compile_{ours}_{mode}'
            rec: Dict[str, Any] = {'ours': ours, 'peer': peer, 'mode': mode, 'folder': folder}
            left = suite.remaining()
            if left < need:
                rec.update(status='skipped', reason=f'time budget: {left:.0f} s left, an item needs about {need:.0f} s')
            else:
                single = Profile(**{**asdict(prof), 'pairs': ((ours, peer),)})
                cmd = [sys.executable, '-m', 'benchmarks.run'] + _bench_args(single, suite.out / folder, [
                    '--compile', '--compile-backend', prof.compile_backend, '--modes', mode,
                    '--warmup', str(prof.compile_warmup), '--repeats', str(prof.repeats), '--iters', str(prof.iters)])
                rec['command'] = ' '.join(cmd[1:])
                t = time.monotonic()
                rc, log = _run_child(cmd, timeout=max(left - 5, 1), cwd=REPO_ROOT)
                rec['seconds'] = round(time.monotonic() - t, 1)
                if rc is None:
                    rec.update(status='timed out', reason=f'killed at the deadline after {rec["seconds"]} s')
                elif rc != 0:
                    rec.update(status='failed', reason=log.strip()[-1500:])
                else:
                    data = json.loads((suite.out / folder / 'results.json').read_text())
                    rec.update(status='ok', label=data['config']['compile_label'], rows=data['rows'])
                    rows += _speedup_rows(data)
            records.append(rec)
        md = [f"`torch.compile` ({prof.compile_backend}, default mode), bf16 autocast, channels_last, batch "
              f"{prof.batch_size}, {prof.img_size} px; one `benchmarks.run --compile` process per pair and mode (the "
              'models one at a time, `torch.compiler.reset()` before each, recompiles refused while timing).', '']
        md += _md_table(_SPEEDUP_HEAD, rows) if rows else ['No item finished.']
        md += ['', 'Items: ' + '; '.join(f"{r['ours']} vs {r['peer']} {r['mode']}: {r['status']}"
                                         + (f" ({r['reason'][:120]})" if r.get('reason') else '') for r in records)]
        return {'items': records}, md
    return fn


STAGES = (
    ('env', stage_env), ('params_macs', stage_params_macs), ('grads', stage_grads),
    ('throughput', stage_throughput), ('memory', stage_memory), ('compile', stage_compile),
)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog='python -m benchmarks.gpu_suite', description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--out', type=Path, required=True, help='results folder (new or empty)')
    p.add_argument('--smoke', action='store_true', help='the same stages on the CPU at tiny sizes (a test)')
    p.add_argument('--time-budget-s', type=float, default=None,
                   help=f'global deadline (default {FULL.time_budget_s:g}, with --smoke {SMOKE.time_budget_s:g})')
    p.add_argument('--overwrite', action='store_true', help='replace an earlier suite run in --out')
    p.add_argument('--stages', default=','.join(n for n, _ in STAGES), help='stages to run, comma-separated')
    args = p.parse_args(argv)
    args.stages = [s.strip() for s in args.stages.split(',') if s.strip()]
    unknown = sorted(set(args.stages) - {n for n, _ in STAGES})
    if unknown:
        p.error(f'--stages: unknown stage(s) {unknown}; expected {",".join(n for n, _ in STAGES)}')
    if args.time_budget_s is not None and args.time_budget_s <= 0:
        p.error('--time-budget-s must be > 0')
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    problem = check_out(args.out, args.overwrite)
    if problem:
        print(f'error: {problem}', file=sys.stderr)
        return 2
    import torch
    prof = SMOKE if args.smoke else FULL
    if prof.device == 'cuda' and not torch.cuda.is_available():
        print('error: no CUDA device; `--smoke` runs the same stages on the CPU', file=sys.stderr)
        return 2
    if args.out.exists():
        shutil.rmtree(args.out)  # check_out allowed it: empty, or an earlier suite run with --overwrite
    args.out.mkdir(parents=True)
    if prof.threads:
        torch.set_num_threads(prof.threads)
    if prof.device == 'cuda':
        torch.backends.cudnn.benchmark = True
    budget = args.time_budget_s or prof.time_budget_s
    meta = {
        'command': 'python -m benchmarks.gpu_suite ' + ' '.join(argv if argv is not None else sys.argv[1:]),
        'timestamp': datetime.now(timezone.utc).isoformat(timespec='seconds'), 'device': prof.device,
        'device_name': torch.cuda.get_device_name() if prof.device == 'cuda' else 'CPU (smoke)',
        'profile': asdict(prof),
    }
    suite = Suite(args.out, budget, meta)
    for name, make in STAGES:
        if name not in args.stages:
            continue
        rec = suite.run_stage(name, make(prof), prof.min_seconds.get(name, 0))
        print(f"[gpu_suite] {name}: {rec['status']}" + (f" ({rec.get('seconds')} s)" if 'seconds' in rec else '')
              + (f" - {rec['reason'][:200]}" if rec.get('reason') else ''), file=sys.stderr, flush=True)
    print(f'[gpu_suite] wrote {args.out / SUMMARY_MD} and {args.out / SUITE_JSON}', file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
