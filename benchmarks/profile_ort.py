""" Where onnxruntime spends its time on our nets and the ResNet peers: op-type totals from onnxruntime's profiler.

    python -m benchmarks.profile_ort --models resattnet56,resnet152 --threads 2 --batch-size 8 --img-size 224

Each model is exported (``timm_resattn.export.export_onnx``) and run in the benchmark's session
(``common.ort_session``, ``--threads`` intra-op threads) with onnxruntime's profiling on, ``--warmup`` runs then
``--iters`` runs; prints per model the milliseconds per run of each ONNX op type (sum over its nodes, timed runs only).

Hacked together by the timm-resattn authors, Apache-2.0.
"""
import argparse
import collections
import json
import sys
import tempfile
from pathlib import Path

import torch


def profile(name: str, threads: int, batch_size: int, img_size: int, warmup: int, iters: int, workdir: str):
    """ (ms per timed run, ms per run of each op type, nodes per op type) of ``name`` in onnxruntime on ``threads``
    intra-op threads.
    """
    import timm
    import timm_resattn  # noqa: F401
    from timm_resattn.export import export_onnx

    from .common import ort_session
    model = timm.create_model(name).eval()
    sizes = {} if hasattr(model, 'min_input_size') else {'min_size': 32}
    path = export_onnx(model, Path(workdir) / f'{name}.onnx', **sizes)
    sess = ort_session(path, threads, profile_prefix=Path(workdir) / f'{name}_prof')
    feed = {sess.get_inputs()[0].name: torch.randn(batch_size, 3, img_size, img_size).numpy()}
    for _ in range(warmup + iters):  # the warm-up runs are profiled too, and left out below
        sess.run(None, feed)
    prof = sess.end_profiling()
    events = json.loads(Path(prof).read_text())
    runs = [e for e in events if e.get('cat') == 'Session' and e.get('name') == 'model_run']
    timed_runs = runs[warmup:]
    t0 = timed_runs[0]['ts']
    per_op = collections.Counter()
    count = collections.Counter()
    for e in events:
        if e.get('cat') == 'Node' and e['name'].endswith('_kernel_time') and e['ts'] >= t0:
            op = e.get('args', {}).get('op_name', '?')
            per_op[op] += e['dur'] / 1000 / iters
            count[op] += 1
    total = sum(r['dur'] for r in timed_runs) / 1000 / iters
    return total, per_op, {k: v // iters for k, v in count.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='python -m benchmarks.profile_ort', description=__doc__.split('\n\n')[0])
    p.add_argument('--models', default='resattnet56,resnet152')
    p.add_argument('--threads', type=int, default=2)
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--iters', type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(','):
            total, per_op, count = profile(name, args.threads, args.batch_size, args.img_size, args.warmup,
                                           args.iters, tmp)
            print(f'\n{name}: {total:.1f} ms per run (batch {args.batch_size}, {args.img_size} px, '
                  f'{args.threads} threads)')
            print('| op type | nodes | ms/run | share |\n|---|---|---|---|')
            for op, ms in per_op.most_common():
                print(f'| {op} | {count[op]} | {ms:.1f} | {100 * ms / total:.1f}% |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
