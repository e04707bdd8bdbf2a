"""catapult: the table, the checks and the notes, from the stored runs.

Every run's model, rate (η·λ₀) and kind (``phase`` or ``bisection``) are read from its stored config; its
phase is classified here from its stored summary (:func:`~.phases.classify`), never taken from the solver.
A planned (model, rate, seed) without a judgeable run counts as missing: a check resting on fewer than
half of the planned seeds is inconclusive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from implicitreg.studies.base import Check, Support, final_values, fmt, mean_std, with_settings
from implicitreg.studies.catapult.phases import DRIFT, FIT, INCREASE, PHASES, RISE, classify, expected

PAPER_ETA_MAX = {"linear": 4.0, "relu": 12.0}  # η_max·λ₀: the uv model's analysis; the paper's ReLU networks
ETA_MAX_BAND = {"linear": (3.6, 4.4), "relu": (4.0, 12.0)}  # the checks' bands for the bisected η_max·λ₀
MAJORITY = 0.75  # a phase is "observed" at a rate when at least this fraction of the judged seeds shows it
SETTINGS = ("kind", "model", "rate", "low", "high")  # low, high: a bisection's initial bracket


def finals(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its settings (kind, model, rate), seed, status and every metric at its last step
    (diverged runs kept: divergence is a phase), plus ``phase`` for the phase runs (None: not judgeable)."""
    if runs.empty:
        return pd.DataFrame(columns=["run_id", "seed", "status", *SETTINGS, "phase"])
    frame = with_settings(final_values(runs, metrics, keep_diverged=True), runs, SETTINGS)
    frame["phase"] = [classify(row) if row.get("kind") == "phase" else None
                      for row in frame.to_dict("records")]
    return frame


def phase_part(frame: pd.DataFrame, model: str, rate: float) -> pd.DataFrame:
    if frame.empty:
        return frame
    return frame[(frame["kind"] == "phase") & (frame["model"] == model) & (frame["rate"] == rate)]


def bisection_part(frame: pd.DataFrame, model: str) -> pd.DataFrame:
    if frame.empty:
        return frame
    return frame[(frame["kind"] == "bisection") & (frame["model"] == model)]


def counts(phases: pd.Series) -> str:
    """``catapult 7, other 1`` (phases seen, in :data:`PHASES` order; unjudgeable runs as ``n/a``)."""
    seen = [f"{p} {int((phases == p).sum())}" for p in PHASES if (phases == p).any()]
    missing = int(phases.isna().sum())
    return ", ".join(seen + ([f"n/a {missing}"] if missing else [])) or "none"


@dataclass(frozen=True)
class EtaMax:
    """The bisected η_max·λ₀ of one model's seeds: ``estimates`` (per seed, the midpoint of its bracket where
    both ends held, NaN elsewhere), ``above`` (the seeds whose upper end was stable: η_max·λ₀ ≥ that end) and
    ``below`` (whose lower end was not: η_max·λ₀ < that end), as bounds, and a line per failed seed."""

    estimates: pd.Series
    above: list[float]
    below: list[float]
    failed: list[str]


def eta_max_estimates(part: pd.DataFrame) -> EtaMax:
    values, above, below, failed = [], [], [], []
    for row in part.to_dict("records"):
        low, high = row.get("eta_max_low", math.nan), row.get("eta_max_high", math.nan)
        low_ok, high_ok = row.get("bracket_low_ok"), row.get("bracket_high_ok")
        if low_ok == 1.0 and high_ok == 1.0 and np.isfinite(low) and np.isfinite(high):
            values.append((low + high) / 2)
            continue
        values.append(math.nan)
        if low_ok == 0.0:
            below.append(float(row.get("low", math.nan)))
            failed.append(f"seed {row['seed']}: the lower end {fmt(below[-1])} was not stable")
        elif high_ok == 0.0:
            above.append(float(row.get("high", math.nan)))
            failed.append(f"seed {row['seed']}: the upper end {fmt(above[-1])} was stable (η_max·λ₀ above it)")
    return EtaMax(pd.Series(values, dtype=float), above, below, failed)


def table(config: Any, runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """A row per (model, rate): the phases seen over the seeds beside the paper's, and the medians/means of what
    classifies them; then a row per model (rate ``η_max``): the bisected η_max·λ₀ over the seeds."""
    frame = finals(runs, metrics)
    rows = []
    for model in config.models:
        for rate in config.rates:
            part = phase_part(frame, model, rate)
            row: dict[str, Any] = {"model": model, "eta_lambda0": f"{rate:g}",
                                   "expected": expected(model, rate, PAPER_ETA_MAX) or "boundary",
                                   "phases": counts(part["phase"]) if len(part) else "none"}
            for name in ("max_loss_ratio", "final_loss_ratio"):
                row[f"{name}_median"] = float(part[name].median()) if name in part and len(part) else math.nan
            for name in ("lambda_end_ratio", "eta_lambda_end", "eta_hessian_end", "active_units"):
                row[f"{name}_mean"], row[f"{name}_std"] = mean_std(part[name]) if name in part else (math.nan,
                                                                                                     math.nan)
            rows.append(row)
        bisected = eta_max_estimates(bisection_part(frame, model))
        mean, std = mean_std(bisected.estimates)
        rows.append({"model": model, "eta_lambda0": "η_max", "expected": f"≈ {PAPER_ETA_MAX[model]:g}",
                     "phases": f"{int(bisected.estimates.notna().sum())}/{config.seeds} seeds bracketed",
                     "eta_max_mean": mean, "eta_max_std": std})
    return pd.DataFrame(rows)


def checks(config: Any, runs: pd.DataFrame, metrics: pd.DataFrame) -> list[Check]:
    """Per model: the phase at every rate with an expected phase (observed in ≥ :data:`MAJORITY` of the judged
    seeds), then the bisected η_max·λ₀ (mean over the bracketed seeds) within :data:`ETA_MAX_BAND`."""
    frame = finals(runs, metrics)
    out = []
    for model in config.models:
        for rate in config.rates:
            want = expected(model, rate, PAPER_ETA_MAX)
            if want is None:
                continue
            out.append(phase_check(model, rate, want, phase_part(frame, model, rate), config.seeds))
        out.append(eta_max_check(model, bisection_part(frame, model), config))
    return out


def phase_check(model: str, rate: float, want: str, part: pd.DataFrame, planned: int) -> Check:
    phases = part["phase"] if len(part) else pd.Series(dtype=object)
    judged = phases.dropna()
    fraction = float((judged == want).mean()) if len(judged) else None
    detail = f"seeds: {counts(phases)}" if len(phases) else "no run"
    if len(part) and "eta_lambda_end" in part and want == "catapult":
        detail += f"; η·λ_T mean {fmt(mean_std(part['eta_lambda_end'])[0])} (< 2: λ_T below 2/η)"
    if len(part) and "max_loss_ratio" in part and want == "catapult":
        detail += f"; peak loss median {fmt(float(part['max_loss_ratio'].median()))}×L₀"
    if len(part) and "lambda_end_ratio" in part and want == "lazy":
        detail += f"; λ_T/λ₀ mean {fmt(mean_std(part['lambda_end_ratio'])[0], '.4g')}"
    return Check.at_least(f"{model}: η·λ₀ = {rate:g} is {want}", fraction, MAJORITY, of="fraction of seeds",
                          support=Support(len(judged), planned, "seeds"), detail=detail)


def eta_max_check(model: str, part: pd.DataFrame, config: Any) -> Check:
    """The mean over seeds of the bisected η_max·λ₀ within :data:`ETA_MAX_BAND`. Seeds whose bracket failed
    enter as bounds: if the mean over all seeds, with them at their bounds, is already outside the band on their
    side, the check fails on that bound; otherwise they leave it inconclusive."""
    low, high = ETA_MAX_BAND[model]
    bisected = eta_max_estimates(part)
    finite = bisected.estimates.dropna()
    value = float(finite.mean()) if len(finite) else None
    resolution = (config.bisection_high - config.bisection_low) / 2 ** config.bisection_iterations
    detail = (f"per seed {', '.join(fmt(v) for v in finite)}; bracket width {fmt(resolution)}; the paper: "
              f"≈ {PAPER_ETA_MAX[model]:g}" if len(finite) else "no bracketed seed")
    unreliable = ""
    used = len(finite)
    if bisected.failed:
        detail += "; " + "; ".join(bisected.failed)
        bound_above = float(np.mean([*finite, *bisected.above])) if not bisected.below else None
        bound_below = float(np.mean([*finite, *bisected.below])) if not bisected.above else None
        if bound_above is not None and bound_above > high:
            value, used = bound_above, used + len(bisected.above)
            detail = f"a lower bound: the mean with the unbracketed seeds at their upper end; {detail}"
        elif bound_below is not None and bound_below < low:
            value, used = bound_below, used + len(bisected.below)
            detail = f"an upper bound: the mean with the unbracketed seeds at their lower end; {detail}"
        else:
            unreliable = f"{len(bisected.failed)} seed(s) without a bracket"
    return Check.within(f"{model}: η_max·λ₀ by bisection", value, low, high, of="mean over seeds",
                        support=Support(used, config.seeds, "seeds"), unreliable=unreliable, detail=detail)


def outside_band(config: Any, frame: pd.DataFrame) -> list[str]:
    """A note per model whose bisected η_max·λ₀ (mean over its bracketed seeds) left the paper's band, with
    what the runs show about why (ReLU: the fraction of units still active at each rate)."""
    out = []
    for model in config.models:
        finite = eta_max_estimates(bisection_part(frame, model)).estimates.dropna()
        low, high = ETA_MAX_BAND[model]
        if not len(finite) or low <= finite.mean() <= high:
            continue
        line = (f"{model}: the claim does not reproduce here — η_max·λ₀ = {finite.mean():.3g} (seeds {finite.min():.3g} "
                f"… {finite.max():.3g}) lies outside the paper's [{low:g}, {high:g}].")
        if model == "relu":
            active = {rate: mean_std(phase_part(frame, model, rate).get("active_units", pd.Series(dtype=float)))[0]
                      for rate in config.rates}
            shown = ", ".join(f"{v:.2f} at η·λ₀ = {r:g}" for r, v in active.items() if np.isfinite(v))
            line += (f" Fraction of ReLU units active on some training point at the end: {shown}. The catapult "
                     "switches units off, which lowers λ further than the linear model can, so GD still converges "
                     "at rates where the linear network diverges (a loss that stalls because every unit switched "
                     "off counts as unstable in the bisection). The paper's networks (MNIST/CIFAR, width 2048, biases) were not rebuilt "
                     "here: this is a finding at this size, not a verdict on theirs.")
        out.append(line)
    return out


def notes(config: Any, runs: pd.DataFrame, metrics: pd.DataFrame) -> list[str]:
    source = next((c.get("points") for c in runs.get("config", []) if isinstance(c, dict)), None)
    return [*outside_band(config, finals(runs, metrics)),
        ("λ: the top eigenvalue of the empirical NTK on the training set, Θ = J Jᵀ/m (the loss is ½·mean (f − y)²; "
         "Θ's nonzero eigenvalues are those of the Gauss–Newton part JᵀJ/m of the Hessian), measured on a log grid "
         "of steps; rates are c = η·λ₀ with each network's own λ₀. hessian_end: the top eigenvalue of the full "
         f"Hessian at the last step (Lanczos, tol {config.lanczos_tol:g}), shown as η·H_T."),
        (f"phases: divergent — the loss stops being finite or exceeds 1e8·L₀ within {config.steps} steps; lazy — no "
         f"step raises the loss by more than {INCREASE:g}·L₀, L_T ≤ {FIT:g}·L₀ and |λ_T/λ₀ − 1| ≤ {DRIFT:g}; "
         f"catapult — max L_t ≥ {RISE:g}·L₀, then L_T ≤ {FIT:g}·L₀ and η·λ_T < 2; other — anything else (a "
         "stalled loss, e.g. every ReLU unit switched off, or an end oscillating at η·λ_T ≥ 2)."),
        (f"expected phases: lazy below c = 2, catapult from 2 to the paper's η_max·λ₀ (4 for the uv model, its "
         f"analysis; ≈ 12 for ReLU networks, found empirically), divergent above; a phase is observed when at "
         f"least {MAJORITY:g} of the judged seeds show it."),
        (f"η_max: per seed, bisection on c in [{config.bisection_low:g}, {config.bisection_high:g}] "
         f"({config.bisection_iterations} halvings) for the largest c at which GD neither diverges nor stalls "
         f"(L_T ≤ {FIT:g}·L₀ within {config.steps} steps); a ReLU network whose units all switch off stops "
         "learning without diverging, so 'does not diverge' alone would not bound η_max. The estimate is the "
         "bracket's midpoint."),
        (f"width {config.width}, {source if source is not None else config.points} digits images, "
         f"{config.seeds} seeds per model and rate; active_units: the fraction of ReLU units on for at least one "
         "training point at the end."),
    ]
