"""min-norm: on underdetermined least squares, GD and SGD find the minimum-norm interpolant; Adam and AdaGrad do not.

Wilson, Roelofs, Stern, Srebro & Recht (2017), "The marginal value of adaptive gradient methods in
machine learning" (Section 3).

Claim checked, on an overparameterized regression problem ``X`` (n×d, rank < d) with an exact
interpolant:

- gradient descent and single-sample SGD started at zero converge to ``X⁺y``, the minimum-ℓ2-norm
  interpolant (relative distance ‖w − X⁺y‖/‖X⁺y‖ ≤ 1e-6): their updates are combinations of the
  rows of ``X``, so they never leave its row space;
- gradient descent started at ``w₀`` converges to ``X⁺y + (I − P)w₀``, ``P = X⁺X`` the projector on
  the row space (same tolerance): the component of ``w₀`` orthogonal to the rows never moves;
- Adam and AdaGrad from zero also interpolate (relative residual ‖Xw − y‖/‖y‖ ≤ 1e-3) but
  elsewhere: relative distance to ``X⁺y`` ≥ 0.1 (their per-coordinate scaling leaves the row space);
- Wilson's construction (their Section 3.3): binary labels ``y ∈ {±1}`` (positive with probability
  p > ½), features ``x = (y, 1, 1, unique features)`` with one unique feature for a positive point and
  five for a negative one, d = 3 + 5·(n_train + n_test). There ``X sign(Xᵀy) = 4y``, so the adaptive
  methods converge to ``w ∝ sign(Xᵀy)``, which predicts the positive (majority) class on every test
  point — test error = the fraction of negative test points — while the minimum-norm solution of
  GD/SGD classifies every test point correctly (test error 0).

Default problem: X with i.i.d. N(0, 1/d) entries (n = 20, d = 100), y = Xβ for a Gaussian teacher β;
``--data FILE.npz`` (arrays X n×d, y n) replaces it. Wilson's construction is always generated
(from ``seed`` and the ``wilson_*`` settings).

Dynamics (float64, :mod:`implicitreg.dynamics.squared_loss`, loss ‖Xw − y‖²/(2n)):
- GD: step ``lr_scale · n/‖X‖₂²`` (``lr_scale``/L, L the largest curvature); SGD: one sample per
  step, step ``lr_scale / maxᵢ‖xᵢ‖²``, a fresh random order every epoch. Both run until the relative
  residual is ≤ ``tol`` (1e-12) or ``max_steps``.
- Adam (torch's update, β = (0.9, 0.999), ε = 1e-8) with learning rate ``adam_lr/√(1 + t/adam_decay_steps)``
  and AdaGrad (torch's update, ε = 1e-10, constant ``adagrad_lr``), both from zero, run until the
  relative residual is ≤ ``adaptive_tol`` (1e-6) or ``adaptive_max_steps``.
References: ``numpy.linalg.pinv`` (:mod:`implicitreg.references.least_squares`).

Pieces: ``problem`` (the two problems, distances and errors), ``analysis`` (table, checks, notes) and
``figures``; ``solve`` below chooses each optimizer's step size and records its path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from implicitreg.config import Strict
from implicitreg.data.npz import read_regression
from implicitreg.dynamics import squared_loss as dyn
from implicitreg.references import least_squares as ref
from implicitreg.studies.base import Analysis, ProgressBar, Solved, SolvedRun
from implicitreg.studies.min_norm import analysis, figures
from implicitreg.studies.min_norm.analysis import FROM_ZERO, WILSON
from implicitreg.studies.min_norm.problem import (Problem, Regression, classification_error, gaussian_regression,
                                                  initialization, relative_distance, validate, wilson_construction)

__all__ = ["Config", "MinNorm", "Problem", "STUDY", "classification_error", "gaussian_regression",
           "relative_distance", "wilson_construction"]


class Config(Strict):
    """Configuration of ``min-norm``; every field can be set with ``--set``."""

    data_file: str | None = Field(None, description="a user's .npz with X (n×d) and y (n); set by --data")
    seed: int = Field(0, ge=0, description="seed of the generated problems, w₀ and SGD's sample order")
    n: int = Field(20, ge=1, description="generated problem: samples")
    d: int = Field(100, ge=2, description="generated problem: dimension (d > n: overparameterized)")
    w0_scale: float = Field(1.0, gt=0.0, description="‖w₀‖ as a multiple of ‖X⁺y‖ (random direction)")
    lr_scale: float = Field(1.0, gt=0.0, lt=2.0, description="GD/SGD step as a fraction of 1/curvature")
    max_steps: int = Field(200_000, ge=1, description="GD/SGD step budget")
    tol: float = Field(1e-12, gt=0.0, description="GD/SGD stop at this relative residual")
    adam_lr: float = Field(0.01, gt=0.0)
    adam_decay_steps: float = Field(1000.0, gt=0.0, description="Adam lr is adam_lr/sqrt(1 + t/adam_decay_steps)")
    adagrad_lr: float = Field(0.1, gt=0.0)
    adaptive_tol: float = Field(1e-6, gt=0.0, description="Adam/AdaGrad stop at this relative residual")
    adaptive_max_steps: int = Field(200_000, ge=1)
    wilson_n_train: int = Field(50, ge=2, description="Wilson's construction: training points")
    wilson_n_test: int = Field(200, ge=1, description="Wilson's construction: test points")
    wilson_p: float = Field(0.75, gt=0.5, lt=1.0, description="Wilson's construction: P(y = +1)")


class MinNorm:
    name = "min-norm"
    claim = ("On underdetermined least squares, GD and SGD from zero converge to the minimum-norm interpolant "
             "X⁺y (from w₀: X⁺y + (I − P)w₀), while Adam and AdaGrad interpolate elsewhere — on Wilson's "
             "construction predicting the majority class on every test point.")
    paper = "Wilson, Roelofs, Stern, Srebro & Recht 2017"
    Config = Config
    minutes = (0.1, 0.7)  # quick, full: on 2 CPU cores, --threads 1

    def defaults(self, quick: bool) -> dict[str, Any]:
        return {"wilson_n_train": 30, "wilson_n_test": 100} if quick else {}

    def plan(self, config: Config) -> list:
        return []

    def problem(self, config: Config) -> Problem:
        """Load ``config.data_file`` (X, y) or generate the Gaussian problem; always generate Wilson's."""
        if config.data_file is not None:
            x, y = read_regression(config.data_file)
            where, source = f"--data {config.data_file}", f"file {config.data_file}"
        else:
            x, y = gaussian_regression(config.n, config.d, config.seed)
            where, source = "generated problem", f"Gaussian X ({config.n}×{config.d}, seed {config.seed}), y = Xβ"
        validate(x, y, where)
        w0 = initialization(x.shape[1], config.w0_scale * np.linalg.norm(ref.min_norm_interpolant(x, y)),
                             config.seed)
        wilson = wilson_construction(config.wilson_n_train, config.wilson_n_test, config.wilson_p, config.seed)
        return Problem(Regression(x, y, w0, source), wilson)

    def solve(self, config: Config, problem: Problem, progress: ProgressBar) -> Solved:
        reg, wil = problem.regression, problem.wilson
        references = {
            "ref_min_norm": ref.min_norm_interpolant(reg.x, reg.y),
            "ref_min_norm_from_w0": ref.min_norm_from(reg.x, reg.y, reg.w0),
            f"ref_{WILSON}_min_norm": ref.min_norm_interpolant(wil.x_train, wil.y_train),
        }
        zero, wilson_zero = np.zeros(reg.x.shape[1]), np.zeros(wil.x_train.shape[1])
        # (run label, optimizer, X, y, initialization, reference)
        settings = [(opt, opt, reg.x, reg.y, zero, "ref_min_norm") for opt in FROM_ZERO]
        settings.append(("gd_w0", "gd", reg.x, reg.y, reg.w0, "ref_min_norm_from_w0"))
        settings += [(f"{WILSON}_{opt}", opt, wil.x_train, wil.y_train, wilson_zero, f"ref_{WILSON}_min_norm")
                     for opt in FROM_ZERO]
        bar = progress("GD, SGD, Adam, AdaGrad (regression and Wilson's construction)", len(settings))
        runs, arrays = [], dict(references)
        for done, (label, opt, x, y, w0, reference) in enumerate(settings):
            wilson, target = label.startswith(WILSON), references[reference]
            path, hyper = _run(config, opt, x, y, w0)
            rows = []
            for step, w in zip(path.steps.tolist(), path.weights):
                rows += [(step, "dist_ref", relative_distance(w, target)),
                         (step, "residual", dyn.relative_residual(x, y, w))]
                if label == "gd_w0":
                    rows.append((step, "dist_min_norm", relative_distance(w, references["ref_min_norm"])))
                if wilson:
                    rows.append((step, "test_error", classification_error(w, wil.x_test, wil.y_test)))
            rows.append((path.final_step, "converged", float(path.converged)))
            if wilson:
                rows.append((path.final_step, "test_negative_fraction", float(np.mean(wil.y_test < 0))))
            run_config = {"problem": WILSON if wilson else reg.source, "optimizer": opt, **hyper,
                          "init": "w0" if label == "gd_w0" else "zero", "reference": reference,
                          "n": int(x.shape[0]), "d": int(x.shape[1])}
            runs.append(SolvedRun(label, opt, run_config, rows, path.final_step, seed=config.seed))
            arrays[label] = path.w
            bar(done + 1)
        return Solved(runs, arrays)

    def analyze(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame,
                solutions: dict[str, np.ndarray]) -> Analysis:
        final = analysis.final(runs, metrics)
        return Analysis(analysis.table(final), analysis.checks(final, solutions), analysis.notes(config, runs))

    def figures(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame, solutions: dict[str, np.ndarray],
                directory: Path) -> list[Path]:
        return [figures.trajectories(metrics, directory / "distance_vs_step.png"),
                figures.wilson_errors(analysis.final(runs, metrics), directory / "wilson_test_error.png")]


def _run(config: Config, opt: str, x: np.ndarray, y: np.ndarray, w0: np.ndarray) -> tuple[dyn.Path, dict]:
    """One optimizer on (X, y) from w0, with the study's step sizes; returns its path and hyperparameters."""
    if opt == "gd":
        lr = config.lr_scale * x.shape[0] / np.linalg.norm(x, 2) ** 2
        return dyn.gd(x, y, w0, lr, config.max_steps, config.tol), {"lr": lr}
    if opt == "sgd":
        lr = config.lr_scale / np.max(np.sum(x * x, axis=1))
        rng = np.random.default_rng([config.seed, 2])
        return dyn.sgd(x, y, w0, lr, config.max_steps, config.tol, rng), {"lr": lr, "batch_size": 1}
    if opt == "adam":
        path = dyn.adam(x, y, w0, config.adam_lr, config.adaptive_max_steps, config.adaptive_tol,
                        decay_steps=config.adam_decay_steps)
        return path, {"lr": config.adam_lr, "decay_steps": config.adam_decay_steps, "betas": [0.9, 0.999],
                      "eps": 1e-8}
    path = dyn.adagrad(x, y, w0, config.adagrad_lr, config.adaptive_max_steps, config.adaptive_tol)
    return path, {"lr": config.adagrad_lr, "eps": 1e-10}


STUDY = MinNorm()
