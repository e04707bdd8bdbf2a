"""MNIST-1D (Greydanus & Kobak 2024), generated offline and cached.

Never calls ``mnist1d.data.get_dataset``, which downloads; ``make_dataset`` synthesizes the
same data from the templates that ship with the package.

The *canonical* set is the generator's default: ``get_dataset_args()`` (5000 samples, 80/20
split, seed 42), i.e. the paper's 4000 train / 1000 test points. Sizes within it are its first
``n_train`` train and first ``n_test`` test points, so a smaller study runs on a subset of the
paper's data and a test set nested in the paper's. Larger sizes are a larger draw of the same
generator (same templates and arguments, ``num_samples`` raised), which is a different set. The
seed is the generator's seed as given: another seed is another draw, split the same way.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
import secrets
import zipfile
import zlib
from pathlib import Path

import numpy as np

from implicitreg.data.dataset import Dataset

DEFAULT_TRAIN, DEFAULT_TEST = 4000, 1000
CANONICAL_SEED = 42  # get_dataset_args()'s seed: the paper's data set
ENV = "IMPLICITREG_CACHE"
FEATURES = 40


def cache_dir() -> Path:
    """``$IMPLICITREG_CACHE`` or ``~/.cache/implicitreg``; ``ValueError`` if it names something
    other than a directory."""
    path = Path(os.environ.get(ENV) or Path.home() / ".cache" / "implicitreg")
    if path.exists() and not path.is_dir():
        raise ValueError(f"{ENV}: expected a directory for the data cache, got {path}, which is not a directory")
    return path


def load_mnist1d(n_train: int | None = None, n_test: int | None = None, seed: int = CANONICAL_SEED) -> Dataset:
    """MNIST-1D: 40 features, 10 classes.

    Args:
        n_train, n_test: split sizes (defaults 4000 / 1000, the paper's). Within 4000 / 1000 they
            are the first points of the seed's 5000-sample set; beyond, a larger draw.
        seed: the generator's seed; 42 (the default) is the paper's data set.
    Returns:
        A :class:`Dataset` with x [n, 40] float64 (standardized over the generated set) and y int64.
    """
    n_train = n_train or DEFAULT_TRAIN
    n_test = n_test or DEFAULT_TEST
    from mnist1d.data import get_dataset_args

    args = get_dataset_args()
    args.seed = seed
    if n_train <= DEFAULT_TRAIN and n_test <= DEFAULT_TEST:
        raw = _cached(args)  # the seed's 5000-sample set; the paper's for seed 42
        return _dataset(raw["x"][:n_train], raw["y"][:n_train], raw["x_test"][:n_test], raw["y_test"][:n_test])
    # The generator makes num_samples // 10 examples per class and splits at int(N · train_split);
    # a multiple of 10, split by index, gives exactly n_train / n_test.
    args.num_samples = 10 * math.ceil((n_train + n_test) / 10)
    raw = _cached(args)
    x, y = np.concatenate([raw["x"], raw["x_test"]]), np.concatenate([raw["y"], raw["y_test"]])
    return _dataset(x[:n_train], y[:n_train], x[n_train : n_train + n_test], y[n_train : n_train + n_test])


def _dataset(x_train, y_train, x_test, y_test) -> Dataset:
    return Dataset("mnist1d", x_train.astype(np.float64), y_train.astype(np.int64), x_test.astype(np.float64),
                   y_test.astype(np.int64), n_classes=10)


def _cached(args) -> dict[str, np.ndarray]:
    """``make_dataset(args)``'s arrays, from the cache or generated and cached (atomically).

    A cache file that cannot be read or holds the wrong arrays is regenerated and replaced.
    """
    directory = cache_dir()
    key = hashlib.sha256(repr(sorted(vars(args).items())).encode()).hexdigest()[:16]
    path = directory / f"mnist1d-{key}.npz"
    arrays = _read_cache(path, args.num_samples)
    if arrays is not None:
        return arrays
    try:
        directory.mkdir(parents=True, exist_ok=True)  # before generating: a bad directory fails at once
    except OSError as err:
        raise _unwritable(directory, err) from None
    from mnist1d.data import make_dataset

    raw = _generate(make_dataset, args)
    arrays = {name: raw[name] for name in ("x", "y", "x_test", "y_test")}
    try:
        tmp = directory / f"{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp"  # unique per writer
        try:
            with open(tmp, "xb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as err:
        raise _unwritable(directory, err) from None
    return arrays


def _unwritable(directory: Path, err: OSError) -> ValueError:
    return ValueError(f"{ENV}: cannot write the data cache in {directory} ({err}); expected a writable directory")


def _read_cache(path: Path, num_samples: int) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when the file is missing, unreadable or not what was generated."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in ("x", "y", "x_test", "y_test")}
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error):
        return None
    x, y, x_test, y_test = (arrays[name] for name in ("x", "y", "x_test", "y_test"))
    consistent = (x.ndim == x_test.ndim == 2 and x.shape[1] == x_test.shape[1] == FEATURES
                  and y.shape == (len(x),) and y_test.shape == (len(x_test),) and len(x) + len(x_test) == num_samples)
    return arrays if consistent else None


def _generate(make_dataset, args) -> dict:
    """Run the generator without disturbing the caller's global random state (it reseeds
    ``random`` and ``numpy.random``)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        return make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
