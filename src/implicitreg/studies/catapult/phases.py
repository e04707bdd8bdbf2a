"""catapult: the phase a run is observed in, from its loss and NTK trajectories.

A run is GD at η = c/λ₀ (c = η·λ₀, λ₀ = λ_max(Θ) at initialization) for ``steps`` updates, with the loss
L_t at every step and λ_t = λ_max(Θ_t) measured along the way (:func:`implicitreg.dynamics.two_layer.train`).
:func:`summarize` reduces it to the numbers :func:`classify` reads:

- **divergent**: the loss stopped being finite or exceeded :data:`DIVERGE` × L₀ within the budget;
- **lazy**: not divergent; the loss never rose (no step with L_{t+1} − L_t > :data:`INCREASE` · L₀, i.e.
  above rounding); it fell to L_T ≤ :data:`FIT` · L₀; and the curvature stayed put,
  |λ_T/λ₀ − 1| ≤ :data:`DRIFT`;
- **catapult**: not divergent; the loss first rose to max_t L_t ≥ :data:`RISE` · L₀, then fell to
  L_T ≤ :data:`FIT` · L₀; and the final curvature is below the stability edge, η·λ_T < 2;
- **other**: none of these — a loss that stalls (ReLU units that all switched off: f ≡ 0), a run that
  ends oscillating at η·λ_T ≥ 2 (the edge of stability), or a curvature that moved without a rise.

The thresholds were set from the definitions before any run: rounding of a float64 loss is ~1e-16·L₀, so
1e-10·L₀ separates a rise from noise; "falls" means the data are fitted (a hundredfold drop); "nearly
constant" allows the O(1/√n) drift of a finite-width NTK (≈ 0.03 at n = 1024) three times over.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from implicitreg.dynamics.two_layer import Trajectory

RISE = 2.0  # catapult: the loss at least doubles before it falls
FIT = 1e-2  # lazy and catapult: the last loss at most this fraction of the initial one
DRIFT = 0.1  # lazy: |λ_T/λ₀ − 1| at most this
INCREASE = 1e-10  # a step raises the loss when L_{t+1} − L_t exceeds this fraction of L₀ (above rounding)
DIVERGE = 1e8  # divergent: the loss exceeds this multiple of L₀ (or is not finite)
EDGE = 2.0  # catapult: η·λ_T below this (λ_T < 2/η)
PHASES = ("lazy", "catapult", "divergent", "other")
#: the numbers :func:`classify` reads, as stored metrics (one value per run, at its last step)
SUMMARY = ("diverged", "max_loss_ratio", "final_loss_ratio", "loss_increases", "lambda_end_ratio", "eta_lambda_end")


def summarize(run: Trajectory, member: int) -> dict[str, float]:
    """One member's summary: ``loss0`` L₀, ``lambda0`` λ₀, ``max_loss_ratio`` max_t L_t/L₀ and ``peak_step``
    (its argmax), ``final_loss_ratio`` L_T/L₀ at the member's last step, ``loss_increases`` (steps that raised
    the loss by more than :data:`INCREASE` · L₀), ``lambda_end_ratio`` λ_T/λ₀ and ``eta_lambda_end`` η·λ_T
    (NaN when it diverged: there is no final curvature), ``diverged`` 1/0."""
    stop = int(run.stopped[member])
    loss = run.loss[member, :stop + 1]
    first = float(loss[0])
    lam = run.ntk[member]
    diverged = bool(run.diverged[member])
    end = math.nan if diverged else float(lam[-1])  # the last measurement is at ``steps``
    peak = int(np.argmax(loss))
    return {
        "loss0": first, "lambda0": float(lam[0]),
        "max_loss_ratio": float(loss[peak] / first), "peak_step": float(peak),
        "final_loss_ratio": float(loss[-1] / first),
        "loss_increases": float(np.count_nonzero(np.diff(loss) > INCREASE * first)),
        "lambda_end_ratio": end / float(lam[0]), "eta_lambda_end": float(run.lr[member]) * end,
        "diverged": float(diverged),
    }


def classify(values: dict[str, Any]) -> str | None:
    """The phase (:data:`PHASES`) of a run from its :data:`SUMMARY` values; None when a value it needs is
    missing or NaN (the run cannot be judged)."""
    def number(name: str) -> float | None:
        value = values.get(name)
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None
        return None if math.isnan(value) else value

    diverged = number("diverged")
    if diverged is None:
        return None
    if diverged:
        return "divergent"
    needed = {name: number(name) for name in SUMMARY[1:]}
    if any(v is None for v in needed.values()):
        return None
    fitted = needed["final_loss_ratio"] <= FIT
    if fitted and needed["loss_increases"] == 0 and abs(needed["lambda_end_ratio"] - 1) <= DRIFT:
        return "lazy"
    if fitted and needed["max_loss_ratio"] >= RISE and needed["eta_lambda_end"] < EDGE:
        return "catapult"
    return "other"


def expected(model: str, rate: float, eta_max: dict[str, float]) -> str | None:
    """The paper's phase for ``model`` at c = η·λ₀: lazy below 2, catapult between 2 and ``eta_max[model]``
    (the paper's maximal rate), divergent above it; None exactly at a boundary."""
    top = eta_max[model]
    if rate < 2:
        return "lazy"
    if 2 < rate < top:
        return "catapult"
    if rate > top:
        return "divergent"
    return None
