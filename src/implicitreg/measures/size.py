"""Size measures: ℓ2 and ℓ1 norms of all parameters, distance from initialization, parameter count."""

from __future__ import annotations

import torch

from implicitreg.measures.core import register, stacked

Params = dict[str, torch.Tensor]


def params_l2(params: Params) -> torch.Tensor:
    """‖θ‖₂ over every stacked tensor (weights and biases): [P]."""
    return torch.sqrt(sum(p.detach().flatten(1).pow(2).sum(1) for p in params.values()))


def params_distance(params: Params, init: Params) -> torch.Tensor:
    """‖θ − θ₀‖₂ of each member: [P]."""
    return torch.sqrt(sum((params[k].detach() - init[k]).flatten(1).pow(2).sum(1) for k in params))


@register("l2_norm", "norm")
def l2_norm(model) -> torch.Tensor:
    """‖θ‖₂ over all parameters, biases included."""
    return (s := stacked(model)).finish(params_l2(s.params))


@register("l1_norm", "norm")
def l1_norm(model) -> torch.Tensor:
    """‖θ‖₁ over all parameters, biases included."""
    s = stacked(model)
    return s.finish(sum(p.flatten(1).abs().sum(1) for p in s.params.values()))


@register("distance_from_init", "norm", needs=("params", "init"))
def distance_from_init(model, init) -> torch.Tensor:
    """‖θ − θ₀‖₂ (Nagarajan & Kolter 2019); ``init`` is the initial model or population."""
    s, s0 = stacked(model), stacked(init)
    if set(s.params) != set(s0.params):
        raise ValueError(f"init has parameters {sorted(s0.params)}, the model {sorted(s.params)}")
    return s.finish(params_distance(s.params, {k: v.to(s.params[k]) for k, v in s0.params.items()}))


@register("param_count", "count", lower_is_simpler=None)
def param_count(model) -> torch.Tensor:
    """Number of parameters of one member."""
    s = stacked(model)
    count = sum(p[0].numel() for p in s.params.values())
    return s.finish(torch.full((s.size,), float(count)))
