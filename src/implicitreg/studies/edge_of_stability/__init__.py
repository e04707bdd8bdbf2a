"""edge-of-stability: full-batch GD drives the sharpness up to 2/η and keeps it there.

Cohen, Kaur, Li, Kolter & Talwalkar (2021), "Gradient descent on neural networks typically occurs
at the edge of stability".

Claim checked: full-batch gradient descent with step size η on a small tanh MLP with the squared
loss sharpens progressively — the sharpness (top eigenvalue of the training-loss Hessian) rises —
until it reaches the stability threshold 2/η of a quadratic model, and then hovers there while the
loss keeps falling, non-monotonically over long stretches. Checks, from the tracked sharpness:

- for the two largest step sizes, sharpness·η/2 ∈ [0.9, 1.1] at every measurement after sharpening
  ("after sharpening": from the first measurement with sharpness ≥ 0.9·2/η on), and the training
  loss falls at least 100× from initialization to the last step;
- for the smallest step size, sharpness·η/2 < 1 at every measurement (GD stays stable).

The sharpness is measured every ``measure_every`` steps with the library's Lanczos
(:func:`implicitreg.measures.curvature.hessian_eigenvalues` on the model itself, float64); every
measurement records its convergence flag, relative residual and HVP count, and measurements that
did not converge are counted in the table and the checks' details.

Design: the network, the loss, the sharpness and the full-batch loop with a measurement every
``measure_every`` steps are shared solvers (:mod:`implicitreg.dynamics.network`); this package holds
the data (:mod:`.problem`), GD at each step size with its measurement (:func:`run_gd`), the table,
checks and notes (:mod:`.analysis`, which reads each run's η from its stored config) and the figure
(:mod:`.figures`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator

from implicitreg.config import Strict
from implicitreg.dynamics.descent import gd_update
from implicitreg.dynamics.network import build_mlp, lanczos_rows, sharpness, train_full_batch
from implicitreg.studies.base import Analysis, ProgressBar, Solved, SolvedRun
from implicitreg.studies.edge_of_stability import analysis
from implicitreg.studies.edge_of_stability.figures import sharpness_and_loss
from implicitreg.studies.edge_of_stability.problem import Problem, load_problem, teacher_data

__all__ = ["Config", "EdgeOfStability", "Problem", "STUDY", "run_gd", "run_label", "teacher_data"]

DIVERGED = 1e6  # a loss above this multiple of the initial loss counts as divergence: the run stops


class Config(Strict):
    """Configuration of ``edge-of-stability``; every field can be set with ``--set``."""

    data_file: str | None = Field(None, description="a user's regression data (.npz with X n×d, y n)")
    seed: int = Field(0, ge=0, description="seed of the generated data and of the network's initialization")
    n_points: int = Field(200, ge=2, description="points of the generated teacher data set")
    dim: int = Field(20, ge=1, description="input dimension of the generated data set")
    teacher_width: int = Field(16, ge=1, description="hidden width of the tanh teacher that makes the targets")
    hidden: list[int] = Field(default_factory=lambda: [32, 32], min_length=1,
                              description="hidden widths of the tanh student MLP")
    lrs: list[float] = Field(default_factory=lambda: [0.28, 0.25, 0.15], min_length=3,
                             description="step sizes: the two largest are checked at the edge of stability, "
                                         "the smallest for staying below it")
    steps: int = Field(3000, ge=1, description="full-batch GD steps per step size")
    measure_every: int = Field(20, ge=1, description="steps between sharpness measurements")
    lanczos_tol: float = Field(1e-3, gt=0.0, description="relative residual at which Lanczos stops")
    max_hvp: int = Field(100, ge=2, description="most Hessian-vector products per measurement")

    @model_validator(mode="after")
    def _step_sizes(self) -> Config:
        if any(lr <= 0 for lr in self.lrs) or len(set(self.lrs)) != len(self.lrs):
            raise ValueError(f"lrs must be distinct positive step sizes (two large, one small at least), got {self.lrs}")
        if any(w < 1 for w in self.hidden):
            raise ValueError(f"hidden widths must be positive, got {self.hidden}")
        return self


def run_gd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int, measure_every: int,
           tol: float, max_hvp: int, bar=lambda done: None) -> tuple[list[tuple[int, str, float]], int]:
    """Full-batch GD θ ← θ − η∇L(θ) on ``model`` in place; returns (metrics rows, last step).

    Rows: those of :func:`~implicitreg.dynamics.network.train_full_batch` (``loss``, ``loss_increases``,
    ``diverged``) and at every ``measure_every``-th step ``sharpness``, ``sharpness_x_lr_over_2`` and the
    Lanczos diagnostics (``lanczos_converged`` 1/0, ``lanczos_residual``, ``lanczos_hvp``). A loss that is
    not finite or exceeds 10⁶× the initial one stops the run there.
    """
    def measure(step: int, model: torch.nn.Module) -> list[tuple[str, float]]:
        eig = sharpness(model, x, y, tol=tol, max_hvp=max_hvp)
        top = float(eig.values[0])
        return [("sharpness", top), ("sharpness_x_lr_over_2", top * lr / 2), *lanczos_rows(eig)]

    result = train_full_batch(model, x, y, gd_update(lr), steps, measure_every=measure_every, measure=measure,
                              diverge=DIVERGED, progress=bar)
    return result.rows, result.step


def run_label(lr: float) -> str:
    return f"gd_lr_{lr:g}"


class EdgeOfStability:
    name = "edge-of-stability"
    claim = ("Full-batch GD on a tanh MLP with squared loss sharpens until the top Hessian eigenvalue reaches "
             "2/η, then hovers there while the loss keeps falling non-monotonically.")
    paper = "Cohen, Kaur, Li, Kolter & Talwalkar 2021"
    Config = Config
    minutes = (0.2, 1.2)  # quick, full: on 2 CPU cores, --threads 1

    def defaults(self, quick: bool) -> dict[str, Any]:
        # quick: the same three step sizes and checks, half the steps, sparser measurements
        return {"steps": 1500, "measure_every": 50} if quick else {}

    def plan(self, config: Config) -> list:
        return []

    def problem(self, config: Config) -> Problem:
        """The user's ``X`` [n, d], ``y`` [n] (``--data``) or the generated teacher data."""
        return load_problem(config)

    def solve(self, config: Config, problem: Problem, progress: ProgressBar) -> Solved:
        x, y = torch.as_tensor(problem.x, dtype=torch.float64), torch.as_tensor(problem.y, dtype=torch.float64)
        runs, arrays = [], {}
        for lr in analysis.planned(config):
            model = build_mlp(x.shape[1], config.hidden, y.shape[1], config.seed)
            bar = progress(f"GD η={lr:g}", config.steps)
            rows, last = run_gd(model, x, y, lr, config.steps, config.measure_every, config.lanczos_tol,
                                config.max_hvp, bar)
            label = run_label(lr)
            runs.append(SolvedRun(label, "gd", {"lr": lr, "two_over_lr": 2 / lr, "steps": config.steps,
                                                "hidden": config.hidden, "data": problem.source},
                                  rows, last, seed=config.seed, target_step=config.steps))
            arrays[label] = torch.nn.utils.parameters_to_vector(model.parameters()).detach().numpy()
        arrays["ref_stability_threshold"] = 2.0 / np.array(analysis.planned(config))  # 2/η per step size, largest η first
        return Solved(runs, arrays)

    def analyze(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame,
                solutions: dict[str, np.ndarray] | None = None) -> Analysis:
        return Analysis(analysis.table(config, runs, metrics), analysis.checks(config, runs, metrics),
                        analysis.notes(config))

    def figures(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame,
                solutions: dict[str, np.ndarray] | None, directory: Path) -> list[Path]:
        return [sharpness_and_loss(config, runs, metrics, directory / "sharpness_and_loss.png")]


STUDY = EdgeOfStability()
