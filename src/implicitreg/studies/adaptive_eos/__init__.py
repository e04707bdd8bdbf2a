"""adaptive-eos: full-batch heavy-ball momentum and Adam train at their own edges of stability.

Cohen, Ghorbani, Krishnan, Agarwal, Medapati, Badura, Suo, Cardoze, Nado, Dahl & Gilmer (2022),
"Adaptive gradient methods at the edge of stability"; Cohen, Kaur, Li, Kolter & Talwalkar (2021),
"Gradient descent on neural networks typically occurs at the edge of stability" (momentum).

Claim checked: on a small tanh MLP with the squared loss,

- full-batch heavy-ball momentum (buf ← β·buf + ∇L, θ ← θ − η·buf; ``torch.optim.SGD`` with momentum β,
  dampening 0) drives the sharpness λ_max(H) up to the stability threshold (2 + 2β)/η of that
  recurrence on a quadratic, and it then hovers there;
- full-batch Adam drives the preconditioned sharpness λ_max(P⁻¹H) up to (2 + 2β₁)/((1 − β₁)η)
  (38/η for β₁ = 0.9), and it then hovers there. P is Adam's diagonal preconditioner as Cohen et al.
  (2022, §2) write it, both bias corrections and ε folded in: with t the number of the step about to be
  taken from θ (its gradient already in v), P = (1 − β₁ᵗ)·diag(√(v/(1 − β₂ᵗ)) + ε), so that Adam's
  step is θ ← θ − η·P⁻¹m (:class:`~implicitreg.dynamics.adaptive.Adam`).

Checks, for every step size η of each optimizer (at least two each), on the ratio r = measured /
threshold recorded every ``measure_every`` steps:

- the **median** of r over the after-sharpening window lies in [0.9, 1.1]. The window runs from the
  first upward crossing of 0.9 — the first measurement with r ≥ 0.9 that follows one with r < 0.9 (a
  trace that never was below 0.9 is judged whole) — to the last step. "Upward crossing", not "first
  measurement ≥ 0.9", because Adam's r starts far above 1: at step 0 its bias-corrected P is 1 − β₁ of
  its later size and its momentum has not built up, so the threshold does not apply there; the ratio
  falls below 0.9 within tens of steps and then rises as P shrinks with the gradients. The median, not
  every measurement, because at the edge the ratio oscillates: each crossing of the threshold is
  followed by a spike of the loss and a drop of r well below it (as in both papers' figures), so
  "hovers within [0.9, 1.1]" is read as where r settles. A window of fewer than 5 measurements (sharpened
  at the very end) is inconclusive, and so is a window with a NaN measurement or one whose Lanczos did not
  converge (a lower bound), unless the median of what was measured already lies above the band;
- the training loss falls at least 100× from initialization to the last step (training makes progress
  at the edge; a diverged run fails here).

The table also reports the fraction of the window inside [0.9, 1.1], its range, and for Adam the
(unpreconditioned) sharpness at the start of the window, its maximum after and its end value (in the
notes too): Cohen et al. (2022) find that it keeps rising at the adaptive edge while the preconditioner
compensates. An observation, not a check; at this size it does not hold throughout: in the full run it
rises for η = 0.003 (3.5 → 4.3, flat over the last third) but for η = 0.01 it peaks at 3.8 and falls
back to 3.5.

Settings: the edge-of-stability study's tanh teacher and student (dim 20, teacher width 16, student
hidden [32, 32], float64), with 1000 points instead of 200. On 200 points heavy-ball momentum (its
effective step η/(1 − β) is ten times η) interpolates first: its sharpness stops at 0.60 and 0.72 of
(2 + 2β)/η for η = 0.53 and 0.8, and η = 0.95 and 1.1 diverge within 60 steps, so there is no edge to
observe; on 1000 points fitting is slow and the sharpness keeps rising. β = 0.9 and Adam's defaults
(β₁ = 0.9, β₂ = 0.999, ε = 1e-8), as in both papers. Heavy-ball step sizes 0.8 and 0.7 (thresholds 4.75
and 5.43): at this size heavy-ball's edge is reached within a few thousand steps only in a narrow range
of η — at 0.6 the sharpness reaches 0.9 of its threshold only near step 2400, at 0.9 the run diverges
within 20 steps. Adam reached its edge at each of 0.003, 0.01 and 0.03; 0.01 and 0.003 are checked.

Design: the network, loss, sharpness and full-batch loop are :mod:`implicitreg.dynamics.network`'s; the
update rules, thresholds and the preconditioned sharpness :mod:`implicitreg.dynamics.adaptive`'s; the data
:mod:`implicitreg.studies.edge_of_stability.problem`'s; the after-sharpening band and loss checks
:mod:`implicitreg.studies.edge_of_stability.analysis`'s (with the median and the upward crossing). This
package holds the runs and their measurements (:func:`run_momentum`, :func:`run_adam`), the table,
checks and notes (:mod:`.analysis`, which reads each run's optimizer, η and β from its stored config)
and the figures (:mod:`.figures`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator

from implicitreg.config import Strict
from implicitreg.dynamics.adaptive import Adam, HeavyBall, preconditioned_sharpness
from implicitreg.dynamics.network import Row, build_mlp, half_mse, lanczos_rows, sharpness, train_full_batch
from implicitreg.studies.adaptive_eos import analysis
from implicitreg.studies.adaptive_eos.figures import edges, loss_and_sharpness
from implicitreg.studies.base import Analysis, ProgressBar, Solved, SolvedRun
from implicitreg.studies.edge_of_stability.problem import Problem, load_problem

__all__ = ["AdaptiveEoS", "Config", "STUDY", "run_adam", "run_label", "run_momentum"]

DIVERGED = 1e6  # a loss above this multiple of the initial loss counts as divergence: the run stops


class Config(Strict):
    """Configuration of ``adaptive-eos``; every field can be set with ``--set``."""

    data_file: str | None = Field(None, description="a user's regression data (.npz with X n×d, y n)")
    seed: int = Field(0, ge=0, description="seed of the generated data and of the network's initialization")
    n_points: int = Field(1000, ge=2, description="points of the generated teacher data set")
    dim: int = Field(20, ge=1, description="input dimension of the generated data set")
    teacher_width: int = Field(16, ge=1, description="hidden width of the tanh teacher that makes the targets")
    hidden: list[int] = Field(default_factory=lambda: [32, 32], min_length=1,
                              description="hidden widths of the tanh student MLP")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="heavy-ball momentum β (threshold (2 + 2β)/η)")
    momentum_lrs: list[float] = Field(default_factory=lambda: [0.8, 0.7], min_length=2,
                                      description="heavy-ball step sizes, each checked at its edge")
    adam_lrs: list[float] = Field(default_factory=lambda: [0.01, 0.003], min_length=2,
                                  description="Adam step sizes, each checked at its edge")
    beta1: float = Field(0.9, ge=0.0, lt=1.0, description="Adam's β₁ (threshold (2 + 2β₁)/((1 − β₁)η))")
    beta2: float = Field(0.999, ge=0.0, lt=1.0, description="Adam's β₂")
    eps: float = Field(1e-8, gt=0.0, description="Adam's ε (inside P, so P stays positive)")
    steps: int = Field(6000, ge=1, description="full-batch steps per run")
    measure_every: int = Field(50, ge=1, description="steps between sharpness measurements")
    lanczos_tol: float = Field(1e-3, gt=0.0, description="relative residual at which Lanczos stops")
    max_hvp: int = Field(100, ge=2, description="most Hessian-vector products per Lanczos run")

    @model_validator(mode="after")
    def _step_sizes(self) -> Config:
        for field in ("momentum_lrs", "adam_lrs"):
            lrs = getattr(self, field)
            if any(not lr > 0 for lr in lrs) or len(set(lrs)) != len(lrs):
                raise ValueError(f"{field} must be distinct positive step sizes (at least two), got {lrs}")
        if any(w < 1 for w in self.hidden):
            raise ValueError(f"hidden widths must be positive, got {self.hidden}")
        return self


def _train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, update, steps: int, measure_every: int,
           measure, bar) -> tuple[list[Row], int]:
    result = train_full_batch(model, x, y, update, steps, measure_every=measure_every, measure=measure,
                              diverge=DIVERGED, progress=bar)
    return result.rows, result.step


def run_momentum(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, momentum: float, steps: int,
                 measure_every: int, tol: float, max_hvp: int, bar=lambda done: None) -> tuple[list[Row], int]:
    """Full-batch heavy-ball momentum on ``model`` in place; returns (metrics rows, last step).

    Rows: those of :func:`~implicitreg.dynamics.network.train_full_batch` (``loss``, ``loss_increases``,
    ``diverged``) and every ``measure_every`` steps ``sharpness`` (λ_max(H), Lanczos), ``over_threshold``
    (sharpness / ((2 + 2β)/η)) and Lanczos' ``lanczos_converged``, ``lanczos_residual``, ``lanczos_hvp``.
    """
    update = HeavyBall(lr, momentum)

    def measure(step: int, model: torch.nn.Module) -> list[tuple[str, float]]:
        eig = sharpness(model, x, y, tol=tol, max_hvp=max_hvp)
        top = float(eig.values[0])
        return [("sharpness", top), ("over_threshold", top / update.threshold), *lanczos_rows(eig)]

    return _train(model, x, y, update, steps, measure_every, measure, bar)


def run_adam(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, betas: tuple[float, float],
             eps: float, steps: int, measure_every: int, tol: float, max_hvp: int,
             bar=lambda done: None) -> tuple[list[Row], int]:
    """Full-batch Adam on ``model`` in place; returns (metrics rows, last step).

    Rows: those of :func:`~implicitreg.dynamics.network.train_full_batch` and every ``measure_every`` steps
    ``preconditioned_sharpness`` (λ_max(P⁻¹H) with the P of the step about to be taken,
    :meth:`~implicitreg.dynamics.adaptive.Adam.preconditioner`), ``over_threshold`` (it /
    ((2 + 2β₁)/((1 − β₁)η))) with its ``lanczos_converged``, ``lanczos_residual``, ``lanczos_hvp``, and the
    unpreconditioned ``sharpness`` with ``sharpness_converged``.
    """
    update = Adam(lr, betas, eps)

    def measure(step: int, model: torch.nn.Module) -> list[tuple[str, float]]:
        grads = torch.autograd.grad(half_mse(model(x), y), list(model.parameters()))
        eig = preconditioned_sharpness(model, x, y, update.preconditioner(grads), tol=tol, max_hvp=max_hvp)
        top = float(eig.values[0])
        raw = sharpness(model, x, y, tol=tol, max_hvp=max_hvp)
        return [("preconditioned_sharpness", top), ("over_threshold", top / update.threshold), *lanczos_rows(eig),
                ("sharpness", float(raw.values[0])), ("sharpness_converged", float(bool(raw.converged[0])))]

    return _train(model, x, y, update, steps, measure_every, measure, bar)


def run_label(optimizer: str, lr: float) -> str:
    return f"{optimizer}_lr_{lr:g}"


class AdaptiveEoS:
    name = "adaptive-eos"
    claim = ("Full-batch heavy-ball momentum keeps the sharpness at (2 + 2β)/η and full-batch Adam keeps the "
             "preconditioned sharpness λmax(P⁻¹H) at (2 + 2β₁)/((1 − β₁)η) = 38/η after a sharpening phase.")
    paper = "Cohen, Ghorbani, Krishnan et al. 2022; Cohen, Kaur, Li, Kolter & Talwalkar 2021"
    Config = Config
    minutes = (1.5, 4.0)  # quick, full: on 2 CPU cores shared with other jobs, --threads 1

    def defaults(self, quick: bool) -> dict[str, Any]:
        # quick: the same step sizes and checks over fewer steps, measured half as often (every run has
        # sharpened by step ~1200, leaving at least 13 measurements after it)
        return {"steps": 2500, "measure_every": 100} if quick else {}

    def plan(self, config: Config) -> list:
        return []

    def problem(self, config: Config) -> Problem:
        """The user's ``X`` [n, d], ``y`` [n] (``--data``) or the generated teacher data."""
        return load_problem(config)

    def solve(self, config: Config, problem: Problem, progress: ProgressBar) -> Solved:
        x, y = torch.as_tensor(problem.x, dtype=torch.float64), torch.as_tensor(problem.y, dtype=torch.float64)
        runs, arrays = [], {}
        for optimizer, lr in analysis.planned(config):
            model = build_mlp(x.shape[1], config.hidden, y.shape[1], config.seed)
            bar = progress(f"{optimizer} η={lr:g}", config.steps)
            common = (config.steps, config.measure_every, config.lanczos_tol, config.max_hvp, bar)
            if optimizer == "momentum":
                rows, last = run_momentum(model, x, y, lr, config.momentum, *common)
                settings = {"beta": config.momentum}
            else:
                rows, last = run_adam(model, x, y, lr, (config.beta1, config.beta2), config.eps, *common)
                settings = {"beta": config.beta1, "beta2": config.beta2, "eps": config.eps}
            label = run_label(optimizer, lr)
            runs.append(SolvedRun(label, optimizer, {"optimizer": optimizer, "lr": lr, **settings,
                                                     "threshold": analysis.threshold(optimizer, lr, settings["beta"]),
                                                     "steps": config.steps, "hidden": config.hidden,
                                                     "data": problem.source},
                                  rows, last, seed=config.seed, target_step=config.steps))
            arrays[label] = torch.nn.utils.parameters_to_vector(model.parameters()).detach().numpy()
        # the stability threshold of each run, in the order of analysis.planned
        arrays["ref_stability_threshold"] = np.array([analysis.threshold(o, lr, analysis.beta(config, o))
                                                      for o, lr in analysis.planned(config)])
        return Solved(runs, arrays)

    def analyze(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame,
                solutions: dict[str, np.ndarray] | None = None) -> Analysis:
        table = analysis.table(config, runs, metrics)
        return Analysis(table, analysis.checks(config, runs, metrics), analysis.notes(config, table))

    def figures(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame,
                solutions: dict[str, np.ndarray] | None, directory: Path) -> list[Path]:
        return [edges(config, runs, metrics, directory / "edges.png"),
                loss_and_sharpness(config, runs, metrics, directory / "loss_and_sharpness.png")]


STUDY = AdaptiveEoS()
