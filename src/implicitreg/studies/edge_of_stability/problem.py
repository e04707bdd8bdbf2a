"""edge-of-stability: the regression data — a random tanh teacher's, or a user's ``--data`` file."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from implicitreg.data.npz import read_regression


@dataclass(frozen=True)
class Problem:
    """A full-batch regression problem: inputs x [n, d] and targets y [n, 1] (float64)."""

    x: np.ndarray
    y: np.ndarray
    source: str


def teacher_data(n: int, dim: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """x ~ N(0, I) [n, dim]; y [n, 1] = a random one-hidden-layer tanh teacher, standardized.

    The teacher (weights N(0, 1/dim), output weights N(0, 1/width)) is smooth, so a student MLP
    can fit the points; standardized targets make the initial loss about ½.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim))
    w1 = rng.normal(size=(dim, width)) / math.sqrt(dim)
    w2 = rng.normal(size=width) / math.sqrt(width)
    y = np.tanh(x @ w1) @ w2
    y = (y - y.mean()) / y.std()
    return x, y[:, None]


def load_problem(config: Any) -> Problem:
    """The user's ``X`` [n, d], ``y`` [n] (``config.data_file``, ``--data``) or the generated teacher data.

    Raises:
        ValueError: fewer than 2 points, or constant targets (nothing to sharpen on).
    """
    if config.data_file is None:
        x, y = teacher_data(config.n_points, config.dim, config.teacher_width, config.seed)
        return Problem(x, y, f"tanh teacher: {config.n_points} points, dim {config.dim}, seed {config.seed}")
    x, y = read_regression(config.data_file)
    if x.shape[0] < 2:
        raise ValueError(f"--data {config.data_file}: X must hold at least 2 points (rows), got {x.shape[0]}")
    if not np.std(y) > 0:
        raise ValueError(f"--data {config.data_file}: y is constant ({y[0]:g} everywhere); a network with an "
                         "output bias fits it at once, so there is no sharpening to observe — expected "
                         "varying targets")
    return Problem(x, y[:, None], f"{config.data_file}: {x.shape[0]} points, dim {x.shape[1]}")
