"""MNIST and CIFAR-10 loaders on small files written in the data sets' own on-disk formats."""

import gzip
import pickle
import struct

import numpy as np
import pytest

from implicitreg.config import ConfigError, DataConfig, build_config
from implicitreg.data import load_dataset
from implicitreg.data.vision import read_idx
from implicitreg.studies.explicit_vs_implicit import Config


def write_idx(path, array, compress=False):
    """LeCun's IDX: 0x00 0x00, type 0x08 (ubyte), ndim, big-endian int32 dims, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(payload)


@pytest.fixture
def mnist_root(tmp_path):
    rng = np.random.default_rng(0)
    raw = tmp_path / "MNIST" / "raw"  # torchvision's layout
    raw.mkdir(parents=True)
    images = {"train": rng.integers(0, 256, (30, 28, 28)), "t10k": rng.integers(0, 256, (12, 28, 28))}
    labels = {"train": rng.integers(0, 10, 30), "t10k": rng.integers(0, 10, 12)}
    for split in ("train", "t10k"):
        write_idx(raw / f"{split}-images-idx3-ubyte.gz", images[split], compress=True)
        write_idx(raw / f"{split}-labels-idx1-ubyte", labels[split])
    return tmp_path, images, labels


def test_mnist_reads_idx_files_exactly(mnist_root):
    root, images, labels = mnist_root
    data = load_dataset(DataConfig(name="mnist", root=str(root)))
    assert data.x_train.shape == (30, 784) and data.x_test.shape == (12, 784)
    np.testing.assert_array_equal(data.x_train, images["train"].reshape(30, -1) / 255.0)
    np.testing.assert_array_equal(data.y_test, labels["t10k"])
    small = load_dataset(DataConfig(name="mnist", root=str(root), n_train=10, n_test=5))
    assert small.x_train.shape == (10, 784) and small.y_test.shape == (5,)
    # the subsample is a subset of the original rows
    rows = {r.tobytes() for r in data.x_train}
    assert all(r.tobytes() in rows for r in small.x_train)


def test_idx_header_is_checked(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03\x04" + b"\x00" * 16)
    with pytest.raises(ValueError, match="magic"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">i", 10) + b"\x00" * 3)
    with pytest.raises(ValueError, match="holds 3"):
        read_idx(short)


def test_cifar10_reads_python_pickles(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for name, n in [*[(f"data_batch_{i}", 4) for i in range(1, 6)], ("test_batch", 6)]:
        batches[name] = {b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
                         b"labels": rng.integers(0, 10, n).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(batches[name], f)
    data = load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    assert data.x_train.shape == (20, 3072) and data.n_classes == 10
    np.testing.assert_array_equal(data.x_train[:4], batches["data_batch_1"][b"data"] / 255.0)
    np.testing.assert_array_equal(data.y_test, batches["test_batch"][b"labels"])


def test_missing_root_or_files_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="data.root"):
        build_config(Config, {}, {"data": {"name": "mnist"}})
    with pytest.raises(FileNotFoundError, match="data.root: train-images-idx3-ubyte"):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path)))
