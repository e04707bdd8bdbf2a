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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from implicitreg.dynamics import squared_loss as dyn
from implicitreg.config import Strict
from implicitreg.data.npz import read_regression
from implicitreg.references import least_squares as ref
from implicitreg.report import kinds
from implicitreg.studies.base import Analysis, Check, ProgressBar, Solved, SolvedRun

EXACT_TOL = 1e-6  # GD/SGD: relative distance to their reference
ADAPTIVE_DIST_MIN = 0.1  # Adam/AdaGrad: relative distance to X⁺y at least this
RESIDUAL_MAX = 1e-3  # Adam/AdaGrad: relative residual at most this
INTERPOLATION_TOL = 1e-8  # --data: X X⁺y must reproduce y to this relative accuracy
FROM_ZERO = ("gd", "sgd", "adam", "adagrad")
ADAPTIVE = ("adam", "adagrad")
WILSON = "wilson"
LABELS = {"gd": "GD", "sgd": "SGD", "adam": "Adam", "adagrad": "AdaGrad", "gd_w0": "GD from w₀"}


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


@dataclass
class Regression:
    """A least-squares problem: X (n, d), y (n,), and the initialization w₀ (d,) of the GD-from-w₀ run."""

    x: np.ndarray
    y: np.ndarray
    w0: np.ndarray
    source: str


@dataclass
class WilsonProblem:
    """Wilson et al.'s construction: train X (n, D), y (n,); test X (m, D), y (m,); labels ±1."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass
class Problem:
    regression: Regression
    wilson: WilsonProblem


def gaussian_regression(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """X (n, d) with i.i.d. N(0, 1/d) entries (rows of norm ≈ 1) and y = Xβ (n,), β ~ N(0, I_d)."""
    rng = np.random.default_rng([seed, 0])
    x = rng.standard_normal((n, d)) / np.sqrt(d)
    return x, x @ rng.standard_normal(d)


def wilson_construction(n_train: int, n_test: int, p: float, seed: int) -> WilsonProblem:
    """Wilson et al. (2017), Section 3.3: ``x = (y, 1, 1, unique features, 0 …)``.

    Point i owns the features 3 + 5i, …: one of them is 1 for a positive point, five for a negative
    one. Labels are +1 with probability ``p``, drawn until the training set has more positives than
    negatives (so that sign(Xᵀy) has +1 on the two constant features, as the construction needs)
    and the test set holds a negative point (so that predicting the majority class costs something).
    """
    rng = np.random.default_rng([seed, 3])
    total = n_train + n_test
    while True:
        y = np.where(rng.random(total) < p, 1.0, -1.0)
        train, test = y[:n_train], y[n_train:]
        if (train > 0).sum() > (train < 0).sum() and (test < 0).any():
            break
    x = np.zeros((total, 3 + 5 * total))
    x[:, 0], x[:, 1:3] = y, 1.0
    for i, label in enumerate(y):
        x[i, 3 + 5 * i: 3 + 5 * i + (1 if label > 0 else 5)] = 1.0
    return WilsonProblem(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def _initialization(d: int, norm: float, seed: int) -> np.ndarray:
    """w₀ (d,): a uniformly random direction with the given norm."""
    direction = np.random.default_rng([seed, 1]).standard_normal(d)
    return norm * direction / np.linalg.norm(direction)


def _validated(x: np.ndarray, y: np.ndarray, where: str) -> None:
    """The claim needs an exact interpolant and a nontrivial set of them; say which is missing."""
    if not np.any(y):
        raise ValueError(f"{where}: y is all zeros; X⁺y = 0 leaves no interpolant to compare distances against")
    rank = ref.rank(x)
    n, d = x.shape
    if rank >= d:
        raise ValueError(f"{where}: X ({n}×{d}) has rank {rank} = d, so the interpolant is unique; min-norm needs "
                         f"an overparameterized problem (rank(X) < d, e.g. d > n)")
    fitted = x @ ref.min_norm_interpolant(x, y)
    miss = float(np.linalg.norm(fitted - y) / np.linalg.norm(y))
    if miss > INTERPOLATION_TOL:
        raise ValueError(f"{where}: no w solves Xw = y exactly (relative residual of X⁺y is {miss:.2e} > "
                         f"{INTERPOLATION_TOL:g}; rank(X) = {rank} < n = {n}); min-norm needs an interpolation problem")


def relative_distance(w: np.ndarray, target: np.ndarray) -> float:
    """``‖w − target‖ / ‖target‖``."""
    return float(np.linalg.norm(w - target) / np.linalg.norm(target))


def classification_error(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of points with sign(xᵀw) ≠ y (a zero score counts as an error)."""
    return float(np.mean(np.sign(x @ w) != y))


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
        _validated(x, y, where)
        w0 = _initialization(x.shape[1], config.w0_scale * np.linalg.norm(ref.min_norm_interpolant(x, y)),
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
        final = _final(runs, metrics)
        table = final[["run_id", "arm", "final_step", "converged", "dist_ref", "residual", "test_error"]].rename(
            columns={"arm": "optimizer", "dist_ref": "relative distance to reference",
                     "residual": "relative residual", "test_error": "Wilson test error"})
        notes = [
            ("relative distance = ‖w − w_ref‖/‖w_ref‖ with w_ref = X⁺y (from zero; Wilson runs: their own X⁺y) or "
             "X⁺y + (I − P)w₀ (gd_w0); relative residual = ‖Xw − y‖/‖y‖."),
            (f"problem: {_source(runs)}; Wilson's construction: {config.wilson_n_train} train / "
             f"{config.wilson_n_test} test points, P(y=+1) = {config.wilson_p}."),
            ("GD and SGD stop at relative residual ≤ tol; Adam and AdaGrad at ≤ adaptive_tol (final_step = steps "
             "taken; an SGD step is one sample)."),
        ]
        return Analysis(table, _checks(final, solutions), notes)

    def figures(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame, solutions: dict[str, np.ndarray],
                directory: Path) -> list[Path]:
        return [_trajectories(metrics, directory / "distance_vs_step.png"),
                _wilson_errors(_final(runs, metrics), directory / "wilson_test_error.png")]


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


def _final(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its last value of every metric (NaN where a run lacks one)."""
    names = ["dist_ref", "residual", "test_error", "converged", "test_negative_fraction", "dist_min_norm"]
    if metrics.empty:
        last = pd.DataFrame(columns=["run_id", *names])
    else:
        # the value at each metric's last recorded step, NaN included (groupby.last() would skip a final
        # NaN and return an earlier, finite value)
        ordered = metrics.sort_values("step", kind="stable").groupby(["run_id", "name"]).tail(1)
        last = ordered.pivot(index="run_id", columns="name", values="value").reset_index()
    frame = runs[["run_id", "arm", "final_step"]].merge(last, on="run_id", how="left")
    return frame.reindex(columns=["run_id", "arm", "final_step", *names])


def _source(runs: pd.DataFrame) -> str:
    for config in runs.get("config", []):
        if isinstance(config, dict) and config.get("problem") not in (None, WILSON):
            return f"{config['problem']} (n={config.get('n')}, d={config.get('d')})"
    return "unknown"


def _value(final: pd.DataFrame, run_id: str, column: str) -> float | None:
    """A run's final value of a metric: None if the run or the metric is missing, NaN if it was NaN."""
    row = final[final["run_id"] == run_id]
    if row.empty or column not in row:
        return None
    value = row[column].iloc[0]
    return None if value is None else float(value)


def _checks(final: pd.DataFrame, solutions: dict[str, np.ndarray]) -> list[Check]:
    """Every check rests on one run (its final metrics or its stored solution): a missing run, solution
    or metric, or a NaN, leaves that check inconclusive."""
    def distance(label: str, reference: str) -> float | None:
        if label not in solutions or reference not in solutions:
            return None
        return relative_distance(solutions[label], solutions[reference])

    checks = []
    for label in ("gd", "sgd"):
        checks.append(Check.at_most(f"{LABELS[label]} from zero: relative distance to X⁺y",
                                    distance(label, "ref_min_norm"), EXACT_TOL,
                                    detail=f"after {_steps(final, label)} steps"))
    checks.append(Check.at_most("GD from w₀: relative distance to X⁺y + (I − P)w₀",
                                distance("gd_w0", "ref_min_norm_from_w0"), EXACT_TOL,
                                detail=f"after {_steps(final, 'gd_w0')} steps; its distance to X⁺y is "
                                       f"{_fmt(distance('gd_w0', 'ref_min_norm'))}"))
    for label in ADAPTIVE:
        checks.append(Check.at_most(f"{LABELS[label]} from zero: relative residual", _value(final, label, "residual"),
                                    RESIDUAL_MAX, detail=f"after {_steps(final, label)} steps"))
        checks.append(Check.at_least(f"{LABELS[label]} from zero: relative distance to X⁺y",
                                     distance(label, "ref_min_norm"), ADAPTIVE_DIST_MIN))
    for label in ("gd", "sgd"):
        run_id = f"{WILSON}_{label}"
        checks.append(Check.equals(f"Wilson's construction: {LABELS[label]} test error",
                                   _value(final, run_id, "test_error"), 0.0,
                                   detail=f"distance to the construction's X⁺y: "
                                          f"{_fmt(distance(run_id, f'ref_{WILSON}_min_norm'))}"))
    for label in ADAPTIVE:
        # each Wilson run records the fraction of negative test points (the majority class's error)
        run_id = f"{WILSON}_{label}"
        error, negatives = _value(final, run_id, "test_error"), _value(final, run_id, "test_negative_fraction")
        checks.append(Check.equals(
            f"Wilson's construction: {LABELS[label]} test error minus the fraction of negative test points",
            None if error is None or negatives is None else error - negatives, 0.0, tolerance=1e-12,
            detail=(f"test error {_fmt(error)}, fraction of negative test points {_fmt(negatives)} (0: the majority "
                    f"class everywhere); residual {_fmt(_value(final, run_id, 'residual'))}")))
    return checks


def _steps(final: pd.DataFrame, run_id: str) -> str:
    value = _value(final, run_id, "final_step")
    return "?" if value is None or not np.isfinite(value) else f"{int(value)}"


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _trajectories(metrics: pd.DataFrame, path: Path) -> Path:
    """Relative distance to X⁺y (GD from w₀: to X⁺y + (I − P)w₀) and relative residual vs step, log-log."""
    runs = [(label, LABELS[label], {"color": f"C{i}", "linestyle": "--" if label == "gd_w0" else "-"})
            for i, label in enumerate([*FROM_ZERO, "gd_w0"])]
    distance, residual = kinds.series_vs_step(metrics, ["dist_ref", "residual"], runs, floor=1e-17, titles=(
        "relative distance to X⁺y", "relative residual ‖Xw − y‖/‖y‖"))
    for curve in distance.curves:
        curve.label += " (to X⁺y + (I − P)w₀)" if curve.label == LABELS["gd_w0"] else ""
    distance.lines = [kinds.Line(EXACT_TOL, f"{EXACT_TOL:g}", {"linestyle": ":"}),
                      kinds.Line(ADAPTIVE_DIST_MIN, f"{ADAPTIVE_DIST_MIN:g}", {"color": "black", "linestyle": ":"})]
    residual.lines = [kinds.Line(RESIDUAL_MAX, f"{RESIDUAL_MAX:g}", {"linestyle": ":"})]
    return kinds.draw([distance, residual], path)


def _wilson_errors(final: pd.DataFrame, path: Path) -> Path:
    """Test error on Wilson's construction per optimizer, with the fraction of negative test points."""
    negatives = _value(final, f"{WILSON}_gd", "test_negative_fraction")
    shown = negatives is not None and np.isfinite(negatives)
    errors = [_value(final, f"{WILSON}_{o}", "test_error") for o in FROM_ZERO]
    return kinds.draw([kinds.Panel(bars=kinds.Bars([LABELS[o] for o in FROM_ZERO], errors), grid="y",
                                   lines=[kinds.Line(negatives, "fraction of negative test points")] if shown else [],
                                   ylabel="test error", title="Wilson et al.'s construction")], path)


STUDY = MinNorm()
