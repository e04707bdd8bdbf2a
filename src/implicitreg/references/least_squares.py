"""Closed-form references of underdetermined least squares, from numpy's pseudo-inverse.

Gradient descent on ``½‖Xw − y‖²`` only ever moves ``w`` inside the row space of ``X`` (every
gradient is ``Xᵀr``), so from ``w₀`` it converges to ``X⁺y + (I − P)w₀`` with ``P = X⁺X`` the
orthogonal projector onto that row space; from zero, to the minimum-ℓ2-norm interpolant ``X⁺y``
(Wilson, Roelofs, Stern, Srebro & Recht 2017, Section 3; Gunasekar et al. 2018).
"""

from __future__ import annotations

import numpy as np

# numpy's default pinv cutoff (1e-15 relative) keeps directions that are numerically zero in
# badly scaled user data; 1e-12 relative to the largest singular value drops them.
RCOND = 1e-12


def min_norm_interpolant(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``X⁺y``, the minimum-ℓ2-norm least-squares solution.

    Args:
        x: (n, d) design matrix.
        y: (n,) targets.

    Returns:
        (d,) float64 vector ``numpy.linalg.pinv(X) @ y``.
    """
    return np.linalg.pinv(np.asarray(x, dtype=np.float64), rcond=RCOND) @ np.asarray(y, dtype=np.float64)


def row_space_projector(x: np.ndarray) -> np.ndarray:
    """``P = X⁺X``: the (d, d) orthogonal projector onto the row space of the (n, d) matrix ``X``."""
    x = np.asarray(x, dtype=np.float64)
    return np.linalg.pinv(x, rcond=RCOND) @ x


def min_norm_from(x: np.ndarray, y: np.ndarray, w0: np.ndarray) -> np.ndarray:
    """``X⁺y + (I − P)w₀``: the interpolant closest to ``w₀``, where GD started at ``w₀`` converges.

    Args:
        x: (n, d) design matrix; y: (n,) targets; w0: (d,) initialization.

    Returns:
        (d,) float64 vector.
    """
    w0 = np.asarray(w0, dtype=np.float64)
    return min_norm_interpolant(x, y) + w0 - row_space_projector(x) @ w0


def rank(x: np.ndarray) -> int:
    """Numerical rank of ``X`` with the same cutoff as the pseudo-inverse above."""
    singular = np.linalg.svd(np.asarray(x, dtype=np.float64), compute_uv=False)
    return int(np.sum(singular > RCOND * singular.max())) if singular.size and singular.max() > 0 else 0
