"""max-margin: GD on the logistic loss of separable data converges in direction to the hard-margin SVM.

Soudry, Hoffer, Nacson, Gunasekar & Srebro (2018), "The implicit bias of gradient descent on
separable data" (JMLR; Theorem 3); Nacson, Lee, Gunasekar, Savarese, Srebro & Soudry (2019),
"Convergence of gradient descent on separable data" (AISTATS).

Claim checked: gradient descent from zero with a fixed step η on the mean logistic loss
``L(w) = (1/n) Σ log(1 + exp(−yᵢxᵢᵀw))`` of data separable through the origin satisfies
``w(t) = ŵ ln t + ρ(t)`` with ρ bounded, where ŵ = argmin ‖w‖ s.t. yᵢxᵢᵀw ≥ 1 (no bias term). So

- the direction converges: cosine(w(t), ŵ) ≥ 0.99 at the horizon;
- slowly: the normalized distance ‖w/‖w‖ − ŵ/‖ŵ‖‖ shrinks like 1/ln t, so dist·ln t is constant
  within 10% (every value within 10% of the window's median) over the window t ∈ [1e4, 1e6] (``--quick``: [1e3, 1e5]);
- ‖w(t)‖ grows like ‖ŵ‖ ln t: the least-squares slope of ‖w(t)‖ against ln t over the same window
  is within 5% of ‖ŵ‖;
- normalized GD (step η₀ / (L(w)√(t+1)), Nacson et al. 2019) is closer to ŵ's direction than GD
  at the horizon (reported as the ratio of their distances, checked < 1).

The loss constant: Soudry et al. state the result for the *sum* loss Σℓ(yᵢxᵢᵀw) with step η_s;
for the exponential tail, the support vectors' terms give ``t·L_sum(t) → Σαᵢ/η_s = ‖ŵ‖²/η_s``
(ŵ = Σαᵢyᵢxᵢ over support vectors, each with yᵢxᵢᵀŵ = 1, so Σαᵢ = ‖ŵ‖²). GD on the *mean* loss with
step η is GD on the sum loss with η_s = η/n, and L = L_sum/n, hence for this study's mean loss
``t·L(t) → ‖ŵ‖²/η`` — the same form. It is reported (t·L(t)·η/‖ŵ‖², which tends to 1), not judged.

Design:
- Step: η = ``lr_fraction`` · 8n/σ_max(X)², a fraction of 2/β (β = σ_max²/(4n) bounds the loss's
  Hessian; Soudry et al.'s Theorem 3 needs η < 2/β). Normalized GD uses η₀ = η·ln 2, so its first
  step equals GD's (L(0) = ln 2).
- Default data ("generic": support vectors in general position with positive, unequal dual
  coefficients, and ŵ precisely known, as in Soudry et al.'s Figure 1): a random unit direction u;
  d support vectors zⱼ = u + vⱼ, vⱼ Gaussian in u⊥ (scale ``spread``) shifted so that Σβⱼvⱼ = 0 for
  random weights βⱼ ∈ [0.5, 1.5]; every other point z = m·u + v with margin m = 1 + gap·(1 + E),
  E ~ Exp(1) — a margin gap, because non-support points at margin θ leave transients that decay
  only like t^−(θ−1) (Soudry et al., Section 3); labels y random ±1, x = y·z. Then ŵ = u exactly
  (‖ŵ‖ = 1) with dual coefficients β/Σβ; the cvxpy reference must and does recover it.
- ``--data FILE.npz`` (X n×d, y as ±1 or 0/1) replaces the generator; data not separable through
  the origin are rejected by an LP (scipy ``linprog``, HiGHS).
- Metrics are recorded on a log-spaced grid of ``points`` steps; the weights at the horizon go to
  ``solutions.npz`` (``gd``, ``gd_normalized``) beside ``ref_svm`` (ŵ, from a cvxpy QP).
- Modules: :mod:`.problem` (the data), :mod:`.analysis` (table, checks, notes), :mod:`.figures`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from implicitreg.config import Strict
from implicitreg.dynamics import logistic as dyn
from implicitreg.references import svm
from implicitreg.studies.base import Analysis, ProgressBar, Solved, SolvedRun
from implicitreg.studies.max_margin import analysis
from implicitreg.studies.max_margin.figures import distance_figure, margin_figure, norm_figure
from implicitreg.studies.max_margin.problem import Problem, generic_separable, load_problem

__all__ = ["Config", "MaxMargin", "Problem", "STUDY", "generic_separable"]


class Config(Strict):
    """Configuration of ``max-margin``; every field can be set with ``--set``."""

    data_file: str | None = Field(None, description="a user's .npz with X (n×d) and y (±1 or 0/1); set by --data")
    seed: int = Field(0, ge=0, description="seed of the generated data")
    n: int = Field(40, ge=3, description="generated data: points")
    d: int = Field(5, ge=2, description="generated data: dimension (= number of support vectors)")
    gap: float = Field(0.5, gt=0.0, description="generated data: non-support margins ≥ 1 + gap (SVM margin 1)")
    spread: float = Field(1.0, gt=0.0, description="generated data: scale of the points orthogonal to ŵ")
    steps: int = Field(1_000_000, ge=10, description="horizon: GD steps")
    window_start: int = Field(10_000, ge=1, description="first step of the window of the dist·ln t and slope checks")
    lr_fraction: float = Field(0.9, gt=0.0, lt=1.0, description="η as a fraction of 2/β = 8n/σ_max(X)²")
    normalized: bool = Field(True, description="also run normalized GD")
    points: int = Field(200, ge=10, le=2000, description="log-spaced steps at which metrics are recorded")

    @model_validator(mode="after")
    def _window(self) -> Config:
        if self.window_start * 10 > self.steps:
            raise ValueError(f"window_start must be at most steps/10 so the window spans a decade, got "
                             f"window_start={self.window_start}, steps={self.steps}")
        return self


def path_rows(x: np.ndarray, y: np.ndarray, steps: np.ndarray, weights: np.ndarray,
              unit: np.ndarray) -> list[tuple[int, str, float]]:
    """Metrics rows (step, name, value) of one method's weights (k, d) at the recorded ``steps`` (k,):
    ``norm`` ‖w‖, ``dist`` ‖w/‖w‖ − u‖, ``cosine`` to u (= ŵ/‖ŵ‖), ``margin`` minᵢ yᵢxᵢᵀw/‖w‖, ``loss``."""
    norms = np.linalg.norm(weights, axis=1)
    directions = weights / norms[:, None]
    losses = dyn.logistic_loss(x, y, weights.T)
    normalized_margins = np.min(dyn.margins(x, y, directions.T), axis=0)
    rows = []
    for i, step in enumerate(steps.tolist()):
        rows += [(step, "norm", float(norms[i])),
                 (step, "dist", float(np.linalg.norm(directions[i] - unit))),
                 (step, "cosine", float(directions[i] @ unit)),
                 (step, "margin", float(normalized_margins[i])),
                 (step, "loss", float(losses[i]))]
    return rows


class MaxMargin:
    name = "max-margin"
    claim = ("Gradient descent on the logistic loss of linearly separable data converges in direction to the "
             "hard-margin SVM solution, with distance ~ 1/ln t and ‖w(t)‖ ~ ‖ŵ‖ ln t; normalized GD gets there "
             "faster.")
    paper = "Soudry, Hoffer, Nacson, Gunasekar & Srebro 2018; Nacson et al. 2019"
    Config = Config
    minutes = (0.2, 4.1)  # quick, full: on 2 CPU cores, --threads 1

    def defaults(self, quick: bool) -> dict[str, Any]:
        return {"steps": 100_000, "window_start": 1_000} if quick else {}

    def plan(self, config: Config) -> list:
        return []

    def problem(self, config: Config) -> Problem:
        """Load ``config.data_file`` or generate; reject data not separable through the origin (LP)."""
        return load_problem(config)

    def solve(self, config: Config, problem: Problem, progress: ProgressBar) -> Solved:
        x, y = problem.x, problem.y
        w_hat = svm.hard_margin_svm(x, y)
        lr = config.lr_fraction * dyn.stable_step(x)
        normalized_lr = lr * math.log(2.0) if config.normalized else None
        bar = progress("GD and normalized GD on the logistic loss" if config.normalized else "GD on the logistic loss",
                       config.steps)
        paths = dyn.descend(x, y, lr, config.steps, normalized_lr, points=config.points, progress=bar)
        bar(config.steps)
        unit = w_hat / np.linalg.norm(w_hat)
        runs, arrays = [], {"ref_svm": w_hat, "ref_log_time_rate": np.array(svm.log_time_rate(x, y, w_hat))}
        common = {"problem": problem.source, "n": int(x.shape[0]), "d": int(x.shape[1]), "loss": "mean logistic"}
        for label, weights in (("gd", paths.gd), ("gd_normalized", paths.normalized)):
            if weights is None:
                continue
            hyper = ({"lr": lr, "lr_fraction_of_2_over_beta": config.lr_fraction} if label == "gd" else
                     {"lr0": normalized_lr, "schedule": "lr0 / (L(w) * sqrt(t + 1))"})
            runs.append(SolvedRun(label, label, {**common, "optimizer": label, **hyper},
                                  path_rows(x, y, paths.steps, weights, unit), config.steps, seed=config.seed))
            arrays[label] = weights[-1]
        return Solved(runs, arrays)

    def analyze(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame,
                solutions: dict[str, np.ndarray]) -> Analysis:
        norm_hat = analysis.svm_norm(solutions)
        return Analysis(analysis.table(config, runs, metrics, norm_hat),
                        analysis.checks(config, metrics, runs, norm_hat),
                        analysis.notes(config, runs, solutions))

    def figures(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame, solutions: dict[str, np.ndarray],
                directory: Path) -> list[Path]:
        norm_hat = analysis.svm_norm(solutions)
        window = analysis.window_of(config)
        return [distance_figure(metrics, runs, window, directory / "distance_vs_t.png"),
                margin_figure(metrics, runs, norm_hat, directory / "margin_vs_t.png"),
                norm_figure(metrics, norm_hat, analysis.gd_lr(runs), window, directory / "norm_and_loss_vs_t.png")]


STUDY = MaxMargin()
