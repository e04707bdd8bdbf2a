"""Loss landscapes: directions."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from implicitreg.landscape.layout import Layout, Params


def normalize_direction(model: nn.Module, direction: "Params | Sequence[torch.Tensor] | torch.Tensor",
                        normalization: str | None = "filter", ignore: str | None = "biasbn") -> Params:
    """Scale a direction to the model's weights (Li et al. 2018, §4).

    Args:
        model: the ``nn.Module`` whose weights set the scale.
        direction: name → tensor, tensors in ``named_parameters()`` order, or flat [n_params].
        normalization: "filter" (each slice along a weight's first axis to the norm of the same slice
            of the weights), "layer" (each parameter tensor to the weights' norm), or None (as given).
        ignore: "biasbn": parameters with ≤ 1 dimension (biases, BatchNorm's weight and bias) get a
            zero direction; None: their direction is the parameter itself (the authors' code's other
            choice). Applies only with a normalization.

    Returns:
        name → tensor in each parameter's shape.
    """
    if normalization not in ("filter", "layer", None):
        raise ValueError(f"normalization: expected 'filter', 'layer' or None, got {normalization!r}")
    if ignore not in ("biasbn", None):
        raise ValueError(f"ignore: expected 'biasbn' or None, got {ignore!r}")
    layout = Layout.of(model)
    d = layout.unflatten_params(layout.params_flat(direction, "direction"))
    if normalization is None:
        return d
    weights = dict(model.named_parameters())
    out = {}
    for name, v in d.items():
        w = weights[name].detach().to(v)
        if v.dim() <= 1:
            out[name] = torch.zeros_like(v) if ignore == "biasbn" else w.clone()
            continue
        if normalization == "filter":
            dims = tuple(range(1, v.dim()))
            dn, wn = v.norm(dim=dims, keepdim=True), w.norm(dim=dims, keepdim=True)
        else:
            dn, wn = v.norm(), w.norm()
        # a zero filter of the direction stays zero (the authors divide by ‖d‖ + 1e-10 for the same reason)
        out[name] = torch.where(dn > 0, v * (wn / torch.where(dn > 0, dn, torch.ones_like(dn))), torch.zeros_like(v))
    return out


def random_direction(model: nn.Module, seed: int = 0, normalization: str | None = "filter",
                     ignore: str | None = "biasbn") -> Params:
    """A Gaussian direction in parameter space, normalized by :func:`normalize_direction`.

    Drawn in float64 on the CPU from ``torch.Generator().manual_seed(seed)``, one tensor per parameter
    in ``named_parameters()`` order, so it is the same on every device and dtype.
    """
    layout = Layout.of(model)
    g = torch.Generator().manual_seed(int(seed))
    raw = [torch.randn(shape, generator=g, dtype=torch.float64) for shape in layout.shapes]
    return normalize_direction(model, raw, normalization, ignore)


def direction_of(model: nn.Module, layout: Layout, given: Any, seed: int, normalization: str | None,
               ignore: str | None) -> Params:
    if given is None:
        return random_direction(model, seed, normalization, ignore)
    return normalize_direction(model, given, normalization, ignore)


def span_of(span: Any, field: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in span)
    except (TypeError, ValueError):
        raise ValueError(f"{field}: expected (low, high), got {span!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{field}: expected finite low < high, got {span!r}")
    return lo, hi


def steps_of(steps: Any, field: str, least: int = 2) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < least:
        raise ValueError(f"{field}: expected an integer ≥ {least}, got {steps!r}")
    return steps
