"""MNIST and CIFAR-10 from a local directory, read from the data sets' own on-disk formats.

Nothing is downloaded. The files are the ones torchvision (or the original sites) put on disk:

- MNIST: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte`` (optionally ``.gz``), in ``root``, ``root/MNIST/raw`` or ``root/raw``.
- CIFAR-10: the python pickles ``data_batch_1`` … ``data_batch_5`` and ``test_batch`` in
  ``root/cifar-10-batches-py`` or ``root``.

Reading the formats directly gives the same arrays torchvision's datasets hold, without making
torchvision (an optional extra, often mismatched with the installed torch) a requirement.
Inputs are flattened and scaled to [0, 1]: [n, 784] for MNIST, [n, 3072] (channel-major) for CIFAR-10.
"""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

from implicitreg.data.dataset import Dataset

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's format: magic 0x0000TTNN, N big-endian int32 dimensions, data)."""
    raw = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    data = np.frombuffer(raw, dtype=IDX_DTYPES[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {dims.tolist()} but holds {data.size} values")
    return data.reshape(dims)


def _find(root: Path, stem: str, folders: tuple[str, ...]) -> Path:
    for folder in folders:
        for name in (stem, f"{stem}.gz"):
            if (root / folder / name).is_file():
                return root / folder / name
    raise FileNotFoundError(f"data.root: {stem}[.gz] not found in {root} (looked in {', '.join(folders)})")


def _subsample(x, y, n: int | None, seed: int, what: str):
    if n is None:
        return x, y
    if n > len(x):
        raise ValueError(f"data.{what}: the files hold {len(x)} points, got {n}")
    keep = np.sort(np.random.default_rng(seed).permutation(len(x))[:n])
    return x[keep], y[keep]


def load_mnist(root: str | Path, n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> Dataset:
    """MNIST from IDX files under ``root``; a seeded subsample when sizes are given."""
    root, folders = Path(root), (".", "MNIST/raw", "raw")
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(_find(root, f"{prefix}-images-idx3-ubyte", folders))
        labels = read_idx(_find(root, f"{prefix}-labels-idx1-ubyte", folders))
        if len(images) != len(labels):
            raise ValueError(f"data.root: {split} images ({len(images)}) and labels ({len(labels)}) differ in count")
        arrays[split] = (images.reshape(len(images), -1).astype(np.float64) / 255.0, labels.astype(np.int64))
    x_tr, y_tr = _subsample(*arrays["train"], n_train, seed, "n_train")
    x_te, y_te = _subsample(*arrays["test"], n_test, seed + 1, "n_test")
    return Dataset("mnist", x_tr, y_tr, x_te, y_te, n_classes=10)


def load_cifar10(root: str | Path, n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> Dataset:
    """CIFAR-10 from its python pickles under ``root``; a seeded subsample when sizes are given."""
    root, folders = Path(root), ("cifar-10-batches-py", ".")

    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        with open(_find(root, name, folders), "rb") as f:
            entry = pickle.load(f, encoding="bytes")
        data, labels = entry[b"data"], entry[b"labels"]
        return np.asarray(data, dtype=np.float64) / 255.0, np.asarray(labels, dtype=np.int64)

    train = [batch(f"data_batch_{i}") for i in range(1, 6)]
    x_tr, y_tr = np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train])
    x_te, y_te = batch("test_batch")
    x_tr, y_tr = _subsample(x_tr, y_tr, n_train, seed, "n_train")
    x_te, y_te = _subsample(x_te, y_te, n_test, seed + 1, "n_test")
    return Dataset("cifar10", x_tr, y_tr, x_te, y_te, n_classes=10)
