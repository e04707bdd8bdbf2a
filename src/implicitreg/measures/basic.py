"""The measures every run tracks: train/test loss and accuracy, generalization gap, ℓ2 norm,
distance from initialization. Each returns one value per member, shape [P].
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from implicitreg.kernels import loss_per_sample
from implicitreg.measures.size import params_distance, params_l2

if TYPE_CHECKING:
    from implicitreg.population import Population
    from implicitreg.train import LoopContext


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
def evaluate_population(population: "Population", context: "LoopContext") -> dict[str, torch.Tensor]:
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
