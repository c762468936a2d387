""" CIFAR-10/100 training of the Residual Attention Network as in the paper (§4.1).

    python -m timm_resattn.train_cifar --dataset cifar10 --data-dir data/ --download --model resattnet92_cifar

The recipe (every default below is the paper's):

* Nesterov SGD, momentum 0.9, weight decay 1e-4 on every parameter (BN included, as in Caffe), mini-batch 64;
* learning rate 0.1, divided by 10 at 64k and 96k iterations, training stops at 160k iterations (~205 epochs);
* augmentation: each image zero-padded by 4 px to 40x40 (raw pixel value 0, i.e. black), a random 32x32 crop,
  a horizontal flip with probability 1/2;
* per-pixel mean subtraction: the mean image (3x32x32) over the whole training set is computed once and subtracted
  from every (cropped, flipped) training image and every test image. Pixels are scaled to [0, 1] first; there is
  no division by a standard deviation. The mean image is stored in the checkpoints (``pixel_mean``);
* ``--label-noise r``: the noisy-label experiment (Table 5, Eq. 7). ``r`` is the paper's *clean-label ratio*: each
  training label is kept with probability ``r`` and otherwise replaced by one of the other K-1 classes chosen
  uniformly ((1 - r) / 9 each on CIFAR-10), so Table 5's noise level 10% is ``--label-noise 0.9``. Test labels stay
  clean. The draw is seeded by ``--seed``; the realised noise rate is printed.

Scale the schedule down with ``--iters`` (milestones default to 40% and 60% of it, i.e. 64k/96k of 160k),
``--milestones`` and ``--eval-every``.

Data: the python-pickle CIFAR files (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``, ``batches.meta``;
``cifar-100-python/train``, ``test``, ``meta``). ``--download`` lets torchvision fetch them (verifying md5s); the
files are then read by ``load_cifar`` here, which checks shapes and label ranges but no checksums (torchvision's
own CIFAR10 class insists on the published md5s, so it can't read re-packed or synthetic files).

Everything random is a pure function of ``--seed`` and the iteration: the epoch's shuffle of epoch e, the crops and
flips of iteration i, the global RNG during iteration i. ``--resume`` therefore continues exactly where a run
stopped, whatever ``--workers`` is, and two runs with the same seed on the same device match.

Checkpoints use timm's ``CheckpointSaver`` layout (``state_dict``, ``arch``, ``epoch``, ``optimizer``,
``version``, ``args``, ``metric``; plus ``iteration``, ``pixel_mean``, ``amp_scaler``), as ``last.pth.tar`` and
``model_best.pth.tar`` in ``--out``, and ``model_best.safetensors`` at the end; they all load with
``timm.create_model(arch, num_classes=K, checkpoint_path=...)`` (and timm's ``validate.py --checkpoint``; it
normalises per channel, so pass ``--mean`` with the printed channel means of the mean image and ``--std 1 1 1``:
close to, not exactly, the per-pixel subtraction used here).

Hacked together by the timm-resattn authors, Apache-2.0.
"""
import argparse
import ast
import json
import os
import pickle
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

import timm
import timm_resattn  # noqa: F401  (registers the models)

__all__ = [
    'load_cifar', 'apply_label_noise', 'pixel_mean', 'augment_batch', 'lr_at', 'main',
]

_LAYOUT = {
    # dataset: (folder, train files, test files, meta file, label key, class-name key)
    'cifar10': (
        'cifar-10-batches-py', [f'data_batch_{i}' for i in range(1, 6)], ['test_batch'], 'batches.meta', 'labels',
        'label_names',
    ),
    'cifar100': ('cifar-100-python', ['train'], ['test'], 'meta', 'fine_labels', 'fine_label_names'),
}
NUM_CLASSES = {'cifar10': 10, 'cifar100': 100}


def _read_pickle(path: str) -> dict:
    with open(path, 'rb') as f:
        return pickle.load(f, encoding='latin1')


def load_cifar(root: str, dataset: str = 'cifar10', train: bool = True) -> Tuple[torch.Tensor, torch.Tensor, List[str]]:
    """ Read CIFAR-10/100 in its python-pickle on-disk format (the files torchvision downloads).

    Returns ``(images, labels, class_names)``: uint8 ``N x 3 x 32 x 32``, int64 ``N``. No checksum is verified
    (``--download`` lets torchvision fetch and verify the official files); shapes and label ranges are.
    """
    if dataset not in _LAYOUT:
        raise ValueError(f'dataset={dataset!r}; expected one of {sorted(_LAYOUT)}')
    folder, train_files, test_files, meta_file, label_key, names_key = _LAYOUT[dataset]
    base = os.path.join(root, folder)
    images, labels = [], []
    for name in (train_files if train else test_files):
        path = os.path.join(base, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f'{path} not found: expected {dataset} in its python format under {base} '
                f'(pass --download to fetch it with torchvision)'
            )
        entry = _read_pickle(path)
        data = np.asarray(entry['data'], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f'{path}: data has shape {data.shape}, expected N x 3072 uint8 (3 x 32 x 32, CHW)')
        lab = np.asarray(entry[label_key], dtype=np.int64)
        if len(lab) != len(data):
            raise ValueError(f'{path}: {len(data)} images but {len(lab)} labels')
        images.append(data)
        labels.append(lab)
    meta_path = os.path.join(base, meta_file)
    num_classes = NUM_CLASSES[dataset]
    class_names = list(_read_pickle(meta_path)[names_key]) if os.path.isfile(meta_path) else []
    if not class_names:
        class_names = [str(i) for i in range(num_classes)]
    x = torch.from_numpy(np.concatenate(images).reshape(-1, 3, 32, 32))
    y = torch.from_numpy(np.concatenate(labels))
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f'{dataset} labels must lie in [0, {num_classes}), got [{y.min()}, {y.max()}]')
    return x, y, class_names


def apply_label_noise(labels: torch.Tensor, r: float, num_classes: int, seed: int) -> torch.Tensor:
    """ The noisy labels of paper Eq. 7: keep each label with probability ``r`` (the clean-label ratio), otherwise
    replace it by one of the other ``num_classes - 1`` classes, uniformly. Deterministic in ``seed``.
    """
    if not 0.0 <= r <= 1.0:
        raise ValueError(f'the clean-label ratio r must lie in [0, 1], got {r}')
    if num_classes < 2:
        raise ValueError('label noise needs at least two classes')
    rng = np.random.default_rng([seed, 0x5EED])
    y = labels.numpy().astype(np.int64)
    flip = rng.random(len(y)) >= r
    shift = rng.integers(1, num_classes, size=len(y))  # 1..K-1: never the true class, uniform over the others
    noisy = np.where(flip, (y + shift) % num_classes, y)
    return torch.from_numpy(noisy)


def pixel_mean(images: torch.Tensor) -> torch.Tensor:
    """ The per-pixel mean image (3 x 32 x 32, float32, pixels in [0, 1]) of a uint8 ``N x 3 x 32 x 32`` set. """
    return (images.double().sum(dim=0) / (255.0 * max(len(images), 1))).float()


def augment_batch(images: torch.Tensor, mean: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """ Zero-pad each uint8 image by ``pad`` px, take a random 32x32 crop, flip half of them, scale to [0, 1] and
    subtract the per-pixel mean image.
    """
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad))  # raw 0 = black, as the paper's "filled with 0 value"
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = oy[:, None] + torch.arange(h)[None]  # n x h
    cols = ox[:, None] + torch.arange(w)[None]  # n x w
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    idx_n = torch.arange(n)[:, None, None, None]
    idx_c = torch.arange(images.shape[1])[None, :, None, None]
    out = padded[idx_n, idx_c, rows[:, None, :, None], cols[:, None, None, :]]
    return out.float().div_(255.0).sub_(mean)


def _stream_seed(seed: int, stream: int, index: int) -> int:
    # a fixed mixing of (seed, stream, index) into one 63-bit seed: stateless, so resume needs only the iteration
    return int(np.random.SeedSequence([seed, stream, index]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class TrainBatches(Dataset):
    """ Item ``i`` is the augmented mini-batch of iteration ``i``: the ``i % B``-th batch of the shuffle of epoch
    ``i // B`` (``B`` = batches per epoch; the last partial batch of an epoch is dropped). Pure in ``(seed, i)``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor, batch_size: int, seed: int):
        if len(images) < batch_size:
            raise ValueError(f'{len(images)} training images are fewer than one batch of {batch_size}')
        self.images, self.labels, self.mean = images, labels, mean
        self.batch_size, self.seed = batch_size, seed
        self.batches_per_epoch = len(images) // batch_size
        self._perm_epoch, self._perm = -1, None

    def __len__(self) -> int:
        return sys.maxsize

    def _epoch_perm(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(_stream_seed(self.seed, 1, epoch))
            self._perm, self._perm_epoch = torch.randperm(len(self.images), generator=g), epoch
        return self._perm

    def __getitem__(self, it: int) -> Tuple[torch.Tensor, torch.Tensor]:
        epoch, b = divmod(it, self.batches_per_epoch)
        idx = self._epoch_perm(epoch)[b * self.batch_size:(b + 1) * self.batch_size]
        g = torch.Generator().manual_seed(_stream_seed(self.seed, 2, it))
        return augment_batch(self.images[idx], self.mean, g), self.labels[idx]


def lr_at(it: int, base_lr: float, milestones: Sequence[int], gamma: float = 0.1) -> float:
    """ Step schedule: ``base_lr * gamma ** (number of milestones <= it)`` (0-based iterations). """
    return base_lr * gamma ** sum(it >= m for m in milestones)


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor, device: torch.device,
             amp_dtype: Optional[torch.dtype], batch_size: int = 500) -> Tuple[float, float]:
    """ (top-1 accuracy in %, mean cross-entropy) on a uint8 test set, mean-subtracted, no augmentation. """
    model.eval()
    correct, loss_sum = 0, 0.0
    mean = mean.to(device)
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device).float().div_(255.0).sub_(mean)
        y = labels[i:i + batch_size].to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(x)
        loss_sum += F.cross_entropy(out.float(), y, reduction='sum').item()
        correct += (out.argmax(dim=1) == y).sum().item()
    model.train()
    n = max(len(images), 1)
    return 100.0 * correct / n, loss_sum / n


def _parse_milestones(text: Optional[str], iters: int) -> List[int]:
    if text is None or text == '':
        return [int(iters * 0.4), int(iters * 0.6)]  # 64k and 96k of the paper's 160k
    return sorted(int(float(v)) for v in text.replace(',', ' ').split())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog='python -m timm_resattn.train_cifar',
        description='Train a Residual Attention Network on CIFAR-10/100 with the recipe of the paper (§4.1).',
    )
    p.add_argument('--dataset', default='cifar10', choices=sorted(_LAYOUT))
    p.add_argument('--data-dir', default='data', help='folder holding cifar-10-batches-py / cifar-100-python')
    p.add_argument('--download', action='store_true', help='let torchvision download (and md5-check) the dataset')
    p.add_argument('--model', default='resattnet92_cifar', help='any registered timm model (num_classes from data)')
    p.add_argument('--iters', type=int, default=160_000, help='training iterations (paper: 160k)')
    p.add_argument('--milestones', default=None,
                   help='iterations where the lr is divided by 10, e.g. "64000,96000" (default: 40%% and 60%% of '
                        '--iters, the paper\'s 64k/96k of 160k)')
    p.add_argument('--batch-size', type=int, default=64)
    p.add_argument('--lr', type=float, default=0.1)
    p.add_argument('--momentum', type=float, default=0.9)
    p.add_argument('--weight-decay', type=float, default=1e-4)
    p.add_argument('--no-nesterov', dest='nesterov', action='store_false', help='plain momentum instead of Nesterov')
    p.add_argument('--label-noise', type=float, default=None, metavar='R',
                   help="the paper's r (Eq. 7): clean-label ratio; each training label is kept with probability R, "
                        "else replaced by a uniformly chosen other class (Table 5's 10%% noise: R=0.9)")
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--eval-every', type=int, default=4000, help='test and checkpoint every N iterations')
    p.add_argument('--log-every', type=int, default=100)
    p.add_argument('--amp', action='store_true', help='mixed precision: float16 + GradScaler on CUDA, bfloat16 on CPU')
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--workers', type=int, default=2, help='DataLoader processes preparing augmented batches')
    p.add_argument('--out', default=None, help='output folder (default: output/train_cifar/<model>-<dataset>)')
    p.add_argument('--resume', default=None, help='a last.pth.tar (or any checkpoint of this script) to continue')
    p.add_argument('--drop-path', type=float, default=0.0, help='stochastic depth rate (not in the paper)')
    p.add_argument('--model-kwargs', nargs='*', default=[], metavar='KEY=VALUE',
                   help='architecture overrides passed to timm.create_model, e.g. the ablations of §4.1: '
                        'attention_residual=False mask_act=spatial mask_type=local (values are Python literals)')
    return p


def parse_model_kwargs(items: Sequence[str]) -> Dict[str, object]:
    """ ``['attention_residual=False', 'stage_chs=(16, 32, 64)', 'mask_act=spatial']`` -> kwargs (literals, else
    the raw string).
    """
    kwargs = {}
    for item in items:
        key, sep, value = item.partition('=')
        if not sep or not key:
            raise ValueError(f'--model-kwargs expects KEY=VALUE, got {item!r}')
        try:
            kwargs[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            kwargs[key] = value
    return kwargs


def _save(path: str, state: dict) -> None:
    tmp = path + '.tmp'
    torch.save(state, tmp)
    os.replace(tmp, path)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, float]:
    args = build_parser().parse_args(argv)
    model_kwargs = parse_model_kwargs(args.model_kwargs)
    if args.iters < 1 or args.batch_size < 1 or args.eval_every < 1 or args.log_every < 1:
        raise SystemExit('--iters, --batch-size, --eval-every and --log-every must be positive')
    milestones = _parse_milestones(args.milestones, args.iters)
    out_dir = args.out or os.path.join('output', 'train_cifar', f'{args.model}-{args.dataset}')
    os.makedirs(out_dir, exist_ok=True)
    device = torch.device(args.device)
    amp_dtype = None
    if args.amp:
        amp_dtype = torch.float16 if device.type == 'cuda' else torch.bfloat16

    if args.download:
        import torchvision
        ds_cls = torchvision.datasets.CIFAR10 if args.dataset == 'cifar10' else torchvision.datasets.CIFAR100
        ds_cls(args.data_dir, train=True, download=True)
        ds_cls(args.data_dir, train=False, download=True)
    train_x, train_y, class_names = load_cifar(args.data_dir, args.dataset, train=True)
    test_x, test_y, _ = load_cifar(args.data_dir, args.dataset, train=False)
    num_classes = NUM_CLASSES[args.dataset]
    mean = pixel_mean(train_x)
    channel_mean = [round(v, 4) for v in mean.mean(dim=(1, 2)).tolist()]
    print(f'{args.dataset}: {len(train_x)} train / {len(test_x)} test images, {num_classes} classes; per-pixel mean '
          f'image subtracted (its channel means {channel_mean}, pixels in [0, 1])', flush=True)

    noise_rate = 0.0
    if args.label_noise is not None:
        clean_y = train_y
        train_y = apply_label_noise(train_y, args.label_noise, num_classes, args.seed)
        changed = int((train_y != clean_y).sum())
        noise_rate = changed / max(len(train_y), 1)
        print(f'label noise: r={args.label_noise} (clean-label ratio, paper Eq. 7), expected noise rate '
              f'{1 - args.label_noise:.2%}, realised {noise_rate:.2%} ({changed}/{len(train_y)} labels changed)',
              flush=True)

    torch.manual_seed(args.seed)  # model init
    model = timm.create_model(
        args.model, num_classes=num_classes, drop_path_rate=args.drop_path, **model_kwargs).to(device)
    model.train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay,
        nesterov=args.nesterov,
    )
    scaler = torch.amp.GradScaler('cuda') if (amp_dtype == torch.float16) else None

    start_it, best_acc, best_it = 0, -1.0, -1
    if args.resume:
        ckpt = torch.load(args.resume, map_location='cpu', weights_only=True)
        model.load_state_dict(ckpt['state_dict'])
        optimizer.load_state_dict(ckpt['optimizer'])
        if scaler is not None and 'amp_scaler' in ckpt:
            scaler.load_state_dict(ckpt['amp_scaler'])
        start_it = int(ckpt['iteration'])
        best_acc = float(ckpt.get('best_metric', ckpt.get('metric', -1.0)))
        best_it = int(ckpt.get('best_iteration', -1))
        print(f'resumed from {args.resume} at iteration {start_it}', flush=True)

    train_set = TrainBatches(train_x, train_y, mean, args.batch_size, args.seed)
    loader = DataLoader(
        train_set, batch_size=None, sampler=range(start_it, args.iters), num_workers=args.workers,
        pin_memory=device.type == 'cuda', persistent_workers=False,
    )
    n_params = sum(p.numel() for p in model.parameters())
    print(f'{args.model}: {n_params / 1e6:.3f}M params; {args.iters} iterations of batch {args.batch_size} '
          f'({args.iters / train_set.batches_per_epoch:.1f} epochs), lr {args.lr} /10 at {milestones}, '
          f'{"Nesterov " if args.nesterov else ""}SGD momentum {args.momentum} wd {args.weight_decay}, '
          f'device {device}{", amp " + str(amp_dtype).split(".")[-1] if amp_dtype else ""}', flush=True)

    run_args = dict(vars(args), milestones=milestones, num_classes=num_classes, model_kwargs=model_kwargs)

    def checkpoint(it_done: int, acc: float, is_best: bool) -> None:
        state = {
            'epoch': it_done // train_set.batches_per_epoch,
            'iteration': it_done,
            'arch': args.model,
            'state_dict': model.state_dict(),
            'optimizer': optimizer.state_dict(),
            'version': 2,
            'args': run_args,
            'metric': acc,
            'best_metric': best_acc,
            'best_iteration': best_it,
            'num_classes': num_classes,
            'class_names': class_names,
            'pixel_mean': mean,
            'label_noise_rate': noise_rate,
        }
        if scaler is not None:
            state['amp_scaler'] = scaler.state_dict()
        _save(os.path.join(out_dir, 'last.pth.tar'), state)
        if is_best:
            _save(os.path.join(out_dir, 'model_best.pth.tar'), state)

    loss_sum, loss_n, t0, seen = 0.0, 0, time.time(), 0
    acc = loss_test = float('nan')
    it = start_it
    for it, (x, y) in zip(range(start_it, args.iters), loader):
        lr = lr_at(it, args.lr, milestones)
        for group in optimizer.param_groups:
            group['lr'] = lr
        torch.manual_seed(_stream_seed(args.seed, 3, it))  # dropout / drop-path of this iteration
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        loss_sum += loss.item()
        loss_n += 1
        seen += len(x)
        done = it + 1
        if done % args.log_every == 0 or done == args.iters:
            dt = time.time() - t0
            print(f'iter {done}/{args.iters}  loss {loss_sum / loss_n:.4f}  lr {lr:.4g}  {seen / max(dt, 1e-9):.0f} '
                  f'imgs/s', flush=True)
            loss_sum, loss_n, t0, seen = 0.0, 0, time.time(), 0
        if done % args.eval_every == 0 or done == args.iters:
            acc, loss_test = evaluate(model, test_x, test_y, mean, device, amp_dtype)
            is_best = acc > best_acc
            if is_best:
                best_acc, best_it = acc, done
            print(f'test @ iter {done}: top-1 {acc:.2f}% (error {100 - acc:.2f}%), loss {loss_test:.4f}; best '
                  f'{best_acc:.2f}% @ {best_it}', flush=True)
            checkpoint(done, acc, is_best)
            t0, seen = time.time(), 0  # imgs/s counts training only

    best_path = os.path.join(out_dir, 'model_best.pth.tar')
    if os.path.isfile(best_path):
        from safetensors.torch import save_file
        best = torch.load(best_path, map_location='cpu', weights_only=True)
        save_file({k: v.contiguous() for k, v in best['state_dict'].items()},
                  os.path.join(out_dir, 'model_best.safetensors'))
    summary = dict(top1=acc, test_loss=loss_test, best_top1=best_acc, best_iteration=best_it,
                   label_noise_rate=noise_rate, iterations=args.iters)
    with open(os.path.join(out_dir, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=2)
    print(f'done: top-1 {acc:.2f}%, best {best_acc:.2f}% @ iter {best_it}; checkpoints in {out_dir}', flush=True)
    return summary


if __name__ == '__main__':
    main()
