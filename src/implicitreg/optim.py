"""Functional optimizers on stacked parameters, as composable ``(init, update)`` transforms.

Modelled on optax: a :class:`Transform` maps gradients to updates and carries its own state;
:func:`chain` composes transforms; explicit regularizers (coupled L2, decoupled weight decay) are
transforms too; the named aliases (:data:`ALIASES`: ``sgd``, ``momentum``, ``nesterov``, ``adam``,
``adamw``, ``adagrad``, ``rmsprop``) return a ``chain`` of these pieces. Every tensor is stacked
over a population, shape [P, ...].

Per-member hyperparameters (learning rate, weight decay; a float shared by all members or a
tensor of shape [P]) are written into the state by ``init``, so the state alone describes the
members it trains: when members leave a population, ``select_state(state, keep)`` indexes
moments *and* hyperparameters, and the same transform goes on with the kept members. Shared
hyperparameters (momentum, betas, eps, the schedule) stay in the transform.

Each alias reproduces the arithmetic of its ``torch.optim`` counterpart (``SGD`` with momentum or
Nesterov, ``Adam``, ``AdamW``, ``Adagrad``, ``RMSprop``), which the sequential engine and the
tests use as the reference. A schedule is a multiplier of the learning rate at a 0-based step
(``schedule_fn``), shared by the members; ``update`` receives that step from the loop.

Example (three members with their own learning rates and weight decays)::

    opt = adamw(lr=torch.tensor([1e-3, 3e-3, 1e-2]), weight_decay=torch.tensor([0.0, 1e-2, 1e-1]),
                schedule=schedule_fn("cosine", 1000))
    state = opt.init(params)                      # params: name → [3, ...]
    updates, state = opt.update(grads, state, params, step)
    params = apply_updates(params, updates, active)
    state = select_state(state, keep)             # members leave: no new optimizer

References:
    optax, ``GradientTransformation`` and ``chain`` (https://github.com/google-deepmind/optax).
    Kingma & Ba 2015 (Adam); Loshchilov & Hutter 2019 (AdamW, decoupled weight decay);
    Duchi, Hazan & Singer 2011 (AdaGrad); Tieleman & Hinton 2012 (RMSprop).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Callable

import torch

from implicitreg.config import TrainConfig

Params = dict[str, torch.Tensor]
Schedule = Callable[[int], float]
Hyperparameter = float | torch.Tensor  # shared by the members, or one value per member [P]


@dataclass(frozen=True)
class Transform:
    """``init(params) -> state``; ``update(grads, state, params, step) -> (updates, state)``.

    ``params``, ``grads`` and ``updates`` map names to [P, ...] tensors; ``step`` is the 0-based
    step of the loop (what a schedule reads). ``update`` may modify its *state* in place (it owns
    it) but never its ``grads`` or ``params``.
    """

    init: Callable[[Params], Any]
    update: Callable[[Params, Any, Params, int], tuple[Params, Any]]


def per_member(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a [P] hyperparameter to broadcast against a [P, ...] tensor."""
    return value.reshape(value.shape[0], *([1] * (like.dim() - 1)))


def chain(*transforms: Transform) -> Transform:
    """Apply transforms in order, each to the previous one's updates; the state is a tuple of theirs."""

    def init(params: Params) -> tuple:
        return tuple(t.init(params) for t in transforms)

    def update(grads: Params, state: tuple, params: Params, step: int) -> tuple[Params, tuple]:
        new_state = []
        for t, s in zip(transforms, state):
            grads, s = t.update(grads, s, params, step)
            new_state.append(s)
        return grads, tuple(new_state)

    return Transform(init, update)


def select_state(state: Any, keep: torch.Tensor) -> Any:
    """The state of the members ``keep`` ([K] indices, or a [P] bool mask, on the state's device).

    Indexes every tensor of the state (a tree of tuples, lists and dicts; each tensor is [P, ...]:
    moments and per-member hyperparameters alike); counters and other leaves are shared and kept.
    """
    if isinstance(state, torch.Tensor):
        return state[keep]
    if isinstance(state, dict):
        return {k: select_state(v, keep) for k, v in state.items()}
    if isinstance(state, (tuple, list)):
        return type(state)(select_state(v, keep) for v in state)
    return state


def _check_range(name: str, value: float, low: float, high: float = math.inf) -> None:
    """A shared hyperparameter in [low, high), or ValueError saying what arrived."""
    if not low <= value < high:
        expected = f"in [{low}, {high})" if high < math.inf else f">= {low}"
        raise ValueError(f"{name}: expected a value {expected}, got {value!r}")


def _check_hyperparameter(name: str, value: Hyperparameter) -> None:
    """A per-member hyperparameter is a float or a tensor; floats are checked here, tensors at init."""
    if isinstance(value, torch.Tensor):
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a float or a tensor of shape [P], got {type(value).__name__}")
    _check_range(name, float(value), 0.0)


def _member_values(name: str, value: Hyperparameter, params: Params) -> torch.Tensor:
    """``value`` as a [P] tensor on the parameters' device and dtype (a float is repeated P times)."""
    like = next(iter(params.values()))
    p = like.shape[0]
    values = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if values.dim() == 0:
        values = values.expand(p).clone()
    elif values.shape != (p,):
        raise ValueError(f"{name}: expected a float or a tensor of shape [{p}] (one value per member), "
                         f"got shape {list(values.shape)}")
    if bool((values < 0).any()):
        raise ValueError(f"{name}: expected non-negative values, got {values.tolist()}")
    return values


def _has_decay(weight_decay: Hyperparameter | None) -> bool:
    """Whether a weight-decay piece is needed: some member's λ is non-zero."""
    if weight_decay is None:
        return False
    if isinstance(weight_decay, torch.Tensor):
        return bool(weight_decay.ne(0).any())
    return float(weight_decay) != 0.0


def _with_hyperparameters(hyperparameters: dict[str, Hyperparameter],
                          fn: Callable[[Params, dict, Params, int], Params]) -> Transform:
    """A transform whose state is its per-member hyperparameters (name → [P]); ``fn(g, state, p, step)``."""
    for name, value in hyperparameters.items():
        _check_hyperparameter(name, value)

    def init(params: Params) -> dict:
        return {name: _member_values(name, value, params) for name, value in hyperparameters.items()}

    def update(g: Params, state: dict, p: Params, step: int) -> tuple[Params, dict]:
        return fn(g, state, p, step), state

    return Transform(init, update)


# --- pieces ------------------------------------------------------------------------------------


def add_decayed_weights(weight_decay: Hyperparameter) -> Transform:
    """Coupled L2 regularization: g + λ·w (``torch.optim``'s ``weight_decay``). λ: float or [P]."""
    return _with_hyperparameters(
        {"weight_decay": weight_decay},
        lambda g, s, p, step: {k: g[k] + per_member(s["weight_decay"], g[k]) * p[k] for k in g})


def trace(momentum: float, nesterov: bool = False) -> Transform:
    """Heavy-ball momentum buffer b ← μ·b + g (the first step sets b = g), as torch.optim.SGD.

    Nesterov returns g + μ·b. The buffer is updated in place (it belongs to the state); the
    updates it returns alias it, so later transforms must not modify their input in place.
    """
    _check_range("momentum", momentum, 0.0, 1.0)

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
    _check_range("b1", b1, 0.0, 1.0)
    _check_range("b2", b2, 0.0, 1.0)
    _check_range("eps", eps, 0.0)

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


def scale_by_adagrad(eps: float = 1e-10, initial_accumulator_value: float = 0.0) -> Transform:
    """AdaGrad's direction g / (√Σg² + ε), the sum starting at ``initial_accumulator_value`` (torch.optim.Adagrad)."""
    _check_range("eps", eps, 0.0)
    _check_range("initial_accumulator_value", initial_accumulator_value, 0.0)

    def init(params: Params) -> dict:
        return {"sum": {k: torch.full_like(v, initial_accumulator_value) for k, v in params.items()}}

    def update(g: Params, state: dict, p: Params, step: int) -> tuple[Params, dict]:
        total = {k: state["sum"][k].addcmul_(g[k], g[k], value=1) for k in g}
        return {k: g[k] / total[k].sqrt().add_(eps) for k in g}, {"sum": total}

    return Transform(init, update)


def scale_by_rms(alpha: float = 0.99, eps: float = 1e-8, centered: bool = False) -> Transform:
    """RMSprop's direction g / (√(s − c·ḡ²) + ε), s ← α·s + (1 − α)·g² (and ḡ likewise when centered).

    As torch.optim.RMSprop: both averages start at zero, with no bias correction.
    """
    _check_range("alpha", alpha, 0.0, 1.0)
    _check_range("eps", eps, 0.0)

    def init(params: Params) -> dict:
        zeros = lambda: {k: torch.zeros_like(v) for k, v in params.items()}  # noqa: E731
        return {"square_avg": zeros(), "grad_avg": zeros() if centered else None}

    def update(g: Params, state: dict, p: Params, step: int) -> tuple[Params, dict]:
        sq = {k: state["square_avg"][k].mul_(alpha).addcmul_(g[k], g[k], value=1 - alpha) for k in g}
        if centered:
            mean = {k: state["grad_avg"][k].lerp_(g[k], 1 - alpha) for k in g}
            denom = {k: sq[k].addcmul(mean[k], mean[k], value=-1).sqrt_().add_(eps) for k in g}
        else:
            mean = None
            denom = {k: sq[k].sqrt().add_(eps) for k in g}
        return {k: g[k] / denom[k] for k in g}, {"square_avg": sq, "grad_avg": mean}

    return Transform(init, update)


def scale_by_lr(lr: Hyperparameter, schedule: Schedule | None = None) -> Transform:
    """Multiply by −η·schedule(step); η: float or [P] per-member learning rates (kept in the state)."""
    schedule = schedule or constant_schedule()
    return _with_hyperparameters(
        {"lr": lr}, lambda g, s, p, step: {k: g[k] * per_member(-s["lr"] * schedule(step), g[k]) for k in g})


def add_decoupled_decay(lr: Hyperparameter, weight_decay: Hyperparameter, schedule: Schedule | None = None) -> Transform:
    """Decoupled weight decay: an extra update −η·λ·schedule(step)·w (AdamW; Loshchilov & Hutter 2019).

    Goes after :func:`scale_by_lr`; η and λ (float or [P]) are kept in the state.
    """
    schedule = schedule or constant_schedule()

    def fn(u: Params, s: dict, p: Params, step: int) -> Params:
        rate = -s["lr"] * s["weight_decay"] * schedule(step)
        return {k: u[k] + per_member(rate, p[k]) * p[k] for k in u}

    return _with_hyperparameters({"lr": lr, "weight_decay": weight_decay}, fn)


# --- schedules ---------------------------------------------------------------------------------


def constant_schedule() -> Schedule:
    """Learning-rate multiplier 1 at every step."""
    return lambda step: 1.0


def cosine_decay_schedule(total_steps: int) -> Schedule:
    """Multiplier ½(1 + cos(π·step/total_steps)): 1 at step 0, 0 at ``total_steps``."""
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * step / total_steps))


def linear_schedule(total_steps: int) -> Schedule:
    """Multiplier 1 − step/total_steps: 1 at step 0, 0 at ``total_steps``."""
    return lambda step: 1.0 - step / total_steps


def schedule_fn(name: str, total_steps: int) -> Schedule:
    """Learning-rate multiplier at a 0-based step: constant, cosine to 0, or linear to 0."""
    if name == "constant":
        return constant_schedule()
    if name == "cosine":
        return cosine_decay_schedule(total_steps)
    if name == "linear":
        return linear_schedule(total_steps)
    raise ValueError(f"train.schedule: expected constant, cosine or linear, got {name!r}")


# --- aliases -----------------------------------------------------------------------------------


def _descend(direction: list[Transform], lr: Hyperparameter, weight_decay: Hyperparameter | None,
             decoupled_weight_decay: bool, schedule: Schedule | None) -> Transform:
    """[coupled L2] → direction → −η·schedule → [decoupled decay]: the shape of every alias.

    The decay piece is left out when every λ is zero (so a chain without decay does no extra
    arithmetic); a state therefore belongs to the chain it was initialized by.
    """
    decay = _has_decay(weight_decay)
    pieces = [add_decayed_weights(weight_decay)] if decay and not decoupled_weight_decay else []
    pieces += direction
    pieces.append(scale_by_lr(lr, schedule))
    if decay and decoupled_weight_decay:
        pieces.append(add_decoupled_decay(lr, weight_decay, schedule))
    return chain(*pieces)


def sgd(lr: Hyperparameter, momentum: float = 0.0, nesterov: bool = False, *,
        weight_decay: Hyperparameter = 0.0, decoupled_weight_decay: bool = False,
        schedule: Schedule | None = None) -> Transform:
    """Stochastic gradient descent, as ``torch.optim.SGD`` (dampening 0).

    Args:
        lr: learning rate η, a float or one per member [P].
        momentum: heavy-ball coefficient μ (0: none). nesterov: Nesterov's variant.
        weight_decay: λ, a float or [P]; coupled L2 (g + λw, torch's ``weight_decay``), or, with
            ``decoupled_weight_decay``, the SGDW step w ← w − ηλw − η·d.
        schedule: multiplier of η at each 0-based step (default constant).
    """
    direction = [trace(momentum, nesterov)] if momentum != 0.0 else []
    return _descend(direction, lr, weight_decay, decoupled_weight_decay, schedule)


def momentum(lr: Hyperparameter, momentum: float = 0.9, *, weight_decay: Hyperparameter = 0.0,
             decoupled_weight_decay: bool = False, schedule: Schedule | None = None) -> Transform:
    """Heavy-ball momentum SGD (``torch.optim.SGD(momentum=μ)``); arguments as :func:`sgd`."""
    return sgd(lr, momentum, False, weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay,
               schedule=schedule)


def nesterov(lr: Hyperparameter, momentum: float = 0.9, *, weight_decay: Hyperparameter = 0.0,
             decoupled_weight_decay: bool = False, schedule: Schedule | None = None) -> Transform:
    """Nesterov momentum SGD (``torch.optim.SGD(momentum=μ, nesterov=True)``); arguments as :func:`sgd`."""
    return sgd(lr, momentum, True, weight_decay=weight_decay, decoupled_weight_decay=decoupled_weight_decay,
               schedule=schedule)


def adam(lr: Hyperparameter, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *,
         weight_decay: Hyperparameter = 0.0, decoupled_weight_decay: bool = False,
         schedule: Schedule | None = None) -> Transform:
    """Adam, as ``torch.optim.Adam`` (``weight_decay`` coupled, as torch's, unless decoupled: AdamW).

    Args:
        lr: float or [P]. b1, b2: moment decay rates. eps: added to √v̂.
        weight_decay, decoupled_weight_decay, schedule: as :func:`sgd`.
    """
    return _descend([scale_by_adam(b1, b2, eps)], lr, weight_decay, decoupled_weight_decay, schedule)


def adamw(lr: Hyperparameter, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *,
          weight_decay: Hyperparameter = 1e-2, schedule: Schedule | None = None) -> Transform:
    """AdamW, as ``torch.optim.AdamW``: Adam with decoupled weight decay (default λ = 0.01, torch's)."""
    return adam(lr, b1, b2, eps, weight_decay=weight_decay, decoupled_weight_decay=True, schedule=schedule)


def adagrad(lr: Hyperparameter, eps: float = 1e-10, initial_accumulator_value: float = 0.0, *,
            weight_decay: Hyperparameter = 0.0, decoupled_weight_decay: bool = False,
            schedule: Schedule | None = None) -> Transform:
    """AdaGrad, as ``torch.optim.Adagrad`` (its ``lr_decay`` d is the schedule ``lambda k: 1 / (1 + k·d)``).

    Args:
        lr: float or [P]. eps: added to √Σg². initial_accumulator_value: the sum's start.
        weight_decay, decoupled_weight_decay, schedule: as :func:`sgd`.
    """
    return _descend([scale_by_adagrad(eps, initial_accumulator_value)], lr, weight_decay,
                    decoupled_weight_decay, schedule)


def rmsprop(lr: Hyperparameter, alpha: float = 0.99, eps: float = 1e-8, momentum: float = 0.0,
            centered: bool = False, *, weight_decay: Hyperparameter = 0.0, decoupled_weight_decay: bool = False,
            schedule: Schedule | None = None) -> Transform:
    """RMSprop, as ``torch.optim.RMSprop``: momentum, if any, accumulates the scaled direction.

    Args:
        lr: float or [P]. alpha: decay of the squared-gradient average. eps: added to its root.
        momentum: μ of a buffer b ← μ·b + g/(√s + ε). centered: subtract the squared mean gradient.
        weight_decay, decoupled_weight_decay, schedule: as :func:`sgd`.
    """
    direction = [scale_by_rms(alpha, eps, centered)] + ([trace(momentum)] if momentum != 0.0 else [])
    return _descend(direction, lr, weight_decay, decoupled_weight_decay, schedule)


ALIASES: dict[str, Callable[..., Transform]] = {
    "sgd": sgd, "momentum": momentum, "nesterov": nesterov, "adam": adam, "adamw": adamw,
    "adagrad": adagrad, "rmsprop": rmsprop,
}
"""Every named optimizer; each takes ``lr`` first and ``weight_decay``/``schedule`` by keyword."""


def make_optimizer(config: TrainConfig, lr: torch.Tensor, weight_decay: torch.Tensor) -> Transform:
    """The alias a :class:`TrainConfig` names, with per-member ``lr`` and ``weight_decay`` [P].

    ``gd`` and ``sgd`` are :func:`sgd` (they differ in the batch, not the update); ``momentum``,
    ``nesterov``, ``adam``, ``adagrad`` and ``rmsprop`` are their aliases with ``config.momentum`` /
    ``betas`` / ``eps`` (RMSprop with α = 0.99 and no momentum);
    ``weight_decay_mode="decoupled"`` makes Adam AdamW and SGD SGDW. The hyperparameters live in
    the state, so members leaving need :func:`select_state`, not a new optimizer.
    """
    common = dict(weight_decay=weight_decay, decoupled_weight_decay=config.weight_decay_mode == "decoupled",
                  schedule=schedule_fn(config.schedule, config.max_steps))
    if config.optimizer == "adam":
        return adam(lr, config.betas[0], config.betas[1], config.eps, **common)
    if config.optimizer == "adagrad":
        return adagrad(lr, config.eps, **common)
    if config.optimizer == "rmsprop":  # torch's default smoothing α = 0.99, no momentum
        return rmsprop(lr, eps=config.eps, **common)
    if config.optimizer in ("momentum", "nesterov"):
        return sgd(lr, config.momentum, config.optimizer == "nesterov", **common)
    return sgd(lr, **common)


def apply_updates(params: Params, updates: Params, active: torch.Tensor) -> Params:
    """w ← w + u for active members ([P] bool), in place (and returned); frozen members keep their
    weights exactly (their updates may be NaN: they are masked, not multiplied by zero).

    Reads ``active`` on the host only where that is free (a CPU tensor), to skip the mask when every
    member is active; on an accelerator the step never waits for the device.
    """
    if active.device.type == "cpu" and bool(active.all()):
        return {k: params[k].add_(updates[k]) for k in params}
    return {k: params[k].add_(torch.where(per_member(active, params[k]), updates[k], 0.0)) for k in params}
