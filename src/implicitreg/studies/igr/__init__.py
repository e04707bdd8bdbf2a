"""igr: gradient descent follows the flow of L + (h/4)‖∇L‖² to second order, the flow of L only to first.

Barrett & Dherin (2021), "Implicit gradient regularization"; the SGD term from Smith, Dherin,
Barrett & De (2021), "On the origin of implicit regularization in stochastic gradient descent".

Claim checked: gradient descent with step h, run to a fixed time T = k·h, ends O(h²) away from the
flow of the modified loss L̃ = L + (h/4)‖∇L‖² (implicit gradient regularization) and O(h) away from
the plain gradient flow of L. On two models — a two-parameter model ŷ = a·b·x (x: one column of
the inputs) and a small tanh MLP — with float64 and accurately integrated flows (DOP853,
rtol = atol = 1e-12), the distance in parameter space at T is measured for h, h/2, h/4, h/8 …:
per halving of h it must shrink by a factor in [3.5, 4.5] to the modified flow and in [1.7, 2.3]
to the plain flow (every consecutive halving, both models).

SGD (the MLP, m equal batches, random reshuffling): one epoch of SGD averaged over all m! batch
orders is checked to end closer to the flow of L̃_SGD = L + (h/4)‖∇L‖² + (h/4m)·Σ_k‖∇L_k − ∇L‖²
than to the flow of L̃ without the last term, at every h (the expectation over orders is exact,
so the comparison has no sampling noise).

Pieces: the models, GD and the SGD epoch are :mod:`implicitreg.dynamics.flat`, the flows
:mod:`implicitreg.references.modified_flows`; ``problem`` (the data), ``analysis`` (table, checks,
notes) and ``figures`` are this study's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator

from implicitreg.config import Strict
from implicitreg.dynamics.flat import Model, gd, mlp_model, partition, sgd_epoch_mean, squared_loss, two_param_model
from implicitreg.dynamics.grid import recording_steps
from implicitreg.references.modified_flows import gradient_flow, igr_flow, sgd_flow
from implicitreg.studies.base import Analysis, ProgressBar, Solved, SolvedRun
from implicitreg.studies.igr import analysis, figures
from implicitreg.studies.igr.analysis import MODELS, h_label
from implicitreg.studies.igr.problem import Problem, generate, generated_data, load

__all__ = ["Config", "IGR", "MODELS", "Problem", "STUDY", "generated_data", "h_label"]


class Config(Strict):
    """Configuration of ``igr``; every field can be set with ``--set``."""

    data_file: str | None = Field(None, description="a user's regression data (.npz with X n×d, y n)")
    seed: int = Field(0, ge=0, description="seed of the generated data, the MLP's init and the batch partition")
    n_points: int = Field(12, ge=1, description="points of the generated data set")
    dim: int = Field(3, ge=1, description="input dimension of the generated data set")
    feature: int = Field(0, ge=0, description="column of X that is the two-parameter model's scalar input x")
    two_param_init: list[float] = Field(default_factory=lambda: [1.5, 0.3], min_length=2, max_length=2,
                                        description="(a, b) at the start of the two-parameter model")
    mlp_width: int = Field(6, ge=1, description="hidden width of the one-hidden-layer tanh MLP")
    h: float = Field(0.1, gt=0.0, description="the largest step size")
    steps: int = Field(20, ge=1, description="GD steps at the largest h; T = steps·h for every h")
    halvings: int = Field(3, ge=2, le=6, description="step sizes h, h/2, …, h/2^halvings")
    batches: int = Field(4, ge=2, le=6, description="SGD batches per epoch m (all m! orders are averaged)")
    tol: float = Field(1e-12, gt=0.0, le=1e-8, description="rtol = atol of the flows' integrator")

    @property
    def step_sizes(self) -> list[float]:
        return [self.h / 2**j for j in range(self.halvings + 1)]

    @property
    def end_time(self) -> float:
        return self.steps * self.h

    @model_validator(mode="after")
    def _sizes(self) -> Config:
        if self.data_file is None:
            if self.feature >= self.dim:
                raise ValueError(f"feature must be a column of the generated X (< dim = {self.dim}), got {self.feature}")
            if self.n_points % self.batches:
                raise ValueError(f"n_points must be a multiple of batches = {self.batches} (equal batches), "
                                 f"got {self.n_points}")
        return self


class IGR:
    name = "igr"
    claim = ("Gradient descent with step h stays O(h²) close to the gradient flow of L + (h/4)‖∇L‖² but only "
             "O(h) close to the flow of L.")
    paper = "Barrett & Dherin 2021; Smith, Dherin, Barrett & De 2021"
    Config = Config
    minutes = (0.1, 0.3)  # quick, full: on 2 CPU cores, --threads 1

    def defaults(self, quick: bool) -> dict[str, Any]:
        # quick: h, h/2, h/4 (two halvings, every one still checked) instead of down to h/8
        return {"halvings": 2} if quick else {}

    def plan(self, config: Config) -> list:
        return []

    def problem(self, config: Config) -> Problem:
        """The user's ``X`` [n, d], ``y`` [n] (``--data``) or the generated data."""
        if config.data_file is None:
            return generate(config.n_points, config.dim, config.seed)
        return load(config.data_file, config.feature, config.batches)

    def solve(self, config: Config, problem: Problem, progress: ProgressBar) -> Solved:
        x, y = torch.as_tensor(problem.x, dtype=torch.float64), torch.as_tensor(problem.y, dtype=torch.float64)
        models = [two_param_model(config.feature, config.two_param_init),
                  mlp_model(x.shape[1], config.mlp_width, config.seed)]
        runs: list[SolvedRun] = []
        arrays: dict[str, np.ndarray] = {}
        hs, end = config.step_sizes, config.end_time
        for model in models:
            loss = squared_loss(model, x, y)
            bar = progress(f"{model.name}: flows and GD", 2 * len(hs))
            grids = {h: recording_steps(round(end / h), 25, floor=True) for h in hs}
            times = sorted({k * h for h in hs for k in grids[h]})
            plain = gradient_flow(loss, model.theta0, end, times, config.tol, config.tol)
            plain_at = dict(zip(np.round(plain.t, 12), plain.theta))
            arrays[f"ref_{model.name}_flow"] = plain.end
            for i, h in enumerate(hs):
                steps = round(end / h)
                grid = sorted(grids[h])
                modified = igr_flow(loss, model.theta0, end, h, [k * h for k in grid], config.tol, config.tol)
                bar(2 * i + 1)
                final, seen = gd(loss, model.theta0, h, steps, set(grid))
                rows: list[tuple[int, str, float]] = []
                for k, theta_mod in zip(grid, modified.theta):
                    theta = seen[k]
                    rows += [(k, "loss", float(loss(torch.from_numpy(theta)))),
                             (k, "dist_plain", float(np.linalg.norm(theta - plain_at[round(k * h, 12)]))),
                             (k, "dist_modified", float(np.linalg.norm(theta - theta_mod)))]
                rows += [(steps, "flow_evals_plain", float(plain.n_evals)),
                         (steps, "flow_evals_modified", float(modified.n_evals))]
                label = f"{model.name}_gd_{h_label(h)}"
                runs.append(SolvedRun(f"{model.name}/gd_{h_label(h)}", f"{model.name}/gd",
                                      {"model": model.name, "h": h, "steps": steps, "T": end,
                                       "parameters": int(model.theta0.size), "data": problem.source},
                                      rows, steps, seed=config.seed, target_step=steps))
                arrays[label] = final
                arrays[f"ref_{model.name}_modified_{h_label(h)}"] = modified.end
                bar(2 * i + 2)
        runs_sgd, arrays_sgd = self._sgd(config, problem, models[1], x, y, progress)
        return Solved(runs + runs_sgd, {**arrays, **arrays_sgd})

    def _sgd(self, config: Config, problem: Problem, model: Model, x: torch.Tensor, y: torch.Tensor,
             progress: ProgressBar) -> tuple[list[SolvedRun], dict[str, np.ndarray]]:
        """One epoch of RR-SGD on the MLP, averaged over all batch orders, against the flows of L̃_SGD
        and L̃_IGR run for the epoch's time m·h."""
        batches = partition(x.shape[0], config.batches, config.seed)
        batch_losses = [squared_loss(model, x[idx], y[idx]) for idx in batches]
        loss = squared_loss(model, x, y)
        runs, arrays = [], {}
        bar = progress(f"{model.name}: SGD epoch vs modified flows", len(config.step_sizes))
        m = config.batches
        for i, h in enumerate(config.step_sizes):
            mean, spread, orders = sgd_epoch_mean(batch_losses, model.theta0, h)
            flow_sgd = sgd_flow(batch_losses, model.theta0, m * h, h, None, config.tol, config.tol)
            flow_igr = igr_flow(loss, model.theta0, m * h, h, None, config.tol, config.tol)
            rows = [(m, "dist_sgd_flow", float(np.linalg.norm(mean - flow_sgd.end))),
                    (m, "dist_igr_flow", float(np.linalg.norm(mean - flow_igr.end))),
                    (m, "order_spread", spread), (m, "orders", float(orders))]
            runs.append(SolvedRun(f"{model.name}/sgd_{h_label(h)}", f"{model.name}/sgd",
                                  {"model": model.name, "h": h, "batches": m, "orders": orders, "T": m * h,
                                   "batch_indices": [b.tolist() for b in batches], "data": problem.source},
                                  rows, m, seed=config.seed, target_step=m))
            arrays[f"{model.name}_sgd_mean_{h_label(h)}"] = mean
            arrays[f"ref_{model.name}_sgd_flow_{h_label(h)}"] = flow_sgd.end
            arrays[f"ref_{model.name}_igr_epoch_{h_label(h)}"] = flow_igr.end
            bar(i + 1)
        return runs, arrays

    def analyze(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame,
                solutions: dict[str, np.ndarray] | None = None) -> Analysis:
        table = analysis.table(config, solutions or {})
        return Analysis(table, analysis.checks(config, table), analysis.notes(config, table))

    def figures(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame,
                solutions: dict[str, np.ndarray] | None, directory: Path) -> list[Path]:
        table = analysis.table(config, solutions or {})
        return [figures.distance_vs_h(config, table, directory / "distance_vs_h.png")] if len(table) else []


STUDY = IGR()
