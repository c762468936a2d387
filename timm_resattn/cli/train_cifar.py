""" ``train-cifar``: train a Residual Attention Network on CIFAR-10/100 with the recipe of the paper (§4.1).

    timm-resattn train-cifar --dataset cifar10 --data-dir data/ --download --model resattnet92_cifar

Every default is the paper's (see ``timm_resattn.train.loop``): Nesterov SGD, momentum 0.9, weight decay 1e-4,
batch 64, lr 0.1 divided by 10 at 64k and 96k of 160k iterations; pad-4 random crops and flips.

* ``--label-noise r``: the noisy-label experiment (Table 5, Eq. 7). ``r`` is the paper's *clean-label ratio*: each
  training label is kept with probability ``r`` and otherwise replaced by one of the other K-1 classes chosen
  uniformly ((1 - r) / 9 each on CIFAR-10), so Table 5's noise level 10% is ``--label-noise 0.9``. Test labels stay
  clean. The draw is seeded by ``--seed``; the realised noise rate is printed.
* Scale the schedule down with ``--iters`` (milestones default to 40% and 60% of it, i.e. 64k/96k of 160k),
  ``--milestones`` and ``--eval-every``.
* Normalisation differs from the paper: pixels in [0, 1] are normalised per channel with the model's own data
  config (``timm.data.resolve_data_config(model=model)``, CIFAR-10 mean/std for the ``*_cifar`` models) instead of
  the paper's per-pixel mean image, so timm's preprocessing (``validate.py --checkpoint``, ``create_transform``,
  the classify command) feeds a trained checkpoint exactly what it was trained on. Checkpoints record it
  (``normalization``).

Outputs in ``--out`` (created only once data and model are ready): ``last.pth.tar`` and ``model_best.pth.tar``
(timm's checkpoint layout: they load with ``timm.create_model(arch, num_classes=K, checkpoint_path=...)`` and
``validate.py --checkpoint``), ``model_best.safetensors`` and ``summary.json`` at the end.

Every user mistake (a bad flag value, a missing or corrupt data file, an unusable ``--resume`` file, no network
for ``--download``, a diverging run) is a ``timm_resattn.errors.ResAttnError``: one line ``error: ...``, exit 2.
"""
import argparse
import contextlib
import json
import math
import os
from typing import Dict, List, Optional

import torch
from torch.utils.data import DataLoader

import timm

from ..errors import CommandError, ResAttnError
from ..train.cifar_data import LAYOUT, NUM_CLASSES, TrainBatches, apply_label_noise, download_cifar, load_cifar
from ..train.loop import (
    Schedule, build_checkpoint, data_normalization, evaluate, load_resume_checkpoint, save_checkpoint_file,
    train_loop, write_final_safetensors,
)
from .common import parse_model_kwargs

__all__ = ['configure', 'run', 'train_from_args', 'parse_milestones']

DESCRIPTION = (
    'Train a Residual Attention Network on CIFAR-10/100 with the recipe of the paper (§4.1). One deviation: inputs '
    'are normalised per channel with the model\'s own data config (timm.data.resolve_data_config), not with the '
    'paper\'s per-pixel mean image, so timm\'s preprocessing (validate.py --checkpoint, create_transform) matches '
    'training; checkpoints record the normalisation.'
)


def configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """ Add the ``train-cifar`` arguments to ``parser``. """
    if parser.description is None:
        parser.description = DESCRIPTION
    p = parser
    p.add_argument('--dataset', default='cifar10', choices=sorted(LAYOUT))
    p.add_argument('--data-dir', default='data', help='folder holding cifar-10-batches-py / cifar-100-python')
    p.add_argument('--download', action='store_true', help='let torchvision download (and md5-check) the dataset')
    p.add_argument('--model', default='resattnet92_cifar',
                   help='any registered timm model (num_classes from data; inputs normalised with its data config)')
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
    p.add_argument('--resume', default=None, help='a last.pth.tar (or any checkpoint of this command) to continue')
    p.add_argument('--drop-path', type=float, default=0.0, help='stochastic depth rate (not in the paper)')
    p.add_argument('--model-kwargs', nargs='*', default=[], metavar='KEY=VALUE',
                   help='architecture overrides passed to timm.create_model, e.g. the ablations of §4.1: '
                        'attention_residual=False mask_act=spatial mask_type=local (values are Python literals)')
    return p


def parse_milestones(text: Optional[str], iters: int) -> List[int]:
    """ ``"64000,96000"`` (commas or spaces) -> sorted ints; none: 40% and 60% of ``iters``. """
    if text is None or text.strip() == '':
        return [int(iters * 0.4), int(iters * 0.6)]  # 64k and 96k of the paper's 160k
    try:
        values = [float(v) for v in text.replace(',', ' ').split()]
    except ValueError:
        raise CommandError(f'--milestones expects iteration numbers like "64000,96000", got {text!r}') from None
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise CommandError(f'--milestones expects non-negative iteration numbers, got {text!r}')
    return sorted(int(v) for v in values)


def _check_number(flag: str, value: float, low: float, high: float = math.inf, high_open: bool = False) -> None:
    ok = math.isfinite(value) and low <= value and (value < high if high_open else value <= high)
    if not ok:
        bound = f'[{low:g}, {high:g}{")" if high_open else "]"}' if math.isfinite(high) else f'>= {low:g}'
        raise CommandError(f'{flag} must be a finite number {"in " if math.isfinite(high) else ""}{bound}, '
                           f'got {value}')


def validate_args(args: argparse.Namespace) -> None:
    """ Every flag value checked before anything is read, built or written; a ``CommandError`` names the flag. """
    for flag, value in (('--iters', args.iters), ('--batch-size', args.batch_size),
                        ('--eval-every', args.eval_every), ('--log-every', args.log_every)):
        if value < 1:
            raise CommandError(f'{flag} must be a positive integer, got {value}')
    if args.workers < 0:
        raise CommandError(f'--workers must be a non-negative integer, got {args.workers}')
    _check_number('--lr', args.lr, 0.0)
    _check_number('--momentum', args.momentum, 0.0)
    _check_number('--weight-decay', args.weight_decay, 0.0)
    _check_number('--drop-path', args.drop_path, 0.0, 1.0, high_open=True)
    if args.label_noise is not None:
        _check_number('--label-noise', args.label_noise, 0.0, 1.0)
    if not timm.is_model(args.model):
        raise CommandError(f'--model {args.model!r} is not a registered timm model '
                           f'(e.g. resattnet56_cifar, resattnet92_cifar)')
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        raise CommandError(f'--device {args.device!r}: {e}') from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise CommandError(f'--device {args.device}: CUDA is not available on this machine (use --device cpu)')
    if args.out is not None and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise CommandError(f'--out {args.out} exists and is not a folder')
    if not args.download and not os.path.isdir(args.data_dir):
        raise CommandError(f'--data-dir {args.data_dir}: no such folder (pass --download to fetch {args.dataset})')
    if args.resume is not None and not os.path.isfile(args.resume):
        raise CommandError(f'--resume {args.resume}: no such file')


def _create_model(args: argparse.Namespace, num_classes: int, model_kwargs: Dict[str, object]) -> torch.nn.Module:
    torch.manual_seed(args.seed)  # model init
    try:
        return timm.create_model(args.model, num_classes=num_classes, drop_path_rate=args.drop_path, **model_kwargs)
    except ResAttnError:
        raise
    except (TypeError, ValueError) as e:  # an unknown kwarg, or a bad value from a model that predates ConfigError
        given = ' '.join(args.model_kwargs) or '(none)'
        raise CommandError(f'--model {args.model} --model-kwargs {given}: {e}') from None


@contextlib.contextmanager
def _run_folder(path: str):
    """ Create ``path``; if the run fails before writing anything into it and we created it, remove it again. """
    created = not os.path.isdir(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise CommandError(f'--out {path}: cannot create this folder ({e.strerror or e})') from None
    try:
        yield path
    except BaseException:
        if created and os.path.isdir(path) and not os.listdir(path):
            os.rmdir(path)
        raise


def _load_data(args: argparse.Namespace):
    if args.download:
        download_cifar(args.data_dir, args.dataset)
    train_x, train_y, class_names = load_cifar(args.data_dir, args.dataset, train=True)
    test_x, test_y, _ = load_cifar(args.data_dir, args.dataset, train=False)
    if len(train_x) < args.batch_size:
        raise CommandError(f'--batch-size {args.batch_size} is larger than the {len(train_x)} training images')
    return train_x, train_y, test_x, test_y, class_names


def _noisy_labels(args: argparse.Namespace, train_y: torch.Tensor, num_classes: int):
    if args.label_noise is None:
        return train_y, 0.0
    noisy = apply_label_noise(train_y, args.label_noise, num_classes, args.seed)
    changed = int((noisy != train_y).sum())
    noise_rate = changed / max(len(noisy), 1)
    print(f'label noise: r={args.label_noise} (clean-label ratio, paper Eq. 7), expected noise rate '
          f'{1 - args.label_noise:.2%}, realised {noise_rate:.2%} ({changed}/{len(noisy)} labels changed)', flush=True)
    return noisy, noise_rate


def _build_training(args: argparse.Namespace, num_classes: int, model_kwargs: Dict[str, object],
                    device: torch.device, amp_dtype: Optional[torch.dtype]):
    """ Model (in train mode), its normalisation, optimizer and AMP scaler, restored from ``--resume`` if given;
    returns them with ``(start iteration, best top-1, its iteration)``.
    """
    model = _create_model(args, num_classes, model_kwargs).to(device)
    model.train()
    norm = data_normalization(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay, nesterov=args.nesterov)
    scaler = torch.amp.GradScaler('cuda') if amp_dtype == torch.float16 else None
    progress = (0, -1.0, -1)
    if args.resume:
        progress = load_resume_checkpoint(args.resume, model, optimizer, scaler, args.model, norm)
        if progress[0] >= args.iters:
            raise CommandError(f'--resume {args.resume} is at iteration {progress[0]}, already >= --iters '
                               f'{args.iters}')
        print(f'resumed from {args.resume} at iteration {progress[0]}', flush=True)
    return model, norm, optimizer, scaler, progress


def _write_final_outputs(out_dir: str, summary: Dict[str, float]) -> None:
    best_path = os.path.join(out_dir, 'model_best.pth.tar')
    if os.path.isfile(best_path):
        write_final_safetensors(best_path, os.path.join(out_dir, 'model_best.safetensors'))
    with open(os.path.join(out_dir, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=2)


def train_from_args(args: argparse.Namespace) -> Dict[str, float]:
    """ The whole command; returns the summary (also written to ``summary.json``). The output folder is created
    only once data and model are ready.
    """
    validate_args(args)
    model_kwargs = parse_model_kwargs(args.model_kwargs)
    milestones = parse_milestones(args.milestones, args.iters)
    out_dir = args.out or os.path.join('output', 'train_cifar', f'{args.model}-{args.dataset}')
    device = torch.device(args.device)
    amp_dtype = (torch.float16 if device.type == 'cuda' else torch.bfloat16) if args.amp else None

    train_x, train_y, test_x, test_y, class_names = _load_data(args)
    num_classes = NUM_CLASSES[args.dataset]
    train_y, noise_rate = _noisy_labels(args, train_y, num_classes)
    model, norm, optimizer, scaler, (start_it, best_acc, best_it) = _build_training(
        args, num_classes, model_kwargs, device, amp_dtype)
    print(f'{args.dataset}: {len(train_x)} train / {len(test_x)} test images, {num_classes} classes; inputs '
          f'normalised per channel with the model data config (mean {list(norm["mean"])}, std {list(norm["std"])}, '
          f'pixels in [0, 1])', flush=True)
    train_set = TrainBatches(train_x, train_y, norm['mean'], args.batch_size, args.seed, std=norm['std'])
    loader = DataLoader(train_set, batch_size=None, sampler=range(start_it, args.iters), num_workers=args.workers,
                        pin_memory=device.type == 'cuda', persistent_workers=False)
    n_params = sum(p.numel() for p in model.parameters())
    print(f'{args.model}: {n_params / 1e6:.3f}M params; {args.iters} iterations of batch {args.batch_size} '
          f'({args.iters / train_set.batches_per_epoch:.1f} epochs), lr {args.lr} /10 at {milestones}, '
          f'{"Nesterov " if args.nesterov else ""}SGD momentum {args.momentum} wd {args.weight_decay}, '
          f'device {device}{", amp " + str(amp_dtype).split(".")[-1] if amp_dtype else ""}', flush=True)
    # plain values only (a dispatcher may add e.g. a function to args): the checkpoint must load with weights_only
    run_args = {k: v for k, v in vars(args).items() if isinstance(v, (str, int, float, bool, list, tuple, type(None)))}
    run_args.update(milestones=milestones, num_classes=num_classes, model_kwargs=model_kwargs)
    best = {'acc': best_acc, 'it': best_it}

    def evaluate_fn(done: int):
        acc, loss_test = evaluate(model, test_x, test_y, norm, device, amp_dtype)
        print(f'test @ iter {done}: top-1 {acc:.2f}% (error {100 - acc:.2f}%), loss {loss_test:.4f}; best '
              f'{max(best["acc"], acc):.2f}% @ {done if acc > best["acc"] else best["it"]}', flush=True)
        return acc, loss_test

    def checkpoint_fn(done: int, acc: float, loss_test: float):
        is_best = acc > best['acc']
        if is_best:
            best.update(acc=acc, it=done)
        state = build_checkpoint(
            model, optimizer, scaler, args.model, done, train_set.batches_per_epoch, acc, best['acc'], best['it'],
            run_args, num_classes, class_names, norm, noise_rate)
        save_checkpoint_file(os.path.join(out_dir, 'last.pth.tar'), state)
        if is_best:
            save_checkpoint_file(os.path.join(out_dir, 'model_best.pth.tar'), state)

    schedule = Schedule(args.iters, milestones, args.lr, args.eval_every, args.log_every, args.seed)
    with _run_folder(out_dir):
        acc, loss_test = train_loop(model, optimizer, scaler, loader, schedule, start_it, device, amp_dtype,
                                     evaluate_fn, checkpoint_fn)
        summary = {'top1': acc, 'test_loss': loss_test, 'best_top1': best['acc'], 'best_iteration': best['it'],
                   'label_noise_rate': noise_rate, 'iterations': args.iters}
        _write_final_outputs(out_dir, summary)
    print(f'done: top-1 {acc:.2f}%, best {best["acc"]:.2f}% @ iter {best["it"]}; checkpoints in {out_dir}',
          flush=True)
    return summary


def run(args: argparse.Namespace) -> int:
    """ Run ``train-cifar`` with parsed ``args``; returns the exit status (0). User errors raise ``ResAttnError``. """
    train_from_args(args)
    return 0
