""" Training-step time of the plain vs the memory-efficient path (``memory_efficient=True``), interleaved.

One step = forward + cross-entropy + backward + SGD (momentum 0.9) on a random batch. Both models start from the same
weights; each repeat times ``--steps`` steps of one, then of the other (the order alternating between repeats), so
that load from other processes on a shared machine hits both alike. Reports the median step time of each and their
ratio, with the load average before and after.

Usage::

    python -m benchmarks.lean_speed resattnet56 --img-size 160 --batch-size 16 --threads 2 --repeats 7 --steps 3

Hacked together by the timm-resattn authors, Apache-2.0.
"""
import argparse
import copy
import os
import statistics
import time
from typing import Optional, Sequence

import torch
import torch.nn.functional as F


def _step(model, opt, x, y):
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()


def main(argv: Optional[Sequence[str]] = None) -> None:
    import timm

    import timm_resattn  # noqa: F401

    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('model')
    parser.add_argument('--img-size', type=int, default=160)
    parser.add_argument('--batch-size', type=int, default=16)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--grad-checkpointing', action='store_true')
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    plain = timm.create_model(args.model).train()
    lean = copy.deepcopy(plain)
    lean.set_memory_efficient(True)
    models = {'plain': plain, 'lean': lean}
    for m in models.values():
        m.set_grad_checkpointing(args.grad_checkpointing)
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in models.items()}
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    y = torch.randint(0, plain.num_classes, (args.batch_size,))
    for k in models:  # warm-up
        _step(models[k], opts[k], x, y)
    times = {k: [] for k in models}
    load0 = os.getloadavg()
    for r in range(args.repeats):
        order = ('plain', 'lean') if r % 2 == 0 else ('lean', 'plain')
        for k in order:
            t0 = time.perf_counter()
            for _ in range(args.steps):
                _step(models[k], opts[k], x, y)
            times[k].append((time.perf_counter() - t0) / args.steps)
    load1 = os.getloadavg()
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = [b / a for a, b in zip(times['plain'], times['lean'])]
    print(f'{args.model} train step, batch {args.batch_size} at {args.img_size}, {args.threads} threads, '
          f'grad_checkpointing={args.grad_checkpointing}, {args.repeats} x {args.steps} steps')
    print(f"  plain median {med['plain'] * 1e3:.0f} ms, lean median {med['lean'] * 1e3:.0f} ms, "
          f"ratio of medians {med['lean'] / med['plain']:.3f}, median of per-repeat ratios "
          f'{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})')
    print(f'  load average before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, '
          f'after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}')


if __name__ == '__main__':
    main()
