"""Loss landscapes: slices."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from implicitreg.landscape.layout import BUDGET, Layout, LossFn, Params
from implicitreg.landscape.points import evaluate_chunks, plane
from implicitreg.landscape.directions import direction_of, span_of, steps_of


@dataclass(frozen=True)
class Slice1D:
    """The loss along one direction: θ + α·d.

    Attributes:
        alphas: [S] step sizes (α = 1 moves every filter by its own norm, for a filter-normalized d).
        loss: [S] mean loss; accuracy: [S] (None for labels that are not integer classes).
        direction: name → tensor, the direction d used (after normalization).
    """

    alphas: torch.Tensor
    loss: torch.Tensor
    accuracy: torch.Tensor | None
    direction: Params


@dataclass(frozen=True)
class Slice2D:
    """The loss on a plane: θ + α·d₁ + β·d₂.

    Attributes:
        alphas: [Sx], betas: [Sy].
        loss: [Sx, Sy], ``loss[i, j]`` at (alphas[i], betas[j]); accuracy: same shape or None.
        directions: (d₁, d₂), each name → tensor, after normalization.
    """

    alphas: torch.Tensor
    betas: torch.Tensor
    loss: torch.Tensor
    accuracy: torch.Tensor | None
    directions: tuple[Params, Params]


def slice_1d(model: nn.Module, loss_fn: LossFn, data: Any, direction: Any = None, *,
             span: tuple[float, float] = (-1.0, 1.0), steps: int = 51, normalization: str | None = "filter",
             ignore: str | None = "biasbn", seed: int = 0, budget: int = BUDGET) -> Slice1D:
    """The loss (and accuracy) along a line through the model, every point a population member.

    Args:
        model: an ``nn.Module`` in eval mode.
        loss_fn, data: as :func:`evaluate_points`.
        direction: None (a Gaussian direction drawn from ``seed``), or name → tensor, tensors in
            ``named_parameters()`` order, or flat [n_params]; normalized by ``normalization`` and
            ``ignore`` (:func:`normalize_direction`; pass ``normalization=None`` to use it as given).
        span, steps: α runs over ``linspace(span[0], span[1], steps)``.
        budget: evaluated samples (points × rows) per pass.

    Returns:
        :class:`Slice1D`.
    """
    layout = Layout.of(model)
    lo, hi = span_of(span, "span")
    alphas = torch.linspace(lo, hi, steps_of(steps, "steps"), dtype=torch.float64)
    d = direction_of(model, layout, direction, seed, normalization, ignore)
    dirs = layout.pad(layout.params_flat(d, "direction")).unsqueeze(0)
    loss, acc = evaluate_chunks(layout, loss_fn, data, len(alphas),
                          plane(layout, layout.flatten(model), dirs, alphas.unsqueeze(1)), budget)
    return Slice1D(alphas, loss, acc, d)


def pair_of(value: Any, field: str) -> tuple[Any, Any]:
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, (tuple, list)) for v in value):
        return value[0], value[1]
    if isinstance(value, (tuple, list)) and len(value) == 2 and field == "steps":
        return value[0], value[1]
    return value, value


def slice_2d(model: nn.Module, loss_fn: LossFn, data: Any, directions: Any = None, *,
             span: Any = (-1.0, 1.0), steps: Any = 25, normalization: str | None = "filter",
             ignore: str | None = "biasbn", seed: int = 0, budget: int = BUDGET) -> Slice2D:
    """The loss (and accuracy) on a plane through the model (Li et al. 2018's contour plots).

    Args:
        model, loss_fn, data: as :func:`slice_1d`.
        directions: None (two Gaussian directions, from ``seed`` and ``seed + 1``) or a pair (d₁, d₂),
            each as :func:`slice_1d`'s ``direction``; both normalized alike.
        span: (low, high) for both axes, or ((low, high), (low, high)) for α and β.
        steps: points per axis, an integer or (Sx, Sy).
        budget: evaluated samples (points × rows) per pass.

    Returns:
        :class:`Slice2D` with ``loss[i, j]`` at (alphas[i], betas[j]).
    """
    layout = Layout.of(model)
    span_x, span_y = pair_of(span, "span")
    steps_x, steps_y = pair_of(steps, "steps")
    alphas = torch.linspace(*span_of(span_x, "span"), steps_of(steps_x, "steps"), dtype=torch.float64)
    betas = torch.linspace(*span_of(span_y, "span"), steps_of(steps_y, "steps"), dtype=torch.float64)
    if directions is None:
        given: tuple[Any, Any] = (None, None)
    elif isinstance(directions, (tuple, list)) and len(directions) == 2:
        given = (directions[0], directions[1])
    else:
        raise ValueError(f"directions: expected None or a pair (d1, d2), got {type(directions).__name__}")
    pair = (direction_of(model, layout, given[0], seed, normalization, ignore),
            direction_of(model, layout, given[1], seed + 1, normalization, ignore))
    dirs = torch.stack([layout.pad(layout.params_flat(d, "directions")) for d in pair])
    grid = torch.cartesian_prod(alphas, betas)  # [Sx·Sy, 2], α-major: reshapes to [Sx, Sy]
    loss, acc = evaluate_chunks(layout, loss_fn, data, grid.shape[0], plane(layout, layout.flatten(model), dirs, grid),
                          budget)
    shape = (len(alphas), len(betas))
    return Slice2D(alphas, betas, loss.reshape(shape), None if acc is None else acc.reshape(shape), pair)
