"""Synthetic generators with known structure: linear regression, separable classes, teacher-student.

All are float64 numpy, seeded, and cheap enough to generate in tests.
"""

from __future__ import annotations

import numpy as np

from implicitreg.data.dataset import Dataset

DEFAULT_TRAIN, DEFAULT_TEST = 100, 1000


def _sizes(n_train: int | None, n_test: int | None) -> tuple[int, int]:
    return n_train or DEFAULT_TRAIN, n_test or DEFAULT_TEST


def regression(n_train=None, n_test=None, dim=20, noise=0.0, seed=0) -> Dataset:
    """y = x·w* + noise·ε with x, ε ~ N(0, I) and w* ~ N(0, I/dim).

    With ``dim > n_train`` the least-squares problem is underdetermined: the setting of the
    min-norm results. Targets are float64 ([n]); ``n_classes`` is 0.
    """
    n_train, n_test = _sizes(n_train, n_test)
    rng = np.random.default_rng(seed)
    w_star = rng.normal(0.0, 1.0 / np.sqrt(dim), size=dim)
    x = rng.normal(size=(n_train + n_test, dim))
    y = x @ w_star + noise * rng.normal(size=n_train + n_test)
    return Dataset("regression", x[:n_train], y[:n_train], x[n_train:], y[n_train:], n_classes=0)


def separable(n_train=None, n_test=None, dim=20, noise=0.0, seed=0, margin=0.1) -> Dataset:
    """Two linearly separable classes: label 1[x·w* > 0], points with |x·w*| < margin rejected.

    ``noise`` flips that fraction of *test* labels only, so the train set stays separable.
    """
    n_train, n_test = _sizes(n_train, n_test)
    rng = np.random.default_rng(seed)
    w_star = rng.normal(size=dim)
    w_star /= np.linalg.norm(w_star)
    kept: list[np.ndarray] = []
    count = 0
    while count < n_train + n_test:
        x = rng.normal(size=(2 * (n_train + n_test), dim))
        x = x[np.abs(x @ w_star) >= margin]
        kept.append(x)
        count += len(x)
    x = np.concatenate(kept)[: n_train + n_test]
    y = (x @ w_star > 0).astype(np.int64)
    flip = rng.random(n_test) < noise
    y_test = np.where(flip, 1 - y[n_train:], y[n_train:])
    return Dataset("separable", x[:n_train], y[:n_train], x[n_train:], y_test, n_classes=2)


def teacher_student(n_train=None, n_test=None, dim=20, noise=0.0, seed=0, width=32, classes=10) -> Dataset:
    """Labels from a random one-hidden-layer ReLU teacher (argmax of its ``classes`` outputs).

    ``noise`` replaces that fraction of train labels by uniform random classes.
    """
    n_train, n_test = _sizes(n_train, n_test)
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(dim, width)) / np.sqrt(dim)
    w2 = rng.normal(size=(width, classes)) / np.sqrt(width)
    x = rng.normal(size=(n_train + n_test, dim))
    y = (np.maximum(x @ w1, 0.0) @ w2).argmax(axis=1).astype(np.int64)
    y_train = y[:n_train].copy()
    noisy = rng.random(n_train) < noise
    y_train[noisy] = rng.integers(0, classes, size=int(noisy.sum()))
    return Dataset("teacher-student", x[:n_train], y_train, x[n_train:], y[n_train:], n_classes=classes)
