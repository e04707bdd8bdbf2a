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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from implicitreg.dynamics import logistic as dyn
from implicitreg.config import Strict
from implicitreg.data.npz import read_classification
from implicitreg.references import svm
from implicitreg.report import kinds
from implicitreg.studies.base import Analysis, Check, ProgressBar, Solved, SolvedRun

COSINE_MIN = 0.99
SPREAD_MAX = 0.10  # dist·ln t: largest relative deviation from its median over the window
SLOPE_TOL = 0.05  # |slope/‖ŵ‖ − 1|
RUNS = ("gd", "gd_normalized")
LABELS = {"gd": "GD", "gd_normalized": "normalized GD"}


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


@dataclass
class Problem:
    """Points x (n, d) and labels y (n,) in ±1, separable through the origin."""

    x: np.ndarray
    y: np.ndarray
    source: str


def generic_separable(n: int, d: int, gap: float, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Separable data whose hard-margin SVM through the origin is a known unit vector u.

    d support vectors zⱼ = u + vⱼ (vⱼ ⊥ u Gaussian with scale ``spread``, shifted so Σβⱼvⱼ = 0 for
    random βⱼ ∈ [0.5, 1.5], which makes u = Σ(βⱼ/Σβ)zⱼ a positive combination: the KKT conditions of
    the SVM hold with margin 1); n − d further points z = m·u + v with m = 1 + gap·(1 + Exp(1)).
    Labels are random signs y and x = y·z, shuffled.

    Returns:
        X (n, d) and y (n,) in ±1.
    """
    if n <= d:
        raise ValueError(f"generated data: need more points than dimensions (n > d), got n={n}, d={d}")
    rng = np.random.default_rng([seed, 5])
    u = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    orthogonal = np.eye(d) - np.outer(u, u)
    v = spread * rng.standard_normal((d, d)) @ orthogonal
    beta = rng.uniform(0.5, 1.5, d)
    v -= (beta @ v) / beta.sum()
    margin = 1.0 + gap * (1.0 + rng.exponential(1.0, n - d))
    others = margin[:, None] * u + spread * rng.standard_normal((n - d, d)) @ orthogonal
    z = np.vstack([u + v, others])
    y = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    order = rng.permutation(n)
    return (y[:, None] * z)[order], y[order]


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
        if config.data_file is not None:
            x, y = read_classification(config.data_file)
            where, source = f"--data {config.data_file}", f"file {config.data_file}"
        else:
            x, y = generic_separable(config.n, config.d, config.gap, config.spread, config.seed)
            where = "generated data"
            source = (f"generated: n={config.n}, d={config.d}, gap={config.gap}, spread={config.spread}, "
                      f"seed {config.seed}")
        if x.shape[1] < 2:
            raise ValueError(f"{where}: X must have at least 2 columns (d ≥ 2) for a direction to converge, "
                             f"got shape {x.shape}")
        if not svm.separable_through_origin(x, y):
            raise ValueError(f"{where}: the classes are not linearly separable through the origin (the LP "
                             "yᵢxᵢᵀw ≥ 1 for all i, scipy linprog/HiGHS, is infeasible); max-margin needs separable "
                             "data — the predictor has no bias, so add a constant feature to allow an offset")
        return Problem(x, y, source)

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
            norms = np.linalg.norm(weights, axis=1)
            directions = weights / norms[:, None]
            losses = dyn.logistic_loss(x, y, weights.T)
            normalized_margins = np.min(dyn.margins(x, y, directions.T), axis=0)
            rows = []
            for i, step in enumerate(paths.steps.tolist()):
                rows += [(step, "norm", float(norms[i])),
                         (step, "dist", float(np.linalg.norm(directions[i] - unit))),
                         (step, "cosine", float(directions[i] @ unit)),
                         (step, "margin", float(normalized_margins[i])),
                         (step, "loss", float(losses[i]))]
            hyper = ({"lr": lr, "lr_fraction_of_2_over_beta": config.lr_fraction} if label == "gd" else
                     {"lr0": normalized_lr, "schedule": "lr0 / (L(w) * sqrt(t + 1))"})
            runs.append(SolvedRun(label, label, {**common, "optimizer": label, **hyper}, rows, config.steps,
                                  seed=config.seed))
            arrays[label] = weights[-1]
        return Solved(runs, arrays)

    def analyze(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame,
                solutions: dict[str, np.ndarray]) -> Analysis:
        w_hat = solutions.get("ref_svm")
        norm_hat = None if w_hat is None else float(np.linalg.norm(w_hat))
        lr = _lr(runs)
        window = (config.window_start, config.steps)
        rows = []
        for run_id in runs["run_id"]:
            series = _series(metrics, run_id)
            last = {name: (float(s.iloc[-1]) if not s.empty else math.nan) for name, s in series.items()}
            row = {"run": run_id, "final_step": int(series["norm"].index[-1]) if not series["norm"].empty else None,
                   "cosine to ŵ": last["cosine"], "distance to ŵ/‖ŵ‖": last["dist"], "‖w‖": last["norm"],
                   "normalized margin": last["margin"], "SVM margin 1/‖ŵ‖": (1.0 / norm_hat) if norm_hat else None,
                   "loss": last["loss"]}
            if run_id == "gd":
                row["slope of ‖w‖ vs ln t / ‖ŵ‖"] = _slope(series["norm"], window) / norm_hat if norm_hat else None
                row["dist·ln t spread"] = _spread(series["dist"], window)
                if norm_hat and lr and not series["loss"].empty:
                    step = series["loss"].index[-1]
                    row["t·L(t)·η/‖ŵ‖²"] = step * last["loss"] * lr / norm_hat**2
            rows.append(row)
        table = pd.DataFrame(rows)
        notes = [
            "dist = ‖w/‖w‖ − ŵ/‖ŵ‖‖; normalized margin = minᵢ yᵢxᵢᵀw/‖w‖ (the SVM's is 1/‖ŵ‖); loss = mean logistic.",
            f"window for dist·ln t and the slope: t ∈ [{window[0]:.0e}, {window[1]:.0e}] (recorded steps inside it).",
            ("t·L(t)·η/‖ŵ‖² → 1 for the mean loss (Soudry et al.'s sum-loss constant ‖ŵ‖²/η_s with η_s = η/n); "
             "reported, not judged."),
            f"data: {_source(runs)}.",
        ]
        rate = solutions.get("ref_log_time_rate")
        if rate is not None and np.isfinite(rate):
            lam = float(rate)
            notes.append(
                f"the residual ρ(t) = w(t) − ŵ ln t settles like t^(−λ), λ = λ_min(Zᵀdiag(α)Z) = {lam:.3g} over the "
                f"support vectors (step-size free): t^(−λ) = {window[0] ** -lam:.2f} at t = {window[0]:.0e} and "
                f"{window[1] ** -lam:.2f} at t = {window[1]:.0e}; dist·ln t is constant only once this transient is "
                "small, so a small λ explains a drifting dist·ln t.")
        return Analysis(table, _checks(config, metrics, runs, norm_hat), notes)

    def figures(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame, solutions: dict[str, np.ndarray],
                directory: Path) -> list[Path]:
        w_hat = solutions.get("ref_svm")
        norm_hat = None if w_hat is None else float(np.linalg.norm(w_hat))
        window = (config.window_start, config.steps)
        return [_distance_figure(metrics, runs, window, directory / "distance_vs_t.png"),
                _margin_figure(metrics, runs, norm_hat, directory / "margin_vs_t.png"),
                _norm_figure(metrics, norm_hat, _lr(runs), window, directory / "norm_and_loss_vs_t.png")]


def _series(metrics: pd.DataFrame, run_id: str) -> dict[str, pd.Series]:
    """Each metric of a run as a Series indexed by step (sorted)."""
    part = metrics[metrics["run_id"] == run_id]
    return {name: part[part["name"] == name].set_index("step")["value"].sort_index()
            for name in ("norm", "dist", "cosine", "margin", "loss")}


def _in_window(series: pd.Series, window: tuple[int, int]) -> pd.Series:
    return series[(series.index >= window[0]) & (series.index <= window[1])]


def _slope(norms: pd.Series, window: tuple[int, int]) -> float:
    """Least-squares slope of ‖w(t)‖ against ln t over the recorded steps in the window (NaN if fewer
    than 3, or if any of them is not finite: a NaN must not drop out of the fit)."""
    part = _in_window(norms, window)
    if len(part) < 3 or not np.all(np.isfinite(part.to_numpy())):
        return math.nan
    return float(np.polyfit(np.log(part.index.to_numpy(dtype=float)), part.to_numpy(), 1)[0])


def _spread(dist: pd.Series, window: tuple[int, int]) -> float:
    """How far dist·ln t is from constant over the recorded steps in the window: the largest
    relative deviation max |s/median(s) − 1| of s = dist·ln t (NaN if fewer than 3 steps or any value
    is not finite)."""
    part = _in_window(dist, window)
    if len(part) < 3 or not np.all(np.isfinite(part.to_numpy())):
        return math.nan
    scaled = part.to_numpy() * np.log(part.index.to_numpy(dtype=float))
    middle = float(np.median(scaled))
    return float(np.max(np.abs(scaled / middle - 1.0))) if middle > 0 else math.inf


def _lr(runs: pd.DataFrame) -> float | None:
    for run_id, config in zip(runs["run_id"], runs["config"]):
        if run_id == "gd" and isinstance(config, dict) and "lr" in config:
            return float(config["lr"])
    return None


def _source(runs: pd.DataFrame) -> str:
    for config in runs["config"]:
        if isinstance(config, dict) and "problem" in config:
            return f"{config['problem']} (n={config.get('n')}, d={config.get('d')})"
    return "unknown"


def _at_horizon(series: pd.Series, horizon: int, what: str) -> tuple[float | None, str]:
    """The last recorded value of ``series`` and why it cannot be judged as the value at the horizon
    ('' if it can): nothing recorded, or the last recorded step is not the horizon (a truncated run)."""
    if series.empty:
        return None, f"{what} was not recorded"
    step = int(series.index[-1])
    if step != horizon:
        return float(series.iloc[-1]), f"{what} was last recorded at step {step}, not at the horizon {horizon}"
    return float(series.iloc[-1]), ""


def _checks(config: Config, metrics: pd.DataFrame, runs: pd.DataFrame, norm_hat: float | None) -> list[Check]:
    """The four checks; each is inconclusive, naming why, when what it rests on is missing, not finite,
    or does not reach the horizon (a run that stopped early) — never an exception or a silent fail."""
    window = (config.window_start, config.steps)
    horizon = config.steps
    span = f"t ∈ [{window[0]:.0e}, {window[1]:.0e}]"
    ids = set(runs["run_id"])
    empty = pd.Series(dtype=float)
    gd = _series(metrics, "gd") if "gd" in ids else {name: empty for name in ("norm", "dist", "cosine")}
    missing = ("no solutions.npz (interrupted run?)" if norm_hat is None else
               "" if "gd" in ids else "GD did not run")

    cosine, why = _at_horizon(gd["cosine"], horizon, "GD's cosine")
    gd_dist, dist_why = _at_horizon(gd["dist"], horizon, "GD's distance")
    checks = [Check.at_least(f"GD: cosine to the SVM direction at t = {window[1]:.0e}", cosine, COSINE_MIN,
                             detail=f"distance {_fmt(gd_dist)}", unreliable=missing or why)]

    # the window ends at the horizon: a run whose records stop before it leaves the window short
    checks.append(Check.at_most(f"GD: dist·ln t constant over {span} (largest deviation from its median)",
                                _spread(gd["dist"], window), SPREAD_MAX, detail=_spread_detail(gd["dist"], window),
                                unreliable=missing or dist_why))

    slope = _slope(gd["norm"], window)
    _, norm_short = _at_horizon(gd["norm"], horizon, "GD's norm")
    recorded = len(_in_window(gd["norm"], window))
    checks.append(Check.at_most(
        f"GD: slope of ‖w(t)‖ vs ln t over {span}, relative error to ‖ŵ‖",
        abs(slope / norm_hat - 1.0) if norm_hat else None, SLOPE_TOL,
        detail=("" if not norm_hat else
                f"slope {slope:.4g} vs ‖ŵ‖ = {norm_hat:.4g} over {recorded} recorded steps" if math.isfinite(slope) else
                f"no slope: {recorded} recorded steps in the window (at least 3, all finite, are needed)"),
        unreliable=missing or norm_short))

    if config.normalized:
        name = f"normalized GD: distance to the SVM direction at t = {window[1]:.0e}, relative to GD's"
        normalized = _series(metrics, "gd_normalized")["dist"] if "gd_normalized" in ids else empty
        other, other_why = _at_horizon(normalized, horizon, "normalized GD's distance")
        ratio = other / gd_dist if other is not None and gd_dist else None
        checks.append(Check.at_most(
            name, ratio, 1.0, strict=True,
            detail=(f"normalized GD {_fmt(other)} vs GD {_fmt(gd_dist)}" if "gd_normalized" in ids
                    else "normalized GD did not run"),
            unreliable=missing or dist_why or other_why))
    return checks


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _spread_detail(dist: pd.Series, window: tuple[int, int]) -> str:
    part = _in_window(dist, window)
    if part.empty:
        return "no recorded step in the window"
    if len(part) < 3:
        return f"only {len(part)} recorded step(s) in the window (3 needed)"
    values = part.to_numpy()
    if not np.all(np.isfinite(values)):
        return f"{int(np.sum(~np.isfinite(values)))} of {len(part)} recorded distances in the window are not finite"
    scaled = values * np.log(part.index.to_numpy(dtype=float))
    return (f"dist·ln t from {scaled.min():.4g} to {scaled.max():.4g} (median {np.median(scaled):.4g}; max/min − 1 = "
            f"{scaled.max() / scaled.min() - 1:.3g}) over {len(part)} recorded steps")


def _distance_figure(metrics: pd.DataFrame, runs: pd.DataFrame, window: tuple[int, int], path: Path) -> Path:
    """Normalized distance to ŵ/‖ŵ‖ vs t (log-log) per method, and GD's dist·ln t vs t (log x)."""
    ran = [(r, LABELS[r], {"color": f"C{i}"}) for i, r in enumerate(RUNS) if r in set(runs["run_id"])]
    distance, scaled = kinds.series_vs_step(metrics, ["dist", "dist"], ran, floor=1e-17, xlabel="t (steps)",
                                            titles=("‖w/‖w‖ − ŵ/‖ŵ‖‖", "dist·ln t (constant if dist ~ 1/ln t)"))
    scaled.yscale = "linear"
    scaled.curves = [kinds.Curve(c.x[c.x > 1], c.y[c.x > 1] * np.log(c.x[c.x > 1]), "GD: dist·ln t", c.style)
                     for c in scaled.curves if c.label == LABELS["gd"]]
    for panel in (distance, scaled):
        panel.spans = [kinds.Span(*window, "check window")]
    return kinds.draw([distance, scaled], path)


def _margin_figure(metrics: pd.DataFrame, runs: pd.DataFrame, norm_hat: float | None, path: Path) -> Path:
    """Normalized margin minᵢ yᵢxᵢᵀw/‖w‖ vs t and its gap to the SVM margin 1/‖ŵ‖ (log scales)."""
    ran = [(r, LABELS[r], {"color": f"C{i}"}) for i, r in enumerate(RUNS) if r in set(runs["run_id"])]
    margin, gap = kinds.series_vs_step(metrics, ["margin", "margin"], ran, xlabel="t (steps)", titles=(
        "normalized margin", "relative margin gap 1 − margin·‖ŵ‖"))
    margin.yscale = "linear"
    gap.curves = [kinds.Curve(c.x, (1.0 / norm_hat - c.y) * norm_hat, c.label, c.style, 1e-17)
                  for c in gap.curves] if norm_hat else []
    margin.lines = [kinds.Line(1.0 / norm_hat, "SVM margin 1/‖ŵ‖")] if norm_hat else []
    return kinds.draw([margin, gap], path)


def _norm_figure(metrics: pd.DataFrame, norm_hat: float | None, lr: float | None, window: tuple[int, int],
                 path: Path) -> Path:
    """GD's ‖w(t)‖ against ln t with slope ‖ŵ‖, and t·L(t)·η/‖ŵ‖² (→ 1) against t."""
    norm = kinds.Panel(xlabel="ln t", title="‖w(t)‖")
    limit = kinds.Panel(xlabel="t (steps)", title="t·L(t)·η/‖ŵ‖²")
    steps, norms = kinds.series(metrics, "gd", "norm")
    if len(steps):
        log_t = np.log(steps.astype(float))
        norm.curves.append(kinds.Curve(log_t, norms, "GD ‖w(t)‖", {"color": "C0"}))
        if norm_hat:  # the line of slope ‖ŵ‖ through the last point: parallel if ‖w‖ grows like ‖ŵ‖ ln t
            norm.curves.append(kinds.Curve(log_t, norms[-1] + norm_hat * (log_t - log_t[-1]), "slope ‖ŵ‖",
                                           {"color": "grey", "linestyle": "--"}))
        norm.spans.append(kinds.Span(*np.log(window), "check window"))
    steps, loss = kinds.series(metrics, "gd", "loss")
    if len(steps) and norm_hat and lr:
        limit.curves.append(kinds.Curve(steps, steps * loss * lr / norm_hat**2, "GD", {"color": "C0"}))
        limit.lines.append(kinds.Line(1.0, "limit 1"))
        limit.xscale = "log"
    return kinds.draw([norm, limit], path)


STUDY = MaxMargin()
