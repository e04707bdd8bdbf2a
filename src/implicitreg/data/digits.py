"""scikit-learn's bundled 8x8 digits (1797 images, 64 features), scaled to [0, 1]."""

from __future__ import annotations

import numpy as np

from implicitreg.data.dataset import Dataset, split

DEFAULT_TEST = 360


def load_digits(n_train: int | None = None, n_test: int | None = None, seed: int = 0) -> Dataset:
    """A seeded split of the digits; ``n_train`` defaults to everything not in the test set."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = bunch.data.astype(np.float64) / 16.0
    y = bunch.target.astype(np.int64)
    n_test = n_test or DEFAULT_TEST
    available = len(x) - n_test
    if n_train is not None and n_train > available:
        raise ValueError(f"data.n_train: digits has {available} points besides the test set, got {n_train}")
    x_tr, y_tr, x_te, y_te = split(x, y, n_test, seed)
    if n_train is not None:
        x_tr, y_tr = x_tr[:n_train], y_tr[:n_train]
    return Dataset("digits", x_tr, y_tr, x_te, y_te, n_classes=10)
