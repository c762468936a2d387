""" ``python -m timm_resattn.train_cifar`` on a tiny synthetic CIFAR-10 written in CIFAR-10's on-disk format.

The runs use a narrow resattnet56_cifar (``--model-kwargs``), batch 16 and one CPU thread to stay fast.
"""
import os
import pickle
import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import timm
from timm_resattn import train_cifar
from timm_resattn.train_cifar import apply_label_noise, augment_batch, load_cifar, lr_at, main, pixel_mean

NARROW = ['--model', 'resattnet56_cifar', '--model-kwargs', 'stage_chs=(16, 32, 64)', 'stem_chs=8']
NARROW_KWARGS = dict(stage_chs=(16, 32, 64), stem_chs=8)
CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']


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


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # faster than 2 on a shared 2-core box, and deterministic
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return str(write_cifar10(tmp_path_factory.mktemp('cifar')))


def _run(data_dir, out, *extra):
    return main(['--data-dir', data_dir, '--out', str(out), '--batch-size', '16', '--workers', '0', *NARROW,
                 *extra])


@pytest.fixture(scope='module')
def trained(data_dir, tmp_path_factory):
    """ 30 iterations (lr 0.1, /10 at 12 and 18), logging every 5 and testing every 15. """
    out = tmp_path_factory.mktemp('run')
    torch.set_num_threads(1)
    import io
    from contextlib import redirect_stdout
    buf = io.StringIO()
    with redirect_stdout(buf):
        summary = _run(data_dir, out, '--iters', '30', '--log-every', '5', '--eval-every', '15')
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
    assert train_cifar._parse_milestones(None, 160_000) == [64_000, 96_000]
    assert train_cifar._parse_milestones('96000,64000', 1) == [64_000, 96_000]


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


def test_data_order_independent_of_workers(data_dir):
    x, y, _ = load_cifar(data_dir, 'cifar10', train=True)
    ds = train_cifar.TrainBatches(x, y, pixel_mean(x), batch_size=16, seed=5)
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
