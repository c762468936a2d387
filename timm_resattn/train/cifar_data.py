""" CIFAR-10/100 data for ``timm_resattn.train``: the on-disk reader, the paper's label noise and augmentation.

The reader takes the python-pickle CIFAR files (``cifar-10-batches-py/data_batch_1..5``, ``test_batch``,
``batches.meta``; ``cifar-100-python/train``, ``test``, ``meta``) as torchvision downloads them. They are pickles,
so they are read with an unpickler that admits only what a CIFAR file holds (dicts, lists, strings, bytes, ints and
numpy uint8 arrays): a crafted file can't run code, it is refused with a ``DataError`` naming the file and the
global it asked for. No checksum is verified (``download_cifar`` lets torchvision fetch and md5-check the official
files; torchvision's own CIFAR10 class insists on the published md5s, so it can't read re-packed or synthetic files);
shapes, dtypes and label ranges are.

Augmentation is the paper's (§4.1): zero-pad by 4 px, a random 32x32 crop, a horizontal flip with probability 1/2.
Normalisation is where we differ from the paper, see ``timm_resattn.train.loop``: per channel, with the model's own
data config (``timm.data.resolve_data_config(model=model)``), not the paper's per-pixel mean image.

Copyright the timm-resattn authors, Apache-2.0.
"""
import io
import os
import pickle
import sys
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import DataError, MissingFileError

__all__ = [
    'LAYOUT', 'NUM_CLASSES', 'read_cifar_pickle', 'load_cifar', 'download_cifar', 'apply_label_noise',
    'pixel_mean', 'normalize', 'augment_batch', 'stream_seed', 'TrainBatches',
]

LAYOUT = {
    # dataset: (folder, train files, test files, meta file, label key, class-name key)
    'cifar10': (
        'cifar-10-batches-py', [f'data_batch_{i}' for i in range(1, 6)], ['test_batch'], 'batches.meta', 'labels',
        'label_names',
    ),
    'cifar100': ('cifar-100-python', ['train'], ['test'], 'meta', 'fine_labels', 'fine_label_names'),
}
NUM_CLASSES = {'cifar10': 10, 'cifar100': 100}

# The only globals a CIFAR pickle refers to: numpy's array reconstruction (protocol 2, the official files, written
# by Python 2 as numpy.core; numpy >= 2 pickles as numpy._core), numpy's in-band buffer path of protocol 5 pickles,
# and _codecs.encode, which protocol-2 pickles written by Python 3 use for bytes.
_ALLOWED_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'): ('numpy', 'multiarray', '_reconstruct'),
    ('numpy._core.multiarray', '_reconstruct'): ('numpy', 'multiarray', '_reconstruct'),
    ('numpy.core.numeric', '_frombuffer'): ('numpy', 'numeric', '_frombuffer'),
    ('numpy._core.numeric', '_frombuffer'): ('numpy', 'numeric', '_frombuffer'),
    ('numpy', 'ndarray'): ('numpy', '', 'ndarray'),
    ('numpy', 'dtype'): ('numpy', '', 'dtype'),
    ('_codecs', 'encode'): ('_codecs', '', 'encode'),
}


def _numpy_core(submodule: str):
    # numpy >= 2 keeps these in numpy._core (numpy.core is a deprecated alias); numpy 1.x in numpy.core
    import importlib
    try:
        return importlib.import_module(f'numpy._core.{submodule}')
    except ImportError:
        return importlib.import_module(f'numpy.core.{submodule}')


class _CifarUnpickler(pickle.Unpickler):
    """ An unpickler that resolves only ``_ALLOWED_GLOBALS``; any other global (``os.system``, ``builtins.eval``,
    ``torch...``) is refused before anything is called.
    """

    def __init__(self, file, path: str):
        super().__init__(file, encoding='latin1')
        self._path = path

    def find_class(self, module: str, name: str):
        target = _ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise DataError(
                f'{self._path}: refusing to unpickle the global {module}.{name}: a CIFAR batch holds only dicts, '
                f'lists, strings, ints and numpy uint8 arrays (this file is not a CIFAR batch, or was crafted)'
            )
        package, submodule, attr = target
        if package == 'numpy':
            return getattr(_numpy_core(submodule) if submodule else np, attr)
        import _codecs
        return getattr(_codecs, attr)

    def persistent_load(self, pid):
        raise DataError(f'{self._path}: refusing a pickle persistent id ({pid!r}): not a CIFAR batch')


def read_cifar_pickle(path: str) -> dict:
    """ One CIFAR python file as a dict, through the restricted unpickler. Raises ``DataError`` naming ``path`` for
    anything that is not a readable CIFAR pickle (a crafted global, a truncated or corrupt file, not a dict).
    """
    with open(path, 'rb') as f:
        raw = f.read()
    try:
        entry = _CifarUnpickler(io.BytesIO(raw), path).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, UnicodeDecodeError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, MemoryError, OverflowError, RecursionError) as e:
        what = 'truncated' if isinstance(e, EOFError) else 'corrupt'
        raise DataError(
            f'{path}: not a readable CIFAR python batch ({what}: {type(e).__name__}: {e}); delete it and download '
            f'the dataset again'
        ) from None
    if not isinstance(entry, dict):
        raise DataError(f'{path}: a CIFAR python batch is a dict, this file holds a {type(entry).__name__}')
    return entry


def _get(entry: dict, key: str, path: str):
    if key not in entry:
        found = ', '.join(repr(k) for k in list(entry)[:8]) or 'none'
        raise DataError(f'{path}: no {key!r} entry (keys found: {found}); not a CIFAR batch of this dataset')
    return entry[key]


def _batch_arrays(entry: dict, path: str, label_key: str, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    data = _get(entry, 'data', path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8:
        kind = f'a {data.dtype} array' if isinstance(data, np.ndarray) else f'a {type(data).__name__}'
        raise DataError(f"{path}: 'data' is {kind}, expected a uint8 array of N x 3072 (3 x 32 x 32, CHW)")
    if data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: 'data' has shape {data.shape}, expected N x 3072 uint8 (3 x 32 x 32, CHW)")
    raw_labels = _get(entry, label_key, path)
    try:
        labels = np.asarray(raw_labels)
        if labels.ndim != 1 or (labels.size and labels.dtype.kind not in 'iu'):
            raise TypeError
        labels = labels.astype(np.int64)
    except (TypeError, ValueError):
        raise DataError(f'{path}: {label_key!r} must be a list of integer class indices') from None
    if len(labels) != len(data):
        raise DataError(f'{path}: {len(data)} images but {len(labels)} labels')
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        bad = int(labels[(labels < 0) | (labels >= num_classes)][0])
        raise DataError(f'{path}: label {bad} out of range: {label_key!r} must lie in [0, {num_classes})')
    return data, labels


def load_cifar(root: str, dataset: str = 'cifar10', train: bool = True) -> Tuple[torch.Tensor, torch.Tensor, List[str]]:
    """ Read CIFAR-10/100 in its python-pickle on-disk format (the files torchvision downloads).

    Returns ``(images, labels, class_names)``: uint8 ``N x 3 x 32 x 32``, int64 ``N``. No checksum is verified
    (``--download`` lets torchvision fetch and verify the official files); dtypes, shapes and label ranges are, and
    every problem is a ``DataError`` (``MissingFileError`` for a missing file) naming the file.
    """
    if dataset not in LAYOUT:
        raise DataError(f'dataset={dataset!r}; expected one of {sorted(LAYOUT)}')
    folder, train_files, test_files, meta_file, label_key, names_key = LAYOUT[dataset]
    base = os.path.join(root, folder)
    num_classes = NUM_CLASSES[dataset]
    images, labels = [], []
    for name in (train_files if train else test_files):
        path = os.path.join(base, name)
        if not os.path.isfile(path):
            raise MissingFileError(
                f'{path} not found: expected {dataset} in its python format under {base} '
                f'(pass --download to fetch it with torchvision)'
            )
        data, lab = _batch_arrays(read_cifar_pickle(path), path, label_key, num_classes)
        images.append(data)
        labels.append(lab)
    meta_path = os.path.join(base, meta_file)
    class_names = []
    if os.path.isfile(meta_path):
        names = read_cifar_pickle(meta_path).get(names_key, [])
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, (str, bytes)) for n in names):
            raise DataError(f'{meta_path}: {names_key!r} must be a list of class names')
        class_names = [n.decode('latin1') if isinstance(n, bytes) else n for n in names]
    if not class_names:
        class_names = [str(i) for i in range(num_classes)]
    x = torch.from_numpy(np.concatenate(images).reshape(-1, 3, 32, 32))
    y = torch.from_numpy(np.concatenate(labels))
    return x, y, class_names


def download_cifar(root: str, dataset: str) -> None:
    """ Let torchvision fetch (and md5-check) ``dataset`` into ``root``; no network is a ``DataError`` naming the
    dataset, not a traceback.
    """
    import urllib.error

    import torchvision
    ds_cls = torchvision.datasets.CIFAR10 if dataset == 'cifar10' else torchvision.datasets.CIFAR100
    try:
        for train in (True, False):
            ds_cls(root, train=train, download=True)
    except urllib.error.URLError as e:
        raise DataError(
            f'--download: cannot download {dataset} (no network? {getattr(e, "reason", e)}); put the python-format '
            f'files under {os.path.join(root, LAYOUT[dataset][0])} and run without --download'
        ) from None
    except (OSError, RuntimeError) as e:
        raise DataError(f'--download: cannot download {dataset} into {root}: {e}') from None


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
    """ The paper's per-pixel mean image (3 x 32 x 32, float32, pixels in [0, 1]) of a uint8 ``N x 3 x 32 x 32``
    set. Kept for reference: training normalises per channel with the model's data config instead.
    """
    return (images.double().sum(dim=0) / (255.0 * max(len(images), 1))).float()


def _as_chw(value: Union[torch.Tensor, Sequence[float]]) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float32)
    return t.view(-1, 1, 1) if t.ndim == 1 else t


def normalize(images: torch.Tensor, mean, std: Optional[Sequence[float]] = None) -> torch.Tensor:
    """ uint8 ``N x 3 x H x W`` -> float32 ``(x / 255 - mean) / std``, the arithmetic of timm's eval transform
    (``ToTensor`` then ``Normalize``). ``mean`` is per channel (3 values) or an image (3 x H x W); no ``std``: none.
    """
    out = images.float().div_(255.0).sub_(_as_chw(mean).to(images.device))
    if std is not None:
        out = out.div_(_as_chw(std).to(images.device))
    return out


def augment_batch(images: torch.Tensor, mean, generator: torch.Generator, pad: int = 4,
                  std: Optional[Sequence[float]] = None) -> torch.Tensor:
    """ Zero-pad each uint8 image by ``pad`` px, take a random 32x32 crop, flip half of them, then ``normalize``
    (scale to [0, 1], subtract ``mean``, divide by ``std`` if given).
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
    return normalize(out, mean, std)


def stream_seed(seed: int, stream: int, index: int) -> int:
    """ A fixed mixing of (seed, stream, index) into one 63-bit seed: stateless, so resume needs only the
    iteration.
    """
    return int(np.random.SeedSequence([seed, stream, index]).generate_state(1, np.uint64)[0] >> np.uint64(1))


class TrainBatches(Dataset):
    """ Item ``i`` is the augmented mini-batch of iteration ``i``: the ``i % B``-th batch of the shuffle of epoch
    ``i // B`` (``B`` = batches per epoch; the last partial batch of an epoch is dropped). Pure in ``(seed, i)``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, batch_size: int, seed: int,
                 std: Optional[Sequence[float]] = None):
        if len(images) < batch_size:
            raise DataError(f'{len(images)} training images are fewer than one batch of {batch_size} (--batch-size)')
        self.images, self.labels, self.mean, self.std = images, labels, mean, std
        self.batch_size, self.seed = batch_size, seed
        self.batches_per_epoch = len(images) // batch_size
        self._perm_epoch, self._perm = -1, None

    def __len__(self) -> int:
        return sys.maxsize

    def _epoch_perm(self, epoch: int) -> torch.Tensor:
        if epoch != self._perm_epoch:
            g = torch.Generator().manual_seed(stream_seed(self.seed, 1, epoch))
            self._perm, self._perm_epoch = torch.randperm(len(self.images), generator=g), epoch
        return self._perm

    def __getitem__(self, it: int) -> Tuple[torch.Tensor, torch.Tensor]:
        epoch, b = divmod(it, self.batches_per_epoch)
        idx = self._epoch_perm(epoch)[b * self.batch_size:(b + 1) * self.batch_size]
        g = torch.Generator().manual_seed(stream_seed(self.seed, 2, it))
        return augment_batch(self.images[idx], self.mean, g, std=self.std), self.labels[idx]
