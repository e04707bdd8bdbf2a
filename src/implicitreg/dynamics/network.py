"""Full-batch descent on a small float64 torch MLP, with a measurement at a cadence.

The pieces the sharpness studies share (edge-of-stability: Cohen, Kaur, Li, Kolter & Talwalkar 2021,
"Gradient descent on neural networks typically occurs at the edge of stability"):

- :func:`build_mlp`: a seeded float64 MLP with PyTorch's default uniform scale, its own generator;
- :func:`half_mse`: ½ · mean over points of ‖f(x) − y‖², Cohen et al.'s squared-loss convention;
- :func:`sharpness`: the top eigenvalue of that loss's Hessian by Lanczos, with :func:`lanczos_rows`
  for its convergence flag, residual and HVP count;
- :func:`train_full_batch`: :func:`~implicitreg.dynamics.descent.descend` on the model in place with
  any update rule (plain GD: :func:`~implicitreg.dynamics.descent.gd_update`; a stateful closure for
  momentum or Adam), recording the loss on a log grid and calling the caller's ``measure`` every
  ``measure_every`` steps — the sharpness, or any other quantity of the model at that step.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from implicitreg.dynamics.descent import Update, descend
from implicitreg.dynamics.grid import recording_steps
from implicitreg.measures.curvature import EigResult, hessian_eigenvalues

Row = tuple[int, str, float]
#: measure(step, model) → [(name, value), …], recorded at that step in the given order.
Measure = Callable[[int, torch.nn.Module], list[tuple[str, float]]]


def build_mlp(d: int, hidden: list[int], out: int, seed: int,
              activation: Callable[[], torch.nn.Module] = torch.nn.Tanh) -> torch.nn.Sequential:
    """A float64 MLP d → hidden… → out (``activation`` after every hidden layer; ``hidden=[]`` is linear),
    every weight and bias U(−1/√fan_in, 1/√fan_in) (PyTorch's default scale) drawn from its own generator
    seeded with ``seed``, so the global RNG is untouched and equal seeds give equal networks."""
    generator = torch.Generator().manual_seed(seed)
    layers: list[torch.nn.Module] = []
    sizes = [d, *hidden, out]
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        # skip_init: nn.Linear's own initialization would draw from the global generator
        linear = torch.nn.utils.skip_init(torch.nn.Linear, fan_in, fan_out, dtype=torch.float64)
        bound = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():
            linear.weight.copy_(torch.rand(fan_out, fan_in, generator=generator, dtype=torch.float64) * 2 * bound - bound)
            linear.bias.copy_(torch.rand(fan_out, generator=generator, dtype=torch.float64) * 2 * bound - bound)
        layers.append(linear)
        if i < len(hidden):
            layers.append(activation())
    return torch.nn.Sequential(*layers)


def half_mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """½ · mean over points of ‖f(x) − y‖² (outputs, targets [n, k]): Cohen et al.'s MSE, whose Hessian
    at an interpolating point is the Gauss–Newton matrix (1/n)·JᵀJ without a factor 2."""
    return 0.5 * ((outputs - targets) ** 2).sum(dim=1).mean()


def sharpness(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, tol: float, max_hvp: int,
              loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = half_mse) -> EigResult:
    """Top eigenvalue of the Hessian of the full-batch ``loss`` over all parameters, by Lanczos
    (:func:`~implicitreg.measures.curvature.hessian_eigenvalues`, k = 1): values, converged and
    residuals [1], n_hvp an int. A value that did not converge is a lower bound of the top eigenvalue."""
    return hessian_eigenvalues(model, loss, (x, y), k=1, method="lanczos", tol=tol, max_hvp=max_hvp)


def lanczos_rows(eig: EigResult) -> list[tuple[str, float]]:
    """How far a :func:`sharpness` estimate can be trusted, as measurement rows: ``lanczos_converged``
    (1/0), ``lanczos_residual`` (relative Ritz residual), ``lanczos_hvp`` (Hessian-vector products)."""
    return [("lanczos_converged", float(bool(eig.converged[0]))), ("lanczos_residual", float(eig.residuals[0])),
            ("lanczos_hvp", float(eig.n_hvp))]


@dataclass
class FullBatch:
    """The end of :func:`train_full_batch`: metrics ``rows`` (step, name, value), the last ``step``
    reached, and whether the loss ``diverged`` there."""

    rows: list[Row]
    step: int
    diverged: bool


def train_full_batch(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, update: Update, steps: int, *,
                     measure_every: int, measure: Measure,
                     loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = half_mse,
                     diverge: float = 1e6, log_points: int = 60,
                     progress: Callable[[int], None] = lambda step: None) -> FullBatch:
    """Full-batch descent on ``model``'s parameters in place for ``steps`` updates.

    Args:
        model: float64 module; x [n, d], y [n, k]: the full batch.
        update: ``update(step, params, grads, aux)`` in place (e.g. ``gd_update(lr)``).
        steps: most updates.
        measure_every: ``measure(step, model)`` runs at steps 0, measure_every, 2·measure_every, … and
            at the last step, before that step's update; ``progress(step)`` follows it.
        loss: ``loss(outputs, targets)`` → scalar (default :func:`half_mse`).
        diverge: stop at the first step whose loss is not finite or exceeds ``diverge`` × the initial one.
        log_points: size of the log grid (floored, with step 0 and ``steps``) on which ``loss`` is recorded
            besides every measurement.

    Returns:
        :class:`FullBatch`. Rows: ``loss`` on the grid and at every measurement, followed there by the
        measurement's rows; at the last step ``loss_increases`` (steps whose loss exceeded the previous
        step's: non-monotone descent) and ``diverged`` (1/0); a diverged run also has its last loss (inf
        if not finite).
    """
    rows: list[Row] = []
    grid = recording_steps(steps, log_points, floor=True)
    previous, increases = math.inf, 0

    def loss_and_grad(params: list[torch.Tensor]) -> tuple[float, tuple[torch.Tensor, ...]]:
        value = loss(model(x), y)
        return value.detach().item(), torch.autograd.grad(value, params)

    def observe(step: int, params: list[torch.Tensor], value: float, aux: None) -> None:
        nonlocal previous, increases
        increases += value > previous
        previous = value
        measured = step % measure_every == 0 or step == steps
        if measured or step in grid:
            rows.append((step, "loss", value))
        if measured:
            rows.extend((step, name, v) for name, v in measure(step, model))
            progress(step)

    result = descend(loss_and_grad, list(model.parameters()), steps, update, diverge=diverge, observe=observe,
                     snapshot=lambda params, aux: None)
    if result.diverged:
        rows.append((result.step, "loss", result.loss if math.isfinite(result.loss) else math.inf))
    rows += [(result.step, "loss_increases", float(increases)), (result.step, "diverged", float(result.diverged))]
    return FullBatch(rows, result.step, result.diverged)
