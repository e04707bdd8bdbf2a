"""Modular addition: all pairs (a, b) of residues mod p, labelled (a + b) mod p (the grokking task).

Power, Burda, Edwards, Babuschkin & Misra (2022), "Grokking: generalization beyond overfitting on
small algorithmic datasets"; Gromov (2023), "Grokking modular arithmetic" (the input encoding: the
one-hot vectors of a and b, concatenated).
"""

from __future__ import annotations

import numpy as np

from implicitreg.data.dataset import Dataset

DEFAULT_TRAIN_FRACTION = 0.4


def modular(p: int = 97, train_fraction: float = DEFAULT_TRAIN_FRACTION, seed: int = 0,
            n_train: int | None = None, n_test: int | None = None) -> Dataset:
    """The p² pairs of Z_p × Z_p split at random into train and test.

    Args:
        p: the modulus (the papers use a prime, 97 or 113; any p ≥ 2 defines the task).
        train_fraction: the share of the p² pairs in the training set, in (0, 1); the number of
            train pairs is round(train_fraction · p²).
        seed: seed of the split (one permutation of the pairs: train are its first pairs).
        n_train: the number of train pairs instead of ``train_fraction`` (``data.n_train``).
        n_test: how many of the remaining pairs to keep as the test set (default: all of them).

    Returns:
        A :class:`Dataset` with x [n, 2p] float64: the one-hot vector of a followed by that of b;
        y [n] int64 = (a + b) mod p; ``n_classes = p``. The split is a deterministic function of
        (p, train size, seed); every pair is in at most one of train and test.
    """
    if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 2:
        raise ValueError(f"modular: p (data.dim) must be an integer >= 2, got {p!r}")
    total = p * p
    if n_train is None:
        if not 0.0 < train_fraction < 1.0:
            raise ValueError(f"modular: train_fraction must lie in (0, 1), got {train_fraction!r}")
        n_train = int(round(train_fraction * total))
    if not 1 <= n_train < total:
        raise ValueError(f"modular: n_train must lie in [1, p² - 1] = [1, {total - 1}] for p = {p}, got {n_train}")
    rest = total - n_train
    if n_test is None:
        n_test = rest
    if not 1 <= n_test <= rest:
        raise ValueError(f"modular: n_test must lie in [1, p² - n_train] = [1, {rest}], got {n_test}")
    a, b = np.divmod(np.arange(total), p)  # pair k is (a, b) = (k // p, k % p)
    order = np.random.default_rng(seed).permutation(total)
    train, test = order[:n_train], order[n_train:n_train + n_test]
    eye = np.eye(p)

    def encode(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.concatenate([eye[a[index]], eye[b[index]]], axis=1)
        return x, ((a[index] + b[index]) % p).astype(np.int64)

    x_train, y_train = encode(train)
    x_test, y_test = encode(test)
    return Dataset("modular", x_train, y_train, x_test, y_test, n_classes=p)


def pairs(x: np.ndarray, p: int) -> tuple[np.ndarray, np.ndarray]:
    """The residues (a, b) [n] each of the one-hot rows x [n, 2p] of :func:`modular` (its inverse)."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != 2 * p:
        raise ValueError(f"modular.pairs: expected x of shape [n, {2 * p}] for p = {p}, got {list(x.shape)}")
    return x[:, :p].argmax(1), x[:, p:].argmax(1)
