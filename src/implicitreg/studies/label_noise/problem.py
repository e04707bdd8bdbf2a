"""label-noise: the two generated regression problems, one per seed, and their initializations.

- sparse regression (HaoChen et al. 2021; Woodworth et al. 2020's model): X [n, d] standard Gaussian,
  β* with k nonzeros ±1/√k on a random support (‖β*‖₂ = 1), y = Xβ*; the diagonal net starts at
  u = v = α·1 (β = 0). For x ~ N(0, I) the test error E(⟨β − β*, x⟩)² is ‖β − β*‖² exactly.
- two-layer ReLU regression: x = (z, 1) with z ~ N(0, I_d) (the constant feature is the hidden bias), a
  teacher f*(x) = Σ_j s_j relu(w*_j·x) with ``teacher_units`` units, w*_j ~ N(0, I/(d+1)), s_j = ±1
  alternating, scaled so that the training targets have mean square 1; the student has ``width`` units,
  W ~ N(0, init²/(d+1)), a ~ N(0, init²/width) (init = 1: the standard fan-in scale).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sparse:
    """x [n, d], y [n], β* [d], x_test unused (closed-form test error), theta0 [2d] (u, v)."""

    x: np.ndarray
    y: np.ndarray
    beta_star: np.ndarray
    theta0: np.ndarray


@dataclass(frozen=True)
class Relu:
    """x [n, d+1] (last column 1), y [n]; x_test [m, d+1], y_test [m]; theta0 [width·(d+1) + width]."""

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    theta0: np.ndarray


def sparse_problem(seed: int, n: int, d: int, k: int, alpha: float) -> Sparse:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    beta = np.zeros(d)
    support = rng.choice(d, k, replace=False)
    beta[support] = rng.choice([-1.0, 1.0], k) / np.sqrt(k)
    return Sparse(x, x @ beta, beta, np.full(2 * d, float(alpha)))


def relu_problem(seed: int, n: int, d: int, width: int, teacher_units: int, init: float, test_points: int) -> Relu:
    rng = np.random.default_rng(10_000 + seed)  # a stream apart from the sparse problem's
    inputs = lambda count: np.concatenate([rng.standard_normal((count, d)), np.ones((count, 1))], axis=1)  # noqa: E731
    x, x_test = inputs(n), inputs(test_points)
    w_star = rng.standard_normal((teacher_units, d + 1)) / np.sqrt(d + 1)
    signs = np.where(np.arange(teacher_units) % 2 == 0, 1.0, -1.0)
    teacher = lambda z: np.maximum(z @ w_star.T, 0.0) @ signs  # noqa: E731
    scale = np.sqrt(np.mean(teacher(x) ** 2))
    if not scale > 0:
        raise ValueError(f"relu problem, seed {seed}: the teacher is zero on every training point; use another seed")
    w = rng.standard_normal((width, d + 1)) * init / np.sqrt(d + 1)
    a = rng.standard_normal(width) * init / np.sqrt(width)
    return Relu(x, teacher(x) / scale, x_test, teacher(x_test) / scale, np.concatenate([w.ravel(), a]))
