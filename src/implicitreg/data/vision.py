"""MNIST and CIFAR-10 from a local directory, read from the data sets' own on-disk formats.

Nothing is downloaded. The files are the ones torchvision (or the original sites) put on disk:

- MNIST: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
  ``t10k-labels-idx1-ubyte`` (optionally ``.gz``), in ``root``, ``root/MNIST/raw`` or ``root/raw``.
- CIFAR-10: the python pickles ``data_batch_1`` … ``data_batch_5`` and ``test_batch`` in
  ``root/cifar-10-batches-py`` or ``root``.

Reading the formats directly gives the same arrays torchvision's datasets hold, without making
torchvision (an optional extra, often mismatched with the installed torch) a requirement.
Inputs are flattened and scaled to [0, 1]: [n, 784] for MNIST, [n, 3072] (channel-major) for CIFAR-10.

The files are untrusted input: the CIFAR-10 pickles are read by an unpickler that builds only
dicts, lists, strings, numbers and numpy arrays (never calls anything else a file names), and
every malformed file is refused with a ``ValueError`` naming it.
"""

from __future__ import annotations

import codecs
import gzip
import importlib
import io
import pickle
import zlib
from pathlib import Path

import numpy as np

from implicitreg.data.dataset import Dataset

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MAX_IDX_BYTES = 2 << 30  # an IDX payload larger than this is refused (MNIST's largest file is 47 MB)
CIFAR_DIM = 3 * 32 * 32


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's format: magic 0x0000TTNN, N big-endian int32 dimensions, data).

    Raises ``ValueError`` naming the file when it is not gzip (for ``.gz``), has a bad magic
    number, or holds fewer or more values than its header declares.
    """
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in IDX_DTYPES or head[3] == 0:
                raise ValueError(f"{path}: not an IDX file (bad magic number {head.hex() or 'none'}; expected "
                                 "00 00 <type 08/09/0b/0c/0d/0e> <ndim ≥ 1>)")
            ndim, dtype = head[3], np.dtype(IDX_DTYPES[head[2]])
            dims_raw = f.read(4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise ValueError(f"{path}: truncated IDX header (expected {ndim} dimensions)")
            dims = np.frombuffer(dims_raw, dtype=">i4").astype(np.int64)
            if (dims < 0).any():
                raise ValueError(f"{path}: IDX header has a negative dimension {dims.tolist()}")
            expected = int(np.prod(dims)) * dtype.itemsize
            if expected > MAX_IDX_BYTES:
                raise ValueError(f"{path}: IDX header claims {dims.tolist()} ({expected / 2**30:.1f} GiB), "
                                 f"more than the {MAX_IDX_BYTES >> 30} GiB limit")
            data = _read_at_most(f, expected + 1)  # a gzip bomb cannot inflate beyond the header's claim
    except (OSError, EOFError, zlib.error) as err:  # not gzip, truncated gzip stream, unreadable
        raise ValueError(f"{path}: not a readable {'gzip-compressed ' if path.suffix == '.gz' else ''}"
                         f"IDX file ({err})") from None
    if len(data) != expected:
        raise ValueError(f"{path}: header says {dims.tolist()} ({expected // dtype.itemsize} values) but the file "
                         f"holds {len(data) // dtype.itemsize}{' or more' if len(data) > expected else ''}")
    return np.frombuffer(data, dtype=dtype).reshape(dims)


def _read_at_most(f, limit: int) -> bytes:
    """Up to ``limit`` bytes, in chunks, so that memory follows what the file holds, not what it claims."""
    chunks, total = [], 0
    while total < limit:
        chunk = f.read(min(1 << 24, limit - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


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


def _labels(labels: np.ndarray, n: int, path: Path) -> np.ndarray:
    """Class labels 0..9, one per input; a ``ValueError`` naming ``path`` otherwise."""
    if labels.shape != (n,) or labels.dtype.kind not in "iu":
        raise ValueError(f"{path}: expected {n} integer labels (one per input), got shape {labels.shape} "
                         f"of dtype {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels must lie in 0..9, got values in {labels.min()}..{labels.max()}")
    return labels.astype(np.int64)


def load_mnist(root: str | Path, n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> Dataset:
    """MNIST from IDX files under ``root``; a seeded subsample when sizes are given."""
    root, folders = Path(root), (".", "MNIST/raw", "raw")
    arrays = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        image_path = _find(root, f"{prefix}-images-idx3-ubyte", folders)
        label_path = _find(root, f"{prefix}-labels-idx1-ubyte", folders)
        images, labels = read_idx(image_path), read_idx(label_path)
        if images.ndim < 2:
            raise ValueError(f"{image_path}: expected images (n × height × width), got shape {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"data.root: {split} images ({len(images)}) and labels ({len(labels)}) differ in count")
        arrays[split] = (images.reshape(len(images), -1).astype(np.float64) / 255.0,
                         _labels(labels, len(images), label_path))
    x_tr, y_tr = _subsample(*arrays["train"], n_train, seed, "n_train")
    x_te, y_te = _subsample(*arrays["test"], n_test, seed + 1, "n_test")
    return Dataset("mnist", x_tr, y_tr, x_te, y_te, n_classes=10)


def _latin1_encode(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` as protocol-0..2 pickles of ``bytes`` use it, restricted to latin-1."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


# What a CIFAR-10 batch pickle may name: numpy's array and scalar reconstructors (numpy 1 spells the
# module numpy.core, numpy 2 numpy._core; protocol 5 uses _frombuffer) and latin-1 bytes.
_NUMPY_GLOBALS = {("multiarray", "_reconstruct"), ("multiarray", "scalar"), ("numeric", "_frombuffer")}


class _CifarUnpickler(pickle.Unpickler):
    """Admits only the globals a CIFAR-10 batch needs; anything else (``os.system``, …) is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) in (("numpy", "ndarray"), ("numpy", "dtype")):
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        prefix, _, sub = module.rpartition(".")
        if prefix in ("numpy.core", "numpy._core") and (sub, name) in _NUMPY_GLOBALS:
            for package in ("numpy._core", "numpy.core"):  # the installed numpy's spelling first
                try:
                    return getattr(importlib.import_module(f"{package}.{sub}"), name)
                except (ImportError, AttributeError):
                    continue
        raise pickle.UnpicklingError(f"refused global {module}.{name} (a CIFAR-10 batch holds only dicts, "
                                     "lists, strings, numbers and numpy arrays)")


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch pickle: inputs [n, 3072] in [0, 1] (float64) and labels [n] (int64).

    Raises ``ValueError`` naming ``path`` for anything that is not a CIFAR-10 batch: not a pickle,
    truncated, a pickle naming anything but numpy arrays, or the wrong keys, shapes or values.
    """
    raw = path.read_bytes()  # unpickle from memory: a forged length then cannot make a read allocate more
    try:
        entry = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as err:  # noqa: BLE001 — hostile bytes raise many types; each is the same user error
        raise ValueError(f"{path}: not a CIFAR-10 batch pickle ({type(err).__name__}: {err})") from None
    if not isinstance(entry, dict):
        raise ValueError(f"{path}: expected a CIFAR-10 batch (a dict with data and labels), got {type(entry).__name__}")
    data, labels = (entry.get(key, entry.get(key.decode())) for key in (b"data", b"labels"))
    if data is None or labels is None:
        found = ", ".join(sorted(repr(k) for k in entry)[:6]) or "none"
        raise ValueError(f"{path}: expected keys b'data' and b'labels' of a CIFAR-10 batch, found {found}")
    data, labels = _as_array(data), _as_array(labels)
    if data.ndim != 2 or data.shape[1] != CIFAR_DIM or data.dtype.kind not in "iu":
        raise ValueError(f"{path}: data must be an integer array of shape (n, {CIFAR_DIM}) (32×32×3 images), got "
                         f"shape {data.shape} of dtype {data.dtype}")
    if data.size and (data.min() < 0 or data.max() > 255):
        raise ValueError(f"{path}: data must hold pixel values 0..255, got {data.min()}..{data.max()}")
    return data.astype(np.float64) / 255.0, _labels(labels, len(data), path)


def _as_array(value) -> np.ndarray:
    """``value`` as an array; a ragged or non-sequence value becomes an object array (refused later)."""
    try:
        return np.asarray(value) if isinstance(value, (np.ndarray, list, tuple)) else np.array(None)
    except (ValueError, TypeError):
        return np.array(None)


def load_cifar10(root: str | Path, n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> Dataset:
    """CIFAR-10 from its python pickles under ``root``; a seeded subsample when sizes are given."""
    root, folders = Path(root), ("cifar-10-batches-py", ".")
    train = [read_cifar_batch(_find(root, f"data_batch_{i}", folders)) for i in range(1, 6)]
    x_tr, y_tr = np.concatenate([b[0] for b in train]), np.concatenate([b[1] for b in train])
    x_te, y_te = read_cifar_batch(_find(root, "test_batch", folders))
    x_tr, y_tr = _subsample(x_tr, y_tr, n_train, seed, "n_train")
    x_te, y_te = _subsample(x_te, y_te, n_test, seed + 1, "n_test")
    return Dataset("cifar10", x_tr, y_tr, x_te, y_te, n_classes=10)
