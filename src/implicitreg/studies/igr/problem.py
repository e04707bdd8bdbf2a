"""igr's regression data: a tanh teacher's noisy outputs, or a user's ``.npz`` (X n×d, y n)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from implicitreg.data.npz import read_regression


@dataclass(frozen=True)
class Problem:
    """Full-batch regression data: x [n, d], y [n] (float64), and where it came from."""

    x: np.ndarray
    y: np.ndarray
    source: str


def generated_data(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """x ~ N(0, I) [n, dim]; y [n] = a random tanh teacher (4 units) / 2 + 0.1·N(0, 1) noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim))
    w, v = rng.normal(size=(dim, 4)), rng.normal(size=4)
    return x, np.tanh(x @ w) @ v / 2 + 0.1 * rng.normal(size=n)


def generate(n: int, dim: int, seed: int) -> Problem:
    x, y = generated_data(n, dim, seed)
    return Problem(x, y, f"tanh teacher: {n} points, dim {dim}, seed {seed}")


def load(path: str, feature: int, batches: int) -> Problem:
    """A user's ``X`` [n, d], ``y`` [n]; ValueError naming the file when the two-parameter model's
    column ``feature`` is not in X or the points do not split into ``batches`` equal batches."""
    x, y = read_regression(path)
    where = f"--data {path}"
    if feature >= x.shape[1]:
        raise ValueError(f"{where}: the two-parameter model reads column feature={feature} of X, but X "
                         f"has {x.shape[1]} column(s); set --set feature=<0..{x.shape[1] - 1}>")
    if x.shape[0] < batches or x.shape[0] % batches:
        raise ValueError(f"{where}: SGD splits the points into batches={batches} equal batches, so the "
                         f"number of points must be a positive multiple of {batches}; X has {x.shape[0]} "
                         "rows (drop some, or --set batches=…)")
    return Problem(x, y, f"{path}: {x.shape[0]} points, dim {x.shape[1]}")
