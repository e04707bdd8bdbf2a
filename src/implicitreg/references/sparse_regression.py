"""Interpolating solutions of an underdetermined linear system X β = y chosen by a norm or potential.

- :func:`min_l2_interpolant`: argmin ‖β‖₂ s.t. Xβ = y, the pseudo-inverse solution (``numpy.linalg.pinv``);
- :func:`min_l1_interpolant`: argmin ‖β‖₁ s.t. Xβ = y, basis pursuit as a linear program
  (``scipy.optimize.linprog``, HiGHS);
- :func:`q_alpha` and :func:`q_alpha_interpolant`: the potential of a diagonal linear network
  β = u⊙u − v⊙v trained by gradient flow from u = v = α·1, and its constrained minimizer
  (Woodworth, Gunasekar, Lee, Moroshko, Savarese, Golan, Soudry & Srebro 2020, "Kernel and rich
  regimes in overparametrized models", Theorem 1):

      Q_α(β) = α² Σᵢ q(βᵢ/α²),   q(z) = 2 − √(4 + z²) + z·asinh(z/2).

  Q_α/ln(1/α²) → ‖β‖₁ as α → 0 and 4α²·Q_α → ‖β‖₂² as α → ∞.

Numerics. q's two terms cancel: at small z, 2 − √(4+z²) ≈ −z²/4 loses every digit in float64
once z² < 1e-16, and at tiny α the argument β/α² is huge. We evaluate α²·q(β/α²) directly in β as

      β·asinh(β/(2α²)) − β² / (2α² + √(4α⁴ + β²))        (√ taken as hypot, which cannot overflow),

which is exact algebra (2 − √(4+z²) = −z²/(2 + √(4+z²))) with no subtraction of close numbers.
The minimizer is computed from the dual: ∇Q_α(β) = asinh(β/(2α²)), so the optimality condition
∇Q_α(β) = Xᵀν gives β(ν) = 2α² sinh(Xᵀν), and ν maximizes νᵀy − Σᵢ 2α²(cosh((Xᵀν)ᵢ) − 1), a smooth
unconstrained concave problem in n variables (cosh − 1 evaluated as 2 sinh²(·/2), again to avoid
cancellation). Every iterate is KKT-stationary by construction; the returned residual
‖Xβ − y‖/‖y‖ measures feasibility, hence how exact the minimizer is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FEASIBILITY_TOL = 1e-9  # relative residual ‖Xβ − y‖/‖y‖ below which a Q_α solution counts as converged


def min_l2_interpolant(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """argmin ‖β‖₂ s.t. Xβ = y (least squares if inconsistent): ``pinv(X) @ y``; X [n, d], y [n] → [d]."""
    return np.linalg.pinv(x) @ y


def min_l1_interpolant(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """argmin ‖β‖₁ s.t. Xβ = y (basis pursuit): X [n, d], y [n] → β [d].

    Solved as the LP min 1ᵀ(β⁺ + β⁻) s.t. X(β⁺ − β⁻) = y, β± ≥ 0, with HiGHS.

    Raises:
        ValueError: the system has no solution (HiGHS reports infeasibility).
        RuntimeError: HiGHS stopped without an optimal solution.
    """
    n, d = x.shape
    from scipy import optimize  # lazy: scipy.optimize, stats and integrate cost `import implicitreg` 0.8 s
    result = optimize.linprog(np.ones(2 * d), A_eq=np.hstack([x, -x]), b_eq=y, bounds=(0, None), method="highs")
    if result.status == 2:
        raise ValueError("min-ℓ1 interpolant: X β = y has no solution")
    if result.status != 0:
        raise RuntimeError(f"min-ℓ1 interpolant: HiGHS did not finish ({result.message})")
    return result.x[:d] - result.x[d:]


def q_alpha(beta: np.ndarray, alpha: float) -> np.ndarray:
    """Q_α(β) = α² Σ q(βᵢ/α²) over the last axis, in the cancellation-free form of the module
    docstring: β [..., d] → [...]."""
    beta = np.asarray(beta, dtype=np.float64)
    a2 = float(alpha) ** 2
    terms = beta * np.arcsinh(beta / (2.0 * a2)) - beta * beta / (2.0 * a2 + np.hypot(2.0 * a2, beta))
    return terms.sum(-1)


@dataclass(frozen=True)
class QAlphaResult:
    """The Q_α-minimal interpolant, its feasibility and whether it reached :data:`FEASIBILITY_TOL`."""

    beta: np.ndarray
    residual: float  # ‖Xβ − y‖ / ‖y‖
    converged: bool
    n_iter: int


def q_alpha_interpolant(x: np.ndarray, y: np.ndarray, alpha: float, nu0: np.ndarray | None = None) -> QAlphaResult:
    """argmin Q_α(β) s.t. Xβ = y, through the dual (module docstring): X [n, d], y [n] → β [d].

    ``scipy.optimize.minimize(method="trust-exact")`` (exact Hessian 2α² X diag(cosh Xᵀν) Xᵀ)
    globalizes; its stopping test uses objective decreases that float64 cannot resolve near the
    optimum, so ``scipy.optimize.root`` (Powell's hybrid method with the same Jacobian) then polishes
    the optimality equation X·2α² sinh(Xᵀν) = y to machine precision. ``nu0`` warm-starts ν [n].
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    a2 = float(alpha) ** 2

    def objective(nu: np.ndarray) -> float:
        s = x.T @ nu
        return 4.0 * a2 * float(np.sum(np.sinh(s / 2.0) ** 2)) - float(nu @ y)

    def gradient(nu: np.ndarray) -> np.ndarray:
        return x @ (2.0 * a2 * np.sinh(x.T @ nu)) - y

    def hessian(nu: np.ndarray) -> np.ndarray:
        return (x * (2.0 * a2 * np.cosh(x.T @ nu))) @ x.T

    scale = float(np.linalg.norm(y)) or 1.0
    start = np.zeros(len(y)) if nu0 is None else np.asarray(nu0, dtype=np.float64)
    from scipy import optimize  # lazy: scipy.optimize, stats and integrate cost `import implicitreg` 0.8 s
    coarse = optimize.minimize(objective, start, jac=gradient, hess=hessian, method="trust-exact",
                      options={"gtol": 1e-10 * scale, "maxiter": 5000})
    polished = optimize.root(gradient, coarse.x, jac=hessian, method="hybr", options={"xtol": 1e-15})
    # keep whichever point is more feasible (hybr may stop at the float64 floor with success=False)
    nu = min((coarse.x, polished.x), key=lambda v: float(np.linalg.norm(gradient(v))))
    beta = 2.0 * a2 * np.sinh(x.T @ nu)
    residual = float(np.linalg.norm(x @ beta - y)) / scale
    return QAlphaResult(beta, residual, residual <= FEASIBILITY_TOL, int(coarse.nit) + int(polished.nfev))
