"""Registered measures as training-loop hooks: ``train.track=[...]`` at ``train.track_every``
steps, Hessian-based ones at ``train.track_expensive_every``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from implicitreg.measures.core import REGISTRY, MeasureInfo, Stacked

if TYPE_CHECKING:
    from implicitreg.config import TrainConfig
    from implicitreg.population import Population
    from implicitreg.train import LoopContext


def loss_fn_for(n_classes: int):
    """The mean training loss the measures differentiate: cross-entropy, or MSE for regression."""
    if n_classes:
        return F.cross_entropy
    return lambda out, y: F.mse_loss(out.squeeze(-1), y)


def compute(names: list[str], model, *, init=None, data=None, loss_fn=None) -> dict[str, torch.Tensor]:
    """Evaluate registered measures by name, passing each what its metadata says it needs.

    Args:
        model: an ``nn.Module`` or a population. init: the initial model (for "init" measures).
        data: ``(x, y)`` training data. loss_fn: ``loss_fn(outputs, y)`` → mean loss; by default
            cross-entropy for integer labels, mean squared error otherwise.
    Returns:
        name → 0-d tensor (module) or [P] (population).
    """
    if loss_fn is None and data is not None:
        loss_fn = loss_fn_for(0 if torch.is_floating_point(torch.as_tensor(data[1])) else 1)
    given = {"init": init, "data": data, "loss": loss_fn}
    values = {}
    for name in names:
        if name not in REGISTRY:
            raise ValueError(f"unknown measure {name!r}; expected any of {sorted(REGISTRY)}")
        info = REGISTRY[name]
        missing = [need for need in info.needs if need in given and given[need] is None]
        if missing:
            raise ValueError(f"measure {name!r} needs {', '.join(missing)}")
        args = [model] + [given[need] for need in ("init", "loss", "data") if need in info.needs]
        values[name] = info.fn(*args)
    return values


@dataclass
class MeasureHook:
    """Calls one registered measure on the population at its cadence."""

    info: MeasureInfo
    every: int

    @property
    def name(self) -> str:
        return self.info.name

    def __call__(self, population: "Population", context: "LoopContext") -> dict[str, torch.Tensor]:
        labels = context.labels
        # members share labels unless some are corrupted; measures then see each member's own
        shared = bool((labels == labels[:1]).all())
        values = compute([self.name], population,
                         init=Stacked(population.template, context.init_params, single=False),
                         data=(context.data.x_train, labels[0] if shared else labels),
                         loss_fn=loss_fn_for(context.data.n_classes))
        return {self.name: values[self.name].detach().reshape(-1)}


def tracking_hooks(config: "TrainConfig") -> tuple[MeasureHook, ...]:
    """One hook per tracked measure, at the cadence its cost calls for."""
    return tuple(MeasureHook(REGISTRY[name], config.track_expensive_every if REGISTRY[name].cost == "hvp"
                             else config.track_every) for name in config.track)
