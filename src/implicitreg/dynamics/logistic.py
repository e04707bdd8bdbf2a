"""Gradient descent and normalized gradient descent on the mean logistic loss, float64 numpy.

``L(w) = (1/n) Σᵢ log(1 + exp(−yᵢxᵢᵀw))``, gradient in closed form
``∇L(w) = −(1/n) Σᵢ σ(−yᵢxᵢᵀw) yᵢxᵢ`` (σ the logistic function; no autograd), for the
``max-margin`` study (Soudry, Hoffer, Nacson, Gunasekar & Srebro 2018; Nacson, Lee, Gunasekar,
Savarese, Srebro & Soudry 2019). Both methods start at zero:

- GD: ``w ← w − η ∇L(w)`` with a fixed step η;
- normalized GD: ``w ← w − η₀ ∇L(w) / (L(w) √(t+1))`` at step t = 0, 1, …, the aggressive step of
  Nacson et al. (2019) that compensates for the vanishing gradient (∇L/L in log space, since L
  underflows float64 once the margins pass ~745, which this method reaches within 1e5 steps).

They run side by side as the two columns of one weight matrix, so that the ~1e6 steps of the
``max-margin`` study share each step's numpy overhead; weights are recorded on a log-spaced grid.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from implicitreg.dynamics.grid import log_steps


@dataclass
class Trajectories:
    """Weights of GD and normalized GD at the recorded steps.

    Attributes:
        steps: (k,) recorded steps (1 … the last step, log-spaced).
        gd: (k, d) GD's weights after each recorded step.
        normalized: (k, d) normalized GD's weights, or None when it did not run.
    """

    steps: np.ndarray
    gd: np.ndarray
    normalized: np.ndarray | None


def margins(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """yᵢxᵢᵀw for (n, d) X, (n,) y and w of shape (d,) or (d, m) → (n,) or (n, m)."""
    return y.reshape(-1, *([1] * (np.ndim(w) - 1))) * (x @ w)


def logistic_loss(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray | float:
    """Mean logistic loss (1/n) Σ log(1 + exp(−yᵢxᵢᵀw)), computed stably (``logaddexp``); per column of w."""
    return np.mean(np.logaddexp(0.0, -margins(x, y, w)), axis=0)


def logistic_gradient(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """∇L(w) = −(1/n) Σᵢ σ(−yᵢxᵢᵀw) yᵢxᵢ, same shape as w ((d,) or (d, m))."""
    z = y[:, None] * x
    return -(z.T @ expit(-(z @ w))) / x.shape[0]


def normalized_weights(m: np.ndarray) -> np.ndarray:
    """σ(−mᵢ) / Σⱼ log(1 + e^(−mⱼ)) for margins m (n,), so that −∇L/L = Σᵢ weightᵢ·yᵢxᵢ.

    Numerator and denominator are both multiplied by e^(min m): once the margins pass ~745, L
    itself underflows to 0 in float64 while the ratio stays well defined (it tends to a softmax
    over −m). With ``r(m) = log(1 + e^(−m))·e^m = log1p(x)/x`` (x = e^(−m)), the weights are
    ``e^(min m − mᵢ)·σ(mᵢ) / Σⱼ e^(min m − mⱼ)·r(mⱼ)``. Exponents are floored at −700 so that no
    value is subnormal (numpy is ~100× slower on subnormal floats); a weight below 1e-304 of the
    largest is noise anyway.
    """
    shifted = np.exp(np.maximum(m.min() - m, -700.0))
    x = np.exp(-np.clip(m, -700.0, 700.0))
    return shifted * expit(m) / np.dot(shifted, np.log1p(x) / x)


def stable_step(x: np.ndarray) -> float:
    """2/β for the mean logistic loss: β = σ_max(X)²/(4n) bounds its Hessian (ℓ'' ≤ 1/4), so GD with
    η < 2/β = 8n/σ_max(X)² decreases the loss (Soudry et al. 2018, Theorem 3, for the sum loss:
    η < 2/(β_ℓ σ_max²) with β_ℓ = 1/4)."""
    return 8.0 * x.shape[0] / np.linalg.norm(x, 2) ** 2


def descend(x: np.ndarray, y: np.ndarray, lr: float, steps: int, normalized_lr: float | None = None,
            points: int = 200, progress: Callable[[int], None] | None = None, every: int = 10_000) -> Trajectories:
    """Run GD (step ``lr``) and, if ``normalized_lr`` is given, normalized GD (η₀ = ``normalized_lr``)
    from zero for ``steps`` steps.

    Args:
        x: (n, d) points; y: (n,) labels ±1.
        lr: GD's fixed step.
        steps: number of steps of each method.
        normalized_lr: η₀ of normalized GD, or None to run GD alone.
        points: about how many log-spaced steps to record.
        progress: called with the number of steps done, every ``every`` steps.

    Returns:
        :class:`Trajectories` on the grid :func:`log_steps` (steps, points).
    """
    n, d = x.shape
    z = np.ascontiguousarray(y[:, None] * x, dtype=np.float64)
    zt = np.ascontiguousarray(z.T)
    columns = 1 if normalized_lr is None else 2
    w = np.zeros((d, columns))
    grid = log_steps(steps, points)
    recorded = np.empty((len(grid), d, columns))
    at = 0
    scale = np.full(columns, lr / n)
    for t in range(steps):
        m = z @ w
        if columns == 2:
            s = np.empty_like(m)
            s[:, 0] = expit(-m[:, 0])  # GD: w += (lr/n)·Σ σ(−mᵢ) zᵢ = −lr·∇L
            s[:, 1] = normalized_weights(m[:, 1])
            scale[1] = normalized_lr / np.sqrt(t + 1.0)
        else:
            s = expit(-m)
        w += (zt @ s) * scale
        if at < len(grid) and grid[at] == t + 1:
            recorded[at] = w
            at += 1
        if progress is not None and (t + 1) % every == 0:
            progress(t + 1)
    return Trajectories(grid, recorded[:, :, 0], recorded[:, :, 1] if columns == 2 else None)
