"""max-margin: the data — a user's file or generated points with a known SVM — checked for separability.

See :func:`generic_separable` for the construction (support vectors in general position with positive,
unequal dual coefficients and ŵ = u exactly, as in Soudry et al. 2018, Figure 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from implicitreg.data.npz import read_classification
from implicitreg.references import svm


@dataclass
class Problem:
    """Points x (n, d) and labels y (n,) in ±1, separable through the origin; ``source`` describes them."""

    x: np.ndarray
    y: np.ndarray
    source: str


def generic_separable(n: int, d: int, gap: float, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Separable data whose hard-margin SVM through the origin is a known unit vector u.

    d support vectors zⱼ = u + vⱼ (vⱼ ⊥ u Gaussian with scale ``spread``, shifted so Σβⱼvⱼ = 0 for
    random βⱼ ∈ [0.5, 1.5], which makes u = Σ(βⱼ/Σβ)zⱼ a positive combination: the KKT conditions of
    the SVM hold with margin 1); n − d further points z = m·u + v with m = 1 + gap·(1 + Exp(1)).
    Labels are random signs y and x = y·z, shuffled.

    Returns:
        X (n, d) and y (n,) in ±1.
    """
    if n <= d:
        raise ValueError(f"generated data: need more points than dimensions (n > d), got n={n}, d={d}")
    rng = np.random.default_rng([seed, 5])
    u = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    orthogonal = np.eye(d) - np.outer(u, u)
    v = spread * rng.standard_normal((d, d)) @ orthogonal
    beta = rng.uniform(0.5, 1.5, d)
    v -= (beta @ v) / beta.sum()
    margin = 1.0 + gap * (1.0 + rng.exponential(1.0, n - d))
    others = margin[:, None] * u + spread * rng.standard_normal((n - d, d)) @ orthogonal
    z = np.vstack([u + v, others])
    y = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    order = rng.permutation(n)
    return (y[:, None] * z)[order], y[order]


def load_problem(config: Any) -> Problem:
    """``config.data_file`` (``--data``) or the generated data (``config``: the study's Config).

    Raises:
        ValueError: fewer than 2 columns, or classes not separable through the origin (the LP
            yᵢxᵢᵀw ≥ 1, scipy ``linprog``/HiGHS, is infeasible).
    """
    if config.data_file is not None:
        x, y = read_classification(config.data_file)
        where, source = f"--data {config.data_file}", f"file {config.data_file}"
    else:
        x, y = generic_separable(config.n, config.d, config.gap, config.spread, config.seed)
        where = "generated data"
        source = (f"generated: n={config.n}, d={config.d}, gap={config.gap}, spread={config.spread}, "
                  f"seed {config.seed}")
    if x.shape[1] < 2:
        raise ValueError(f"{where}: X must have at least 2 columns (d ≥ 2) for a direction to converge, "
                         f"got shape {x.shape}")
    if not svm.separable_through_origin(x, y):
        raise ValueError(f"{where}: the classes are not linearly separable through the origin (the LP "
                         "yᵢxᵢᵀw ≥ 1 for all i, scipy linprog/HiGHS, is infeasible); max-margin needs separable "
                         "data — the predictor has no bias, so add a constant feature to allow an offset")
    return Problem(x, y, source)
