"""The hard-margin SVM through the origin (cvxpy QP) and a separability test (scipy linprog, HiGHS).

Gradient descent on the logistic loss of linearly separable data converges in direction to
``ŵ = argmin ‖w‖² s.t. yᵢxᵢᵀw ≥ 1`` (Soudry, Hoffer, Nacson, Gunasekar & Srebro 2018). There is no
bias term: the predictor is homogeneous, so the SVM passes through the origin and the data must be
separable by a hyperplane through the origin.
"""

from __future__ import annotations

import numpy as np


def separable_through_origin(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether some w has yᵢxᵢᵀw ≥ 1 for every i: a feasibility LP solved by ``scipy.optimize.linprog``
    with HiGHS.

    Args:
        x: (n, d) points; y: (n,) labels ±1.
    """
    z = np.asarray(y, dtype=np.float64)[:, None] * np.asarray(x, dtype=np.float64)
    from scipy import optimize  # lazy: scipy.optimize, stats and integrate cost `import implicitreg` 0.8 s
    result = optimize.linprog(np.zeros(z.shape[1]), A_ub=-z, b_ub=-np.ones(z.shape[0]), bounds=[(None, None)] * z.shape[1],
                     method="highs")
    if result.status == 2:  # infeasible
        return False
    if result.status != 0:
        raise RuntimeError(f"separability LP did not finish (HiGHS status {result.status}: {result.message})")
    return True


def hard_margin_svm(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``ŵ = argmin ‖w‖² subject to yᵢxᵢᵀw ≥ 1``: the max-margin direction through the origin.

    Solved as a QP by cvxpy (Clarabel interior point, tolerances 1e-10). The geometric margin is
    ``1/‖ŵ‖``.

    Args:
        x: (n, d) points, separable through the origin; y: (n,) labels ±1.

    Returns:
        (d,) float64 ŵ.

    Raises:
        ValueError: if the QP is infeasible (data not separable through the origin) or unsolved.
    """
    z = np.asarray(y, dtype=np.float64)[:, None] * np.asarray(x, dtype=np.float64)
    import cvxpy as cp  # imported here: it takes a second, and only this reference needs it

    w = cp.Variable(z.shape[1])
    problem = cp.Problem(cp.Minimize(cp.sum_squares(w)), [z @ w >= 1])
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-10, tol_gap_rel=1e-10, tol_feas=1e-10)
    if problem.status != cp.OPTIMAL or w.value is None:
        raise ValueError(f"hard-margin SVM: expected an optimal solution, solver status {problem.status!r} "
                         "(data not separable through the origin?)")
    return np.asarray(w.value, dtype=np.float64)


def support_vectors(x: np.ndarray, y: np.ndarray, w_hat: np.ndarray, tol: float = 1e-6) -> np.ndarray:
    """Indices i with yᵢxᵢᵀŵ ≤ 1 + tol: the points on the margin of the SVM solution ŵ."""
    margins = np.asarray(y, dtype=np.float64) * (np.asarray(x, dtype=np.float64) @ w_hat)
    return np.flatnonzero(margins <= 1.0 + tol)


def log_time_rate(x: np.ndarray, y: np.ndarray, w_hat: np.ndarray) -> float:
    """The rate λ at which GD's residual ρ(t) = w(t) − ŵ ln t settles, per unit of ln t.

    With w = ŵ ln t + ρ, gradient flow on the logistic loss gives dρ/d(ln t) ≈ −Σⱼ αⱼ zⱼzⱼᵀ (ρ − w̃)
    near its limit w̃ (zⱼ = yⱼxⱼ the support vectors, αⱼ ≥ 0 the duals, ŵ = Σⱼ αⱼzⱼ; the step size
    cancels), so the transient decays like t^(−λ) with λ the smallest nonzero eigenvalue of
    Zᵀdiag(α)Z (equal to that of diag(√α) Z Zᵀ diag(√α), used here). The duals come from
    non-negative least squares (scipy ``nnls``) on ŵ = Zᵀα.

    Returns:
        λ (NaN if there are no support vectors).
    """
    sv = support_vectors(x, y, w_hat)
    if sv.size == 0:
        return float("nan")
    z = np.asarray(y, dtype=np.float64)[sv, None] * np.asarray(x, dtype=np.float64)[sv]
    from scipy import optimize  # lazy: scipy.optimize, stats and integrate cost `import implicitreg` 0.8 s
    alpha = optimize.nnls(z.T, w_hat)[0]
    root = np.sqrt(alpha)
    eigenvalues = np.linalg.eigvalsh(root[:, None] * (z @ z.T) * root[None, :])
    positive = eigenvalues[eigenvalues > 1e-10 * eigenvalues.max()]
    return float(positive.min()) if positive.size else float("nan")
