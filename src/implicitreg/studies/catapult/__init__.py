"""catapult: below 2/λ₀ GD is lazy, between 2/λ₀ and η_max it catapults to a flatter point, above it diverges.

Lewkowycz, Bahri, Dyer, Sohl-Dickstein & Gur-Ari (2020), "The large learning rate phase of deep learning:
the catapult mechanism".

Model (the paper's parametrization): wide two-layer networks f(x) = v·φ(u x/√d)/√n, u [n, d] and v [n]
with N(0, 1) entries, φ the identity (the paper's "uv model", Section 2) or ReLU, no biases, trained by
full-batch GD on L = ½·mean over the m points of (f(x) − y)². The curvature is the top eigenvalue λ of the
empirical NTK on the training set, Θ = J Jᵀ/m (J: the Jacobian of the m outputs in all parameters) —
the paper's λ, equal to the top eigenvalue of the Gauss–Newton part JᵀJ/m of the loss Hessian, so that GD
on the linearized network is stable for η < 2/λ. Learning rates are in units of 1/λ₀ (c = η·λ₀, λ₀ each
network's own λ at initialization).

Claim checked, on a seeded subset of scikit-learn's 8×8 digits (the paper trained on MNIST and CIFAR;
:mod:`.problem`), with ``seeds`` initializations per rate and phases defined in :mod:`.phases`:

- linear (uv) model, whose analysis gives η_max = 4/λ₀: the phase observed at c = 1.5 is lazy (no step
  raises the loss by more than 1e-10·L₀, it falls to L_T ≤ L₀/100, and |λ_T/λ₀ − 1| ≤ 0.1), at c = 3
  catapult (the loss first rises to ≥ 2·L₀, then falls to L_T ≤ L₀/100, and η·λ_T < 2: the final
  curvature is below 2/η), at c = 6 divergent (the loss stops being finite or exceeds 1e8·L₀ within the
  budget) — each in at least 3/4 of the seeds whose run could be judged;
- ReLU, whose η_max the paper finds ≈ 12/λ₀ (the issue's band: 4 to 12): lazy at 1.5, catapult at 3
  and at 6 (below the paper's 12), in at least 3/4 of the seeds;
- the maximal rate, by bisection on c per seed (the largest c at which GD neither diverges nor stalls,
  i.e. ends with L_T ≤ L₀/100, within the step budget), mean over seeds: in [3.6, 4.4] for the linear
  model (4 ± 10%: finite width and the bracket's resolution) and in [4, 12] for ReLU.

Pieces: the networks, GD, the NTK and the bisection are :mod:`implicitreg.dynamics.two_layer` (tested
against torch.optim.SGD, autograd's dense J Jᵀ, and the paper's uv recursion); the data :mod:`.problem`;
the phase of a run :mod:`.phases`; the table, checks and notes :mod:`.analysis`; the figures
:mod:`.figures`. The top Hessian eigenvalue at the end (Lanczos, :func:`implicitreg.dynamics.network.sharpness`)
is reported beside λ_T.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator

from implicitreg.config import Strict
from implicitreg.dynamics.grid import recording_steps
from implicitreg.dynamics.network import lanczos_rows, sharpness
from implicitreg.dynamics.two_layer import (TwoLayer, TwoLayerModule, init_two_layer, max_stable_rate, ntk_top,
                                            train)
from implicitreg.studies.base import Analysis, ProgressBar, Solved, SolvedRun
from implicitreg.studies.catapult import analysis, figures
from implicitreg.studies.catapult.phases import DIVERGE, FIT, summarize
from implicitreg.studies.catapult.problem import DIGITS_TRAIN, Problem, digits_problem

__all__ = ["Catapult", "Config", "Problem", "STUDY", "phase_run_id", "bisection_run_id"]

LOG_POINTS = 100  # the log grid on which the loss is stored and λ measured (dense over the first steps)


class Config(Strict):
    """Configuration of ``catapult``; every field can be set with ``--set``."""

    seed: int = Field(0, ge=0, description="seed of the digits subset")
    seeds: int = Field(8, ge=1, description="initializations (seeds 0, 1, …) per model and rate")
    points: int = Field(32, ge=1, le=DIGITS_TRAIN, description="digits images in the training set")
    width: int = Field(1024, ge=1, description="hidden width n")
    models: list[Literal["linear", "relu"]] = Field(default_factory=lambda: ["linear", "relu"], min_length=1,
                                                    description="activations: linear (the uv model) and/or relu")
    rates: list[float] = Field(default_factory=lambda: [1.5, 3.0, 6.0], min_length=1,
                               description="learning rates η·λ₀ whose phase is observed")
    steps: int = Field(1000, ge=1, description="full-batch GD steps per run (the budget)")
    bisection_low: float = Field(1.5, gt=0.0, description="lower end of the bisection on η·λ₀ (must be stable)")
    bisection_high: float = Field(33.5, gt=0.0, description="upper end of the bisection on η·λ₀ (must not be)")
    bisection_iterations: int = Field(8, ge=0, le=30, description="halvings of the bisection bracket")
    hessian: bool = Field(True, description="measure the top Hessian eigenvalue at the end (Lanczos)")
    lanczos_tol: float = Field(1e-6, gt=0.0, description="relative residual at which Lanczos stops")
    max_hvp: int = Field(200, ge=2, description="most Hessian-vector products per Lanczos run")

    @model_validator(mode="after")
    def _grid(self) -> Config:
        if any(r <= 0 for r in self.rates) or len(set(self.rates)) != len(self.rates):
            raise ValueError(f"rates must be distinct positive values of η·λ₀, got {self.rates}")
        if len(set(self.models)) != len(self.models):
            raise ValueError(f"models must be distinct, got {self.models}")
        if not self.bisection_low < self.bisection_high:
            raise ValueError(f"bisection_low must be below bisection_high, got {self.bisection_low} and "
                             f"{self.bisection_high}")
        return self


def phase_run_id(model: str, rate: float, seed: int) -> str:
    return f"{model}/rate{rate:g}/seed{seed}"


def bisection_run_id(model: str, seed: int) -> str:
    return f"{model}/bisection/seed{seed}"


def phase_runs(config: Config, model: str, net: TwoLayer, x: torch.Tensor, y: torch.Tensor,
               members: list[tuple[float, int]], bar) -> list[SolvedRun]:
    """GD at every (rate, seed) of ``members`` at once, η = rate/λ₀ per member; one run each: the loss on the
    log grid, λ_max(Θ) where measured, the :func:`~.phases.summarize` values at the member's last step, the
    fraction of ReLU units active on some point, and the top Hessian eigenvalue at the end."""
    grid = recording_steps(config.steps, LOG_POINTS)
    lambda0 = ntk_top(net, x)
    rates = torch.tensor([rate for rate, _ in members], dtype=torch.float64)
    run = train(net, x, y, rates / lambda0, config.steps, measure=grid, diverge=DIVERGE, progress=bar)
    out = []
    for b, (rate, seed) in enumerate(members):
        stop, diverged = int(run.stopped[b]), bool(run.diverged[b])
        rows = [(s, "loss", float(run.loss[b, s])) for s in sorted(grid | {stop}) if s <= stop]
        rows += [(int(s), "ntk_lambda", float(v)) for s, v in zip(run.ntk_steps, run.ntk[b]) if np.isfinite(v)]
        summary = summarize(run, b)
        tail = list(summary.items())
        if not diverged and model == "relu":
            active = (torch.matmul(net.u[b], x.T) > 0).any(dim=1)  # a unit that is off on every point is dead
            tail.append(("active_units", float(active.double().mean())))
        if not diverged and config.hessian:
            eig = sharpness(TwoLayerModule(net, b), x, y[:, None], tol=config.lanczos_tol, max_hvp=config.max_hvp)
            top = float(eig.values[0])
            tail += [("hessian_end", top), ("eta_hessian_end", float(run.lr[b]) * top), *lanczos_rows(eig)]
        rows += [(stop, name, value) for name, value in tail if not np.isnan(value)]
        settings = {"kind": "phase", "model": model, "rate": rate, "lr": float(run.lr[b]),
                    "lambda0": summary["lambda0"], "width": config.width, "points": config.points,
                    "steps": config.steps}
        out.append(SolvedRun(phase_run_id(model, rate, seed), model, settings, rows, stop, seed=seed,
                             status="diverged" if diverged else "done", target_step=config.steps))
    return out


def bisection_runs(config: Config, model: str, x: torch.Tensor, y: torch.Tensor, bar) -> list[SolvedRun]:
    """:func:`~implicitreg.dynamics.two_layer.max_stable_rate` for every seed at once (stable: no divergence and
    L_T ≤ FIT·L₀); one run per seed, its bracket at the last step."""
    d = x.shape[1]
    result = max_stable_rate(lambda: init_two_layer(range(config.seeds), config.width, d, model), x, y, config.steps,
                             low=config.bisection_low, high=config.bisection_high,
                             iterations=config.bisection_iterations, diverge=DIVERGE, fit=FIT, progress=bar)
    out = []
    for seed in range(config.seeds):
        rows = [(config.steps, "eta_max_low", float(result.low[seed])),
                (config.steps, "eta_max_high", float(result.high[seed])),
                (config.steps, "bracket_low_ok", float(result.low_ok[seed])),
                (config.steps, "bracket_high_ok", float(result.high_ok[seed])),
                (config.steps, "lambda0", float(result.lambda0[seed]))]
        settings = {"kind": "bisection", "model": model, "low": config.bisection_low, "high": config.bisection_high,
                    "iterations": config.bisection_iterations, "fit": FIT, "width": config.width,
                    "points": config.points, "steps": config.steps}
        out.append(SolvedRun(bisection_run_id(model, seed), f"{model}-bisection", settings, rows, config.steps,
                             seed=seed, target_step=config.steps))
    return out


class Catapult:
    name = "catapult"
    claim = ("Wide two-layer networks under full-batch GD: lazy below η = 2/λ₀, a catapult (the loss rises, then "
             "falls to a point of curvature below 2/η) up to η_max, divergence above; η_max ≈ 4/λ₀ for the "
             "linear uv model and 4 to 12/λ₀ for ReLU.")
    paper = "Lewkowycz, Bahri, Dyer, Sohl-Dickstein & Gur-Ari 2020"
    Config = Config
    minutes = (0.9, 3.6)  # quick, full: measured with --threads 1 on 2 cores shared with other jobs

    def defaults(self, quick: bool) -> dict[str, Any]:
        # quick: the same rates, checks and budget on a narrower network, fewer seeds, a coarser bisection
        return {"seeds": 3, "width": 512, "bisection_iterations": 6} if quick else {}

    def plan(self, config: Config) -> list:
        return []

    def problem(self, config: Config) -> Problem:
        return digits_problem(config.points, config.seed)

    def solve(self, config: Config, problem: Problem, progress: ProgressBar) -> Solved:
        x, y = torch.as_tensor(problem.x, dtype=torch.float64), torch.as_tensor(problem.y, dtype=torch.float64)
        runs, arrays = [], {}
        members = [(rate, seed) for rate in config.rates for seed in range(config.seeds)]
        for model in config.models:
            net = init_two_layer([seed for _, seed in members], config.width, x.shape[1], model)
            runs += phase_runs(config, model, net, x, y, members, progress(f"{model}: GD at each η·λ₀", config.steps))
            bisection = bisection_runs(config, model, x, y,
                                       progress(f"{model}: bisection on η·λ₀", config.bisection_iterations + 2))
            runs += bisection
            arrays[f"eta_max_{model}"] = np.array([[dict((n, v) for _, n, v in r.metrics)[k] for k in
                                                    ("eta_max_low", "eta_max_high")] for r in bisection])
            arrays[f"ref_paper_eta_max_{model}"] = np.array(analysis.PAPER_ETA_MAX[model])
        return Solved(runs, arrays)

    def analyze(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame,
                solutions: dict[str, np.ndarray] | None = None) -> Analysis:
        return Analysis(analysis.table(config, runs, metrics), analysis.checks(config, runs, metrics),
                        analysis.notes(config, runs, metrics))

    def figures(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame,
                solutions: dict[str, np.ndarray] | None, directory: Path) -> list[Path]:
        return figures.draw_all(config, runs, metrics, directory)


STUDY = Catapult()
