"""min-norm's problems: an underdetermined regression (generated or a user's ``.npz``) with its start
w₀, and Wilson et al.'s construction; the distances and errors measured on a solution."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from implicitreg.references import least_squares as ref

INTERPOLATION_TOL = 1e-8  # --data: X X⁺y must reproduce y to this relative accuracy


@dataclass
class Regression:
    """A least-squares problem: X (n, d), y (n,), and the initialization w₀ (d,) of the GD-from-w₀ run."""

    x: np.ndarray
    y: np.ndarray
    w0: np.ndarray
    source: str


@dataclass
class WilsonProblem:
    """Wilson et al.'s construction: train X (n, D), y (n,); test X (m, D), y (m,); labels ±1."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass
class Problem:
    """What ``solve`` runs on: the regression and Wilson's construction."""

    regression: Regression
    wilson: WilsonProblem


def gaussian_regression(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """X (n, d) with i.i.d. N(0, 1/d) entries (rows of norm ≈ 1) and y = Xβ (n,), β ~ N(0, I_d)."""
    rng = np.random.default_rng([seed, 0])
    x = rng.standard_normal((n, d)) / np.sqrt(d)
    return x, x @ rng.standard_normal(d)


def wilson_construction(n_train: int, n_test: int, p: float, seed: int) -> WilsonProblem:
    """Wilson et al. (2017), Section 3.3: ``x = (y, 1, 1, unique features, 0 …)``.

    Point i owns the features 3 + 5i, …: one of them is 1 for a positive point, five for a negative
    one. Labels are +1 with probability ``p``, drawn until the training set has more positives than
    negatives (so that sign(Xᵀy) has +1 on the two constant features, as the construction needs)
    and the test set holds a negative point (so that predicting the majority class costs something).
    """
    rng = np.random.default_rng([seed, 3])
    total = n_train + n_test
    while True:
        y = np.where(rng.random(total) < p, 1.0, -1.0)
        train, test = y[:n_train], y[n_train:]
        if (train > 0).sum() > (train < 0).sum() and (test < 0).any():
            break
    x = np.zeros((total, 3 + 5 * total))
    x[:, 0], x[:, 1:3] = y, 1.0
    for i, label in enumerate(y):
        x[i, 3 + 5 * i: 3 + 5 * i + (1 if label > 0 else 5)] = 1.0
    return WilsonProblem(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def initialization(d: int, norm: float, seed: int) -> np.ndarray:
    """w₀ (d,): a uniformly random direction with the given norm."""
    direction = np.random.default_rng([seed, 1]).standard_normal(d)
    return norm * direction / np.linalg.norm(direction)


def validate(x: np.ndarray, y: np.ndarray, where: str) -> None:
    """The claim needs an exact interpolant and a nontrivial set of them; say which is missing."""
    if not np.any(y):
        raise ValueError(f"{where}: y is all zeros; X⁺y = 0 leaves no interpolant to compare distances against")
    rank = ref.rank(x)
    n, d = x.shape
    if rank >= d:
        raise ValueError(f"{where}: X ({n}×{d}) has rank {rank} = d, so the interpolant is unique; min-norm needs "
                         f"an overparameterized problem (rank(X) < d, e.g. d > n)")
    fitted = x @ ref.min_norm_interpolant(x, y)
    miss = float(np.linalg.norm(fitted - y) / np.linalg.norm(y))
    if miss > INTERPOLATION_TOL:
        raise ValueError(f"{where}: no w solves Xw = y exactly (relative residual of X⁺y is {miss:.2e} > "
                         f"{INTERPOLATION_TOL:g}; rank(X) = {rank} < n = {n}); min-norm needs an interpolation problem")


def relative_distance(w: np.ndarray, target: np.ndarray) -> float:
    """``‖w − target‖ / ‖target‖``."""
    return float(np.linalg.norm(w - target) / np.linalg.norm(target))


def classification_error(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of points with sign(xᵀw) ≠ y (a zero score counts as an error)."""
    return float(np.mean(np.sign(x @ w) != y))
