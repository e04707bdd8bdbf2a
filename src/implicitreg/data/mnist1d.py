"""MNIST-1D (Greydanus & Kobak 2024), generated offline and cached.

Never calls ``mnist1d.data.get_dataset``, which downloads; ``make_dataset`` synthesizes the
same data from the templates that ship with the package.
"""

from __future__ import annotations

import hashlib
import os
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
    args.num_samples = n_train + n_test
    args.train_split = n_train / (n_train + n_test)
    if seed:
        args.seed = seed
    key = hashlib.sha256(repr(sorted(vars(args).items())).encode()).hexdigest()[:16]
    path = cache_dir() / f"mnist1d-{key}.npz"
    if path.exists():
        arrays = dict(np.load(path))
    else:
        raw = make_dataset(args)
        arrays = {k: np.asarray(raw[k]) for k in ("x", "y", "x_test", "y_test")}
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
