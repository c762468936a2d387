""" Training-step time of the plain vs the memory-efficient path (``memory_efficient=True``: selective activation
checkpointing of each stage block, ``timm_resattn.layers.memory``), interleaved.

One step = ``common.make_step``'s train step: forward + cross-entropy + backward + SGD (lr 0.01, momentum 0.9) on a
random batch (the same batch for both). Both models start from the same weights (``common.create_model``: 1000
classes); each repeat times ``--steps`` steps of one, then of the other (the order alternating between repeats), so
that load from other processes on a shared machine hits both alike. Reports the median step time of each and their
ratio, with the load average before and after. ``--plain-stages 0 ...`` leaves those stages of the lean model on the
plain path (``common.lean_except``). ``--precision bf16|fp16`` runs the steps under autocast,
``--device cuda`` on a GPU (synchronised around each timed run).

Usage::

    python -m benchmarks.lean_speed resattnet56 --img-size 160 --batch-size 16 --threads 2 --repeats 7 --steps 2
    python -m benchmarks.lean_speed resattnet56 --img-size 224 --batch-size 32 --device cuda --precision bf16
    python -m benchmarks.lean_speed resattnet56 --plain-stages 0   # stage 0 left plain: less recompute, more memory

Copyright the timm-resattn authors, Apache-2.0.
"""
import argparse
import copy
import os
import statistics
import time
from typing import Optional, Sequence

import torch


def main(argv: Optional[Sequence[str]] = None) -> None:
    from .common import PRECISIONS, BenchConfig, create_model, lean_except, make_step, synchronize

    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('model')
    parser.add_argument('--img-size', type=int, default=160)
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--grad-checkpointing', action='store_true')
    parser.add_argument('--precision', choices=tuple(PRECISIONS), default='fp32')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--plain-stages', type=int, nargs='*', default=[], metavar='I',
                        help='stages of the lean model left on the plain path (indices into model.stages)')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    plain = create_model(args.model)
    lean = copy.deepcopy(plain)
    lean_except(lean, args.plain_stages)
    models = {'plain': plain, 'lean': lean}
    cfg = BenchConfig(
        device=args.device, batch_size=args.batch_size, img_size=args.img_size, precision=args.precision, lr=0.01)
    steps = {}
    for k, m in models.items():
        m.set_grad_checkpointing(args.grad_checkpointing)
        torch.manual_seed(1)  # the same random batch and targets for both
        steps[k] = make_step(m, 'train', cfg)
    for k in models:  # warm-up
        steps[k]()
    synchronize(args.device)
    times = {k: [] for k in models}
    load0 = os.getloadavg()
    for r in range(args.repeats):
        order = ('plain', 'lean') if r % 2 == 0 else ('lean', 'plain')
        for k in order:
            synchronize(args.device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                steps[k]()
            synchronize(args.device)
            times[k].append((time.perf_counter() - t0) / args.steps)
    load1 = os.getloadavg()
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = [b / a for a, b in zip(times['plain'], times['lean'])]
    print(f'{args.model} train step, {args.precision}, {args.device}, batch {args.batch_size} at {args.img_size}, '
          f'{args.threads} threads, grad_checkpointing={args.grad_checkpointing}, {args.repeats} x {args.steps} steps'
          + (f', stages {args.plain_stages} plain' if args.plain_stages else ''))
    print(f"  plain median {med['plain'] * 1e3:.0f} ms, lean median {med['lean'] * 1e3:.0f} ms, "
          f"ratio of medians {med['lean'] / med['plain']:.3f}, median of per-repeat ratios "
          f'{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})')
    print(f'  load average before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, '
          f'after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}')


if __name__ == '__main__':
    main()
