"""Functional optimizers on stacked parameters, as composable ``(init, update)`` transforms.

Modelled on optax's ``GradientTransformation``: a transform maps gradients to updates and
carries its own state; ``chain`` composes them; explicit regularizers (coupled L2, decoupled
weight decay) are transforms too. Every tensor is stacked over a population, shape [P, ...];
per-member hyperparameters are tensors of shape [P]. ``apply_updates`` adds the updates to the
parameters of the members that are still active.

Each optimizer reproduces the arithmetic of its ``torch.optim`` counterpart (SGD with
momentum/Nesterov, Adam, AdamW), which the sequential engine uses as the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from implicitreg.config import TrainConfig

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Transform:
    """``init(params) -> state``; ``update(grads, state, params, step) -> (updates, state)``."""

    init: Callable[[Params], Any]
    update: Callable[[Params, Any, Params, int], tuple[Params, Any]]


def per_member(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a [P] hyperparameter to broadcast against a [P, ...] tensor."""
    return value.reshape(value.shape[0], *([1] * (like.dim() - 1)))


def chain(*transforms: Transform) -> Transform:
    """Apply transforms in order, each to the previous one's updates."""

    def init(params: Params) -> tuple:
        return tuple(t.init(params) for t in transforms)

    def update(grads: Params, state: tuple, params: Params, step: int) -> tuple[Params, tuple]:
        new_state = []
        for t, s in zip(transforms, state):
            grads, s = t.update(grads, s, params, step)
            new_state.append(s)
        return grads, tuple(new_state)

    return Transform(init, update)


def _stateless(fn: Callable[[Params, Params, int], Params]) -> Transform:
    return Transform(lambda params: None, lambda g, s, p, step: (fn(g, p, step), None))


def add_decayed_weights(weight_decay: torch.Tensor) -> Transform:
    """Coupled L2 regularization: g + λ·w (``torch.optim``'s ``weight_decay``). λ: [P]."""
    return _stateless(lambda g, p, step: {k: g[k] + per_member(weight_decay, g[k]) * p[k] for k in g})


def trace(momentum: float, nesterov: bool = False) -> Transform:
    """Heavy-ball momentum buffer b ← μ·b + g (the first step sets b = g), as torch.optim.SGD.

    The buffer is updated in place (it belongs to the state); the updates it returns alias it,
    so later transforms must not modify their input in place.
    """

    def init(params: Params) -> dict:
        return {"step": 0, "buf": {k: torch.zeros_like(v) for k, v in params.items()}}

    def update(g: Params, state: dict, p: Params, step: int) -> tuple[Params, dict]:
        if state["step"] == 0:
            buf = {k: g[k].clone() for k in g}
        else:
            buf = {k: state["buf"][k].mul_(momentum).add_(g[k]) for k in g}
        out = {k: g[k] + momentum * buf[k] for k in g} if nesterov else buf
        return out, {"step": state["step"] + 1, "buf": buf}

    return Transform(init, update)


def scale_by_adam(b1: float, b2: float, eps: float) -> Transform:
    """Adam's direction m̂ / (√v̂ + ε), with torch.optim.Adam's bias-correction arithmetic."""

    def init(params: Params) -> dict:
        zeros = lambda: {k: torch.zeros_like(v) for k, v in params.items()}  # noqa: E731
        return {"t": 0, "m": zeros(), "v": zeros()}

    def update(g: Params, state: dict, p: Params, step: int) -> tuple[Params, dict]:
        t = state["t"] + 1
        m = {k: state["m"][k].lerp_(g[k], 1 - b1) for k in g}  # moments live in the state: in place
        v = {k: state["v"][k].mul_(b2).addcmul_(g[k], g[k], value=1 - b2) for k in g}
        bc1, bc2_sqrt = 1 - b1**t, math.sqrt(1 - b2**t)
        out = {k: m[k] / ((v[k].sqrt() / bc2_sqrt) + eps) / bc1 for k in g}
        return out, {"t": t, "m": m, "v": v}

    return Transform(init, update)


def scale_by_lr(lr: torch.Tensor, schedule: Callable[[int], float]) -> Transform:
    """Multiply by −η·schedule(step); η: [P] per-member learning rates."""
    return _stateless(lambda g, p, step: {k: g[k] * per_member(-lr * schedule(step), g[k]) for k in g})


def add_decoupled_decay(lr: torch.Tensor, weight_decay: torch.Tensor, schedule: Callable[[int], float]) -> Transform:
    """Decoupled weight decay: an extra update −η·λ·w (AdamW; Loshchilov & Hutter 2019)."""

    def fn(u: Params, p: Params, step: int) -> Params:
        rate = -lr * weight_decay * schedule(step)
        return {k: u[k] + per_member(rate, p[k]) * p[k] for k in u}

    return _stateless(fn)


def schedule_fn(name: str, total_steps: int) -> Callable[[int], float]:
    """Learning-rate multiplier at a 0-based step: constant, cosine to 0, or linear to 0."""
    if name == "constant":
        return lambda step: 1.0
    if name == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
    if name == "linear":
        return lambda step: 1.0 - step / total_steps
    raise ValueError(f"train.schedule: expected constant, cosine or linear, got {name!r}")


def make_optimizer(config: TrainConfig, lr: torch.Tensor, weight_decay: torch.Tensor,
                   decay: bool | None = None) -> Transform:
    """The transform a :class:`TrainConfig` describes, with per-member ``lr`` and ``weight_decay`` [P].

    ``decay`` says whether the chain has a weight-decay piece; by default, whether any λ is
    non-zero. A state stays valid only for a chain of the same structure, so whoever rebuilds
    an optimizer for a subset of members passes the original ``decay``.
    """
    schedule = schedule_fn(config.schedule, config.max_steps)
    coupled = config.weight_decay_mode == "coupled"
    decay = bool(weight_decay.any()) if decay is None else decay
    pieces: list[Transform] = [add_decayed_weights(weight_decay)] if coupled and decay else []
    if config.optimizer == "adam":
        pieces.append(scale_by_adam(config.betas[0], config.betas[1], config.eps))
    elif config.optimizer in ("momentum", "nesterov"):
        pieces.append(trace(config.momentum, nesterov=config.optimizer == "nesterov"))
    pieces.append(scale_by_lr(lr, schedule))
    if not coupled and decay:
        pieces.append(add_decoupled_decay(lr, weight_decay, schedule))
    return chain(*pieces)


def apply_updates(params: Params, updates: Params, active: torch.Tensor) -> Params:
    """w ← w + u for active members ([P] bool); frozen members keep their weights exactly.

    When every member is active the parameters are updated in place (and returned).
    """
    if bool(active.all()):
        return {k: params[k].add_(updates[k]) for k in params}
    return {k: torch.where(per_member(active, params[k]), params[k] + updates[k], params[k]) for k in params}
