"""Registered measures as training-loop hooks: ``train.track=[...]`` at ``train.track_every``
steps, Hessian-based ones at ``train.track_expensive_every``."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from implicitreg.measures.core import REGISTRY, MeasureInfo, Stacked, stacked

if TYPE_CHECKING:
    from torch import nn

    from implicitreg.config import TrainConfig
    from implicitreg.population import Population
    from implicitreg.train import LoopContext


def loss_fn_for(n_classes: int):
    """The mean training loss the measures differentiate: cross-entropy, or MSE for regression."""
    if n_classes:
        return F.cross_entropy
    return lambda out, y: F.mse_loss(out.squeeze(-1), y)


def compute(names: list[str], model, *, init=None, data=None, loss_fn=None, input_shape=None,
            with_convergence: bool = False):
    """Evaluate registered measures by name, passing each what its metadata says it needs.

    Args:
        model: an ``nn.Module`` or a population. init: the initial model (for "init" measures).
        data: ``(x, y)`` training data. loss_fn: ``loss_fn(outputs, y)`` → mean loss; by default
            cross-entropy for integer labels, mean squared error otherwise.
        input_shape: per-sample input shape, passed to the measures that take one (convolutional
            models with no ``input_len``); by default x's, when ``data`` is given.
        with_convergence: also return, for every iterative measure (:attr:`MeasureInfo.iterative`:
            Lanczos, the σ search, Conv1d spectral norms), whether each member converged.
    Returns:
        name → 0-d tensor (module) or [P] (population); with ``with_convergence`` a pair
        ``(values, converged)``, converged: name → bool tensor of the same shape, for the
        iterative measures among ``names`` (they then do not warn: the flags are the report).
    """
    if loss_fn is None and data is not None:
        loss_fn = loss_fn_for(0 if torch.is_floating_point(torch.as_tensor(data[1])) else 1)
    if input_shape is None and data is not None:
        input_shape = tuple(torch.as_tensor(data[0]).shape[1:])
    given = {"init": init, "data": data, "loss": loss_fn}
    values, converged = {}, {}
    for name in names:
        if name not in REGISTRY:
            raise ValueError(f"unknown measure {name!r}; expected any of {sorted(REGISTRY)}")
        info = REGISTRY[name]
        missing = [need for need in info.needs if need in given and given[need] is None]
        if missing:
            raise ValueError(f"measure {name!r} needs {', '.join(missing)}")
        args = [model] + [given[need] for need in ("init", "loss", "data") if need in info.needs]
        kwargs = {"input_shape": input_shape} if "input_shape" in inspect.signature(info.fn).parameters else {}
        if with_convergence and info.iterative:
            estimate = info.fn(*args, with_convergence=True, **kwargs)
            values[name], converged[name] = estimate.value, estimate.converged
        else:
            values[name] = info.fn(*args, **kwargs)
    return (values, converged) if with_convergence else values


@dataclass
class MeasureHook:
    """Calls one registered measure on the model at its cadence.

    Returns ``{name: [P]}``, and for an iterative measure ``{name + ".converged": [P]}`` too
    (1.0 where the member's estimate converged, 0.0 where not), so that every stored value
    carries its convergence.
    """

    info: MeasureInfo
    every: int

    @property
    def name(self) -> str:
        return self.info.name

    def __call__(self, model: "Population | nn.Module", context: "LoopContext") -> dict[str, torch.Tensor]:
        """model: a population, or a plain module (P = 1: context's labels [1, N], init params [1, ...])."""
        labels = context.labels
        # members share labels unless some are corrupted; measures then see each member's own
        shared = bool((labels == labels[:1]).all())
        s = stacked(model)
        values, converged = compute([self.name], model, init=Stacked(s.template, context.init_params, single=s.single),
                                    data=(context.data.x_train, labels[0] if shared else labels),
                                    loss_fn=loss_fn_for(context.data.n_classes), with_convergence=True)
        out = {self.name: values[self.name].detach().reshape(-1)}
        if self.name in converged:
            out[f"{self.name}.converged"] = converged[self.name].reshape(-1).to(out[self.name].dtype)
        return out


def tracking_hooks(config: "TrainConfig") -> tuple[MeasureHook, ...]:
    """One hook per tracked measure, at the cadence its cost calls for."""
    return tuple(MeasureHook(REGISTRY[name], config.track_expensive_every if REGISTRY[name].cost == "hvp"
                             else config.track_every) for name in config.track)
