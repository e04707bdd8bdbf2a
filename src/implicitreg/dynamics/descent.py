"""One full-batch gradient-descent driver over a list of float64 arrays (numpy or torch).

Every solved study that descends a loss by full-batch steps runs this loop: evaluate the loss and
its gradient, stop on a tolerance, on divergence or at ``max_steps``, let the caller observe the
point, keep a snapshot on a recording grid, then apply the update in place. The update rule is a
callable (:func:`gd_update` for θ ← θ − η∇L, with η fixed or chosen per step; the squared-loss
module builds Adam and AdaGrad the same way), so the stopping and recording logic exist once.

Step ``s`` is the point after ``s`` updates: the loss, the observation and the snapshot at step
``s`` all refer to it, and a run that stops at step ``s`` has taken ``s`` updates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

#: loss_and_grad(params) → (loss, grads) or (loss, grads, aux): aux (e.g. a network's output) is
#: passed on to the update, the observer and the snapshot, so that they need not recompute it.
LossAndGrad = Callable[[list], tuple]
#: update(step, params, grads, aux) changes params in place.
Update = Callable[[int, list, Sequence, Any], None]


@dataclass
class Descent:
    """The end of a descent.

    Attributes:
        params: the parameters after ``step`` updates (the caller's arrays, updated in place).
        step: updates taken.
        loss: the loss at ``step``.
        converged: the loss reached ``tol``.
        diverged: the loss stopped being finite or exceeded ``diverge`` × the initial loss.
        trace: (step, snapshot) at every recorded step reached and at the last step.
    """

    params: list
    step: int
    loss: float
    converged: bool
    diverged: bool
    trace: list[tuple[int, Any]]


def copy_params(params: list, aux: Any = None) -> list:
    """The default snapshot: a copy of every array (numpy or torch)."""
    return [p.copy() if isinstance(p, np.ndarray) else p.detach().clone() for p in params]


def gd_update(lr: float | Callable[[int, list, Sequence, Any], float]) -> Update:
    """θ ← θ − η·∇L in place for every array; η a number or ``lr(step, params, grads, aux)``."""

    def update(step: int, params: list, grads: Sequence, aux: Any) -> None:
        eta = lr(step, params, grads, aux) if callable(lr) else lr
        with torch.no_grad():  # torch leaves that require grad may be updated in place
            for p, g in zip(params, grads):
                p -= eta * g

    return update


def descend(loss_and_grad: LossAndGrad, params: Sequence, max_steps: int, update: Update, *,
            tol: float | None = None, diverge: float | None = None, record: Collection[int] = (),
            snapshot: Callable[[list, Any], Any] = copy_params,
            observe: Callable[[int, list, float, Any], None] | None = None,
            progress: Callable[[int], None] | None = None, every: int = 2000) -> Descent:
    """Full-batch descent from ``params`` for at most ``max_steps`` updates.

    Args:
        loss_and_grad: params → (loss, grads[, aux]); loss a float, grads one array per parameter.
        params: the parameter arrays, updated in place (pass copies to keep the start).
        max_steps: most updates.
        update: applies one step in place (e.g. :func:`gd_update`).
        tol: stop, converged, at the first step with loss ≤ tol.
        diverge: stop, diverged, at the first step whose loss is not finite or exceeds
            ``diverge`` × the loss at step 0.
        record: steps at which ``snapshot(params, aux)`` is kept (the last step always is).
        observe: called as ``observe(step, params, loss, aux)`` at every step that did not diverge,
            the last one included, before its update.
        progress: called with the step after every ``every``-th update (steps 0, every, …).

    Returns:
        :class:`Descent`.
    """
    params = list(params)
    first = None
    trace: list[tuple[int, Any]] = []
    for step in range(max_steps + 1):
        loss, grads, *rest = loss_and_grad(params)
        aux = rest[0] if rest else None
        first = loss if first is None else first
        diverged = diverge is not None and (not math.isfinite(loss) or loss > diverge * first)
        converged = tol is not None and loss <= tol
        stop = diverged or converged or step == max_steps
        if observe is not None and not diverged:
            observe(step, params, loss, aux)
        if stop or step in record:
            trace.append((step, snapshot(params, aux)))
        if stop:
            return Descent(params, step, loss, bool(converged), bool(diverged), trace)
        update(step, params, grads, aux)
        if progress is not None and step % every == 0:
            progress(step)
    raise AssertionError("unreachable")  # the loop returns at step == max_steps
