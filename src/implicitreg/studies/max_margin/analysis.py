"""max-margin: the per-run table, the four checks and the notes, from the stored metrics and ŵ.

Runs are ``gd`` and ``gd_normalized`` (their metrics: ``norm``, ``dist``, ``cosine``, ``margin``,
``loss`` on a log grid of steps); GD's step η is read from its stored run config, ŵ from
``solutions.npz`` (``ref_svm``). ``config`` is the study's
:class:`~implicitreg.studies.max_margin.Config`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from implicitreg.studies.base import Check, fmt, problem_source, run_config

COSINE_MIN = 0.99
SPREAD_MAX = 0.10  # dist·ln t: largest relative deviation from its median over the window
SLOPE_TOL = 0.05  # |slope/‖ŵ‖ − 1|
METRICS = ("norm", "dist", "cosine", "margin", "loss")


def svm_norm(solutions: dict[str, np.ndarray]) -> float | None:
    """‖ŵ‖ from ``solutions.npz`` (None when it is missing: an interrupted run)."""
    w_hat = solutions.get("ref_svm")
    return None if w_hat is None else float(np.linalg.norm(w_hat))


def window_of(config: Any) -> tuple[int, int]:
    """The steps of the dist·ln t and slope checks: [window_start, steps]."""
    return config.window_start, config.steps


def series(metrics: pd.DataFrame, run_id: str) -> dict[str, pd.Series]:
    """Each metric of a run as a Series indexed by step (sorted)."""
    part = metrics[metrics["run_id"] == run_id]
    return {name: part[part["name"] == name].set_index("step")["value"].sort_index() for name in METRICS}


def in_window(series: pd.Series, window: tuple[int, int]) -> pd.Series:
    return series[(series.index >= window[0]) & (series.index <= window[1])]


def slope(norms: pd.Series, window: tuple[int, int]) -> float:
    """Least-squares slope of ‖w(t)‖ against ln t over the recorded steps in the window (NaN if fewer
    than 3, or if any of them is not finite: a NaN must not drop out of the fit)."""
    part = in_window(norms, window)
    if len(part) < 3 or not np.all(np.isfinite(part.to_numpy())):
        return math.nan
    return float(np.polyfit(np.log(part.index.to_numpy(dtype=float)), part.to_numpy(), 1)[0])


def spread(dist: pd.Series, window: tuple[int, int]) -> float:
    """How far dist·ln t is from constant over the recorded steps in the window: the largest
    relative deviation max |s/median(s) − 1| of s = dist·ln t (NaN if fewer than 3 steps or any value
    is not finite)."""
    part = in_window(dist, window)
    if len(part) < 3 or not np.all(np.isfinite(part.to_numpy())):
        return math.nan
    scaled = part.to_numpy() * np.log(part.index.to_numpy(dtype=float))
    middle = float(np.median(scaled))
    return float(np.max(np.abs(scaled / middle - 1.0))) if middle > 0 else math.inf


def gd_lr(runs: pd.DataFrame) -> float | None:
    """GD's step η, from its stored run config (None if GD did not run)."""
    lr = run_config(runs, "gd").get("lr")
    return None if lr is None else float(lr)


def table(config: Any, runs: pd.DataFrame, metrics: pd.DataFrame, norm_hat: float | None) -> pd.DataFrame:
    """One row per run: the values at its last recorded step; for GD also the window's slope and spread
    and t·L(t)·η/‖ŵ‖² (→ 1)."""
    lr, window = gd_lr(runs), window_of(config)
    rows = []
    for run_id in runs["run_id"]:
        s = series(metrics, run_id)
        last = {name: (float(v.iloc[-1]) if not v.empty else math.nan) for name, v in s.items()}
        row = {"run": run_id, "final_step": int(s["norm"].index[-1]) if not s["norm"].empty else None,
               "cosine to ŵ": last["cosine"], "distance to ŵ/‖ŵ‖": last["dist"], "‖w‖": last["norm"],
               "normalized margin": last["margin"], "SVM margin 1/‖ŵ‖": (1.0 / norm_hat) if norm_hat else None,
               "loss": last["loss"]}
        if run_id == "gd":
            row["slope of ‖w‖ vs ln t / ‖ŵ‖"] = slope(s["norm"], window) / norm_hat if norm_hat else None
            row["dist·ln t spread"] = spread(s["dist"], window)
            if norm_hat and lr and not s["loss"].empty:
                row["t·L(t)·η/‖ŵ‖²"] = s["loss"].index[-1] * last["loss"] * lr / norm_hat**2
        rows.append(row)
    return pd.DataFrame(rows)


def notes(config: Any, runs: pd.DataFrame, solutions: dict[str, np.ndarray]) -> list[str]:
    """What the columns mean, the window, the data, and how fast the residual's transient decays."""
    window = window_of(config)
    out = [
        "dist = ‖w/‖w‖ − ŵ/‖ŵ‖‖; normalized margin = minᵢ yᵢxᵢᵀw/‖w‖ (the SVM's is 1/‖ŵ‖); loss = mean logistic.",
        f"window for dist·ln t and the slope: t ∈ [{window[0]:.0e}, {window[1]:.0e}] (recorded steps inside it).",
        ("t·L(t)·η/‖ŵ‖² → 1 for the mean loss (Soudry et al.'s sum-loss constant ‖ŵ‖²/η_s with η_s = η/n); "
         "reported, not judged."),
        f"data: {problem_source(runs)}.",
    ]
    rate = solutions.get("ref_log_time_rate")
    if rate is not None and np.isfinite(rate):
        lam = float(rate)
        out.append(
            f"the residual ρ(t) = w(t) − ŵ ln t settles like t^(−λ), λ = λ_min(Zᵀdiag(α)Z) = {lam:.3g} over the "
            f"support vectors (step-size free): t^(−λ) = {window[0] ** -lam:.2f} at t = {window[0]:.0e} and "
            f"{window[1] ** -lam:.2f} at t = {window[1]:.0e}; dist·ln t is constant only once this transient is "
            "small, so a small λ explains a drifting dist·ln t.")
    return out


def at_horizon(series: pd.Series, horizon: int, what: str) -> tuple[float | None, str]:
    """The last recorded value of ``series`` and why it cannot be judged as the value at the horizon
    ('' if it can): nothing recorded, or the last recorded step is not the horizon (a truncated run)."""
    if series.empty:
        return None, f"{what} was not recorded"
    step = int(series.index[-1])
    if step != horizon:
        return float(series.iloc[-1]), f"{what} was last recorded at step {step}, not at the horizon {horizon}"
    return float(series.iloc[-1]), ""


def checks(config: Any, metrics: pd.DataFrame, runs: pd.DataFrame, norm_hat: float | None) -> list[Check]:
    """The four checks; each is inconclusive, naming why, when what it rests on is missing, not finite,
    or does not reach the horizon (a run that stopped early) — never an exception or a silent fail."""
    window = window_of(config)
    horizon = config.steps
    span = f"t ∈ [{window[0]:.0e}, {window[1]:.0e}]"
    ids = set(runs["run_id"])
    empty = pd.Series(dtype=float)
    gd = series(metrics, "gd") if "gd" in ids else {name: empty for name in METRICS}
    missing = ("no solutions.npz (interrupted run?)" if norm_hat is None else
               "" if "gd" in ids else "GD did not run")

    cosine, why = at_horizon(gd["cosine"], horizon, "GD's cosine")
    gd_dist, dist_why = at_horizon(gd["dist"], horizon, "GD's distance")
    out = [Check.at_least(f"GD: cosine to the SVM direction at t = {window[1]:.0e}", cosine, COSINE_MIN,
                          detail=f"distance {fmt(gd_dist)}", unreliable=missing or why)]

    # the window ends at the horizon: a run whose records stop before it leaves the window short
    out.append(Check.at_most(f"GD: dist·ln t constant over {span} (largest deviation from its median)",
                             spread(gd["dist"], window), SPREAD_MAX, detail=_spread_detail(gd["dist"], window),
                             unreliable=missing or dist_why))

    fitted = slope(gd["norm"], window)
    _, norm_short = at_horizon(gd["norm"], horizon, "GD's norm")
    recorded = len(in_window(gd["norm"], window))
    out.append(Check.at_most(
        f"GD: slope of ‖w(t)‖ vs ln t over {span}, relative error to ‖ŵ‖",
        abs(fitted / norm_hat - 1.0) if norm_hat else None, SLOPE_TOL,
        detail=("" if not norm_hat else
                f"slope {fitted:.4g} vs ‖ŵ‖ = {norm_hat:.4g} over {recorded} recorded steps" if math.isfinite(fitted)
                else f"no slope: {recorded} recorded steps in the window (at least 3, all finite, are needed)"),
        unreliable=missing or norm_short))

    if config.normalized:
        name = f"normalized GD: distance to the SVM direction at t = {window[1]:.0e}, relative to GD's"
        normalized = series(metrics, "gd_normalized")["dist"] if "gd_normalized" in ids else empty
        other, other_why = at_horizon(normalized, horizon, "normalized GD's distance")
        ratio = other / gd_dist if other is not None and gd_dist else None
        out.append(Check.at_most(
            name, ratio, 1.0, strict=True,
            detail=(f"normalized GD {fmt(other)} vs GD {fmt(gd_dist)}" if "gd_normalized" in ids
                    else "normalized GD did not run"),
            unreliable=missing or dist_why or other_why))
    return out


def _spread_detail(dist: pd.Series, window: tuple[int, int]) -> str:
    part = in_window(dist, window)
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
