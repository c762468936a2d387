""" What timm's scripts ask of a model, driven through the same library calls (train.py / validate.py from
github.com/huggingface/pytorch-image-models are not in the wheel), plus the ``timm-resattn run``
command that runs those scripts with the plugin imported. Small and fast: resattnet56_cifar at 32 px. """
import argparse
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import timm
import timm_resattn  # noqa: F401
from timm.data import create_dataset, create_loader, create_transform, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy
from timm.models import load_checkpoint, resume_checkpoint
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.utils import CheckpointSaver, ModelEmaV3, ParseKwargs
from helpers import REPO_ROOT

NAME = 'resattnet56_cifar'

pytestmark = pytest.mark.usefixtures('one_thread')


def _child_env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS='1', **extra)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get('PYTHONPATH')) if p)
    return env


# ---------------------------------------------------------------------------------------------------------------
# timm-resattn run SCRIPT ARGS

STAND_IN = textwrap.dedent('''
    """ Stands in for timm's validate.py: it only works if the plugin registered its models first. """
    import json, os, sys
    import timm
    assert timm.is_model('resattnet56'), 'timm_resattn was not imported before the script ran'
    out = sys.argv[sys.argv.index('--out') + 1]
    record = dict(argv=sys.argv, name=__name__, file=__file__, path0=sys.path[0], rank=os.environ.get('RANK'))
    with open(out + os.environ.get('RANK', ''), 'w') as f:
        json.dump(record, f)
    print('STAND-IN', json.dumps(record))
    if '--fail' in sys.argv:
        sys.exit(3)
''')


@pytest.fixture()
def stand_in(tmp_path):
    script_dir = tmp_path / 'pytorch-image-models'
    script_dir.mkdir()
    script = script_dir / 'validate.py'
    script.write_text(STAND_IN)
    return script


def test_run_command_in_process(stand_in, tmp_path, monkeypatch, capsys):
    """ ``timm-resattn run`` in this process: usage errors exit 2, the script's exit status propagates. """
    from timm_resattn.cli import main
    monkeypatch.setattr(sys, 'argv', list(sys.argv))
    monkeypatch.setattr(sys, 'path', list(sys.path))
    assert main(['run']) == 2
    err = capsys.readouterr().err  # one `error:` line naming the program (the command layer's usage errors)
    assert err.startswith('error: ') and 'timm-resattn run' in err
    assert main(['run', 'missing/validate.py', '--model', 'resattnet56']) == 2
    err = capsys.readouterr().err
    assert "script not found: 'missing/validate.py'" in err
    assert 'pytorch-image-models' in err  # hint: timm's scripts are not in the timm wheel
    assert main(['run', '--model', 'resattnet56']) == 2
    assert main(['run', '--help']) == 0
    assert 'torchrun' in capsys.readouterr().out
    out = tmp_path / 'record.json'
    assert main(['run', str(stand_in), '--out', str(out), '--fail']) == 3
    assert 'STAND-IN' in capsys.readouterr().out
    assert sys.argv == [str(stand_in), '--out', str(out), '--fail'] and sys.path[0] == str(stand_in.parent)


def test_run_refuses_what_is_not_a_script(stand_in, tmp_path, monkeypatch, capsys):
    """ An image, a weight file, a folder without __main__.py: refused naming SCRIPT before anything runs (the
    interpreter used to raise SyntaxError / ImportError); a folder with a __main__.py runs as `python DIR` would. """
    from timm_resattn.cli import main
    monkeypatch.setattr(sys, 'argv', list(sys.argv))
    monkeypatch.setattr(sys, 'path', list(sys.path))
    image = tmp_path / 'photo.png'
    image.write_bytes(b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR')
    weights = tmp_path / 'w.pth'
    torch.save({'w': torch.zeros(2)}, weights)
    (tmp_path / 'empty').mkdir()
    broken = tmp_path / 'broken.py'
    broken.write_text('def f(:\n')
    for script, needle in ((image, 'is not a Python script'), (broken, 'is not a Python script (SyntaxError'),
                           (tmp_path / 'empty', 'a folder without a __main__.py'),
                           (weights, 'a zip file without a __main__.py')):  # torch.save writes a zip
        assert main(['run', str(script)]) == 2
        err = capsys.readouterr().err
        assert err.startswith('error: ') and needle in err and str(script) in err, err
    package = tmp_path / 'pkg'
    package.mkdir()
    (package / '__main__.py').write_text(STAND_IN)
    out = tmp_path / 'record.json'
    assert main(['run', str(package), '--out', str(out), '--fail']) == 3
    assert 'STAND-IN' in capsys.readouterr().out


@pytest.mark.subprocess
def test_run_command_under_torchrun(stand_in, tmp_path):
    """ torchrun -m timm_resattn run SCRIPT ARGS: each worker runs `python -u -m timm_resattn run SCRIPT ARGS` (the
    plain route too), the script sees its own argv, runs as __main__ with its directory on sys.path[0]. """
    import json
    out = tmp_path / 'record.json'
    script_args = ['/data', '--model', 'resattnet56', '--out', str(out)]
    result = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=1',
         '-m', 'timm_resattn', 'run', str(stand_in), *script_args],
        cwd=tmp_path, env=_child_env(), capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(Path(str(out) + '0').read_text())
    assert record['rank'] == '0'
    assert record['argv'] == [str(stand_in), *script_args]
    assert record['name'] == '__main__' and record['file'] == str(stand_in)
    assert record['path0'] == str(stand_in.parent)  # the script's directory first, as `python SCRIPT` does


# ---------------------------------------------------------------------------------------------------------------
# train.py's model creation


def test_create_model_with_train_py_kwargs():
    # exactly the kwargs train.py passes (None values are dropped by create_model), with --model-kwargs parsed
    # by timm's own ParseKwargs action
    parser = argparse.ArgumentParser()
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
    model_kwargs = parser.parse_args(
        ['--model-kwargs', 'attention_residual=False', 'stage_modules=[2,1,1]', "mask_act='spatial'"]).model_kwargs
    model = timm.create_model(
        NAME,
        pretrained=False,
        in_chans=3,
        num_classes=5,
        drop_rate=0.2,
        drop_path_rate=0.1,
        drop_block_rate=None,
        global_pool='avgmax',
        bn_momentum=None,
        bn_eps=None,
        scriptable=None,
        checkpoint_path='',
        **model_kwargs,
    )
    assert model.cfg.attention_residual is False and model.cfg.mask_act == 'spatial'
    assert model.cfg.stage_modules == (2, 1, 1) and len(model.stages[0]) == 3
    assert model.num_classes == 5 and model.head.drop.p == 0.2
    assert model.head.global_pool.pool_type == 'avgmax'
    drop_paths = [m.drop_prob for m in model.modules() if type(m).__name__ == 'DropPath']
    assert drop_paths and max(drop_paths) == pytest.approx(0.1)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 5)
    # what train.py does for --head-init-scale / --head-init-bias
    with torch.no_grad():
        model.get_classifier().weight.mul_(0.5)
        torch.nn.init.constant_(model.get_classifier().bias, 0.0)


# ---------------------------------------------------------------------------------------------------------------
# A tiny train.py run: data, optimizer with layer decay, EMA, checkpointing, channels_last, saver, reloads


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp('imagefolder')
    rng = np.random.default_rng(0)
    for split in ('train', 'validation'):
        for cls in ('cat', 'dog'):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(4 if split == 'train' else 2):
                img = rng.integers(0, 256, size=(40, 36, 3), dtype=np.uint8)
                Image.fromarray(img).save(d / f'{i}.jpg', quality=90)
    return root


def _train_args(**overrides):
    """ The train.py arguments this test uses (argparse dests and defaults of train.py). """
    args = argparse.Namespace(
        model=NAME, num_classes=2, opt='sgd', lr=0.05, weight_decay=1e-4, momentum=0.9, layer_decay=0.65,
        opt_eps=None, opt_betas=None, sched='cosine', epochs=2, warmup_epochs=1, warmup_lr=1e-5, min_lr=0.0,
        cooldown_epochs=0, decay_epochs=90, decay_milestones=[90, 180, 270], decay_rate=0.1, patience_epochs=10,
        warmup_prefix=False, lr_noise=None, lr_noise_pct=0.67, lr_noise_std=1.0, seed=42, lr_cycle_mul=1.0,
        lr_cycle_decay=0.5, lr_cycle_limit=1, lr_k_decay=1.0, sched_on_updates=False, eval_metric='top1',
        input_size=None, img_size=None, in_chans=None, crop_pct=None, mean=None, std=None, interpolation='',
        batch_size=4, smoothing=0.1,
    )
    for k, v in overrides.items():
        setattr(args, k, v)
    return args


@pytest.fixture(scope='module')
def trained(image_folder, tmp_path_factory):
    """ A few train.py-style steps; returns what later tests reload. """
    torch.manual_seed(0)
    args = _train_args()
    model = timm.create_model(
        NAME, pretrained=False, in_chans=3, num_classes=args.num_classes, drop_rate=0.1, drop_path_rate=0.05,
        attention_residual=False,
    )
    model.set_grad_checkpointing(enable=True)
    assert model.grad_checkpointing
    data_config = resolve_data_config(vars(args), model=model)
    assert data_config['input_size'] == (3, 32, 32) and data_config['crop_pct'] == 1.0
    assert data_config['mean'] == timm_resattn.models.resattnet.CIFAR10_MEAN
    model.to(memory_format=torch.channels_last)

    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args))
    scales = sorted({g['lr_scale'] for g in optimizer.param_groups})
    assert len(scales) > 3 and scales[-1] == pytest.approx(1.0) and scales[0] < 0.65 ** 3  # layer decay applied
    no_wd = [g for g in optimizer.param_groups if g['weight_decay'] == 0.0]
    assert no_wd  # biases and norm weights are excluded from weight decay
    model_ema = ModelEmaV3(model, decay=0.5)

    dataset_train = create_dataset('', root=str(image_folder), split='train', is_training=True, batch_size=4)
    dataset_eval = create_dataset('', root=str(image_folder), split='validation', is_training=False)
    assert len(dataset_train) == 8 and len(dataset_eval) == 4
    common = dict(input_size=data_config['input_size'], mean=data_config['mean'], std=data_config['std'],
                  num_workers=0, use_prefetcher=False, device=torch.device('cpu'))
    loader_train = create_loader(
        dataset_train, batch_size=4, is_training=True, scale=[0.08, 1.0], ratio=[3 / 4, 4 / 3], hflip=0.5,
        color_jitter=0.4, interpolation='random', **common)
    loader_eval = create_loader(
        dataset_eval, batch_size=4, is_training=False, interpolation=data_config['interpolation'],
        crop_pct=data_config['crop_pct'], crop_mode=data_config['crop_mode'], **common)
    # the same transforms the loaders use, built directly (inference.py / users)
    assert create_transform(**data_config, is_training=False)(Image.new('RGB', (40, 36))).shape == (3, 32, 32)

    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args), updates_per_epoch=len(loader_train))
    criterion = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    losses, step = [], 0
    model.train()
    for epoch in range(num_epochs):
        for x, y in loader_train:
            x = x.contiguous(memory_format=torch.channels_last)
            loss = criterion(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            model_ema.update(model, step=step)
            losses.append(loss.item())
        lr_scheduler.step(epoch + 1)
    assert len(losses) == 4 and all(np.isfinite(losses)), losses

    model.eval()
    with torch.no_grad():
        for x, _ in loader_eval:
            assert torch.isfinite(model(x)).all() and model_ema.module(x).shape == (x.shape[0], 2)

    out_dir = tmp_path_factory.mktemp('output')
    saver = CheckpointSaver(
        model=model, optimizer=optimizer, args=args, model_ema=model_ema,
        checkpoint_dir=str(out_dir), recovery_dir=str(out_dir), decreasing=False, max_history=2)
    best_metric, best_epoch = saver.save_checkpoint(epoch=1, metric=50.0)
    assert best_epoch == 1
    ckpt = out_dir / 'checkpoint-1.pth.tar'
    assert ckpt.is_file() and (out_dir / 'last.pth.tar').is_file() and (out_dir / 'model_best.pth.tar').is_file()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        outs = dict(model=model(x), ema=model_ema.module.eval()(x))
    return dict(args=args, model=model, ema=model_ema.module, optimizer=optimizer, ckpt=ckpt, x=x, outs=outs)


def _fresh(**kwargs):
    kwargs.setdefault('num_classes', 2)
    return timm.create_model(NAME, attention_residual=False, **kwargs)


def test_validate_py_checkpoint_loading(trained):
    """ validate.py --checkpoint: create_model, then load_checkpoint(model, path, use_ema). """
    x, outs = trained['x'], trained['outs']
    for use_ema, key in ((False, 'model'), (True, 'ema')):
        model = _fresh()
        load_checkpoint(model, str(trained['ckpt']), use_ema=use_ema)
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(x), outs[key])


def test_initial_checkpoint(trained):
    """ train.py --initial-checkpoint: create_model(checkpoint_path=...), which takes the EMA weights if saved. """
    model = _fresh(checkpoint_path=str(trained['ckpt']))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(trained['x']), trained['outs']['ema'])


def test_resume(trained):
    """ train.py --resume: resume_checkpoint restores model + optimizer; the EMA via load_checkpoint(use_ema). """
    model = _fresh()
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=trained['args']))
    resume_epoch = resume_checkpoint(model, str(trained['ckpt']), optimizer=optimizer)
    assert resume_epoch == 2  # saved after epoch 1 (checkpoint version 2: resume at the next epoch)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(trained['x']), trained['outs']['model'])
    saved, restored = trained['optimizer'].state_dict(), optimizer.state_dict()
    assert len(restored['state']) == len(saved['state']) > 0
    k = next(iter(saved['state']))
    torch.testing.assert_close(restored['state'][k]['momentum_buffer'], saved['state'][k]['momentum_buffer'])
    ema = ModelEmaV3(model)
    load_checkpoint(ema.module, str(trained['ckpt']), use_ema=True)
    with torch.no_grad():
        torch.testing.assert_close(ema.module.eval()(trained['x']), trained['outs']['ema'])


def test_pretrained_path_fine_tuning(trained):
    """ train.py --pretrained --pretrained-path PATH --num-classes N: pretrained=True with
    pretrained_cfg_overlay=dict(file=PATH, num_classes=-1) ("force head adaptation": the classifier is always
    re-initialised, even for the same N). The file is a train.py checkpoint: its EMA weights are used, as timm's
    loader does. """
    ema = trained['ema']
    overlay = dict(file=str(trained['ckpt']), num_classes=-1)
    model = _fresh(pretrained=True, num_classes=5, pretrained_cfg_overlay=overlay)
    assert model.get_classifier().out_features == 5
    torch.testing.assert_close(model.stem.conv.weight, ema.stem.conv.weight)
    torch.testing.assert_close(model.stages[2][1].trunk[0].conv2.weight, ema.stages[2][1].trunk[0].conv2.weight)
    same_n = _fresh(pretrained=True, num_classes=2, pretrained_cfg_overlay=overlay)
    torch.testing.assert_close(same_n.norm.weight, ema.norm.weight)
    assert not torch.equal(same_n.get_classifier().weight, ema.get_classifier().weight)  # head re-initialised
    # in_chans adaptation through the same path (train.py --in-chans 1)
    gray = _fresh(pretrained=True, in_chans=1, num_classes=5, pretrained_cfg_overlay=overlay)
    torch.testing.assert_close(gray.stem.conv.weight, ema.stem.conv.weight.sum(dim=1, keepdim=True))


def test_torchcompile_eager_backend(trained):
    """ train.py --torchcompile eager: dynamo traces the model (forward + backward) and matches eager mode. """
    model = _fresh()
    model.load_state_dict(trained['model'].state_dict())
    model.eval()
    compiled = torch.compile(model, backend='eager')
    x = trained['x'].clone().requires_grad_(True)
    out = compiled(x)
    out.sum().backward()
    with torch.no_grad():
        torch.testing.assert_close(out.detach(), model(trained['x']))
    assert x.grad is not None and torch.isfinite(x.grad).all()
