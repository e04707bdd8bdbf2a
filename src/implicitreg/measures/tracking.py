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


@dataclass
class MeasureHook:
    """Calls one registered measure on the population; arguments follow its declared needs."""

    info: MeasureInfo
    every: int

    @property
    def name(self) -> str:
        return self.info.name

    def __call__(self, population: "Population", context: "LoopContext") -> dict[str, torch.Tensor]:
        args: list = [population]
        if "init" in self.info.needs:
            args.append(Stacked(population.template, context.init_params, single=False))
        if "loss" in self.info.needs:
            args.append(loss_fn_for(context.data.n_classes))
        if "data" in self.info.needs:
            labels = context.labels
            # members share labels unless some are corrupted; measures then see each member's own
            shared = bool((labels == labels[:1]).all())
            args.append((context.data.x_train, labels[0] if shared else labels))
        return {self.name: self.info.fn(*args).detach().reshape(-1)}


def tracking_hooks(config: "TrainConfig") -> tuple[MeasureHook, ...]:
    """One hook per tracked measure, at the cadence its cost calls for."""
    return tuple(MeasureHook(REGISTRY[name], config.track_expensive_every if REGISTRY[name].cost == "hvp"
                             else config.track_every) for name in config.track)
