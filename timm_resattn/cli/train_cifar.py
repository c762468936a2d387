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
``validate.py --checkpoint``), ``model_best.safetensors`` and ``summary.json`` at the end. A folder holding any of
them (an earlier run) is refused unless ``--resume`` names its ``last.pth.tar`` (the run continues that run; from
its ``model_best.pth.tar`` it would replace a run that went further) or ``--overwrite-run`` is given (the earlier
run's four files are deleted when training starts; other files stay). A run holds a lock on its folder: a second run
into it is refused while the first is alive. The folder (or the nearest existing folder above it) must be writable;
that is checked before anything is read.

On CUDA: ``--device cuda:N`` is checked against the device count when the flags are parsed; the host waits for
the GPU only at log and eval points (a non-finite loss is therefore noticed there, naming the iteration where it
first appeared; fp16's GradScaler still syncs every step, bf16 does not need one); ``--amp bf16`` runs bfloat16
autocast where ``torch.cuda.is_bf16_supported()``. What is and is not bit-reproducible on a GPU: see
``timm_resattn.train.loop``.

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

from ..errors import CommandError, DataError, ResAttnError
from ..train.cifar_data import LAYOUT, NUM_CLASSES, TrainBatches, apply_label_noise, download_cifar, load_cifar
from ..train.loop import (
    Schedule, build_checkpoint, data_normalization, evaluate, load_resume_checkpoint, save_checkpoint_file,
    train_loop, write_final_safetensors,
)
from ..weights import atomic_write
from .common import (
    MAX_SEED, PathUse, number_type, check_model_input, declare_paths, device_argument, max_workers,
    model_kwargs_argument, parse_model_kwargs, positive_float, same_file, seed_int, unit_interval, workers_int,
)

__all__ = ['configure', 'run', 'parse_milestones']

DESCRIPTION = (
    'Train a Residual Attention Network on CIFAR-10/100 with the recipe of the paper (§4.1). One deviation: inputs '
    'are normalised per channel with the model\'s own data config (timm.data.resolve_data_config), not with the '
    'paper\'s per-pixel mean image, so timm\'s preprocessing (validate.py --checkpoint, create_transform) matches '
    'training; checkpoints record the normalisation.'
)


MAX_ITERS = 10 ** 9  # iteration counts (--iters, --eval-every, --log-every): 1 .. a billion
MAX_BATCH = 65536  # --batch-size; also at most the training set, checked when it is read
RUN_FILES = ('last.pth.tar', 'model_best.pth.tar', 'model_best.safetensors', 'summary.json')  # what a run writes

_iters = number_type(int, 1, MAX_ITERS, what=f'an iteration count in [1, {MAX_ITERS}]')
_batch_size = number_type(int, 1, MAX_BATCH, what=f'a batch size in [1, {MAX_BATCH}]')
_momentum = number_type(float, 0.0, 1.0, what='a momentum in [0, 1)', maximum_open=True)
_weight_decay = number_type(float, 0.0, 1.0, what='a weight decay in [0, 1]')
_drop_path = number_type(float, 0.0, 1.0, what='a rate in [0, 1)', maximum_open=True)


def out_dir_of(args: argparse.Namespace) -> str:
    """ The run folder: ``--out``, or ``output/train_cifar/<model>-<dataset>``. """
    return args.out or os.path.join('output', 'train_cifar', f'{args.model}-{args.dataset}')


def _continues_run(args: argparse.Namespace) -> bool:
    """ ``--resume`` names the ``last.pth.tar`` of ``--out`` itself: the run continues the run of that folder (and
    replaces its files). Resuming from another checkpoint there (``model_best.pth.tar``) would replace a run that
    went further, and a link to it from elsewhere is another file: both refused like any run into an occupied
    folder. """
    if not args.resume:
        return False
    out = out_dir_of(args)
    return same_file(os.path.dirname(os.path.abspath(args.resume)), out) and \
        same_file(args.resume, os.path.join(out, 'last.pth.tar'))


def _inputs(args: argparse.Namespace) -> List[PathUse]:
    """ What a run reads: the dataset's files and ``--resume`` (rewritten when it continues its own folder). """
    folder, train_files, test_files, meta, _, _ = LAYOUT[args.dataset]
    data = [PathUse('--data-dir', os.path.join(args.data_dir, folder, f)) for f in (*train_files, *test_files, meta)]
    resume = [PathUse('--resume', args.resume, replace=_continues_run(args))] if args.resume else []
    return data + resume


def _outputs(args: argparse.Namespace) -> List[PathUse]:
    """ What a run writes in its folder (created by the run). An earlier run's files there are replaced only when
    ``--resume`` continues that run or ``--overwrite-run`` is given. """
    out = out_dir_of(args)
    replace = args.overwrite_run or _continues_run(args)
    hint = (f'--out {out} holds an earlier run: pass --resume {os.path.join(out, "last.pth.tar")} to continue it, or '
            f'--overwrite-run to replace it, or another --out')
    return [PathUse('--out', os.path.join(out, name), replace=replace, hint=hint, create_folder=True)
            for name in RUN_FILES]


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
    p.add_argument('--iters', type=_iters, default=160_000,
                   help=f'training iterations in [1, {MAX_ITERS}] (paper: 160k)')
    p.add_argument('--milestones', default=None,
                   help='iterations where the lr is divided by 10, e.g. "64000,96000" (default: 40%% and 60%% of '
                        '--iters, the paper\'s 64k/96k of 160k)')
    p.add_argument('--batch-size', type=_batch_size, default=64,
                   help=f'images per iteration, in [1, {MAX_BATCH}] and at most the training set (default 64)')
    p.add_argument('--lr', type=positive_float, default=0.1, help='base learning rate, a finite number > 0')
    p.add_argument('--momentum', type=_momentum, default=0.9, help='SGD momentum in [0, 1) (default 0.9)')
    p.add_argument('--weight-decay', type=_weight_decay, default=1e-4,
                   help='L2 weight decay in [0, 1] (default 1e-4)')
    p.add_argument('--no-nesterov', dest='nesterov', action='store_false', help='plain momentum instead of Nesterov')
    p.add_argument('--label-noise', type=unit_interval, default=None, metavar='R',
                   help="the paper's r (Eq. 7): clean-label ratio in [0, 1]; each training label is kept with "
                        "probability R, else replaced by a uniformly chosen other class (Table 5's 10%% noise: R=0.9)")
    p.add_argument('--seed', type=seed_int, default=0, help=f'random seed in [0, {MAX_SEED}] (default 0)')
    p.add_argument('--eval-every', type=_iters, default=4000, help='test and checkpoint every N iterations')
    p.add_argument('--log-every', type=_iters, default=100,
                   help='print the mean training loss every N iterations (also where a non-finite loss is noticed)')
    p.add_argument('--amp', nargs='?', const='auto', default=None, choices=('auto', 'bf16', 'fp16'),
                   help='mixed precision: bf16 (CPU, and CUDA where torch.cuda.is_bf16_supported()), fp16 (CUDA, with '
                        'a GradScaler); --amp alone: fp16 on CUDA, bf16 on CPU')
    device_argument(p, default='cuda' if torch.cuda.is_available() else 'cpu', help='the device to train on')
    p.add_argument('--workers', type=workers_int, default=min(2, max_workers()),
                   help='DataLoader processes preparing augmented batches, 0 .. the CPUs this process may use '
                        '(default: 2 or fewer)')
    p.add_argument('--out', default=None,
                   help='output folder (default: output/train_cifar/<model>-<dataset>); one that holds an earlier '
                        'run is refused unless --resume continues that run or --overwrite-run is given')
    p.add_argument('--overwrite-run', action='store_true',
                   help="replace the earlier run in --out: its checkpoints and summary are deleted when training "
                        "starts (other files in the folder are never touched)")
    p.add_argument('--resume', default=None, help='a last.pth.tar (or any checkpoint of this command) to continue')
    p.add_argument('--drop-path', type=_drop_path,
                   default=0.0, help='stochastic depth rate in [0, 1) (not in the paper)')
    model_kwargs_argument(p, 'architecture overrides passed to timm.create_model, e.g. the ablations of §4.1: '
                             'attention_residual=False mask_act=spatial mask_type=local')
    declare_paths(p, inputs=_inputs, outputs=_outputs)
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


def validate_args(args: argparse.Namespace) -> None:
    """ What argparse's types can't check, before anything is read, built or written (the numbers and the device
    are checked when parsed); a ``CommandError`` names the flag. """
    if not timm.is_model(args.model):
        raise CommandError(f'--model {args.model!r} is not a registered timm model '
                           f'(e.g. resattnet56_cifar, resattnet92_cifar)')
    out = out_dir_of(args)
    if os.path.exists(out) and not os.path.isdir(out):
        raise CommandError(f'--out {out} exists and is not a folder')
    if not args.download and not os.path.isdir(args.data_dir):
        raise CommandError(f'--data-dir {args.data_dir}: no such folder (pass --download to fetch {args.dataset})')
    if args.resume is not None and not os.path.isfile(args.resume):
        raise CommandError(f'--resume {args.resume}: no such file')
    if args.nesterov and args.momentum == 0:
        raise CommandError('--momentum 0 with Nesterov momentum (the default): Nesterov needs a momentum > 0; pass '
                           '--no-nesterov for plain SGD')
    amp_dtype(args.amp, args.device)


def cuda_supports_bf16(device: torch.device) -> bool:
    """ Whether ``device`` (not just the current one) computes in bf16 natively:
    ``torch.cuda.is_bf16_supported(including_emulation=False)`` (with emulation it is true on almost any GPU). """
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def amp_dtype(choice: Optional[str], device: torch.device) -> Optional[torch.dtype]:
    """ ``--amp`` -> the autocast dtype: ``bf16`` on CPU, and on CUDA where ``torch.cuda.is_bf16_supported()``;
    ``fp16`` on CUDA only (with a GradScaler); ``auto`` (``--amp`` alone, its old meaning): fp16 on CUDA, bf16
    elsewhere. A precision the device lacks is a ``CommandError``. """
    if choice is None:
        return None
    if choice == 'auto':
        choice = 'fp16' if device.type == 'cuda' else 'bf16'
    if choice == 'fp16':
        if device.type != 'cuda':
            raise CommandError(f'--amp fp16 needs a CUDA device (a GradScaler); on {device.type} use --amp bf16')
        return torch.float16
    if device.type == 'cuda':
        if not cuda_supports_bf16(device):
            raise CommandError(f'--amp bf16: {device} does not support bfloat16; use --amp fp16')
    elif device.type != 'cpu':
        raise CommandError(f'--amp bf16 is offered on cpu and cuda, not on {device.type}')
    return torch.bfloat16


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
def _run_folder(path: str, replace_earlier: bool):
    """ Create ``path`` and hold an exclusive lock on it while the run writes there, so that two runs into one
    folder never interleave (a second one is refused; the lock goes with the process, even when it is killed).
    ``replace_earlier`` (``--overwrite-run``): delete the earlier run's files first. If the run fails before
    writing anything into folders it created, they are removed again (every level it created). """
    created = []  # the folders this run creates, deepest first: removed again if it fails before writing
    folder = os.path.abspath(path)
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        created.append(folder)
        folder = os.path.dirname(folder)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise CommandError(f'--out {path}: cannot create this folder ({e.strerror or e})') from None
    lock = _lock_folder(path)
    try:
        if replace_earlier:
            for name in RUN_FILES:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(path, name))
        yield path
    except BaseException:
        for folder in created:
            if os.path.isdir(folder) and not os.listdir(folder):
                os.rmdir(folder)
        raise
    finally:
        if lock is not None:
            os.close(lock)


def _lock_folder(path: str) -> Optional[int]:
    """ An exclusive ``flock`` on the folder itself (no lock file is left behind); ``None`` where the platform has
    no ``fcntl``. Another live run holding it is a ``CommandError``. """
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise CommandError(f'--out {path}: another train-cifar run is writing into this folder; wait for it or '
                           f'choose another --out') from None
    return fd


def _load_data(args: argparse.Namespace):
    if args.download:
        download_cifar(args.data_dir, args.dataset)
    train_x, train_y, class_names = load_cifar(args.data_dir, args.dataset, train=True)
    test_x, test_y, _ = load_cifar(args.data_dir, args.dataset, train=False)
    if len(train_x) < args.batch_size:
        raise CommandError(f'--batch-size {args.batch_size} is larger than the {len(train_x)} training images')
    if len(test_x) == 0:
        folder = os.path.join(args.data_dir, LAYOUT[args.dataset][0])
        raise DataError(f'{folder}: the test set holds no images; a run needs at least one to evaluate')
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
    model = _create_model(args, num_classes, model_kwargs)
    check_model_input(model, args.model, input_size=32, size_flag='CIFAR')  # before any data is read
    model = model.to(device)
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
    text = json.dumps(summary, indent=2)

    def write(tmp: str) -> None:
        with open(tmp, 'w') as f:
            f.write(text)
    atomic_write(os.path.join(out_dir, 'summary.json'), write)


def train_from_args(args: argparse.Namespace) -> Dict[str, float]:
    """ The whole command; returns the summary (also written to ``summary.json``). Runs after the dispatcher's
    ``check_paths`` (every file it reads and writes); builds and checks the model, then reads the data; the output
    folder is created only once data and model are ready.
    """
    validate_args(args)
    model_kwargs = parse_model_kwargs(args.model_kwargs)
    milestones = parse_milestones(args.milestones, args.iters)
    out_dir = out_dir_of(args)
    device = args.device  # checked by parse_device when parsed
    amp = amp_dtype(args.amp, device)

    num_classes = NUM_CLASSES[args.dataset]
    model, norm, optimizer, scaler, (start_it, best_acc, best_it) = _build_training(
        args, num_classes, model_kwargs, device, amp)
    train_x, train_y, test_x, test_y, class_names = _load_data(args)
    train_y, noise_rate = _noisy_labels(args, train_y, num_classes)
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
          f'device {device}{", amp " + str(amp).split(".")[-1] if amp else ""}', flush=True)
    # plain values only (a dispatcher may add e.g. a function to args): the checkpoint must load with weights_only
    run_args = {k: v for k, v in vars(args).items()
                if not k.startswith('_') and isinstance(v, (str, int, float, bool, list, tuple, type(None)))}
    run_args.update(milestones=milestones, num_classes=num_classes, model_kwargs=model_kwargs, device=str(device))
    best = {'acc': best_acc, 'it': best_it}

    def evaluate_fn(done: int):
        acc, loss_test = evaluate(model, test_x, test_y, norm, device, amp)
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
    with _run_folder(out_dir, replace_earlier=args.overwrite_run and not _continues_run(args)):
        acc, loss_test = train_loop(model, optimizer, scaler, loader, schedule, start_it, device, amp,
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
