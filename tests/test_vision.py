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


# -- hostile files: refused with one line naming the file, never executed ---------------------------

def write_cifar(root, batches=None, protocol=pickle.DEFAULT_PROTOCOL):
    """Five train batches of 4 images and a test batch of 6, as CIFAR-10's python pickles; ``batches``
    replaces some files by raw bytes (a hostile or malformed batch)."""
    rng = np.random.default_rng(2)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(exist_ok=True)
    for name, n in [*[(f"data_batch_{i}", 4) for i in range(1, 6)], ("test_batch", 6)]:
        entry = {b"batch_label": name.encode(), b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist(), b"filenames": [b"x.png"] * n}
        (folder / name).write_bytes((batches or {}).get(name) or pickle.dumps(entry, protocol=protocol))
    return folder


class RunsACommand:
    """A pickle that, loaded by ``pickle.load``, would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


def test_cifar_pickle_naming_a_command_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "ran"
    hostile = pickle.dumps({b"data": RunsACommand(marker), b"labels": [0]})
    folder = write_cifar(tmp_path, {"data_batch_2": hostile})
    with pytest.raises(ValueError) as err:
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    message = str(err.value)
    assert str(folder / "data_batch_2") in message and "refused" in message and "system" in message
    assert "\n" not in message
    assert not marker.exists()  # the command never ran


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batches_with_numpy_arrays_load_under_every_pickle_protocol(tmp_path, protocol):
    write_cifar(tmp_path, protocol=protocol)
    data = load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    assert data.x_train.shape == (20, 3072) and data.y_test.shape == (6,)


def test_cifar_batch_written_by_numpy_1_and_with_numpy_scalar_labels(tmp_path):
    """The real files name ``numpy.core.multiarray._reconstruct`` (numpy 1); labels may be numpy ints."""
    rng = np.random.default_rng(3)
    entry = {b"data": rng.integers(0, 256, (6, 3072)).astype(np.uint8), b"labels": [np.int64(i) for i in range(6)]}
    raw = pickle.dumps(entry, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray\n_reconstruct" in raw
    write_cifar(tmp_path, {"test_batch": raw})
    data = load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    np.testing.assert_array_equal(data.x_test, entry[b"data"] / 255.0)
    np.testing.assert_array_equal(data.y_test, np.arange(6))


def good_batch(data=np.zeros((3, 3072), np.uint8), labels=(1, 1, 1)):
    """A CIFAR-10 batch with ``data`` and ``labels`` replaced (None: left out)."""
    entry = {b"data": data, b"labels": None if labels is None else list(labels)}
    return pickle.dumps({k: v for k, v in entry.items() if v is not None})


@pytest.mark.parametrize("raw,expected", [
    pytest.param(b"\x00garbage bytes, not a pickle" * 10, "not a CIFAR-10 batch pickle", id="garbage"),
    pytest.param(good_batch()[:-200], "not a CIFAR-10 batch pickle", id="truncated"),
    pytest.param(pickle.dumps([1, 2, 3]), "got list", id="not-a-dict"),
    pytest.param(good_batch(labels=None), "expected keys b'data' and b'labels'", id="no-labels"),
    pytest.param(good_batch(data=np.zeros((3, 100), np.uint8)), "shape (n, 3072)", id="wrong-width"),
    pytest.param(good_batch(data=np.zeros((3, 3072))), "integer array", id="float-data"),
    pytest.param(good_batch(data=np.full((3, 3072), 300)), "0..255", id="pixels-out-of-range"),
    pytest.param(good_batch(labels=[1, 2]), "expected 3 integer labels", id="labels-count"),
    pytest.param(good_batch(labels=[1, 2, 10]), "labels must lie in 0..9", id="labels-range"),
    pytest.param(good_batch(labels=[[1], 2, "a"]), "integer labels", id="ragged-labels"),
])
def test_malformed_cifar_batch_is_one_clear_error(tmp_path, raw, expected):
    folder = write_cifar(tmp_path, {"test_batch": raw})
    with pytest.raises(ValueError) as err:
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    message = str(err.value)
    assert expected in message and str(folder / "test_batch") in message and "\n" not in message


def idx_bytes(array):
    return bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape) + array.astype(np.uint8).tobytes()


@pytest.mark.parametrize("name,raw,expected", [
    pytest.param("train-images-idx3-ubyte.gz", b"plain bytes, not gzip" * 5, "not a readable gzip", id="gz-not-gzip"),
    pytest.param("train-images-idx3-ubyte.gz", gzip.compress(idx_bytes(np.random.default_rng(0).integers(0, 256, (30, 28, 28))))[:-300],
                 "not a readable gzip", id="gz-truncated"),
    pytest.param("train-images-idx3-ubyte", idx_bytes(np.zeros((30, 28, 28)))[:-100], "holds 23420", id="truncated"),
    pytest.param("train-images-idx3-ubyte", b"\x00\x00\x08\x03\x00\x00", "truncated IDX header", id="short-header"),
    pytest.param("train-images-idx3-ubyte", b"\x1f\x8b\x08\x03" + bytes(20), "bad magic", id="wrong-magic"),
    pytest.param("train-images-idx3-ubyte", bytes([0, 0, 8, 3]) + struct.pack(">3i", 10**6, 28, 28) + bytes(784),
                 "holds 784", id="header-claims-more"),
    pytest.param("train-images-idx3-ubyte", bytes([0, 0, 8, 1]) + struct.pack(">i", 2**31 - 1) + bytes(8),
                 "holds 8", id="header-claims-2-GiB"),
    pytest.param("train-images-idx3-ubyte", bytes([0, 0, 0x0E, 2]) + struct.pack(">2i", 2**20, 2**20),
                 "limit", id="header-claims-8-TiB"),
    pytest.param("train-labels-idx1-ubyte", idx_bytes(np.full(30, 12)), "labels must lie in 0..9", id="labels-range"),
])
def test_malformed_idx_file_is_one_clear_error(mnist_root, name, raw, expected):
    root = mnist_root[0]
    raw_dir = root / "MNIST" / "raw"
    for existing in raw_dir.glob(name.removesuffix(".gz") + "*"):
        existing.unlink()
    (raw_dir / name).write_bytes(raw)
    with pytest.raises(ValueError) as err:
        load_dataset(DataConfig(name="mnist", root=str(root)))
    message = str(err.value)
    assert expected in message and str(raw_dir / name) in message and "\n" not in message, message
