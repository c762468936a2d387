""" ``timm-resattn train-cifar`` on a tiny synthetic CIFAR-10 written in CIFAR-10's on-disk format.

The runs use a narrow resattnet56_cifar (``--model-kwargs``), batch 16 and one CPU thread to stay fast.
"""
import json
import os
import pickle
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import timm
from timm_resattn.cli import main
from timm_resattn.cli.train_cifar import parse_milestones
from timm_resattn.train.cifar_data import (
    TrainBatches, apply_label_noise, augment_batch, load_cifar, normalize, pixel_mean,
)
from timm_resattn.train.loop import TrainingDiverged, build_checkpoint, evaluate, lr_at, save_checkpoint_file

NARROW = ['--model', 'resattnet56_cifar', '--model-kwargs', 'stage_chs=(16, 32, 64)', 'stem_chs=8']
NARROW_KWARGS = dict(stage_chs=(16, 32, 64), stem_chs=8)
CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']

pytestmark = pytest.mark.usefixtures('one_thread')  # faster than 2 on a shared 2-core box, and deterministic


def write_cifar10(root, n_per_batch=40, n_test=80, num_used_classes=4, seed=0):
    """ CIFAR-10's python format: 5 training pickles, a test pickle and batches.meta; images are noisy flat colours,
    one colour per class, so a few dozen iterations learn them.
    """
    rng = np.random.default_rng(seed)
    base = os.path.join(root, 'cifar-10-batches-py')
    os.makedirs(base, exist_ok=True)
    colours = rng.integers(30, 226, size=(10, 3))

    def make(n):
        y = rng.integers(0, num_used_classes, n)
        img = colours[y][:, :, None, None] + rng.normal(0, 30, (n, 3, 32, 32))
        return np.clip(img, 0, 255).astype(np.uint8).reshape(n, 3072), y.tolist()

    for i in range(1, 6):
        data, labels = make(n_per_batch)
        with open(os.path.join(base, f'data_batch_{i}'), 'wb') as f:
            pickle.dump({'batch_label': f'training batch {i} of 5', 'labels': labels, 'data': data,
                         'filenames': [f'{i}_{j}.png' for j in range(n_per_batch)]}, f)
    data, labels = make(n_test)
    with open(os.path.join(base, 'test_batch'), 'wb') as f:
        pickle.dump({'batch_label': 'testing batch 1 of 1', 'labels': labels, 'data': data, 'filenames': []}, f)
    with open(os.path.join(base, 'batches.meta'), 'wb') as f:
        pickle.dump({'label_names': CLASSES, 'num_cases_per_batch': n_per_batch, 'num_vis': 3072}, f)
    return root


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return str(write_cifar10(tmp_path_factory.mktemp('cifar')))


def _run(data_dir, out, *extra):
    """ ``timm-resattn train-cifar`` in this process; returns the run's ``summary.json``. """
    assert main(['train-cifar', '--data-dir', data_dir, '--out', str(out), '--batch-size', '16', '--workers', '0',
                 *NARROW, *extra]) == 0
    with open(os.path.join(str(out), 'summary.json')) as f:
        return json.load(f)


@pytest.fixture(scope='module')
def trained(data_dir, tmp_path_factory):
    """ 30 iterations (lr 0.1, /10 at 12 and 18), logging every 5 and testing every 15. """
    out = tmp_path_factory.mktemp('run')
    import io
    from contextlib import redirect_stdout
    buf = io.StringIO()
    num_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # whatever order the module fixtures are set up in
    try:
        with redirect_stdout(buf):
            summary = _run(data_dir, out, '--iters', '30', '--log-every', '5', '--eval-every', '15')
    finally:
        torch.set_num_threads(num_threads)
    return out, summary, buf.getvalue()


def test_reader_reads_the_on_disk_format(data_dir):
    x, y, names = load_cifar(data_dir, 'cifar10', train=True)
    assert x.shape == (200, 3, 32, 32) and x.dtype == torch.uint8 and y.shape == (200,)
    assert names == CLASSES
    xt, yt, _ = load_cifar(data_dir, 'cifar10', train=False)
    assert xt.shape == (80, 3, 32, 32)
    with pytest.raises(FileNotFoundError, match='--download'):
        load_cifar(data_dir, 'cifar100')


def test_reader_reads_cifar100_layout(tmp_path):
    base = tmp_path / 'cifar-100-python'
    base.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (('train', 12), ('test', 5)):
        with open(base / name, 'wb') as f:
            pickle.dump({'data': rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         'fine_labels': rng.integers(0, 100, n).tolist(),
                         'coarse_labels': rng.integers(0, 20, n).tolist()}, f)
    with open(base / 'meta', 'wb') as f:
        pickle.dump({'fine_label_names': [f'c{i}' for i in range(100)], 'coarse_label_names': []}, f)
    x, y, names = load_cifar(str(tmp_path), 'cifar100', train=True)
    assert x.shape == (12, 3, 32, 32) and len(names) == 100
    assert load_cifar(str(tmp_path), 'cifar100', train=False)[0].shape == (5, 3, 32, 32)


def test_augmentation_and_mean():
    imgs = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    mean = pixel_mean(imgs)
    torch.testing.assert_close(mean, imgs.float().mean(0) / 255)
    g = torch.Generator().manual_seed(0)
    out = augment_batch(imgs, mean, g)
    assert out.shape == (8, 3, 32, 32) and out.dtype == torch.float32
    # every output is a 32x32 window of the zero-padded (possibly flipped) image, minus the mean image
    raw = out + mean
    padded = torch.nn.functional.pad(imgs, (4, 4, 4, 4)).float() / 255
    for i in range(8):
        hits = [
            torch.allclose(raw[i], src[:, oy:oy + 32, ox:ox + 32], atol=1e-6)
            for src in (padded[i], padded[i].flip(-1)) for oy in range(9) for ox in range(9)
        ]
        assert any(hits)
    assert torch.equal(out, augment_batch(imgs, mean, torch.Generator().manual_seed(0)))


def test_lr_schedule():
    assert [lr_at(i, 0.1, [64000, 96000]) for i in (0, 63999, 64000, 95999, 96000, 159999)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert parse_milestones(None, 160_000) == [64_000, 96_000]
    assert parse_milestones('96000,64000', 1) == [64_000, 96_000]


def test_label_noise_matches_eq7():
    rng = np.random.default_rng(1)
    clean = torch.from_numpy(rng.integers(0, 10, 100_000))
    for r in (0.9, 0.5, 0.3):
        noisy = apply_label_noise(clean, r, 10, seed=3)
        changed = noisy != clean
        assert abs(changed.float().mean().item() - (1 - r)) < 0.01  # 1 - r is the noise rate
        # a changed label is uniform over the 9 other classes: from class 0, each of 1..9 ~ 1/9
        from_zero = noisy[(clean == 0) & changed]
        freq = torch.bincount(from_zero, minlength=10).float() / len(from_zero)
        assert freq[0] == 0 and (freq[1:] - 1 / 9).abs().max() < 0.02
        assert torch.equal(noisy, apply_label_noise(clean, r, 10, seed=3))  # exact for a seed
        assert not torch.equal(noisy, apply_label_noise(clean, r, 10, seed=4))
    assert torch.equal(apply_label_noise(clean, 1.0, 10, seed=0), clean)
    assert (apply_label_noise(clean, 0.0, 10, seed=0) != clean).all()
    with pytest.raises(ValueError):
        apply_label_noise(clean, 1.5, 10, seed=0)


def test_label_noise_flag_reports_realised_rate(data_dir, tmp_path, capsys):
    summary = _run(data_dir, tmp_path, '--iters', '1', '--eval-every', '1', '--label-noise', '0.5')
    out = capsys.readouterr().out
    m = re.search(r'realised ([\d.]+)% \((\d+)/200 labels changed\)', out)
    assert m and float(m.group(1)) == pytest.approx(int(m.group(2)) / 2)
    assert summary['label_noise_rate'] == pytest.approx(int(m.group(2)) / 200)
    assert 0.3 < summary['label_noise_rate'] < 0.7


def test_loss_falls(trained):
    out, summary, log = trained
    losses = [float(v) for v in re.findall(r'iter \d+/30 +loss ([\d.]+)', log)]
    assert len(losses) == 6
    assert np.mean(losses[-2:]) < 0.5 * losses[0], losses
    assert re.search(r'lr 0\.001 +\d+ imgs/s', log)
    assert summary['top1'] > 50.0  # 4 colour classes: chance is 25%
    assert 'test @ iter 15' in log and 'test @ iter 30' in log


def test_checkpoint_loads_with_timm(trained, data_dir):
    out, summary, _ = trained
    for name in ('last.pth.tar', 'model_best.pth.tar', 'model_best.safetensors', 'summary.json'):
        assert (out / name).is_file(), name
    ckpt = torch.load(out / 'last.pth.tar', map_location='cpu', weights_only=True)
    assert ckpt['arch'] == 'resattnet56_cifar' and ckpt['iteration'] == 30 and ckpt['version'] == 2
    assert {'state_dict', 'optimizer', 'epoch', 'args', 'metric', 'normalization'} <= set(ckpt)
    assert ckpt['args']['model_kwargs'] == NARROW_KWARGS

    model = timm.create_model('resattnet56_cifar', num_classes=10, checkpoint_path=str(out / 'last.pth.tar'),
                              **NARROW_KWARGS).eval()
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt['state_dict'][k]), k
    from_st = timm.create_model('resattnet56_cifar', num_classes=10, pretrained=True, **NARROW_KWARGS,
                                pretrained_cfg_overlay=dict(file=str(out / 'model_best.safetensors'))).eval()
    best = load_file(str(out / 'model_best.safetensors'))
    assert all(torch.equal(v, best[k]) for k, v in from_st.state_dict().items())

    # the saved model reproduces the printed test accuracy, with the normalisation the checkpoint records (the
    # model's data config, per channel: see timm_resattn.train.loop)
    x, y, _ = load_cifar(data_dir, 'cifar10', train=False)
    mean, std = (torch.tensor(ckpt['normalization'][k]).view(3, 1, 1) for k in ('mean', 'std'))
    with torch.no_grad():
        logits = model((x.float() / 255 - mean) / std)
    assert 100.0 * (logits.argmax(1) == y).float().mean().item() == pytest.approx(ckpt['metric'])


def test_resume_continues_exactly(data_dir, tmp_path):
    """ 6 iterations in one go == 3, then --resume to 6 (with a different --workers: data is a function of
    (seed, iteration) only).
    """
    sched = ['--milestones', '4,5', '--eval-every', '3', '--seed', '7']
    _run(data_dir, tmp_path / 'full', '--iters', '6', *sched)
    _run(data_dir, tmp_path / 'half', '--iters', '3', *sched)
    _run(data_dir, tmp_path / 'half', '--iters', '6', *sched, '--resume', str(tmp_path / 'half' / 'last.pth.tar'))
    full = torch.load(tmp_path / 'full' / 'last.pth.tar', map_location='cpu', weights_only=True)
    resumed = torch.load(tmp_path / 'half' / 'last.pth.tar', map_location='cpu', weights_only=True)
    assert resumed['iteration'] == full['iteration'] == 6
    for k, v in full['state_dict'].items():
        assert torch.equal(v, resumed['state_dict'][k]), k
    assert full['metric'] == resumed['metric']


@pytest.mark.parametrize('training', [False, True], ids=['eval', 'train'])
def test_evaluate_keeps_the_mode_it_was_given(training):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 2 * 2, 3), torch.nn.Dropout(0.5))
    model.train(training)
    modes = []
    model.register_forward_hook(lambda m, args, out: modes.append(m.training))
    images = torch.randint(0, 256, (5, 3, 2, 2), dtype=torch.uint8)
    norm = {'mean': (0.5, 0.5, 0.5), 'std': (0.25, 0.25, 0.25)}
    acc, loss = evaluate(model, images, torch.tensor([0, 1, 2, 0, 1]), norm, torch.device('cpu'), None,
                                     batch_size=2)
    assert 0.0 <= acc <= 100.0 and loss >= 0.0
    assert modes == [False] * 3  # 3 batches, each in eval mode
    assert all(m.training == training for m in model.modules())  # and the mode it had on entry is back


def test_data_order_independent_of_workers(data_dir):
    x, y, _ = load_cifar(data_dir, 'cifar10', train=True)
    ds = TrainBatches(x, y, pixel_mean(x), batch_size=16, seed=5)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, sampler=range(10, 14), num_workers=2)
    for it, (xb, yb) in zip(range(10, 14), loader):
        xs, ys = ds[it]
        assert torch.equal(xb, xs) and torch.equal(yb, ys)
    # epoch 0 is one shuffle in 12 full batches of 16 (the last 8 images are dropped); epoch 1 reshuffles
    perm = ds._epoch_perm(0)
    assert sorted(perm.tolist()) == list(range(200))
    for i in range(12):
        assert torch.equal(ds[i][1], y[perm[16 * i:16 * (i + 1)]])
    assert not torch.equal(ds._epoch_perm(1), perm)


# ---------------------------------------------------------------------------------------------------------------
# Issue 10: safe reading, clear errors, agreement with timm's preprocessing, no NaN or half-written checkpoints

from timm_resattn.errors import ConfigError, DataError  # noqa: E402


def _batch_file(root, name='data_batch_1'):
    folder = 'cifar-10-batches-py'
    return os.path.join(root, folder, name)


class _CreatesFile:
    """ Unpickling this calls ``open(path, 'w')``: the file appears if the reader executes pickled globals. """

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return open, (self.path, 'w')


@pytest.mark.parametrize('name', ['data_batch_3', 'batches.meta'])
def test_crafted_pickle_is_refused(tmp_path, name):
    root = write_cifar10(tmp_path / 'd', n_per_batch=4, n_test=4)
    marker = tmp_path / 'pwned'
    with open(_batch_file(root, name), 'wb') as f:
        pickle.dump({'data': _CreatesFile(str(marker)), 'labels': [0], 'label_names': []}, f)
    with pytest.raises(DataError) as e:
        load_cifar(str(root), 'cifar10', train=True)
    assert not marker.exists()
    assert name in str(e.value) and 'refusing to unpickle the global io.open' in str(e.value)


def test_reader_accepts_every_numpy_pickle_protocol(tmp_path):
    """ The restricted unpickler still reads CIFAR as numpy pickles it: protocol 2 (the official files, written by
    Python 2 with numpy.core; Python 3 adds _codecs.encode for bytes), 4 and 5 (numpy's _frombuffer). """
    base = tmp_path / 'cifar-10-batches-py'
    base.mkdir()
    data = np.arange(4 * 3072, dtype=np.uint64).astype(np.uint8).reshape(4, 3072)
    for i, proto in enumerate((2, 2, 4, 5, 5), start=1):
        raw = pickle.dumps({'data': data, 'labels': [i % 10] * 4, 'batch_label': b'bytes'}, protocol=proto)
        if i == 1:  # as numpy 1.x / Python 2 wrote it
            assert b'numpy._core.multiarray' in raw
            raw = raw.replace(b'numpy._core.multiarray', b'numpy.core.multiarray')
        (base / f'data_batch_{i}').write_bytes(raw)
    x, y, names = load_cifar(str(tmp_path), 'cifar10', train=True)
    assert torch.equal(x, torch.from_numpy(np.concatenate([data] * 5).reshape(20, 3, 32, 32)))
    assert y.tolist() == [i for i in range(1, 6) for _ in range(4)] and names == [str(i) for i in range(10)]


_TRUNCATED = 'truncated'


@pytest.mark.parametrize('content, message', [
    ({'labels': [0] * 4}, "no 'data' entry"),
    (b'\x80\x02X\x02\x00\x00\x00\xff\xfe.', 'UnicodeDecodeError'),  # a pickle with a non-UTF-8 string
    (_TRUNCATED, 'truncated'),
    (b'\x00\x01 not a pickle', 'corrupt'),
    ({'data': np.zeros((4, 3072), np.float64), 'labels': [0] * 4}, 'float64 array'),
    ({'data': np.zeros((4, 3071), np.uint8), 'labels': [0] * 4}, 'shape (4, 3071)'),
    ({'data': np.zeros((4, 3072), np.uint8), 'labels': [0, 1, 10, 2]}, 'label 10 out of range'),
    ({'data': np.zeros((4, 3072), np.uint8), 'labels': [0, 1]}, '4 images but 2 labels'),
    ([1, 2, 3], 'holds a list'),
], ids=['no-data', 'unicode', 'truncated', 'garbage', 'dtype', 'shape', 'label-range', 'label-count', 'not-dict'])
def test_corrupt_batch_is_a_data_error(tmp_path, content, message):
    root = write_cifar10(tmp_path, n_per_batch=4, n_test=4)
    path = _batch_file(root, 'data_batch_2')
    if content is _TRUNCATED:
        with open(path, 'rb') as f:
            raw = f.read()[:os.path.getsize(path) // 2]
    elif isinstance(content, bytes):
        raw = content
    else:
        raw = pickle.dumps(content)
    with open(path, 'wb') as f:
        f.write(raw)
    with pytest.raises(DataError) as e:
        load_cifar(str(root), 'cifar10', train=True)
    assert path in str(e.value) and message in str(e.value)


def _error_of(argv, capsys):
    """ Run the command in-process; return its stderr, asserting exit status 2 and no traceback. """
    code = main(['train-cifar', *argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert 'Traceback' not in err and err.startswith('error: ') and 1 <= len(err.strip().splitlines()) <= 2, err
    return err


@pytest.mark.parametrize('flags, expect', [
    (['--iters', '0'], '--iters'),
    (['--batch-size', '-1'], '--batch-size'),
    (['--batch-size', '1000'], '--batch-size'),  # more than the 200 training images
    (['--label-noise', '2'], '--label-noise'),
    (['--milestones', 'abc'], '--milestones'),
    (['--workers', '-1'], '--workers'),
    (['--lr', 'nan'], '--lr'),
    (['--model', 'no_such_net'], '--model'),
    (['--model-kwargs', 'stem_chs'], '--model-kwargs'),
    (['--model-kwargs', 'no_such_kwarg=1'], '--model-kwargs'),
    (['--model-kwargs', 'mask_act=bogus'], 'mask_act'),
    (['--resume', 'no/such/file.pth.tar'], '--resume'),
])
def test_bad_flag_is_one_error_line(data_dir, tmp_path, capsys, flags, expect):
    out = tmp_path / 'run'
    # later flags win: NARROW's --model-kwargs is replaced where a test passes its own
    err = _error_of(['--data-dir', data_dir, '--out', str(out), '--workers', '0', *NARROW, '--iters', '2', *flags],
                    capsys)
    assert expect in err
    assert not out.exists()


def test_bad_out_and_data_dir(data_dir, tmp_path, capsys):
    a_file = tmp_path / 'a_file'
    a_file.write_text('x')
    assert '--out' in _error_of(['--data-dir', data_dir, '--out', str(a_file), *NARROW], capsys)
    missing = tmp_path / 'missing'
    err = _error_of(['--data-dir', str(missing), '--out', str(tmp_path / 'run'), *NARROW], capsys)
    assert '--data-dir' in err and str(missing) in err and not (tmp_path / 'run').exists()


def test_config_error_from_create_model_reaches_the_user(data_dir, tmp_path, capsys, monkeypatch):
    """ The model config refuses a bad kwarg with a ConfigError (e.g. attention_residual=false): one line. """
    def refuse(*args, **kwargs):
        raise ConfigError("attention_residual='false' must be a bool")
    monkeypatch.setattr(timm, 'create_model', refuse)
    err = _error_of(['--data-dir', data_dir, '--out', str(tmp_path / 'run'), *NARROW], capsys)
    assert err == "error: attention_residual='false' must be a bool\n"


def test_download_offline_is_an_error_and_leaves_no_run_folder(tmp_path, capsys, monkeypatch):
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError('[Errno -3] Temporary failure in name resolution')
    monkeypatch.setattr(urllib.request, 'urlopen', offline)
    out = tmp_path / 'run'
    err = _error_of(['--download', '--data-dir', str(tmp_path / 'data'), '--out', str(out), *NARROW], capsys)
    assert 'cannot download cifar10' in err and 'name resolution' in err
    assert not out.exists()


@pytest.mark.parametrize('eval_every, message', [
    ('100', 'diverged at iteration 2: the loss is nan'),  # the training loss
    ('1', 'diverged by iteration 1: the test loss is nan'),  # the model after step 1 gives NaN on the test set
])
def test_divergence_stops_without_a_checkpoint(data_dir, tmp_path, capsys, eval_every, message):
    out = tmp_path / 'runs' / 'a' / 'run'  # three levels created by the run: all removed again
    err = _error_of(['--data-dir', data_dir, '--out', str(out), '--batch-size', '16', '--workers', '0', *NARROW,
                     '--iters', '4', '--lr', '1e30', '--eval-every', eval_every], capsys)
    assert message in err
    assert not (tmp_path / 'runs').exists()  # nothing was written, so the folders we created are gone


def test_non_finite_weights_are_never_saved():
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    common = {'arch': 'x', 'batches_per_epoch': 1, 'metric': 0.0, 'best_metric': 0.0, 'best_iteration': 0,
              'run_args': {}, 'num_classes': 2, 'class_names': ['a', 'b'], 'normalization': {},
              'label_noise_rate': 0.0}
    assert build_checkpoint(model, optimizer, None, iteration=3, **common)['iteration'] == 3
    with torch.no_grad():
        model.weight[0, 0] = float('nan')
    with pytest.raises(TrainingDiverged, match='iteration 7: weight'):
        build_checkpoint(model, optimizer, None, iteration=7, **common)


def test_interrupted_save_leaves_no_tmp(tmp_path, monkeypatch):
    path = tmp_path / 'last.pth.tar'
    save_checkpoint_file(str(path), {'iteration': 1})

    def interrupted(obj, f, *args, **kwargs):
        with open(f, 'wb') as fh:
            fh.write(b'half a checkpoint')
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, 'save', interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint_file(str(path), {'iteration': 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ['last.pth.tar']
    assert torch.load(path, weights_only=True) == {'iteration': 1}


def test_resume_from_unusable_files(trained, data_dir, tmp_path, capsys):
    out, _, _ = trained
    ckpt = torch.load(out / 'last.pth.tar', map_location='cpu', weights_only=True)
    corrupt = tmp_path / 'corrupt.pth.tar'
    corrupt.write_bytes((out / 'last.pth.tar').read_bytes()[:1000])
    plain = tmp_path / 'plain.pth'
    torch.save(ckpt['state_dict'], plain)
    older = tmp_path / 'per_pixel_mean.pth.tar'  # a checkpoint of the train_cifar that subtracted the mean image
    torch.save({**{k: v for k, v in ckpt.items() if k != 'normalization'}, 'pixel_mean': torch.zeros(3, 32, 32)},
               older)
    base = ['--data-dir', data_dir, '--out', str(tmp_path / 'run'), '--batch-size', '16', '--workers', '0',
            '--iters', '40']
    for path, argv, expect in (
        (corrupt, NARROW, 'cannot read it as a checkpoint'),
        (plain, NARROW, "'iteration' entry (it looks like a plain state_dict)"),
        (out / 'last.pth.tar', ['--model', 'resattnet92_cifar', '--model-kwargs', *NARROW[3:]],
         "a checkpoint of 'resattnet56_cifar', but --model is 'resattnet92_cifar'"),
        (out / 'last.pth.tar', [*NARROW[:3], 'stage_chs=(16, 32, 32)', 'stem_chs=8'], 'shape mismatch'),
        (out / 'last.pth.tar', [*NARROW, 'attention_residual=False'], 'attention_residual=True'),  # same shapes
        (older, NARROW, 'per-pixel mean image of an older train_cifar'),
    ):
        err = _error_of([*base, *argv, '--resume', str(path)], capsys)
        assert str(path) in err and expect in err, err
    assert not (tmp_path / 'run').exists()


def test_timm_preprocessing_matches_training(trained, data_dir):
    """ The checkpoint through timm's own path (create_model(checkpoint_path) + resolve_data_config +
    create_transform on PIL images, as validate.py and the classify command do) gets exactly the inputs, hence the
    test accuracy, that train_cifar evaluated. """
    from PIL import Image
    from timm.data import create_transform, resolve_data_config
    out, summary, _ = trained
    ckpt = torch.load(out / 'last.pth.tar', map_location='cpu', weights_only=True)
    model = timm.create_model('resattnet56_cifar', num_classes=10, checkpoint_path=str(out / 'last.pth.tar'),
                              **NARROW_KWARGS).eval()
    config = resolve_data_config({}, model=model)
    assert tuple(ckpt['normalization']['mean']) == tuple(config['mean'])
    assert tuple(ckpt['normalization']['std']) == tuple(config['std'])
    transform = create_transform(**config)
    x, y, _ = load_cifar(data_dir, 'cifar10', train=False)
    timm_x = torch.stack([transform(Image.fromarray(img.permute(1, 2, 0).numpy())) for img in x])
    torch.testing.assert_close(timm_x, normalize(x, ckpt['normalization']['mean'],
                                                             ckpt['normalization']['std']), rtol=0, atol=1e-6)
    with torch.no_grad():
        acc = 100.0 * (model(timm_x).argmax(1) == y).float().mean().item()
    assert acc == pytest.approx(ckpt['metric']) and acc == pytest.approx(summary['top1'])


@pytest.mark.subprocess
def test_command_line_error_subprocess(data_dir, tmp_path):
    """ The real entry point: one line on stderr, status 2. """
    import subprocess
    import sys
    from pathlib import Path
    repo = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join(
        p for p in (repo, os.environ.get('PYTHONPATH')) if p))
    result = subprocess.run(
        [sys.executable, '-m', 'timm_resattn', 'train-cifar', '--data-dir', data_dir, '--out', str(tmp_path / 'r'),
         '--iters', '0'], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr == (
        "error: argument --iters: expected an iteration count in [1, 1000000000], got '0' (see python -m "
        "timm_resattn train-cifar --help)\n")
    assert not (tmp_path / 'r').exists()


def test_configure_and_run_under_a_dispatcher(data_dir, tmp_path, capsys):
    """ The cli convention: configure(subparser) + run(args) -> 0, with a dispatcher's extra entries in args (here
    a function) kept out of the checkpoint, which still loads with weights_only=True. """
    import argparse

    from timm_resattn.cli import train_cifar as command
    parser = argparse.ArgumentParser(prog='timm-resattn')
    sub = parser.add_subparsers(dest='command', required=True)
    command.configure(sub.add_parser('train-cifar')).set_defaults(func=command.run)
    args = parser.parse_args(['train-cifar', '--data-dir', data_dir, '--out', str(tmp_path), '--batch-size', '16',
                              '--workers', '0', *NARROW, '--iters', '1'])
    assert args.func(args) == 0
    ckpt = torch.load(tmp_path / 'last.pth.tar', map_location='cpu', weights_only=True)
    assert ckpt['iteration'] == 1 and 'func' not in ckpt['args'] and ckpt['args']['command'] == 'train-cifar'
    assert 'done: top-1' in capsys.readouterr().out


# --- issue 17: a run never overwrites an earlier run, an input, or runs on what the machine lacks ----------------

def _quiet_run(data_dir, out, *extra):
    import io
    from contextlib import redirect_stdout
    with redirect_stdout(io.StringIO()):
        return _run(data_dir, out, '--iters', '2', '--eval-every', '2', *extra)


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture()
def earlier_run(data_dir, tmp_path):
    out = tmp_path / 'run'
    _quiet_run(data_dir, out)
    return out


@pytest.mark.parametrize('keep', ['summary.json', 'model_best.safetensors'])
def test_an_earlier_run_is_never_overwritten(data_dir, earlier_run, capsys, keep):
    """ Any file of an earlier run in --out (here only one of them is left) refuses a new run into it. """
    for p in earlier_run.iterdir():
        if p.name != keep:
            p.unlink()
    before = _snapshot(earlier_run)
    err = _error_of(['--data-dir', data_dir, '--out', str(earlier_run), '--batch-size', '16', '--workers', '0',
                     *NARROW, '--iters', '2'], capsys)
    assert 'earlier run' in err and '--overwrite-run' in err and '--resume' in err
    assert _snapshot(earlier_run) == before


def test_resume_from_another_run_into_an_earlier_run_is_refused(data_dir, earlier_run, tmp_path, capsys):
    other = tmp_path / 'other'
    _quiet_run(data_dir, other, '--seed', '1')
    before = _snapshot(earlier_run)
    err = _error_of(['--data-dir', data_dir, '--out', str(earlier_run), '--batch-size', '16', '--workers', '0',
                     *NARROW, '--iters', '4', '--resume', str(other / 'last.pth.tar')], capsys)
    assert 'earlier run' in err
    assert _snapshot(earlier_run) == before


def test_resume_continues_its_own_folder_and_overwrite_run_replaces(data_dir, earlier_run, capsys):
    summary = _quiet_run(data_dir, earlier_run, '--iters', '4', '--resume', str(earlier_run / 'last.pth.tar'))
    assert summary['iterations'] == 4
    ckpt = torch.load(earlier_run / 'last.pth.tar', map_location='cpu', weights_only=True)
    assert ckpt['iteration'] == 4
    (earlier_run / 'notes.txt').write_text('mine')
    _quiet_run(data_dir, earlier_run, '--overwrite-run', '--seed', '3')
    ckpt = torch.load(earlier_run / 'last.pth.tar', map_location='cpu', weights_only=True)
    assert ckpt['iteration'] == 2 and ckpt['args']['seed'] == 3
    assert (earlier_run / 'notes.txt').read_text() == 'mine'


def test_resume_from_the_best_checkpoint_of_its_own_folder_is_refused(data_dir, earlier_run, capsys):
    """ model_best.pth.tar is (usually) behind last.pth.tar: continuing from it would replace a run that went
    further. Only the folder's last.pth.tar continues the run. """
    before = _snapshot(earlier_run)
    for extra in ([], ['--seed', '5']):
        err = _error_of(['--data-dir', data_dir, '--out', str(earlier_run), '--batch-size', '16', '--workers', '0',
                         *NARROW, '--iters', '4', '--resume', str(earlier_run / 'model_best.pth.tar'), *extra], capsys)
        assert 'earlier run' in err and 'last.pth.tar' in err, err
    assert _snapshot(earlier_run) == before


def test_overwrite_run_never_replaces_the_resume_input(data_dir, earlier_run, tmp_path, capsys):
    """ --out's last.pth.tar hard-linked to the --resume file of another folder: replacing it would destroy the
    input, whatever --overwrite-run says. """
    elsewhere = tmp_path / 'elsewhere.pth.tar'
    os.link(earlier_run / 'last.pth.tar', elsewhere)
    before = elsewhere.read_bytes()
    err = _error_of(['--data-dir', data_dir, '--out', str(earlier_run), '--batch-size', '16', '--workers', '0',
                     *NARROW, '--iters', '4', '--resume', str(elsewhere), '--overwrite-run'], capsys)
    assert '--resume' in err and 'refusing to overwrite' in err
    assert elsewhere.read_bytes() == before


def test_two_runs_never_share_a_folder(data_dir, tmp_path, capsys):
    fcntl = pytest.importorskip('fcntl')
    out = tmp_path / 'run'
    out.mkdir()
    fd = os.open(out, os.O_RDONLY)  # what a live run into this folder holds
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        err = _error_of(['--data-dir', data_dir, '--out', str(out), '--batch-size', '16', '--workers', '0', *NARROW,
                         '--iters', '2'], capsys)
    finally:
        os.close(fd)
    assert 'another train-cifar run' in err and list(out.iterdir()) == []


def test_unwritable_out_is_refused_before_training(data_dir, capsys, monkeypatch, unwritable_dir):
    from timm_resattn.cli import train_cifar as command
    monkeypatch.setattr(command, 'load_cifar', None)  # reading data would be a TypeError: a traceback
    err = _error_of(['--data-dir', data_dir, '--out', '/sys/runs/a', '--workers', '0', *NARROW, '--iters', '2'],
                    capsys)
    assert "can't write into the folder '/sys'" in err


@pytest.mark.parametrize('flags, expect', [
    (['--seed', str(2 ** 32)], '--seed'),
    (['--seed', '-5'], '--seed'),
    (['--momentum', '1.5'], '--momentum'),
    (['--lr', '0'], '--lr'),
    (['--weight-decay', '3'], '--weight-decay'),
    (['--eval-every', str(10 ** 12)], '--eval-every'),
    (['--workers', str(10 ** 6)], '--workers'),
    (['--device', 'meta'], '--device'),
    (['--amp', 'fp16'], '--amp fp16 needs a CUDA device'),
    (['--model-kwargs', 'in_chans=2'], '2-channel'),
    (['--model-kwargs', 'mask_levels=(4, 4, 4)'], 'at least 61x61'),
    (['--momentum', '0'], '--momentum 0 with Nesterov momentum'),  # torch's SGD would raise a ValueError
])
def test_flag_ranges_and_model_checked_before_data(data_dir, tmp_path, capsys, monkeypatch, flags, expect):
    from timm_resattn.cli import train_cifar as command
    monkeypatch.setattr(command, 'load_cifar', None)  # any read of the data would be a traceback
    out = tmp_path / 'run'
    err = _error_of(['--data-dir', data_dir, '--out', str(out), '--workers', '0', '--device', 'cpu', *NARROW,
                     '--iters', '2', *flags], capsys)
    assert expect in err
    assert not out.exists()


def test_cuda_device_beyond_the_count_before_any_data(data_dir, tmp_path, capsys, monkeypatch):
    from timm_resattn.cli import train_cifar as command
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: 2)
    monkeypatch.setattr(command, 'load_cifar', None)
    err = _error_of(['--data-dir', data_dir, '--out', str(tmp_path / 'run'), '--workers', '0', *NARROW,
                     '--device', 'cuda:2'], capsys)
    assert '--device' in err and 'cuda:0..cuda:1' in err


def test_amp_precision_per_device(monkeypatch):
    from timm_resattn.cli import train_cifar as command
    from timm_resattn.errors import CommandError
    cpu, cuda = torch.device('cpu'), torch.device('cuda', 1)
    assert command.amp_dtype(None, cuda) is None
    assert command.amp_dtype('auto', cpu) is torch.bfloat16 and command.amp_dtype('bf16', cpu) is torch.bfloat16
    assert command.amp_dtype('auto', cuda) is torch.float16 and command.amp_dtype('fp16', cuda) is torch.float16
    monkeypatch.setattr(command, 'cuda_supports_bf16', lambda device: device.index == 1)
    assert command.amp_dtype('bf16', cuda) is torch.bfloat16
    with pytest.raises(CommandError, match='does not support bfloat16'):
        command.amp_dtype('bf16', torch.device('cuda', 0))
    with pytest.raises(CommandError, match='needs a CUDA device'):
        command.amp_dtype('fp16', cpu)



def test_bf16_support_means_native(monkeypatch):
    # torch.cuda.is_bf16_supported() counts emulation by default (true on pre-Ampere GPUs): ask for native support
    import contextlib
    from timm_resattn.cli import train_cifar as command
    seen = []

    def supported(including_emulation=True):
        seen.append(including_emulation)
        return including_emulation  # an emulating GPU: only emulation
    monkeypatch.setattr(torch.cuda, 'device', lambda device: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, 'is_bf16_supported', supported)
    assert command.cuda_supports_bf16(torch.device('cuda', 0)) is False
    assert seen == [False]

def test_empty_test_set_is_refused(tmp_path, capsys):
    data = write_cifar10(tmp_path / 'data', n_test=0)
    out = tmp_path / 'run'
    err = _error_of(['--data-dir', str(data), '--out', str(out), '--batch-size', '16', '--workers', '0', *NARROW,
                     '--iters', '2'], capsys)
    assert 'test set holds no images' in err and not out.exists()


@pytest.mark.parametrize('model', ['vit_tiny_patch16_224', 'deit_tiny_patch16_224'])
def test_fixed_input_size_models_are_refused_before_data(data_dir, tmp_path, capsys, monkeypatch, model):
    """ A timm model with a fixed input size (a ViT at 224) can't take CIFAR's 32 px (an AssertionError at the
    first forward before). """
    from timm_resattn.cli import train_cifar as command
    monkeypatch.setattr(command, 'load_cifar', None)
    out = tmp_path / 'run'
    err = _error_of(['--data-dir', data_dir, '--out', str(out), '--workers', '0', '--device', 'cpu', '--model', model,
                     '--iters', '2'], capsys)
    assert 'takes only 224x224 px inputs' in err and 'CIFAR gives 32x32' in err, err
    assert not out.exists()


@pytest.mark.parametrize('field, value, expect', [
    ('iteration', True, 'iteration=True'),
    ('iteration', 2.5, 'iteration=2.5'),
    ('best_metric', float('nan'), 'best_metric=nan'),
    ('best_iteration', 'x', "best_iteration='x'"),
    ('normalization', 'imagenet', 'expected a mapping'),
    ('normalization', {'mean': (0.5, 0.5, 0.5), 'std': (0.2, 0.0, 0.2)}, 'std=(0.2, 0.0, 0.2)'),
    ('normalization', {'mean': (0.5, 0.5), 'std': (0.2, 0.2, 0.2)}, 'mean=(0.5, 0.5)'),
    ('amp_scaler', 'abc', 'amp_scaler'),
])
def test_resume_fields_are_checked(trained, data_dir, tmp_path, capsys, monkeypatch, field, value, expect):
    out, _, _ = trained
    ckpt = torch.load(out / 'last.pth.tar', map_location='cpu', weights_only=True)
    ckpt[field] = value
    path = tmp_path / 'bad.pth.tar'
    torch.save(ckpt, path)
    if field == 'amp_scaler':  # only read with fp16 on CUDA: pretend
        from timm_resattn.cli import train_cifar as command
        monkeypatch.setattr(command, 'amp_dtype', lambda choice, device: torch.float16)
        monkeypatch.setattr(torch.amp, 'GradScaler', lambda *a, **k: torch.amp.grad_scaler.GradScaler('cpu'))
    err = _error_of(['--data-dir', data_dir, '--out', str(tmp_path / 'run'), '--batch-size', '16', '--workers', '0',
                     *NARROW, '--iters', '40', '--resume', str(path)], capsys)
    assert str(path) in err and expect in err, err
    assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('flags, expect', [
    (['--momentum', '0.5'], 'momentum=0.9'),
    (['--weight-decay', '0.5'], 'weight_decay=0.0001'),
    (['--no-nesterov'], 'nesterov=True'),
])
def test_resume_with_other_optimizer_settings_is_refused(trained, data_dir, tmp_path, capsys, flags, expect):
    """ The optimizer's state restores the run's own settings: flags that say otherwise would be printed and
    recorded but not used. """
    out, _, _ = trained
    err = _error_of(['--data-dir', data_dir, '--out', str(tmp_path / 'run'), '--batch-size', '16', '--workers', '0',
                     *NARROW, '--iters', '40', '--resume', str(out / 'last.pth.tar'), *flags], capsys)
    assert 'the run was trained with optimizer settings' in err and expect in err, err
    assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('edit, expect', [
    (lambda opt: opt['state'][0].update(momentum_buffer=torch.zeros(3)), 'of shape (3,)'),
    (lambda opt: opt['state'][0].update(momentum_buffer=opt['state'][0]['momentum_buffer'] * float('nan')),
     'NaN/Inf'),
    (lambda opt: opt['param_groups'][0].update(momentum='x'), "momentum='x'"),
    (lambda opt: opt['param_groups'][0].update(weight_decay=float('nan')), 'weight_decay=nan'),
])
def test_resume_optimizer_state_is_checked(trained, data_dir, tmp_path, capsys, edit, expect):
    out, _, _ = trained
    ckpt = torch.load(out / 'last.pth.tar', map_location='cpu', weights_only=True)
    edit(ckpt['optimizer'])
    path = tmp_path / 'bad.pth.tar'
    torch.save(ckpt, path)
    err = _error_of(['--data-dir', data_dir, '--out', str(tmp_path / 'run'), '--batch-size', '16', '--workers', '0',
                     *NARROW, '--iters', '40', '--resume', str(path)], capsys)
    assert str(path) in err and expect in err, err
    assert not (tmp_path / 'run').exists()


# --- the loop: the host waits for the device only at log and eval points; nothing left running -------------------

def test_training_loop_syncs_only_at_log_and_eval_points(monkeypatch):
    from timm_resattn.train.loop import Schedule, train_loop
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = [(torch.randn(4, 3, 2, 2), torch.randint(0, 3, (4,))) for _ in range(12)]
    syncs = []
    for name in ('item', '__float__', '__int__', '__bool__', 'tolist'):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=original, _n=name: syncs.append(_n) or _o(self, *a))
    evals = []
    train_loop(model, optimizer, None, batches, Schedule(12, [], 0.1, eval_every=6, log_every=4, seed=0), 0,
               torch.device('cpu'), None, lambda done: evals.append(done) or (50.0, 1.0), lambda *a: None)
    assert evals == [6, 12]
    assert len(syncs) <= 2 * 4, syncs  # the points: iterations 4, 6, 8, 12 (not 12 iterations' worth)


def test_divergence_is_named_at_the_next_check_point(data_dir, tmp_path, capsys):
    """ The loss becomes non-finite at iteration 2; the run stops at the log point of iteration 3, naming 2. """
    err = _error_of(['--data-dir', data_dir, '--out', str(tmp_path / 'run'), '--batch-size', '16', '--workers', '0',
                     *NARROW, '--iters', '6', '--lr', '1e30', '--log-every', '3'], capsys)
    assert 'diverged at iteration 2: the loss is nan' in err


@pytest.mark.parametrize('failure', ['diverged', 'interrupted'])
def test_no_worker_process_left_behind(data_dir, tmp_path, capsys, monkeypatch, failure):
    import multiprocessing

    from timm_resattn.cli import main as cli_main
    from timm_resattn.train import loop
    before = set(multiprocessing.active_children())
    argv = ['train-cifar', '--data-dir', data_dir, '--out', str(tmp_path / 'run'), '--batch-size', '16',
            '--workers', '2', *NARROW, '--iters', '8', '--log-every', '4']
    if failure == 'diverged':
        argv += ['--lr', '1e30']
    else:
        step, calls = loop.train_step, []

        def interrupted(*args):
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt
            return step(*args)
        monkeypatch.setattr(loop, 'train_step', interrupted)
    code = cli_main(argv)
    err = capsys.readouterr().err
    assert code == (2 if failure == 'diverged' else 130), err
    assert err.startswith('error: ') and 'Traceback' not in err
    assert set(multiprocessing.active_children()) - before == set()
