""" Smoke test of the benchmark program (``python -m benchmarks.run``): runs end to end on tiny settings and checks
the files it writes. No timing assertions.
"""
import csv
import json
import subprocess
import sys

import pytest
from helpers import REPO_ROOT  # conftest puts the repo root (for `benchmarks`) on sys.path


@pytest.mark.subprocess
@pytest.mark.timeout(120)
def test_benchmark_end_to_end(tmp_path):
    pytest.importorskip('matplotlib')  # the plot; in the `test` and `bench` extras
    out = tmp_path / 'bench'
    cmd = [
        sys.executable, '-m', 'benchmarks.run',
        '--models', 'resattnet56', '--peers', 'resnet18', '--device', 'cpu', '--threads', '1',
        '--img-size', '64', '--batch-size', '1', '--repeats', '1', '--iters', '1', '--warmup', '0',
        '--memory-steps', '1', '--fuse-bn', '--out', str(out),
    ]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]

    from benchmarks.report import CSV_COLUMNS, OUTPUT_FILES
    for f in OUTPUT_FILES.values():
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f

    with open(out / OUTPUT_FILES['csv']) as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == CSV_COLUMNS
        rows = list(reader)
    assert {(r['model'], r['mode']) for r in rows} == {
        ('resattnet56', 'infer'), ('resattnet56', 'train'), ('resnet18', 'infer'), ('resnet18', 'train')}
    for r in rows:
        assert float(r['img_s_median']) > 0
        assert float(r['peak_mem_mib']) > 0
        assert r['fuse_bn'] == 'True'
    ours = [r for r in rows if r['model'] == 'resattnet56']
    assert all(r['peer'] == 'resnet18' and float(r['speedup_vs_peer']) > 0 for r in ours)
    assert float(ours[0]['gmacs']) == pytest.approx(0.514, abs=0.01)  # MACs counted at the run's 64 px
    assert float(ours[0]['mac_ratio_peer_over_ours']) == pytest.approx(0.149 / 0.514, rel=0.05)

    data = json.loads((out / OUTPUT_FILES['json']).read_text())
    assert data['env']['torch'] and data['env']['timm'] and data['env']['threads'] == 1
    assert data['env']['cpu_model']
    assert data['config']['img_size'] == 64
    assert set(data['models']) == {'resattnet56', 'resnet18'}
    assert data['models']['resattnet56']['params'] == 31_810_728
    assert len(data['results']) == 4
    for res in data['results']:
        assert len(res['repeat_seconds']) == 1 and res['img_s_median'] > 0

    md = (out / OUTPUT_FILES['md']).read_text()
    assert '| `resattnet56` | `resnet18` |' in md
    assert 'MAC ratio' in md and 'infer speed-up' in md and 'train speed-up' in md

    # saved-activation bytes (deterministic): ours in four variants, the peer without/with grad checkpointing
    acts = {(r['model'], r['variant']): r for r in data['activations']}
    assert set(acts) == {('resattnet56', v) for v in ('plain', 'grad_ckpt', 'lean', 'lean+grad_ckpt')} | {
        ('resnet18', 'plain'), ('resnet18', 'grad_ckpt')}
    assert acts[('resattnet56', 'lean')]['saved_mib_per_img'] < acts[('resattnet56', 'plain')]['saved_mib_per_img']
    assert acts[('resattnet56', 'lean')]['max_batch_in_budget'] > acts[('resattnet56', 'plain')]['max_batch_in_budget']
    assert all(float(r['saved_act_mib_per_img']) > 0 for r in rows)
    assert '## Saved activations' in md and 'saved act. MiB/img' in md

    assert (out / OUTPUT_FILES['png']).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_benchmark_args():
    from benchmarks.run import PEER_OF, parse_args
    args = parse_args(['--peers', 'resnet18', '--modes', 'infer', '--no-plot'])
    assert 'resattnet56' in args.models and 'resattnet92' in args.models  # default: every registered net of ours
    assert args.modes == ['infer'] and args.peers == ['resnet18']
    assert PEER_OF['resattnet56'] == 'resnet152' and PEER_OF['resattnet92'] == 'resnet200'
    with pytest.raises(SystemExit):
        parse_args(['--models', 'no_such_model_xyz'])
    with pytest.raises(SystemExit):
        parse_args(['--modes', 'infer,fly'])


def test_benchmark_runtimes_args_and_table(tmp_path):
    """ --runtimes: parsing, and the Markdown table's per-runtime columns (from hand-made data, no timing). """
    from benchmarks.report import write_markdown
    from benchmarks.run import parse_args
    args = parse_args(['--peers', 'resnet18', '--runtimes', 'eager,export,onnxruntime', '--device', 'cpu'])
    assert args.runtimes == ['eager', 'export', 'onnxruntime']
    for bad in (['--runtimes', 'tensorrt'], ['--runtimes', 'export', '--compile'],
                ['--runtimes', 'onnxruntime', '--modes', 'train']):
        with pytest.raises(SystemExit):
            parse_args(bad)

    runs = [('infer', 'eager'), ('infer', 'onnxruntime')]
    rows = []
    for (mode, rt), ours, peer in zip(runs, (10.0, 30.0), (5.0, 20.0)):
        rows.append({'model': 'resattnet56', 'mode': mode, 'runtime': rt, 'img_s_median': ours,
                     'ms_per_step_median': 1.0, 'speedup_vs_peer': ours / peer})
        rows.append({'model': 'resnet152', 'mode': mode, 'runtime': rt, 'img_s_median': peer,
                     'ms_per_step_median': 1.0})
    data = {
        'config': {'modes': ['infer'], 'runs': [list(r) for r in runs], 'precision': 'fp32', 'channels_last': False,
                   'compile': False, 'fuse_bn': False, 'batch_size': 8, 'img_size': 224, 'repeats': 1, 'iters': 1,
                   'warmup': 0, 'device': 'cpu'},
        'env': {'device_name': 'cpu', 'threads': 2, 'torch': 'x', 'timm': 'x', 'timm_resattn': 'x'},
        'memory_method': 'not measured',
        'models': {'resattnet56': {'kind': 'ours', 'params': 1, 'macs': 1, 'peer': 'resnet152', 'mac_ratio': 1.84,
                                   'setup_seconds': {'onnxruntime': 12.0}},
                   'resnet152': {'kind': 'peer', 'params': 1, 'macs': 1, 'setup_seconds': {'onnxruntime': 7.0}}},
        'rows': rows,
    }
    write_markdown(data, tmp_path / 'r.md')
    md = (tmp_path / 'r.md').read_text()
    assert '| model | peer | infer speed-up | infer [onnxruntime] speed-up | MAC ratio |' in md
    assert '| `resattnet56` | `resnet152` | 2.00x | 1.50x | 1.84x |' in md
    assert 'onnxruntime set-up s' in md


# ---------------------------------------------------------------------------------------------------------------
# the CUDA logic, tested on the CPU: folder names, labels, TF32, what is reset when

def _ns(**kw):
    import argparse
    base = dict(device='cpu', precision='fp32', tf32='default', channels_last=False, compile=False,
                compile_backend='inductor', fuse_bn=False, runtimes=['eager'], threads=2, batch_size=8, img_size=224)
    return argparse.Namespace(**{**base, **kw})


def test_run_tag_names_every_setting():
    from benchmarks.run import run_tag
    assert run_tag(_ns()) == 'cpu_fp32_t2_b8_224'
    assert run_tag(_ns(device='cuda', precision='bf16', channels_last=True, batch_size=128, threads=None)) == \
        'cuda_bf16_cl_b128_224'
    assert run_tag(_ns(device='cuda', threads=None)) == 'cuda_fp32_tf32-default_b8_224'
    variants = [
        {}, {'precision': 'bf16'}, {'channels_last': True}, {'compile': True},
        {'compile': True, 'compile_backend': 'aot_eager'}, {'fuse_bn': True}, {'runtimes': ['eager', 'export']},
        {'threads': 1}, {'batch_size': 16}, {'img_size': 160},
        {'device': 'cuda'}, {'device': 'cuda', 'tf32': 'on'}, {'device': 'cuda', 'tf32': 'off'},
    ]
    tags = [run_tag(_ns(**v)) for v in variants]
    assert len(set(tags)) == len(tags), tags  # each setting that changes the numbers changes the folder
    # TF32 only matters to CUDA fp32, threads only to the CPU: they don't split folders elsewhere
    assert run_tag(_ns(device='cuda', precision='bf16', tf32='on')) == run_tag(_ns(device='cuda', precision='bf16'))
    assert run_tag(_ns(device='cuda', threads=1)) == run_tag(_ns(device='cuda', threads=4))


def test_run_refuses_to_overwrite_results(tmp_path):
    from benchmarks.run import parse_args
    base = ['--models', 'resattnet56_cifar', '--peers', 'resnet18', '--out', str(tmp_path)]
    assert parse_args(base).out == tmp_path  # an empty folder is fine
    (tmp_path / 'results.json').write_text('{}')
    with pytest.raises(SystemExit):
        parse_args(base)
    assert parse_args(base + ['--overwrite']).out == tmp_path


class FakeProbe:
    """ A memory API that logs every call; allocations are simulated by the fake steps. """
    has_reserved = True

    def __init__(self, log):
        self.log, self.cur, self.max, self.reserved, self.max_reserved = log, 100, 100, 200, 200

    def alloc(self, n):  # a step's transient allocation
        self.max = max(self.max, self.cur + n)
        self.max_reserved = max(self.max_reserved, self.cur + n + 50)

    def sync(self):
        self.log.append('sync')

    def release(self):
        self.log.append('release')

    def current(self):
        self.log.append('current')
        return self.cur

    def current_reserved(self):
        return self.reserved

    def reset_peak(self):
        self.log.append('reset_peak')
        self.max, self.max_reserved = self.cur, self.reserved

    def peak(self):
        self.log.append('peak')
        return self.max

    def peak_reserved(self):
        return self.max_reserved


def test_peak_memory_is_reset_after_warmup():
    """ The peak excludes what only the warm-up steps allocated (cuDNN's autotuner trials): reset after warm-up. """
    from benchmarks.common import Step
    from benchmarks.memory import measure_steps
    log = []
    probe = FakeProbe(log)
    mib = 1 << 20
    calls = []

    def step_fn():
        calls.append(len(calls))
        log.append('step')
        probe.alloc(1000 * mib if len(calls) == 1 else 10 * mib)  # the first step autotunes

    def build():
        log.append('build')
        probe.cur += 5 * mib  # the model and its optimizer state
        return Step(nn_stub(), False, step_fn)

    ticks = iter(range(100))
    out = measure_steps(build, probe, warmup=2, steps=3, clock=lambda: float(next(ticks)))
    assert log == ['release', 'current', 'build', 'step', 'step', 'sync', 'release', 'reset_peak',
                   'step', 'sync', 'step', 'sync', 'step', 'sync', 'peak', 'release']
    assert out['peak_mib'] == pytest.approx(15)  # model 5 + steady step 10, not the 1000 of the autotuning step
    assert out['reserved_mib'] == pytest.approx(15 - 50 / mib)  # peak reserved (100 + 15 MiB + 50) - 200
    assert out['step_ms'] == pytest.approx(1000)
    with pytest.raises(ValueError):
        measure_steps(build, probe, warmup=0, steps=0)


def nn_stub():
    import torch.nn as nn
    return nn.Identity()


def test_memory_probe_per_device():
    from benchmarks.memory import CpuProbe, CudaProbe, probe_for
    assert isinstance(probe_for('cpu'), CpuProbe) and not CpuProbe.has_reserved
    p = probe_for('cuda:1')  # built without touching CUDA
    assert isinstance(p, CudaProbe) and str(p.device) == 'cuda:1' and CudaProbe.has_reserved
    with pytest.raises(ValueError):
        probe_for('meta')


def test_time_blocks_reset_before_each_compiled_model():
    from benchmarks.run import plan_blocks
    runs = [('infer', 'eager'), ('train', 'eager')]
    assert plan_blocks(['a', 'b', 'c'], compile=False) == [['a', 'b', 'c']]
    assert plan_blocks(['a', 'b', 'c'], compile=True) == [['a'], ['b'], ['c']]
    for compile in (False, True):
        log = _time_two_models(compile, runs)
        steps = [e for e in log if isinstance(e, tuple) and e[0] == 'step']
        assert len(steps) == 2 * 2 * 3  # models x modes x (warm-up + repeats)
        if compile:  # reset, then the model is built, warmed up and timed, before the next is built
            assert log.index(('build', 'a')) > log.index('reset')
            second_reset = [i for i, e in enumerate(log) if e == 'reset'][1]
            assert all(e[1] == 'a' for e in log[:second_reset] if isinstance(e, tuple) and e[0] == 'step')
            assert log[second_reset + 1] == ('build', 'b') and log.count('timed') == 2
        else:  # both resident, round-robin
            assert 'reset' not in log and log[:2] == [('build', 'a'), ('build', 'b')]
            timed = log[log.index('timed') + 1:log.index('untimed')]
            assert [e[1] for e in timed[:4]] == ['a', 'a', 'b', 'b']


def _time_two_models(compile, runs):
    from benchmarks.common import Step
    from benchmarks.run import plan_blocks, time_blocks
    log = []

    def build(name):
        log.append(('build', name))
        return {(name, m, rt): Step(nn_stub(), m == 'train', lambda n=name, m=m: log.append(('step', n, m)))
                for m, rt in runs}

    def timer(step, n):
        for _ in range(n):
            step()
        return 1.0, 0.5

    class Ctx:
        def __enter__(self):
            log.append('timed')

        def __exit__(self, *a):
            log.append('untimed')

    times, cpu = time_blocks(plan_blocks(['a', 'b'], compile), runs, build, timer, warmup=1, repeats=2, iters=1,
                             reset=(lambda: log.append('reset')) if compile else None, timed_ctx=Ctx)
    assert set(times) == {(n, m, 'eager') for n in 'ab' for m in ('infer', 'train')}
    assert all(v == [1.0, 1.0] for v in times.values()) and all(v == [0.5, 0.5] for v in cpu.values())
    return log


@pytest.mark.timeout(200)
def test_compile_runs_every_model_compiled():
    """ Nine nets of one class share one ``forward`` code object, beyond dynamo's recompile limit (8): with a reset
    per model each is compiled (the backend sees a graph per model); without it the ninth would run eagerly under
    the ``torch.compile`` label, which ``no_eager_fallback`` turns into an error.
    """
    import torch
    import torch.nn as nn
    from benchmarks.common import Step, no_eager_fallback
    from benchmarks.run import plan_blocks, time_blocks

    class Net(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Conv2d(3, c, 1)

        def forward(self, x):
            return self.conv(x).mean()

    graphs = []

    def backend(gm, example_inputs):  # counts the graphs dynamo hands over, runs them as they are
        graphs.append(gm)
        return gm.forward

    x = torch.randn(1, 3, 4, 4)
    names = [f'net{i}' for i in range(9)]

    def build(name):
        fwd = torch.compile(Net(3 + int(name[3:])), backend=backend)
        return {(name, 'infer', 'eager'): Step(nn_stub(), False, lambda: fwd(x))}

    def timer(step, n):
        step()
        return 1.0, 1.0

    stance = lambda: torch.compiler.set_stance('fail_on_recompile')  # noqa: E731
    try:
        with no_eager_fallback():
            time_blocks(plan_blocks(names, compile=True), [('infer', 'eager')], build, timer, warmup=1, repeats=2,
                        iters=1, reset=torch.compiler.reset, timed_ctx=stance)
            assert len(graphs) == 9
            graphs.clear()
            # one block, no reset: the limit is an error (at dynamo's default limit; importing timm.optim raises it)
            with torch._dynamo.config.patch(recompile_limit=8), pytest.raises(Exception, match='recompile'):
                time_blocks(plan_blocks(names, compile=False), [('infer', 'eager')], build, timer, warmup=1,
                            repeats=1, iters=1, timed_ctx=stance)
    finally:
        torch.compiler.reset()


def test_tf32_and_labels():
    import torch
    from benchmarks.common import BenchConfig, backend_flags, compile_label, set_tf32
    from benchmarks.report import run_settings
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        set_tf32('on')
        assert backend_flags()['tf32_matmul'] and backend_flags()['tf32_cudnn_conv']
        set_tf32('off')
        assert not backend_flags()['tf32_matmul'] and not backend_flags()['tf32_cudnn_conv']
        set_tf32('default')  # leaves them as they are
        assert not backend_flags()['tf32_cudnn_conv']
        with pytest.raises(ValueError):
            set_tf32('maybe')
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
    assert compile_label(BenchConfig()) == 'eager'
    assert compile_label(BenchConfig(compile=True, compile_backend='aot_eager')) == \
        'torch.compile (aot_eager, default mode)'
    cfg = {'device': 'cuda', 'precision': 'fp32', 'channels_last': True, 'compile': True, 'fuse_bn': False,
           'compile_label': 'torch.compile (inductor, default mode)'}
    env = {'tf32_cudnn_conv': True, 'tf32_matmul': False}
    assert run_settings(cfg, env) == ['fp32', 'TF32 convs on, matmuls off', 'channels_last',
                                      'torch.compile (inductor, default mode)', 'one model at a time']
    assert run_settings({**cfg, 'precision': 'bf16', 'compile': False}, env) == ['bf16', 'channels_last', 'eager']
    assert run_settings({**cfg, 'device': 'cpu'}, env)[1] == 'channels_last'  # TF32 is a CUDA setting


def test_plot_skipped_without_matplotlib(tmp_path, monkeypatch, capsys):
    """ No matplotlib: the run completes and says the plot was skipped (no --no-plot needed). """
    from benchmarks.report import OUTPUT_FILES
    from benchmarks.run import main
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # `import matplotlib` raises ImportError
    out = tmp_path / 'b'
    rc = main(['--models', 'resattnet56_cifar', '--peers', 'resnet18', '--device', 'cpu', '--threads', '1',
               '--img-size', '32', '--batch-size', '1', '--repeats', '1', '--iters', '1', '--warmup', '0',
               '--modes', 'infer', '--no-memory', '--no-activations', '--no-progress', '--out', str(out)])
    assert rc == 0
    assert (out / OUTPUT_FILES['md']).is_file() and not (out / OUTPUT_FILES['png']).exists()
    data = json.loads((out / OUTPUT_FILES['json']).read_text())
    assert any('matplotlib' in n for n in data['notes'])
    assert 'matplotlib' in (out / OUTPUT_FILES['md']).read_text()
    assert data['env']['tf32_cudnn_conv'] in (True, False) and data['config']['compile_label'] == 'eager'


def test_markdown_memory_columns_in_the_run_precision(tmp_path):
    from benchmarks.report import write_markdown
    rows = [{'model': 'resattnet56', 'mode': 'train', 'runtime': 'eager', 'img_s_median': 10.0,
             'ms_per_step_median': 1.0, 'peak_mem_mib': 1000.0, 'peak_reserved_mib': 1200.0}]
    data = {
        'config': {'modes': ['train'], 'precision': 'bf16', 'channels_last': True, 'compile': False,
                   'fuse_bn': False, 'batch_size': 128, 'img_size': 224, 'repeats': 1, 'iters': 1, 'warmup': 1,
                   'device': 'cuda'},
        'env': {'device_name': 'GPU', 'threads': 1, 'torch': 'x', 'timm': 'x', 'timm_resattn': 'x'},
        'memory_method': 'm', 'notes': ['a note'],
        'models': {'resattnet56': {'kind': 'ours', 'params': 1, 'macs': 1}},
        'rows': rows,
        'activations': [{'model': 'resattnet56', 'kind': 'ours', 'variant': 'plain', 'saved_mib_per_img': 40.0,
                         'img_size': 224, 'budget_gib': 16., 'max_batch_in_budget': 400, 'precision': 'bf16'}],
    }
    write_markdown(data, tmp_path / 'r.md')
    md = (tmp_path / 'r.md').read_text()
    assert 'GPU (cuda), bf16, channels_last, eager, batch 128' in md
    assert '| train peak MiB | train peak reserved MiB | saved act. MiB/img (bf16) |' in md
    assert '| 1000 | 1200 | 40.0 |' in md and 'Note: a note.' in md


# ---------------------------------------------------------------------------------------------------------------
# the GPU suite

def test_gpu_suite_out_checks(tmp_path):
    from benchmarks.gpu_suite import check_out
    assert check_out(tmp_path / 'new', False) is None
    assert check_out(tmp_path, False) is None  # empty
    (tmp_path / 'f.txt').write_text('x')
    assert 'not empty' in check_out(tmp_path, True)  # not a suite folder: never replaced
    assert 'is a file' in check_out(tmp_path / 'f.txt', True)
    suite = tmp_path / 'suite'
    suite.mkdir()
    (suite / 'suite.json').write_text('{}')
    assert '--overwrite' in check_out(suite, False)
    assert check_out(suite, True) is None


def test_gpu_suite_records_failures_and_skips_stage_by_stage(tmp_path):
    from benchmarks.gpu_suite import SUITE_JSON, SUMMARY_MD, Suite
    now = [0.0]
    suite = Suite(tmp_path, budget_s=100, meta={'command': 'c', 'timestamp': 't', 'device': 'cpu'},
                  clock=lambda: now[0])

    def first(s):
        now[0] += 30
        return {'x': 1}, ['| a |']

    def second(s):  # sees the first stage's files, and itself 'running' on disk
        assert (tmp_path / '01_first.json').is_file() and (tmp_path / '01_first.md').is_file()
        index = json.loads((tmp_path / SUITE_JSON).read_text())
        assert [st['status'] for st in index['stages']] == ['ok', 'running']
        now[0] += 50
        raise RuntimeError('out of memory')

    def third(s):
        raise AssertionError('a skipped stage must not run')

    assert suite.run_stage('first', first)['status'] == 'ok'
    assert suite.run_stage('second', second)['status'] == 'failed'
    assert suite.run_stage('third', third, min_seconds=30)['status'] == 'skipped'  # 20 s left
    index = json.loads((tmp_path / SUITE_JSON).read_text())
    assert [(s['stage'], s['status']) for s in index['stages']] == [
        ('first', 'ok'), ('second', 'failed'), ('third', 'skipped')]
    assert 'out of memory' in index['stages'][1]['reason'] and '20 s left' in index['stages'][2]['reason']
    failed = json.loads((tmp_path / '02_second.json').read_text())
    assert 'RuntimeError' in failed['data']['traceback']
    summary = (tmp_path / SUMMARY_MD).read_text()
    assert '## 1. first (ok' in summary and '| a |' in summary and '## 3. third (skipped)' in summary


@pytest.mark.subprocess
@pytest.mark.timeout(280)
def test_gpu_suite_smoke(tmp_path):
    """ ``python -m benchmarks.gpu_suite --smoke``: every stage on the CPU at tiny sizes, each written as it
    finishes; a second run into the same folder is refused and leaves it as it was.
    """
    out = tmp_path / 'suite'
    cmd = [sys.executable, '-m', 'benchmarks.gpu_suite', '--smoke', '--out', str(out)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=270)
    assert proc.returncode == 0, proc.stderr[-3000:]
    index = json.loads((out / 'suite.json').read_text())
    stages = index['stages']
    assert [s['stage'] for s in stages] == ['env', 'params_macs', 'grads', 'throughput', 'memory', 'compile']
    for i, s in enumerate(stages, 1):
        assert s['status'] in ('ok', 'failed', 'skipped'), s
        for f in s['files']:
            assert f.startswith(f'{i:02d}_') and (out / f).is_file()
    assert all(s['status'] == 'ok' for s in stages[:5]), stages  # the compile stage may run out of time
    assert [s['started_s'] for s in stages] == sorted(s['started_s'] for s in stages)

    env = json.loads((out / '01_env.json').read_text())['data']
    assert {'torch', 'timm', 'tf32_matmul', 'tf32_cudnn_conv', 'cudnn_benchmark'} <= set(env)
    macs = json.loads((out / '02_params_macs.json').read_text())['data']['models']
    assert set(macs) == {'resattnet56_cifar', 'resnet18'} and macs['resattnet56_cifar']['gmacs'] > 0
    for r in json.loads((out / '03_grads.json').read_text())['data']['results']:
        assert r['lean_vs_plain']['grad_max_rel_err'] < 1e-2 and r['lean_vs_plain']['output_rel_err'] < 1e-2
        assert not r['lean_vs_plain']['grads_missing']
    assert {r['precision'] for r in json.loads((out / '03_grads.json').read_text())['data']['results']} == {
        'fp32', 'bf16'}
    bench = json.loads((out / 'throughput' / 'results.json').read_text())
    assert bench['config']['precision'] == 'bf16' and bench['config']['channels_last']
    assert {(r['model'], r['mode']) for r in bench['rows']} == {
        (m, mode) for m in ('resattnet56_cifar', 'resnet18') for mode in ('infer', 'train')}
    mem = json.loads((out / '05_memory.json').read_text())['data']['results']
    assert {(r['variant'], r['precision']) for r in mem if r['model'] == 'resattnet56_cifar'} == {
        (v, p) for v in ('plain', 'memory_efficient') for p in ('bf16', 'fp32')}
    assert all('error' not in r and r['step_ms'] > 0 for r in mem)
    items = json.loads((out / '06_compile.json').read_text())['data']['items']
    assert [(i['mode'], i['status'] in ('ok', 'timed out', 'skipped')) for i in items] == [
        ('infer', True), ('train', True)]
    for item in items:
        if item['status'] == 'ok':
            assert item['label'] == 'torch.compile (eager, default mode)'
            assert (out / item['folder'] / 'results.json').is_file()
        else:
            assert item['reason']
    summary = (out / 'summary.md').read_text()
    assert '## 4. throughput (ok' in summary and '## 6. compile' in summary

    before = {p: p.stat().st_mtime_ns for p in out.rglob('*')}
    again = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and again.stderr.startswith('error: ') and '--overwrite' in again.stderr
    assert {p: p.stat().st_mtime_ns for p in out.rglob('*')} == before
