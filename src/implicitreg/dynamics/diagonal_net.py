"""Gradient descent on a diagonal linear network β = u⊙u − v⊙v, every initialization scale α at once.

The solver of the ``diagonal-net`` study (Woodworth et al. 2020); its module docstring explains the
step: each α gets its own η, capped by the Euler step of the multiplicative growth (2η‖g‖_∞ ≤
``growth_step``) and by ``stability_step`` over the Gauss–Newton curvature 4 λ_max(X diag(u² + v²) Xᵀ/n),
recomputed once u² + v² may have grown by :data:`REFRESH`. The α run as one batch whose members leave
it as they finish (a per-member stop that :func:`implicitreg.dynamics.descent.descend` does not model).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REFRESH = 1.5  # recompute λ_max once u² + v² may have grown by this factor


@dataclass
class DiagonalGD:
    """Gradient descent on β = u⊙u − v⊙v for every α at once.

    beta [A, d] at each run's last step; steps [A]; converged [A] (reached the loss tolerance);
    trace: (step, index of α, β [d]) at the recorded steps and at each run's last step.
    """

    beta: np.ndarray
    steps: np.ndarray
    converged: np.ndarray
    trace: list[tuple[int, int, np.ndarray]]


def _lambda_max(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """λ_max(X diag(w) Xᵀ / n) for each row of weights [A, d] → [A]."""
    gram = np.einsum("ni,ai,mi->anm", x, weights, x) / x.shape[0]
    return np.linalg.eigvalsh(gram)[:, -1]


def diagonal_gd(x: np.ndarray, y: np.ndarray, alphas: np.ndarray, loss_tol: float, max_steps: int,
                growth_step: float, stability_step: float, record: set[int] | None = None,
                progress=None) -> DiagonalGD:
    """GD on L = ‖X(u⊙u − v⊙v) − y‖²/(2n) from u = v = α·1, each α [A] with its own step (module docstring).

    x [n, d], y [n]. A run stops when ‖Xβ − y‖²/‖y‖² ≤ ``loss_tol`` or after ``max_steps`` steps;
    finished runs leave the batch. ``record``: steps at which β of every running α is kept.
    """
    n, d = x.shape
    alphas = np.asarray(alphas, dtype=np.float64)
    count = len(alphas)
    u = np.repeat(alphas[:, None], d, axis=1)
    v = u.copy()
    active = np.arange(count)
    beta_final = np.zeros((count, d))
    steps = np.zeros(count, dtype=int)
    converged = np.zeros(count, dtype=bool)
    trace: list[tuple[int, int, np.ndarray]] = []
    record = record or set()
    yy = float(y @ y)
    lam = _lambda_max(x, u * u + v * v)
    grow = np.ones(count)
    for step in range(max_steps + 1):
        beta = u * u - v * v
        residual = beta @ x.T - y
        loss = np.einsum("an,an->a", residual, residual) / yy
        if step in record:
            trace.extend((step, int(a), beta[i].copy()) for i, a in enumerate(active))
        finished = (loss <= loss_tol) | (step == max_steps)
        if finished.any():
            for i in np.nonzero(finished)[0]:
                a = int(active[i])
                beta_final[a], steps[a], converged[a] = beta[i], step, loss[i] <= loss_tol
                if step not in record:
                    trace.append((step, a, beta[i].copy()))
            keep = ~finished
            active, u, v, residual, lam, grow = active[keep], u[keep], v[keep], residual[keep], lam[keep], grow[keep]
            if not len(active):
                break
        grad = residual @ x / n
        if np.any(grow > REFRESH):
            lam, grow = _lambda_max(x, u * u + v * v), np.ones(len(active))
        gmax = np.abs(grad).max(axis=1)
        with np.errstate(divide="ignore"):
            eta = np.minimum(growth_step / (2.0 * gmax), stability_step / (4.0 * lam * grow))
        grow = grow * (1.0 + 2.0 * eta * gmax) ** 2  # u², v² grow by at most this factor this step
        factor = (2.0 * eta)[:, None] * grad
        u, v = u - factor * u, v + factor * v
        if progress is not None and step % 2000 == 0:
            progress(step)
    return DiagonalGD(beta_final, steps, converged, trace)
