"""catapult: the data — a seeded subset of scikit-learn's bundled 8×8 digits, an MNIST in miniature.

The paper's networks were trained on images (MNIST, CIFAR-10) with the squared loss; here ``points``
digits images (d = 64 pixels), each standardized over its pixels (zero mean, unit variance, so that
‖x‖² = d and the NTK parametrization's u x/√d is O(1)), with the scalar target +1 for an even digit
and −1 for an odd one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from implicitreg.data import load_digits

DIGITS_TRAIN = 1797 - 360  # the bundled digits less load_digits' test split: the most points a run can take


@dataclass(frozen=True)
class Problem:
    """Full-batch regression: inputs x [m, d] and targets y [m] (float64)."""

    x: np.ndarray
    y: np.ndarray
    source: str


def standardized(x: np.ndarray) -> np.ndarray:
    """Each row minus its mean, over its standard deviation (‖row‖² = d); a constant row would divide by
    zero and is refused."""
    std = x.std(axis=1, keepdims=True)
    if not (std > 0).all():
        raise ValueError(f"an input row is constant (rows {np.flatnonzero(std[:, 0] == 0).tolist()}): it cannot be "
                         "standardized")
    return (x - x.mean(axis=1, keepdims=True)) / std


def digits_problem(points: int, seed: int) -> Problem:
    """``points`` digits drawn by ``seed`` (:func:`implicitreg.data.load_digits`' seeded split, its training
    part), standardized per image, targets ±1 (even / odd digit)."""
    if not 1 <= points <= DIGITS_TRAIN:
        raise ValueError(f"points: expected 1 … {DIGITS_TRAIN} digits images, got {points}")
    data = load_digits(n_train=points, seed=seed)
    x = standardized(data.x_train)
    y = np.where(data.y_train % 2 == 0, 1.0, -1.0)
    return Problem(x, y, f"digits: {points} images (8×8, standardized per image), targets ±1 for even/odd, "
                         f"seed {seed}")
