""" AOTInductor check: compile a Residual Attention Network with a dynamic batch/height/width into an AOTInductor
package, load it in a fresh Python process (which imports torch only, not timm or timm_resattn), and compare its
outputs with eager PyTorch at several sizes; then show what a below-minimum input does with and without
``AOTI_RUNTIME_CHECK_INPUTS=1``.

    python -m benchmarks.aoti_check --model resattnet56 --threads 2 --out benchmarks/results/aoti_check

Writes ``results.json`` and ``results.md`` to ``--out`` (the package and the test tensors go to a temporary folder).
Too slow for the test suite (inductor compiles C++ for minutes on a small CPU), so its committed output is the
evidence that the packages work.

Hacked together by the timm-resattn authors, Apache-2.0.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

CHILD = r'''
import json, sys, torch
torch.set_num_threads(int(sys.argv[3]))
data = torch.load(sys.argv[2])
model = torch._inductor.aoti_load_package(sys.argv[1])
out = {'modules': sorted(m for m in sys.modules if m.startswith(('timm', 'timm_resattn')))}
if len(sys.argv) > 4:  # one input of batch argv[5], size argv[4]
    try:
        y = model(torch.randn(int(sys.argv[5]), 3, int(sys.argv[4]), int(sys.argv[4])))
        out['below_min'] = f'ran, output shape {tuple(y.shape)}, finite: {bool(torch.isfinite(y).all())}'
    except Exception as e:  # report whatever the runtime raises
        out['below_min'] = f'{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}'
else:
    errs = []
    for x, ref in zip(data['inputs'], data['outputs']):
        with torch.no_grad():
            y = model(x)
        errs.append({'shape': list(x.shape), 'max_abs': (y - ref).abs().max().item(),
                     'rel': ((y - ref).abs().max() / ref.abs().max()).item(), 'bit_equal': torch.equal(y, ref)})
    out['errors'] = errs
print(json.dumps(out))
'''


def _child(args, env=None):
    proc = subprocess.run([sys.executable, '-c', CHILD, *map(str, args)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        return {'returncode': proc.returncode, 'stderr_tail': proc.stderr.strip().splitlines()[-3:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='python -m benchmarks.aoti_check', description=__doc__.split('\n\n')[0])
    p.add_argument('--model', default='resattnet56')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--max-size', type=int, default=1024)
    p.add_argument('--out', type=Path, default=Path('benchmarks/results/aoti_check'))
    args = p.parse_args(argv)

    import timm
    import timm_resattn  # noqa: F401
    from timm_resattn.export import compile_aoti, export_min_size, export_program
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.model).eval()
    lo = export_min_size(model)
    sizes = [(1, lo, lo), (2, 224, 224), (3, 97, 160), (1, 321, 250)]
    inputs = [torch.randn(b, 3, h, w) for b, h, w in sizes]
    with torch.no_grad():
        outputs = [model(x) for x in inputs]
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ep = export_program(model, max_size=args.max_size)
        t_export = time.perf_counter() - t0
        t0 = time.perf_counter()
        pkg = compile_aoti(ep, Path(tmp) / f'{args.model}.pt2')
        t_compile = time.perf_counter() - t0
        data_path = Path(tmp) / 'data.pt'
        torch.save({'inputs': inputs, 'outputs': outputs}, data_path)
        check = _child([pkg, data_path, args.threads])
        below = {}
        for flag, size, batch in (('0', lo - 1, 2), ('1', lo - 1, 2), ('1', lo, 1)):
            env = dict(os.environ, AOTI_RUNTIME_CHECK_INPUTS=flag)
            below[f'AOTI_RUNTIME_CHECK_INPUTS={flag}, input ({batch}, 3, {size}, {size})'] = _child(
                [pkg, data_path, args.threads, size, batch], env=env)
        pkg_mib = pkg.stat().st_size / 2 ** 20
    result = {
        'command': 'python -m benchmarks.aoti_check ' + ' '.join(argv if argv is not None else sys.argv[1:]),
        'timestamp': datetime.now(timezone.utc).isoformat(timespec='seconds'),
        'torch': torch.__version__, 'model': args.model, 'min_size': lo, 'max_size': args.max_size,
        'export_seconds': round(t_export, 1), 'compile_seconds': round(t_compile, 1),
        'package_mib': round(pkg_mib, 1), 'loadavg_1min_start': round(load_start, 2),
        'loadavg_1min_end': round(os.getloadavg()[0], 2), 'fresh_process': check, 'below_minimum': below,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / 'results.json').write_text(json.dumps(result, indent=2) + '\n')
    lines = [
        f"# AOTInductor package of `{args.model}` (dynamic batch, height/width {lo}..{args.max_size})", '',
        f"`{result['command']}` on {result['timestamp']}, torch {result['torch']}; export {t_export:.0f} s, "
        f"compile {t_compile:.0f} s, package {pkg_mib:.0f} MiB; 1-min load average {result['loadavg_1min_start']} "
        f"-> {result['loadavg_1min_end']}.", '',
        'Loaded in a fresh process that imports torch only; timm/timm_resattn modules it had loaded: '
        f"{check.get('modules', '?')}.", '',
        '| input (N, C, H, W) | max abs error | relative error | bit-equal |', '|---|---|---|---|',
    ]
    for e in check.get('errors', []):
        lines.append(f"| {tuple(e['shape'])} | {e['max_abs']:.2e} | {e['rel']:.2e} | {e['bit_equal']} |")
    if 'errors' not in check:
        lines.append(f'| failed | {check} | | |')
    lines += ['', f'Inputs at and below the minimum {lo} (checks off/on):', '']
    for k, v in below.items():
        lines.append(f'- `{k}`: {v.get("below_min", v)}')
    (args.out / 'results.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))
    return 0


if __name__ == '__main__':
    sys.exit(main())
