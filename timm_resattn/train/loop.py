""" The CIFAR training loop of ``timm_resattn.train``: schedule, one training step, evaluation, checkpoints.

The recipe is the paper's (§4.1; every default of ``timm_resattn.cli.train_cifar`` is):

* Nesterov SGD, momentum 0.9, weight decay 1e-4 on every parameter (BN included, as in Caffe), mini-batch 64;
* learning rate 0.1, divided by 10 at 64k and 96k iterations, training stops at 160k iterations (~205 epochs);
* augmentation (``cifar_data.augment_batch``): zero-pad by 4 px, a random 32x32 crop, a horizontal flip.

Where we differ: normalisation. The paper's CIFAR crops have "the per-pixel RGB mean value subtracted" (§4.1; this
module used to subtract the training set's mean image, with no division by a standard deviation). Here the pixels,
scaled to [0, 1], are normalised per channel with the model's own data config
(``timm.data.resolve_data_config(model=model)``: CIFAR-10's channel mean/std for the ``*_cifar`` models), exactly the
arithmetic of timm's eval transform, and what the paper does on ImageNet ("scale to [0, 1] and mean value subtracted
and standard variance divided", §4.2). A checkpoint of this loop therefore gets the inputs it was trained on through
timm's own preprocessing (``validate.py --checkpoint``, ``create_transform``, the classify command, an HF export),
with no flags. The normalisation used is recorded in every checkpoint (``normalization``: mean, std, and where they
came from).

Everything random is a pure function of the seed and the iteration: the epoch's shuffle of epoch e, the crops and
flips of iteration i, the global RNG during iteration i. A resumed run therefore continues exactly where a run
stopped, whatever the number of data-loading workers, and on the CPU two runs with the same seed (and the same
number of threads) match bit for bit.

On a GPU, what stays identical for a seed is everything drawn from it: the data order, the crops and flips (made on
the CPU by the data loader), the label noise, the initial weights (drawn on the CPU, then moved) and the seed of
each iteration's dropout / drop-path. The arithmetic is not bit-reproducible on CUDA: cuDNN's convolution
algorithms, the backward pass of the bilinear upsampling in every mask branch and of the cross-entropy sum in an
order that varies between runs, so two runs (or a run and its resumed copy) differ in the last bits after the first
step and drift apart into statistically equivalent, not identical, results. ``torch.use_deterministic_algorithms``
can't change that here: PyTorch has no deterministic CUDA backward for bilinear ``interpolate`` or ``NLLLoss``
and raises instead. AMP (``--amp``) adds the rounding of float16/bfloat16 on top.

The host waits for the device only at log and eval points (``train_loop``): losses are summed on the device, the
first non-finite one is recorded there and reported at the next of those points.

Checkpoints use timm's ``CheckpointSaver`` layout (``state_dict``, ``arch``, ``epoch``, ``optimizer``, ``version``,
``args``, ``metric``; plus ``iteration``, ``normalization``, ``amp_scaler``), built in one place
(``build_checkpoint``) and written atomically (``save_checkpoint_file``); the final weights go to a safetensors file
in one place too (``write_final_safetensors``). A non-finite loss stops training at the next log or eval point
(``TrainingDiverged``, naming the iteration where it first appeared) and a non-finite state is never written.
Resuming checks the checkpoint's fields (``RESUME_FIELDS``, ``NORMALIZATION_FIELDS``) before using them.

Copyright the timm-resattn authors, Apache-2.0.
"""
import math
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import MissingFileError, ResAttnError, WeightsError
from ..schema import Any_, Float, Int, Schema, SchemaViolation, Str
from ..weights import METADATA_KEY, atomic_write, read_checkpoint, check_metadata, check_state_dict, save_state_dict
from .cifar_data import normalize, stream_seed

__all__ = [
    'TrainingDiverged', 'Schedule', 'lr_at', 'data_normalization', 'train_step', 'backward_and_step', 'evaluate',
    'build_checkpoint',
    'save_checkpoint_file', 'write_final_safetensors', 'load_resume_checkpoint', 'train_loop',
]

CHECKPOINT_VERSION = 2  # timm's CheckpointSaver: resume at epoch + 1


class TrainingDiverged(ResAttnError, RuntimeError):
    """ The loss or the weights became non-finite (NaN/inf): usually a too large learning rate. """


@dataclass
class Schedule:
    iters: int
    milestones: List[int]
    base_lr: float
    eval_every: int
    log_every: int
    seed: int


def lr_at(it: int, base_lr: float, milestones: Sequence[int], gamma: float = 0.1) -> float:
    """ Step schedule: ``base_lr * gamma ** (number of milestones <= it)`` (0-based iterations). """
    return base_lr * gamma ** sum(it >= m for m in milestones)


def data_normalization(model: nn.Module) -> Dict[str, object]:
    """ The per-channel mean/std of the model's data config, as timm's transforms will apply them. """
    from timm.data import resolve_data_config
    config = resolve_data_config({}, model=model)
    return {
        'mean': tuple(float(v) for v in config['mean']),
        'std': tuple(float(v) for v in config['std']),
        'pixel_range': (0.0, 1.0),
        'source': 'timm.data.resolve_data_config(model=model)',
    }


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Optional[torch.amp.GradScaler],
               x: torch.Tensor, y: torch.Tensor, amp_dtype: Optional[torch.dtype], it: int) -> torch.Tensor:
    """ One SGD step on ``(x, y)``; returns the loss as a detached float32 0-dim tensor on the model's device,
    without waiting for it (no host sync: ``train_loop`` checks it for NaN/inf at its log and eval points).
    """
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad(set_to_none=True)
    backward_and_step(loss, optimizer, scaler)
    return loss.detach().float()


def backward_and_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                      scaler: Optional[torch.amp.GradScaler] = None) -> None:
    """ ``loss.backward()`` and ``optimizer.step()``, through ``scaler`` (fp16 loss scaling) when given. """
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, normalization: Dict[str, object],
             device: torch.device, amp_dtype: Optional[torch.dtype], batch_size: int = 500) -> Tuple[float, float]:
    """ (top-1 accuracy in %, mean cross-entropy) on a uint8 test set, normalised as in training, no
    augmentation. Runs in eval mode; the model is left in the mode it had on entry.
    """
    if len(images) == 0:
        raise ValueError('evaluate: the test set holds no images')
    was_training = model.training
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=device)  # summed on the device: one host sync at the end
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    try:
        for i in range(0, len(images), batch_size):
            x = normalize(images[i:i + batch_size].to(device), normalization['mean'], normalization['std'])
            y = labels[i:i + batch_size].to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                out = model(x)
            loss_sum += F.cross_entropy(out.float(), y, reduction='sum')
            correct += (out.argmax(dim=1) == y).sum()
    finally:
        model.train(was_training)
    n = len(images)
    return 100.0 * int(correct) / n, float(loss_sum) / n


def _check_finite(state_dict: Dict[str, torch.Tensor], iteration: int) -> None:
    for k, v in state_dict.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise TrainingDiverged(
                f'training diverged by iteration {iteration}: {k} holds non-finite values; no checkpoint was '
                f'written for this state (try a smaller --lr)'
            )


def build_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Optional[torch.amp.GradScaler],
                     arch: str, iteration: int, batches_per_epoch: int, metric: float, best_metric: float,
                     best_iteration: int, run_args: Dict[str, object], num_classes: int, class_names: List[str],
                     normalization: Dict[str, object], label_noise_rate: float) -> Dict[str, object]:
    """ THE place that builds a checkpoint dict (timm's ``CheckpointSaver`` layout, so ``validate.py
    --checkpoint``, ``timm.create_model(..., checkpoint_path=...)`` and ``resume_checkpoint`` take it).

    Raises ``TrainingDiverged`` if the weights are not finite: a NaN state is never written.
    """
    state_dict = model.state_dict()
    _check_finite(state_dict, iteration)
    state = {
        'epoch': iteration // batches_per_epoch,
        'iteration': iteration,
        'arch': arch,
        'state_dict': state_dict,
        'optimizer': optimizer.state_dict(),
        'version': CHECKPOINT_VERSION,
        'args': run_args,
        'metric': metric,
        'best_metric': best_metric,
        'best_iteration': best_iteration,
        'num_classes': num_classes,
        'class_names': class_names,
        'normalization': normalization,
        'label_noise_rate': label_noise_rate,
    }
    if hasattr(model, 'weights_metadata'):  # the architecture and its switches (checked on load)
        state[METADATA_KEY] = model.weights_metadata()
    if scaler is not None:
        state['amp_scaler'] = scaler.state_dict()
    return state


def save_checkpoint_file(path: str, state: Dict[str, object]) -> None:
    """ ``torch.save(state, path)``, atomically: a crash or interrupt leaves the previous file (or none) and no
    ``.tmp`` behind.
    """
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def write_final_safetensors(checkpoint_path: str, out_path: str) -> None:
    """ THE place that writes the final weights (the ``state_dict`` of ``checkpoint_path``) as safetensors, with
    the checkpoint's architecture metadata in the header. """
    best = read_checkpoint(checkpoint_path)
    save_state_dict(best['state_dict'], out_path, metadata=best.get(METADATA_KEY))


def _channel_triple(positive: bool):
    def ok(value) -> bool:
        if not isinstance(value, (tuple, list)) or len(value) != 3:
            return False
        try:
            numbers = [Float().check(v) for v in value]
        except SchemaViolation:  # not a finite real number
            return False
        return all(v > 0 for v in numbers) if positive else True
    return Any_(ok, f'3 finite numbers{" > 0" if positive else ""}, one per channel')


# The fields of a checkpoint of this loop that resuming reads, checked in one place (one ``WeightsError`` line).
RESUME_FIELDS = Schema({
    'iteration': Int(0, 10 ** 12),
    'best_metric': Float(-1.0, 100.0),
    'metric': Float(0.0, 100.0),
    'best_iteration': Int(-1, 10 ** 12),
    'arch': Str(non_empty=True),
}, error=WeightsError, what='field')
NORMALIZATION_FIELDS = Schema({
    'mean': _channel_triple(positive=False),
    'std': _channel_triple(positive=True),
    'pixel_range': Any_(lambda v: isinstance(v, (tuple, list)) and len(v) == 2, 'a (low, high) pair'),
    'source': Str(),
}, error=WeightsError, what='normalization field')


def load_resume_checkpoint(path: str, model: nn.Module, optimizer: torch.optim.Optimizer,
                           scaler: Optional[torch.amp.GradScaler], arch: str,
                           normalization: Dict[str, object]) -> Tuple[int, float, int]:
    """ Restore model, optimizer (and AMP scaler) from a checkpoint of this loop; returns ``(iteration,
    best_metric, best_iteration)``. Read with ``weights_only=True``; anything missing or not fitting is a
    ``WeightsError`` naming the file.
    """
    if not os.path.isfile(path):
        raise MissingFileError(f'--resume {path}: no such file')
    try:
        ckpt = read_checkpoint(path)
    except WeightsError as e:
        raise WeightsError(f'--resume {path}: cannot read it as a checkpoint: {e}') from None
    what = 'a training checkpoint of timm-resattn train-cifar (last.pth.tar)'
    if not isinstance(ckpt, dict):
        raise WeightsError(f'--resume {path}: holds a {type(ckpt).__name__}, expected {what}')
    missing = [k for k in ('state_dict', 'optimizer', 'iteration') if k not in ckpt]
    if missing:
        hint = ' (it looks like a plain state_dict)' if all(torch.is_tensor(v) for v in ckpt.values()) else ''
        raise WeightsError(f'--resume {path}: no {", ".join(repr(k) for k in missing)} entry{hint}; expected {what}')
    fields = RESUME_FIELDS.check({k: ckpt[k] for k in RESUME_FIELDS.names() if k in ckpt}, source=f'--resume {path}')
    saved_arch = fields.get('arch')
    if saved_arch is not None and saved_arch != arch:
        raise WeightsError(f'--resume {path}: a checkpoint of {saved_arch!r}, but --model is {arch!r}')
    saved_norm = ckpt.get('normalization')
    if saved_norm is None or 'pixel_mean' in ckpt:
        raise WeightsError(
            f'--resume {path}: trained with the per-pixel mean image of an older train_cifar; this version '
            f'normalises per channel with the model data config, so the run cannot continue consistently'
        )
    saved_norm = NORMALIZATION_FIELDS.check(saved_norm, source=f'--resume {path}: normalization',
                                            required=('mean', 'std'))
    if tuple(saved_norm['mean']) != tuple(normalization['mean']) or \
            tuple(saved_norm['std']) != tuple(normalization['std']):
        raise WeightsError(f'--resume {path}: trained with normalisation {saved_norm}, the model now gives '
                           f'{normalization}')
    source = f'--resume {path} (--model {arch} with these --model-kwargs)'
    check_state_dict(ckpt['state_dict'], model, source=source, drop_classifier=False, adapt_in_chans=False)
    check_metadata(ckpt.get(METADATA_KEY) or {}, model, source)
    model.load_state_dict(ckpt['state_dict'])
    _load_optimizer(path, optimizer, ckpt['optimizer'])
    if scaler is not None and 'amp_scaler' in ckpt:
        try:
            scaler.load_state_dict(ckpt['amp_scaler'])
        except (ValueError, KeyError, RuntimeError, TypeError, AttributeError) as e:
            raise WeightsError(f'--resume {path}: its amp_scaler state is not a GradScaler state: {e}') from None
    best_acc = fields.get('best_metric', fields.get('metric', -1.0))
    return fields['iteration'], best_acc, fields.get('best_iteration', -1)


# the optimizer settings a resumed run must share with the run it continues (the learning rate follows the schedule)
_SGD_SETTINGS = ('momentum', 'dampening', 'weight_decay', 'nesterov', 'maximize')


def _same_setting(saved: Any, given: Any) -> bool:
    if isinstance(given, bool) or isinstance(saved, bool):
        return saved is given
    return isinstance(saved, (int, float)) and saved == given  # NaN equals nothing


def _load_optimizer(path: str, optimizer: torch.optim.Optimizer, state: Any) -> None:
    """ ``optimizer.load_state_dict(state)`` for ``--resume path``, checked: the restored settings must be the ones
    this run was given (``optimizer``'s before the load: its flags), and every per-parameter state tensor (SGD's
    momentum buffer) must have its parameter's shape and finite floating values. Anything else is a
    ``WeightsError`` naming the file, before any training step. """
    given = [{k: g[k] for k in _SGD_SETTINGS if k in g} for g in optimizer.param_groups]
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError, TypeError, AttributeError, IndexError) as e:
        raise WeightsError(f'--resume {path}: its optimizer state does not fit this model: {e}') from None
    for want, group in zip(given, optimizer.param_groups):
        differ = {k: group.get(k) for k, v in want.items() if not _same_setting(group.get(k), v)}
        if differ:
            raise WeightsError(
                f'--resume {path}: the run was trained with optimizer settings '
                f'{", ".join(f"{k}={v!r}" for k, v in differ.items())}, this run is given '
                f'{", ".join(f"{k}={want[k]!r}" for k in differ)}; resume with the flags of the run it continues')
    for group in optimizer.param_groups:
        for p in group['params']:
            for name, value in optimizer.state.get(p, {}).items():
                if not torch.is_tensor(value):
                    continue
                if value.shape != p.shape or not value.is_floating_point():
                    problem = f'a {value.dtype} tensor of shape {tuple(value.shape)}'
                elif not bool(torch.isfinite(value).all()):
                    problem = 'a tensor with NaN/Inf values'
                else:
                    continue
                raise WeightsError(f'--resume {path}: its optimizer state {name!r} of a parameter of shape '
                                   f'{tuple(p.shape)} is {problem}; the file is damaged')


def train_loop(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Optional[torch.amp.GradScaler],
               loader, schedule: Schedule, start_it: int, device: torch.device, amp_dtype: Optional[torch.dtype],
               evaluate_fn: Callable[[int], Tuple[float, float]],
               checkpoint_fn: Callable[[int, float, float], None]) -> Tuple[float, float]:
    """ Iterations ``start_it .. schedule.iters - 1``; logs every ``log_every``; every ``eval_every`` and at the
    end calls ``evaluate_fn(done) -> (top-1, test loss)`` and then ``checkpoint_fn(done, top-1, test loss)``.
    Returns the last (top-1, test loss).

    The host waits for the device only at log and eval points: the training losses are summed on the device, and
    the first iteration with a non-finite loss is recorded there. At the next log or eval point that follows it,
    a non-finite training loss raises ``TrainingDiverged`` naming that iteration, before anything is evaluated or
    saved (the model in memory has taken the steps in between; no checkpoint of it is written); so does a
    non-finite test loss, before the checkpoint. The checkpoints written before stay. The data loader's worker
    processes are shut down when the loop ends, also on an error or Ctrl-C.
    """
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    bad_it = torch.full((), -1, dtype=torch.long, device=device)  # the first iteration with a non-finite loss
    bad_loss = torch.zeros((), dtype=torch.float32, device=device)
    loss_n, t0, seen = 0, time.time(), 0
    acc = loss_test = float('nan')
    batches = iter(loader)
    try:
        for it in range(start_it, schedule.iters):
            x, y = next(batches)
            lr = lr_at(it, schedule.base_lr, schedule.milestones)
            for group in optimizer.param_groups:
                group['lr'] = lr
            torch.manual_seed(stream_seed(schedule.seed, 3, it))  # dropout / drop-path of this iteration
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = train_step(model, optimizer, scaler, x, y, amp_dtype, it)
            newly_bad = (bad_it < 0) & ~torch.isfinite(loss)
            bad_it = torch.where(newly_bad, it, bad_it)
            bad_loss = torch.where(newly_bad, loss, bad_loss)
            loss_sum += loss
            loss_n += 1
            seen += len(x)
            done = it + 1
            log = done % schedule.log_every == 0 or done == schedule.iters
            test = done % schedule.eval_every == 0 or done == schedule.iters
            if not (log or test):
                continue
            first_bad = int(bad_it)  # the host waits for the device here, not every iteration
            if first_bad >= 0:
                raise TrainingDiverged(
                    f'training diverged at iteration {first_bad + 1}: the loss is {float(bad_loss)} (lr '
                    f'{lr_at(first_bad, schedule.base_lr, schedule.milestones):g}); stopped without saving this '
                    f'state (try a smaller --lr)'
                )
            if log:
                dt = time.time() - t0
                print(f'iter {done}/{schedule.iters}  loss {float(loss_sum) / loss_n:.4f}  lr {lr:.4g}  '
                      f'{seen / max(dt, 1e-9):.0f} imgs/s', flush=True)
                loss_sum.zero_()
                loss_n, t0, seen = 0, time.time(), 0
            if test:
                acc, loss_test = evaluate_fn(done)
                if not math.isfinite(loss_test):
                    raise TrainingDiverged(
                        f'training diverged by iteration {done}: the test loss is {loss_test} (lr {lr:g}); stopped '
                        f'without saving this state (try a smaller --lr)'
                    )
                checkpoint_fn(done, acc, loss_test)
                t0, seen = time.time(), 0  # imgs/s counts training only
    finally:
        del batches  # the only reference: the iterator's finaliser stops and joins the worker processes now
    return acc, loss_test
