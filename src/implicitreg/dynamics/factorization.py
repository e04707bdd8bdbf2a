"""Gradient descent on a depth-N matrix factorization W = W_N⋯W_1 with a squared loss on observed entries.

The solver of the ``matrix-factorization`` study (Gunasekar et al. 2017; Arora, Cohen, Hu & Luo 2019;
Razin & Cohen 2020), on :func:`implicitreg.dynamics.descent.descend`. The step η is the smaller of
``stability_step`` over a bound of the curvature, N‖W‖_F^{2(N−1)/N}/m, and (depth ≥ 2) ``growth_step``
times the smallest ‖W_j‖_F/‖∂L/∂W_j‖_F, so that no factor moves by more than that fraction of itself.
:func:`orthogonal_factors` is the balanced small initialization the study starts from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from implicitreg.dynamics.descent import descend, gd_update

DIVERGE = 10.0  # a loss above this multiple of the initial loss stops the run as diverged


@dataclass
class FactorizedGD:
    """GD on W = W_N⋯W_1: the final product [n1, n2], steps, whether ``loss_tol`` was reached, and
    (step, W) at the recorded steps and the last step."""

    matrix: np.ndarray
    steps: int
    converged: bool
    trace: list[tuple[int, np.ndarray]]


def orthogonal_factors(shape: tuple[int, int], depth: int, scale: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Balanced factors for an n1×n2 product: W_1 [h, n2], W_2…W_{N−1} [h, h], W_N [n1, h], h = min(n1, n2)
    (depth 1: a single [n1, n2]); each ``scale`` × orthonormal rows or columns (the Q of a Gaussian
    matrix's QR), so W_{j+1}ᵀW_{j+1} = W_jW_jᵀ and every nonzero singular value of the product is scale^N."""
    n1, n2 = shape
    h = min(n1, n2)
    shapes = [(n1, n2)] if depth == 1 else [(h, n2)] + [(h, h)] * (depth - 2) + [(n1, h)]
    factors = []
    for rows, cols in shapes:
        q, _ = np.linalg.qr(rng.standard_normal((max(rows, cols), max(rows, cols))))
        factors.append(scale * q[:rows, :cols])
    return factors


def product_and_gradients(factors: list[np.ndarray], observed: np.ndarray,
                          weight: np.ndarray) -> tuple[np.ndarray, float, list[np.ndarray]]:
    """W = W_N⋯W_1, the relative loss ‖P_Ω(W − M)‖²/‖P_Ω M‖² and ∂L/∂W_j for L = (1/2m)‖P_Ω(W − M)‖².

    factors [W_1, …, W_N]; observed [n1, n2]; weight [n1, n2] the mask as 0/1 floats.
    ∂L/∂W_j = (W_N⋯W_{j+1})ᵀ ∇_W L (W_{j−1}⋯W_1)ᵀ with ∇_W L = P_Ω(W − M)/m.
    """
    depth = len(factors)
    prefix = [factors[0]]  # prefix[j] = W_{j+1} ⋯ W_1
    for f in factors[1:]:
        prefix.append(f @ prefix[-1])
    product = prefix[-1]
    residual = weight * (product - observed)
    loss = float(np.sum(residual * residual)) / (float(np.sum((weight * observed) ** 2)) or 1.0)
    residual /= float(weight.sum())
    suffix: list[np.ndarray | None] = [None] * depth  # suffix[j] = W_N ⋯ W_{j+2}; None is the identity
    for j in range(depth - 2, -1, -1):
        suffix[j] = factors[j + 1] if suffix[j + 1] is None else suffix[j + 1] @ factors[j + 1]
    grads = []
    for j in range(depth):
        left = residual if suffix[j] is None else suffix[j].T @ residual
        grads.append(left if j == 0 else left @ prefix[j - 1].T)
    return product, loss, grads


def factorized_gd(observed: np.ndarray, mask: np.ndarray, factors: list[np.ndarray], loss_tol: float, max_steps: int,
                  growth_step: float, stability_step: float, record: set[int] | None = None,
                  progress=None) -> FactorizedGD:
    """Gradient descent on L = (1/2m)‖P_Ω(W_N⋯W_1 − M)‖² from ``factors`` [W_1, …, W_N] (module docstring).

    observed [n1, n2] (M on the mask), mask [n1, n2] bool. Stops at ‖P_Ω(W − M)‖²/‖P_Ω(M)‖² ≤ ``loss_tol``,
    after ``max_steps``, or if the loss stops being finite or grows tenfold (divergence: not converged).
    """
    factors = [np.array(f, dtype=np.float64) for f in factors]
    depth = len(factors)
    weight = mask.astype(np.float64)
    m = float(weight.sum())

    def step_size(step: int, factors: list[np.ndarray], grads: list[np.ndarray], product: np.ndarray) -> float:
        eta = stability_step / (depth * float(np.sum(product * product)) ** ((depth - 1) / depth) / m)
        if depth > 1:
            ratios = [np.sqrt(np.sum(f * f) / max(np.sum(g * g), 1e-300)) for f, g in zip(factors, grads)]
            eta = min(eta, growth_step * min(ratios))
        return eta

    def loss_and_grad(factors: list[np.ndarray]) -> tuple[float, list[np.ndarray], np.ndarray]:
        product, loss, grads = product_and_gradients(factors, observed, weight)
        return loss, grads, product

    result = descend(loss_and_grad, factors, max_steps, gd_update(step_size), tol=loss_tol, diverge=DIVERGE,
                     record=record or set(), snapshot=lambda factors, product: product.copy(), progress=progress)
    return FactorizedGD(result.trace[-1][1], result.step, result.converged, result.trace)
