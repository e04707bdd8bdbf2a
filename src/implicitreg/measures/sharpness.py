"""ε-sharpness (Keskar et al. 2017): the largest relative increase of the training loss within a
box around the weights, maximized by projected sign-gradient ascent, batched over a population."""

from __future__ import annotations

import torch
from torch.func import functional_call, vmap

from implicitreg.measures.core import Stacked, register, require_eval, stacked
from implicitreg.measures.flatness import Params, train_data
from implicitreg.seeding import stream_seed


def _member_losses(s: Stacked, params: Params, x: torch.Tensor, y: torch.Tensor, loss_fn) -> torch.Tensor:
    out = vmap(lambda p: functional_call(s.template, p, (x,)))(params)
    return torch.stack([loss_fn(out[i], y[i]) for i in range(out.shape[0])])


@register("epsilon_sharpness", "sharpness", needs=("params", "loss", "data"), lower_is_simpler=True, cost="forward")
def epsilon_sharpness(model, loss_fn, data, epsilon: float = 1e-3, steps: int = 20, lr: float = 0.2,
                      seed: int = 0, restarts: int = 1) -> torch.Tensor:
    """Keskar et al.'s ε-sharpness: the largest relative rise of the training loss in an ε-box, in %.

    φ = 100 · (max_{δ ∈ C} L(θ + δ) − L(θ)) / (1 + L(θ)),  C = {δ : |δᵢ| ≤ ε(|θᵢ| + 1)},

    over every parameter (biases included) with the full-batch training loss. Keskar et al.
    maximize with L-BFGS-B; here the maximum is approximated, for all members at once, by
    ``steps`` steps of projected steepest ascent in the box's ℓ∞ geometry:
    δ ← clip(δ + lr · r ⊙ sign(∇L(θ + δ)), −r, r) with r = ε(|θ| + 1), from a uniform random
    start in the box (a start at δ = 0 stalls where ∇L(θ) = 0), repeated from ``restarts``
    starts. ``lr`` is a fraction of the box half-width, so 2/lr steps cross the box. The result
    is the largest loss seen over δ = 0, the starts and every iterate, so it is ≥ 0. Being a local
    search, it is a lower bound of the true maximum: sign ascent ends at a vertex that is a local
    maximum, which is the global one when the loss is nearly linear over the box (the usual case
    for small ε); at a minimum (∇L(θ) = 0, the loss a quadratic bowl) several vertices can be
    local maxima, and ``restarts`` > 1 helps.

    Args:
        model: ``nn.Module`` or population.
        loss_fn: mean training loss ``loss_fn(outputs [N, C], y [N]) → scalar`` (e.g. ``F.cross_entropy``).
        data: (x [N, ...], y [N] or [P, N]).
        epsilon: box size ε (Keskar et al. use 1e-3 and 5e-4).
        steps: ascent steps; lr: step as a fraction of the box half-width.
        seed: seeds the random starts (deterministic given it, and independent of the population size).
        restarts: random starts; the cost is restarts × (steps + 1) forward and backward passes.

    Returns:
        φ ≥ 0: 0-d for a module, [P] for a population.
    """
    if not epsilon > 0 or not lr > 0 or steps < 0 or restarts < 1:
        raise ValueError(f"epsilon, lr: expected > 0, steps ≥ 0, restarts ≥ 1; got {epsilon}, {lr}, {steps}, {restarts}")
    s = stacked(model)
    require_eval(s.template)
    x, y = train_data(data, s)
    theta = {k: v.detach() for k, v in s.params.items()}
    radius = {k: epsilon * (v.abs() + 1) for k, v in theta.items()}
    with torch.no_grad():
        base = _member_losses(s, theta, x, y, loss_fn)
    best = base.clone()
    for restart in range(restarts):
        g = torch.Generator().manual_seed(stream_seed(seed, f"epsilon_sharpness:{restart}"))
        # one draw per tensor of a single member, scaled by each member's own box: the start does
        # not depend on the population size
        delta = {k: (2 * torch.rand(v.shape[1:], generator=g, dtype=v.dtype).to(v.device) - 1) * radius[k]
                 for k, v in theta.items()}
        with torch.enable_grad():
            for step in range(steps + 1):
                leaves = {k: d.detach().requires_grad_(step < steps) for k, d in delta.items()}
                value = _member_losses(s, {k: theta[k] + leaves[k] for k in theta}, x, y, loss_fn)
                best = torch.maximum(best, value.detach())
                if step == steps:
                    break
                grads = torch.autograd.grad(value.sum(), list(leaves.values()))
                delta = {k: torch.clamp(leaves[k].detach() + lr * radius[k] * torch.sign(gr), -radius[k], radius[k])
                         for (k, gr) in zip(leaves, grads)}
    return s.finish(100 * (best - base) / (1 + base))
