"""MNIST-1D (Greydanus & Kobak 2024), generated offline and cached.

Never calls ``mnist1d.data.get_dataset``, which downloads; ``make_dataset`` synthesizes the
same data from the templates that ship with the package.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
from pathlib import Path

import numpy as np

from implicitreg.data.dataset import Dataset

DEFAULT_TRAIN, DEFAULT_TEST = 4000, 1000


def cache_dir() -> Path:
    """``$IMPLICITREG_CACHE`` or ``~/.cache/implicitreg``."""
    return Path(os.environ.get("IMPLICITREG_CACHE", Path.home() / ".cache" / "implicitreg"))


def load_mnist1d(n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> Dataset:
    """MNIST-1D with the generator's default arguments; 40 features, 10 classes.

    Args:
        n_train, n_test: split sizes (defaults 4000 / 1000, the paper's).
        seed: the generator's seed (the paper's data set is seed 42 under ``get_dataset_args``;
            ``seed=0`` keeps that default).
    """
    n_train = n_train or DEFAULT_TRAIN
    n_test = n_test or DEFAULT_TEST
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    # The generator makes num_samples // 10 examples per class and splits at int(N · train_split);
    # asking for a multiple of 10 and splitting by index gives exactly n_train / n_test (and, for
    # the default 4000 / 1000, exactly the paper's data set).
    args.num_samples = 10 * math.ceil((n_train + n_test) / 10)
    args.train_split = n_train / args.num_samples
    if seed:
        args.seed = seed
    key = hashlib.sha256(repr(sorted(vars(args).items())).encode()).hexdigest()[:16]
    path = cache_dir() / f"mnist1d-{key}.npz"
    if path.exists():
        arrays = dict(np.load(path))
    else:
        raw = _generate(make_dataset, args)
        x, y = np.concatenate([raw["x"], raw["x_test"]]), np.concatenate([raw["y"], raw["y_test"]])
        arrays = {"x": x[:n_train], "y": y[:n_train], "x_test": x[n_train : n_train + n_test],
                  "y_test": y[n_train : n_train + n_test]}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    return Dataset(
        name="mnist1d",
        x_train=arrays["x"].astype(np.float64),
        y_train=arrays["y"].astype(np.int64),
        x_test=arrays["x_test"].astype(np.float64),
        y_test=arrays["y_test"].astype(np.int64),
        n_classes=10,
    )


def _generate(make_dataset, args) -> dict:
    """Run the generator without disturbing the caller's global random state (it reseeds
    ``random`` and ``numpy.random``)."""
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        return make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
