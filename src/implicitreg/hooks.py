"""The training loop's hooks (engine code: measures know nothing of the loop).

- :class:`LoopContext`: what a hook may read; :class:`Hook`: a measurement taken every ``every`` steps;
- :func:`evaluate_population`: the evaluation every run gets (loss, accuracy, gap, ℓ2 norm,
  distance from initialization);
- :class:`MeasureHook` / :func:`tracking_hooks`: registered measures tracked along training,
  ``train.track=[...]`` at ``train.track_every`` steps, Hessian-based ones at
  ``train.track_expensive_every``.

Importing this module tells :mod:`implicitreg.config` which names ``train.track`` accepts (the
measure registry), since config sits below the measures and may not import them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from implicitreg.config import ConfigError, TrainConfig, known_names
from implicitreg.data import DeviceData
from implicitreg.kernels import loss_per_sample
from implicitreg.measures.core import REGISTRY, MeasureInfo, Stacked, stacked
from implicitreg.measures.size import params_distance, params_l2
from implicitreg.measures.tracking import compute, loss_fn_for
from implicitreg.population import Population

Model = Population | torch.nn.Module  # a population, or one plain module (the sequential engine: P = 1)


@dataclass
class LoopContext:
    """What hooks may read: the data, each member's labels [P, n], initial parameters (name →
    [P, ...], the module's layout), the step."""

    data: DeviceData
    labels: torch.Tensor
    init_params: dict[str, torch.Tensor]
    step: int = 0


class Hook(Protocol):
    """A measurement taken every ``every`` steps: returns named per-member values, each [P].

    Called on a population, or on the sequential engine's plain module (P = 1).
    """

    name: str
    every: int

    def __call__(self, model: Model, context: LoopContext) -> dict[str, torch.Tensor]: ...


def accuracy_and_loss(outputs: torch.Tensor, targets: torch.Tensor, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss and accuracy per member from outputs [P, N, C] and targets [N] or [P, N].

    For regression (``loss="mse"``) the accuracy is NaN.
    """
    targets = targets.expand(outputs.shape[0], -1) if targets.dim() == 1 else targets
    mean_loss = loss_per_sample(outputs, targets, loss).mean(1)
    if loss != "cross_entropy":
        return mean_loss, torch.full_like(mean_loss, float("nan"))
    return mean_loss, (outputs.argmax(-1) == targets).to(outputs.dtype).mean(1)


@torch.no_grad()
def evaluate_population(population: Population, context: LoopContext) -> dict[str, torch.Tensor]:
    """Full-data evaluation of every member (no dropout): dict of [P] tensors.

    ``train_*`` use each member's own training labels (corrupted ones included), ``test_*`` the
    clean test labels. ``gap`` is train minus test accuracy (train minus test loss for regression,
    sign flipped so that larger is a bigger gap).
    """
    loss = population.kernel.loss
    data = context.data
    train_loss, train_acc = accuracy_and_loss(population.forward(data.x_train), context.labels, loss)
    test_loss, test_acc = accuracy_and_loss(population.forward(data.x_test), data.y_test, loss)
    params = population.module_params()
    gap = train_acc - test_acc if loss == "cross_entropy" else test_loss - train_loss
    return {
        "train_loss": train_loss,
        "train_acc": train_acc,
        "test_loss": test_loss,
        "test_acc": test_acc,
        "gap": gap,
        "l2_norm": params_l2(params),
        "dist_init": params_distance(params, context.init_params),
    }


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

    def __call__(self, model: Model, context: LoopContext) -> dict[str, torch.Tensor]:
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


def tracking_hooks(config: TrainConfig) -> tuple[MeasureHook, ...]:
    """One hook per tracked measure, at the cadence its cost calls for."""
    unknown = [name for name in config.track if name not in REGISTRY]
    if unknown:  # a config built without validation (model_construct)
        raise ConfigError(f"train.track: unknown measure(s) {unknown}; expected any of {sorted(REGISTRY)}")
    return tuple(MeasureHook(REGISTRY[name], config.track_expensive_every if REGISTRY[name].cost == "hvp"
                             else config.track_every) for name in config.track)


known_names("measure", REGISTRY)
