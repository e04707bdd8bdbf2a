"""GD, SGD, Adam and AdaGrad on the squared loss ``L(w) = ‖Xw − y‖² / (2n)``, in float64 numpy.

These are the objects of study of the ``min-norm`` study (Wilson, Roelofs, Stern, Srebro & Recht
2017, "The marginal value of adaptive gradient methods in machine learning"): which interpolant
an optimizer reaches on an underdetermined least-squares problem. They are written out here,
step by step (Adam and AdaGrad exactly as ``torch.optim`` updates them), rather than taken from a
library, because their update rules are what is being examined.

Every optimizer stops at the first step whose relative residual ``‖Xw − y‖ / ‖y‖`` is at most
``tol`` (or after ``max_steps``) and records its weights on a log-spaced grid of steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from implicitreg.dynamics.descent import descend
from implicitreg.dynamics.grid import log_steps


@dataclass
class Path:
    """The weights of one optimizer run at recorded steps.

    Attributes:
        steps: (k,) increasing steps, 0 first and ``final_step`` last.
        weights: (k, d) the weights after each recorded step.
        final_step: steps taken (a step is one update: a full-batch gradient, or one sample for SGD).
        converged: whether the residual tolerance was reached before ``max_steps``.
    """

    steps: np.ndarray
    weights: np.ndarray
    final_step: int
    converged: bool

    @property
    def w(self) -> np.ndarray:
        """(d,) the final weights."""
        return self.weights[-1]


class _Recorder:
    """Keeps the weights at the steps of a log-spaced grid, and at the last step."""

    def __init__(self, w0: np.ndarray, max_steps: int, points: int):
        self.grid = set(log_steps(max_steps, points).tolist())
        self.steps, self.weights = [0], [w0.copy()]

    def __call__(self, step: int, w: np.ndarray) -> None:
        if step in self.grid:
            self.steps.append(step)
            self.weights.append(w.copy())

    def finish(self, step: int, w: np.ndarray, converged: bool) -> Path:
        if self.steps[-1] != step:
            self.steps.append(step)
            self.weights.append(w.copy())
        return Path(np.asarray(self.steps), np.stack(self.weights), step, converged)


def relative_residual(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """``‖Xw − y‖ / ‖y‖`` for (n, d) ``X``, (n,) ``y`` and (d,) ``w``."""
    return float(np.linalg.norm(x @ w - y) / np.linalg.norm(y))


def _full_batch(x: np.ndarray, y: np.ndarray, w0: np.ndarray, update: Callable[[np.ndarray, np.ndarray, int], None],
                max_steps: int, tol: float, points: int) -> Path:
    """Run ``update(w, grad, t)`` (in place, t = 1, 2, …) with the full gradient ``Xᵀ(Xw − y)/n``,
    on :func:`implicitreg.dynamics.descent.descend` with the residual norm ‖Xw − y‖ as its loss."""
    n = x.shape[0]

    def loss_and_grad(params: list[np.ndarray]) -> tuple[float, list[np.ndarray]]:
        r = x @ params[0] - y
        return np.linalg.norm(r), [x.T @ r / n]

    grid = {0, *log_steps(max_steps, points).tolist()}
    result = descend(loss_and_grad, [np.array(w0, dtype=np.float64)], max_steps,
                     lambda step, params, grads, aux: update(params[0], grads[0], step + 1),
                     tol=tol * np.linalg.norm(y), record=grid, snapshot=lambda params, aux: params[0].copy())
    w = result.params[0]
    # at max_steps the tolerance is judged on the relative residual, as the docstring states
    converged = result.converged if result.step < max_steps else relative_residual(x, y, w) <= tol
    steps, weights = zip(*result.trace)
    return Path(np.asarray(steps), np.stack(weights), result.step, converged)


def gd(x: np.ndarray, y: np.ndarray, w0: np.ndarray, lr: float, max_steps: int, tol: float,
       points: int = 120) -> Path:
    """Full-batch gradient descent ``w ← w − lr·Xᵀ(Xw − y)/n`` from ``w0`` (d,)."""

    def update(w: np.ndarray, g: np.ndarray, t: int) -> None:
        w -= lr * g

    return _full_batch(x, y, w0, update, max_steps, tol, points)


def sgd(x: np.ndarray, y: np.ndarray, w0: np.ndarray, lr: float, max_steps: int, tol: float,
        rng: np.random.Generator, points: int = 120) -> Path:
    """Single-sample SGD ``w ← w − lr·(xᵢᵀw − yᵢ)xᵢ``, samples in a fresh random order every epoch.

    The residual is checked at the end of every epoch (of n steps), so ``final_step`` is a multiple
    of n unless ``max_steps`` ends it.
    """
    n = x.shape[0]
    w = np.array(w0, dtype=np.float64)
    record, limit = _Recorder(w, max_steps, points), tol * np.linalg.norm(y)
    t = 0
    while t < max_steps:
        if np.linalg.norm(x @ w - y) <= limit:
            return record.finish(t, w, True)
        for i in rng.permutation(n)[: max_steps - t]:
            w -= lr * (x[i] @ w - y[i]) * x[i]
            t += 1
            record(t, w)
    return record.finish(t, w, relative_residual(x, y, w) <= tol)


def adam(x: np.ndarray, y: np.ndarray, w0: np.ndarray, lr: float, max_steps: int, tol: float,
         betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, decay_steps: float | None = None,
         points: int = 120) -> Path:
    """Full-batch Adam as ``torch.optim.Adam`` updates it (bias-corrected moments, ``eps`` outside
    the square root), with learning rate ``lr / sqrt(1 + t/decay_steps)`` (constant if None)."""
    beta1, beta2 = betas
    m, v = np.zeros_like(w0, dtype=np.float64), np.zeros_like(w0, dtype=np.float64)

    def update(w: np.ndarray, g: np.ndarray, t: int) -> None:
        m[:] = beta1 * m + (1 - beta1) * g
        v[:] = beta2 * v + (1 - beta2) * g * g
        step = lr if decay_steps is None else lr / np.sqrt(1.0 + t / decay_steps)
        w -= step * (m / (1 - beta1**t)) / (np.sqrt(v / (1 - beta2**t)) + eps)

    return _full_batch(x, y, w0, update, max_steps, tol, points)


def adagrad(x: np.ndarray, y: np.ndarray, w0: np.ndarray, lr: float, max_steps: int, tol: float,
            eps: float = 1e-10, points: int = 120) -> Path:
    """Full-batch AdaGrad as ``torch.optim.Adagrad`` updates it (no lr decay, zero initial sum):
    ``G ← G + g²``, ``w ← w − lr·g / (sqrt(G) + eps)``."""
    total = np.zeros_like(w0, dtype=np.float64)

    def update(w: np.ndarray, g: np.ndarray, t: int) -> None:
        total[:] += g * g
        w -= lr * g / (np.sqrt(total) + eps)

    return _full_batch(x, y, w0, update, max_steps, tol, points)
