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
