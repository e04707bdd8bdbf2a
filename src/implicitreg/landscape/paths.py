"""Loss landscapes: the linear path between two solutions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from implicitreg.landscape.layout import BUDGET, Layout, LossFn
from implicitreg.landscape.points import evaluate_chunks, plane
from implicitreg.landscape.directions import span_of, steps_of


@dataclass(frozen=True)
class Interpolation:
    """The loss along θ(t) = (1 − t)·θ_a + t·θ_b (Goodfellow, Vinyals & Saxe 2015).

    Barriers are maxima over the grid's points with 0 ≤ t ≤ 1 (so lower bounds of the supremum over
    the segment, equal to it where the maximizer is a grid point):

    * ``barrier`` = maxₜ L(θ(t)) − [(1 − t)·L(θ_a) + t·L(θ_b)], the height above the chord between the
      endpoints' losses (Entezari et al. 2022's loss barrier), at ``barrier_t``. ≥ 0 (the endpoints
      give 0); 0 for a convex loss. The two solutions are linearly mode-connected where it is ≈ 0.
    * ``barrier_mean`` = maxₜ L(θ(t)) − ½·(L(θ_a) + L(θ_b)), Frankle et al. 2020's definition (they
      report it for the test error: the ``error_*`` fields use 1 − accuracy).

    Attributes:
        t: [S] interpolation coefficients (0 and 1 always among them).
        loss: [S]; accuracy: [S] or None.
        barrier, barrier_t, barrier_mean: floats as above.
        error_barrier, error_barrier_mean: the same of the error 1 − accuracy (None without accuracy).
    """

    t: torch.Tensor
    loss: torch.Tensor
    accuracy: torch.Tensor | None
    barrier: float
    barrier_t: float
    barrier_mean: float
    error_barrier: float | None
    error_barrier_mean: float | None


def barrier_heights(t: torch.Tensor, values: torch.Tensor) -> tuple[float, float, float]:
    """(height above the endpoints' chord, its t, height above the endpoints' mean) of values [S] at
    t [S] (which contains 0 and 1), over the points with 0 ≤ t ≤ 1."""
    t, values = t.double(), values.double()
    at0, at1 = values[t == 0], values[t == 1]
    if at0.numel() != 1 or at1.numel() != 1:
        raise ValueError("t: expected exactly one point at t = 0 and one at t = 1")
    inside = (t >= 0) & (t <= 1)
    ts, vs = t[inside], values[inside]
    excess = vs - ((1 - ts) * at0 + ts * at1)
    i = int(torch.argmax(excess))
    return float(excess[i]), float(ts[i]), float(vs.max() - (at0 + at1) / 2)


def interpolate(model_a: nn.Module, model_b: nn.Module, loss_fn: LossFn, data: Any, *, steps: int = 25,
                span: tuple[float, float] = (0.0, 1.0), budget: int = BUDGET) -> Interpolation:
    """The loss (and accuracy) on the straight line between two solutions, and its barrier heights.

    Floating-point buffers (BatchNorm's running statistics) are interpolated with the parameters;
    integer buffers are model_a's.

    Args:
        model_a, model_b: ``nn.Module`` s of one architecture, in eval mode.
        loss_fn, data: as :func:`evaluate_points`.
        steps, span: t runs over ``linspace(span[0], span[1], steps)`` plus 0 and 1 (a span beyond
            [0, 1] shows the loss outside the segment; the barriers use 0 ≤ t ≤ 1 only).
        budget: evaluated samples (points × rows) per pass.

    Returns:
        :class:`Interpolation`.
    """
    layout = Layout.of(model_a)
    Layout.of(model_b)
    lo, hi = span_of(span, "span")
    if lo > 0 or hi < 1:
        raise ValueError(f"span: expected low ≤ 0 and high ≥ 1 (the segment between the models), got {span!r}")
    t = torch.linspace(lo, hi, steps_of(steps, "steps"), dtype=torch.float64)
    # linspace's rounding puts 2.8e-17 where 0 was meant: snap such points onto the endpoints
    for end in (0.0, 1.0):
        t = torch.where((t - end).abs() <= 1e-12 * (hi - lo), torch.full_like(t, end), t)
    t = torch.unique(torch.cat([t, torch.tensor([0.0, 1.0], dtype=torch.float64)]))  # sorted
    a, b = layout.flatten(model_a), layout.flatten(model_b)
    loss, acc = evaluate_chunks(layout, loss_fn, data, len(t), plane(layout, a, (b - a).unsqueeze(0), t.unsqueeze(1)),
                          budget)
    barrier, barrier_t, barrier_mean = barrier_heights(t, loss)
    if acc is None:
        error_barrier = error_barrier_mean = None
    else:
        error_barrier, _, error_barrier_mean = barrier_heights(t, 1 - acc)
    return Interpolation(t, loss, acc, barrier, barrier_t, barrier_mean, error_barrier, error_barrier_mean)
