""" recipes/*.yaml are timm train.py --config files: every key must be a train.py argument dest with a value of
the type argparse would have produced (train.py applies the YAML with parser.set_defaults(**cfg): unknown keys
and string-typed numbers are silently accepted there, and break or mislead later). The recipes are then pushed
through the same timm calls train.py makes (lr from lr_base, optimizer, scheduler, transforms, mixup, loss). """
import argparse
import math
from pathlib import Path

import pytest
import torch
import yaml

import timm
import timm_resattn  # noqa: F401
from timm.data import Mixup, create_transform, resolve_data_config
from timm.loss import BinaryCrossEntropy
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs

RECIPES = Path(__file__).resolve().parents[1] / 'recipes'
IMAGENET_TRAIN_IMAGES = 1_281_167

F, I, S, B, FL, IL, D = float, int, str, bool, 'float list', 'int list', dict  # noqa: E741 (one-letter type codes of the table below)
# train.py's argparse dests -> (type, default), transcribed from timm's train.py (huggingface/pytorch-image-models,
# the 0.9/1.0 argument set: dataset, model, optimizer, schedule, augmentation, BN, EMA and misc groups). Only
# arguments present in the released script are listed; newer train.py versions add more, none are removed here.
TRAIN_PY_ARGS = {
    # dataset
    'data': (S, None), 'data_dir': (S, None), 'dataset': (S, ''), 'train_split': (S, 'train'),
    'val_split': (S, 'validation'), 'dataset_download': (B, False), 'class_map': (S, ''),
    # model
    'model': (S, 'resnet50'), 'pretrained': (B, False), 'initial_checkpoint': (S, ''), 'resume': (S, ''),
    'no_resume_opt': (B, False), 'num_classes': (I, None), 'gp': (S, None), 'img_size': (I, None),
    'in_chans': (I, None), 'input_size': (IL, None), 'crop_pct': (F, None), 'mean': (FL, None), 'std': (FL, None),
    'interpolation': (S, ''), 'batch_size': (I, 128), 'validation_batch_size': (I, None),
    'channels_last': (B, False), 'fuser': (S, ''), 'grad_accum_steps': (I, 1), 'grad_checkpointing': (B, False),
    'fast_norm': (B, False), 'model_kwargs': (D, {}), 'head_init_scale': (F, None), 'head_init_bias': (F, None),
    'torchscript': (B, False), 'torchcompile': (S, None),
    # optimizer
    'opt': (S, 'sgd'), 'opt_eps': (F, None), 'opt_betas': (FL, None), 'momentum': (F, 0.9),
    'weight_decay': (F, 2e-5), 'clip_grad': (F, None), 'clip_mode': (S, 'norm'), 'layer_decay': (F, None),
    'opt_kwargs': (D, {}),
    # learning rate schedule
    'sched': (S, 'cosine'), 'sched_on_updates': (B, False), 'lr': (F, None), 'lr_base': (F, 0.1),
    'lr_base_size': (I, 256), 'lr_base_scale': (S, ''), 'lr_noise': (FL, None), 'lr_noise_pct': (F, 0.67),
    'lr_noise_std': (F, 1.0), 'lr_cycle_mul': (F, 1.0), 'lr_cycle_decay': (F, 0.5), 'lr_cycle_limit': (I, 1),
    'lr_k_decay': (F, 1.0), 'warmup_lr': (F, 1e-5), 'min_lr': (F, 0.0), 'epochs': (I, 300),
    'epoch_repeats': (F, 0.0), 'start_epoch': (I, None), 'decay_milestones': (IL, [90, 180, 270]),
    'decay_epochs': (F, 90), 'warmup_epochs': (I, 5), 'warmup_prefix': (B, False), 'cooldown_epochs': (I, 0),
    'patience_epochs': (I, 10), 'decay_rate': (F, 0.1),
    # augmentation and regularization
    'no_aug': (B, False), 'scale': (FL, [0.08, 1.0]), 'ratio': (FL, [3. / 4., 4. / 3.]), 'hflip': (F, 0.5),
    'vflip': (F, 0.0), 'color_jitter': (F, 0.4), 'aa': (S, None), 'aug_repeats': (F, 0), 'aug_splits': (I, 0),
    'jsd_loss': (B, False), 'bce_loss': (B, False), 'bce_target_thresh': (F, None), 'reprob': (F, 0.0),
    'remode': (S, 'pixel'), 'recount': (I, 1), 'resplit': (B, False), 'mixup': (F, 0.0), 'cutmix': (F, 0.0),
    'cutmix_minmax': (FL, None), 'mixup_prob': (F, 1.0), 'mixup_switch_prob': (F, 0.5), 'mixup_mode': (S, 'batch'),
    'mixup_off_epoch': (I, 0), 'smoothing': (F, 0.1), 'train_interpolation': (S, 'random'), 'drop': (F, 0.0),
    'drop_connect': (F, None), 'drop_path': (F, None), 'drop_block': (F, None),
    # batch norm
    'bn_momentum': (F, None), 'bn_eps': (F, None), 'sync_bn': (B, False), 'dist_bn': (S, 'reduce'),
    'split_bn': (B, False),
    # model EMA
    'model_ema': (B, False), 'model_ema_force_cpu': (B, False), 'model_ema_decay': (F, 0.9998),
    # misc
    'seed': (I, 42), 'worker_seeding': (S, 'all'), 'log_interval': (I, 50), 'recovery_interval': (I, 0),
    'checkpoint_hist': (I, 10), 'workers': (I, 4), 'save_images': (B, False), 'amp': (B, False),
    'amp_dtype': (S, 'float16'), 'amp_impl': (S, 'native'), 'no_ddp_bb': (B, False), 'synchronize_step': (B, False),
    'pin_mem': (B, False), 'no_prefetcher': (B, False), 'output': (S, ''), 'experiment': (S, ''),
    'eval_metric': (S, 'top1'), 'tta': (I, 0), 'local_rank': (I, 0), 'use_multi_epochs_loader': (B, False),
    'log_wandb': (B, False),
}


def _type_ok(value, kind) -> bool:
    if value is None:
        return True
    if kind is F:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is I:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind in (FL, IL):
        elem = F if kind == FL else I
        return isinstance(value, list) and value and all(_type_ok(v, elem) for v in value)
    return isinstance(value, kind)


def _load(name):
    with open(RECIPES / f'{name}.yaml') as f:
        return yaml.safe_load(f)  # what train.py does


def _train_args(cfg, world_size=8):
    """ train.py's args after parser.set_defaults(**cfg), plus the lr it derives from lr_base. """
    args = argparse.Namespace(**{k: v for k, (_, v) in TRAIN_PY_ARGS.items()})
    for k, v in cfg.items():
        setattr(args, k, v)
    if not args.lr:
        global_batch_size = args.batch_size * world_size * args.grad_accum_steps
        batch_ratio = global_batch_size / args.lr_base_size
        if not args.lr_base_scale:
            args.lr_base_scale = 'sqrt' if any(o in args.opt.lower() for o in ('ada', 'lamb')) else 'linear'
        if args.lr_base_scale == 'sqrt':
            batch_ratio = batch_ratio ** 0.5
        args.lr = args.lr_base * batch_ratio
    return args


@pytest.mark.parametrize('name', ['imagenet_paper', 'imagenet_modern'])
def test_recipe_keys_are_train_py_arguments(name):
    cfg = _load(name)
    assert isinstance(cfg, dict) and cfg
    unknown = sorted(set(cfg) - set(TRAIN_PY_ARGS))
    assert not unknown, f'{name}.yaml: not train.py arguments: {unknown}'
    wrong = {k: v for k, v in cfg.items() if not _type_ok(v, TRAIN_PY_ARGS[k][0])}
    assert not wrong, f'{name}.yaml: values of the wrong type (e.g. 1e-4 without a dot is a YAML string): {wrong}'
    assert timm.is_model(cfg['model'])
    timm.create_model(cfg['model'], device='meta', **cfg.get('model_kwargs', {}))


def _optimizer_and_scheduler(args, updates_per_epoch):
    model = timm.create_model(args.model, device='meta', num_classes=args.num_classes, **args.model_kwargs)
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args), **args.opt_kwargs)
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args), updates_per_epoch=updates_per_epoch)
    return optimizer, scheduler, num_epochs


def _lr_at(optimizer, scheduler, epoch):
    scheduler.step(epoch)
    return max(g['lr'] for g in optimizer.param_groups)


def test_paper_recipe_schedule():
    cfg = _load('imagenet_paper')
    args = _train_args(cfg, world_size=8)
    global_batch = args.batch_size * 8 * args.grad_accum_steps
    assert global_batch == 256 and args.lr == pytest.approx(0.1)
    # iterations of the paper at a global batch of 256
    iters_per_epoch = IMAGENET_TRAIN_IMAGES / global_batch
    # timm's multistep milestone m applies from 0-based epoch m - 1, i.e. after m - 1 full epochs
    for milestone, iters in zip(args.decay_milestones, (200_000, 400_000, 500_000)):
        assert abs((milestone - 1) * iters_per_epoch - iters) / iters < 0.005
    assert abs(args.epochs * iters_per_epoch - 530_000) / 530_000 < 0.005

    optimizer, scheduler, num_epochs = _optimizer_and_scheduler(args, math.ceil(iters_per_epoch))
    assert num_epochs == 106
    assert type(optimizer).__name__ == 'SGD'
    group = optimizer.param_groups[0]
    assert group['momentum'] == 0.9 and group['nesterov'] is False  # the paper's plain momentum SGD
    assert max(g['weight_decay'] for g in optimizer.param_groups) == pytest.approx(1e-4)
    # lr of each 0-based epoch as train.py sets it (scheduler.step(epoch) at the end of the previous epoch)
    expected = {0: 0.1, 39: 0.1, 40: 0.01, 79: 0.01, 80: 1e-3, 99: 1e-3, 100: 1e-4, 105: 1e-4}
    for epoch, lr in expected.items():
        assert _lr_at(optimizer, scheduler, epoch) == pytest.approx(lr), epoch
    # linear scaling for another global batch
    assert _train_args(cfg, world_size=4).lr == pytest.approx(0.05)

    # the training transform: Inception crop (scale/ratio), flip, colour jitter, no RandAugment / erasing
    model = timm.create_model(args.model, device='meta')
    data_config = resolve_data_config(vars(args), model=model)
    assert data_config['input_size'] == (3, 224, 224)
    tf = create_transform(
        input_size=data_config['input_size'], is_training=True, scale=args.scale, ratio=args.ratio,
        hflip=args.hflip, color_jitter=args.color_jitter, auto_augment=args.aa,
        interpolation=args.train_interpolation, re_prob=args.reprob, mean=data_config['mean'], std=data_config['std'])
    names = [type(t).__name__ for t in tf.transforms]
    assert names[0] == 'RandomResizedCropAndInterpolation' and 'RandomHorizontalFlip' in names
    assert 'ColorJitter' in names and 'RandomErasing' not in names
    assert args.smoothing == 0.0 and args.mixup == 0.0 and args.cutmix == 0.0


def test_modern_recipe_pieces():
    cfg = _load('imagenet_modern')
    args = _train_args(cfg, world_size=8)
    assert args.batch_size * 8 * args.grad_accum_steps == 2048 and args.lr == pytest.approx(5e-3)
    assert _train_args(cfg, world_size=4).lr == pytest.approx(5e-3 * 0.5 ** 0.5)  # sqrt scaling for LAMB

    optimizer, scheduler, num_epochs = _optimizer_and_scheduler(args, 626)
    assert type(optimizer).__name__ == 'Lamb' and num_epochs == 300
    assert _lr_at(optimizer, scheduler, 5) == pytest.approx(5e-3, rel=1e-3)  # end of warmup
    assert _lr_at(optimizer, scheduler, 150) == pytest.approx(2.5e-3, rel=0.05)  # cosine midpoint
    assert _lr_at(optimizer, scheduler, 299) < 1e-5

    model = timm.create_model(args.model, device='meta', **args.model_kwargs)
    data_config = resolve_data_config(vars(args), model=model)
    assert data_config['crop_pct'] == 0.95
    tf = create_transform(
        input_size=data_config['input_size'], is_training=True, scale=args.scale, ratio=args.ratio,
        hflip=args.hflip, color_jitter=args.color_jitter, auto_augment=args.aa,
        interpolation=args.train_interpolation, re_prob=args.reprob, mean=data_config['mean'], std=data_config['std'])
    assert 'RandAugment' in [type(t).__name__ for t in tf.transforms]
    mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                  prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                  label_smoothing=args.smoothing, num_classes=args.num_classes)
    x, y = mixup(torch.randn(4, 3, 8, 8), torch.arange(4))
    assert y.shape == (4, 1000)
    loss = BinaryCrossEntropy(target_threshold=args.bce_target_thresh)(torch.randn(4, 1000), y)
    assert torch.isfinite(loss)
    assert args.drop_path == 0.05 and args.aug_repeats == 3
