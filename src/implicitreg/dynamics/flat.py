"""Small models on one flat float64 parameter vector θ [p], their squared loss, and GD and SGD on it.

A loss here is a function θ [p] → 0-d tensor, the form that
:mod:`implicitreg.references.modified_flows` integrates; the ``igr`` study (Barrett & Dherin 2021;
Smith, Dherin, Barrett & De 2021) runs gradient descent and one epoch of random-reshuffling SGD on
such losses and compares them with those flows:

- :class:`Model`, :func:`two_param_model` (ŷ = a·b·x) and :func:`mlp_model` (one tanh hidden layer);
- :func:`squared_loss`: θ ↦ (1/2n)·Σ(ŷ_i − y_i)²;
- :func:`gd`: θ ← θ − h∇L for a number of steps (:func:`~implicitreg.dynamics.descent.descend`);
- :func:`partition` and :func:`sgd_epoch_mean`: one SGD epoch over m equal batches, averaged over
  all m! batch orders (the exact expectation over random reshuffling).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from implicitreg.dynamics.descent import descend, gd_update
from implicitreg.references.modified_flows import gradient

LossFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Model:
    """A model as a flat float64 parameter vector: ``predict(theta, x)`` → [n], and ``theta0`` [p]."""

    name: str
    predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    theta0: np.ndarray


def two_param_model(feature: int, init: Sequence[float]) -> Model:
    """ŷ = a·b·x[:, feature], θ = (a, b) — Barrett & Dherin's two-parameter example on several points."""
    return Model("two_param", lambda theta, x: theta[0] * theta[1] * x[:, feature], np.asarray(init, dtype=np.float64))


def mlp_model(d: int, width: int, seed: int) -> Model:
    """ŷ = tanh(x W + b)·v + c, θ = (W [d, width], b, v, c) flat: d·width + 2·width + 1 parameters.
    Init: W ~ N(0, 1/d), v ~ N(0, 1/width), biases 0 (numpy's generator seeded with ``seed + 1``)."""
    rng = np.random.default_rng(seed + 1)
    theta0 = np.concatenate([rng.normal(size=d * width) / math.sqrt(d), np.zeros(width),
                             rng.normal(size=width) / math.sqrt(width), np.zeros(1)])
    sizes = [d * width, width, width, 1]

    def predict(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        w, b, v, c = theta.split(sizes)
        return torch.tanh(x @ w.view(d, width) + b) @ v + c

    return Model("mlp", predict, theta0)


def squared_loss(model: Model, x: torch.Tensor, y: torch.Tensor) -> LossFn:
    """θ ↦ L(θ) = (1/2n)·Σ_i (ŷ_i − y_i)² on (x [n, d], y [n])."""
    return lambda theta: 0.5 * ((model.predict(theta, x) - y) ** 2).mean()


def gd(loss: LossFn, theta0: np.ndarray, h: float, steps: int,
       record: set[int] | None = None) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """GD θ_{k+1} = θ_k − h∇L(θ_k) for ``steps`` steps: (θ_steps [p], {k: θ_k for k in record})."""

    def loss_and_grad(params: list[torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
        theta = params[0].detach().requires_grad_(True)  # as modified_flows.gradient does
        value = loss(theta)
        return value.item(), list(torch.autograd.grad(value, theta))

    result = descend(loss_and_grad, [torch.as_tensor(theta0, dtype=torch.float64).clone()], steps, gd_update(h),
                     record=record or set(), snapshot=lambda params, aux: params[0].numpy().copy())
    return result.params[0].numpy().copy(), {k: theta for k, theta in result.trace if record and k in record}


def partition(n: int, m: int, seed: int) -> list[np.ndarray]:
    """m disjoint equal batches of indices (a permutation from numpy's generator seeded with ``seed + 2``,
    split in m): the full loss is the mean of the batch losses."""
    perm = np.random.default_rng(seed + 2).permutation(n)
    return [np.sort(perm[k::m]) for k in range(m)]


def sgd_epoch_mean(batch_losses: Sequence[LossFn], theta0: np.ndarray, h: float) -> tuple[np.ndarray, float, int]:
    """One epoch of SGD (one step θ ← θ − h∇L_k per batch) for every order of the batches: (mean end
    point [p], mean distance of an order's end point from the mean, number of orders)."""
    ends = []
    for order in itertools.permutations(range(len(batch_losses))):
        theta = torch.as_tensor(theta0, dtype=torch.float64).clone()
        for k in order:
            theta = theta - h * gradient(batch_losses[k], theta)
        ends.append(theta.numpy())
    ends_ = np.stack(ends)
    mean = ends_.mean(axis=0)
    return mean, float(np.linalg.norm(ends_ - mean, axis=1).mean()), len(ends)
