"""adaptive-eos: the per-run table, the checks and the notes, from the stored measurements.

A run's optimizer, step size η and β (heavy-ball momentum, or Adam's β₁) are read from its stored run
config; the planned ones come from the study's :class:`~implicitreg.studies.adaptive_eos.Config`, so a
planned run that is missing (or was stored with other settings) leaves its checks inconclusive. The
band and loss checks are edge-of-stability's (:mod:`implicitreg.studies.edge_of_stability.analysis`),
judging here the median of the ratio over the window that starts at its first upward crossing of 0.9.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from implicitreg.dynamics.adaptive import adam_threshold, heavy_ball_threshold
from implicitreg.studies.base import Check, fmt, with_settings
from implicitreg.studies.edge_of_stability.analysis import (BAND, SHARPENED, Trace, after_sharpening, band_check,
                                                            from_first_dip, loss_check, loss_drop)

OPTIMIZERS = ("momentum", "adam")
RATIO = "over_threshold"  # the measured quantity / its stability threshold, at every measurement
MIN_WINDOW = 5  # fewer measurements after sharpening: too few for a median to say where the ratio settles
#: what each optimizer's threshold bounds: (metric, how the checks name it)
QUANTITY = {"momentum": ("sharpness", "sharpness/((2+2β)/η)"),
            "adam": ("preconditioned_sharpness", "λmax(P⁻¹H)/((2+2β₁)/((1−β₁)η))")}


def threshold(optimizer: str, lr: float, beta: float) -> float:
    """The stability threshold of ``optimizer`` ("momentum" or "adam") at step size ``lr`` and ``beta``."""
    return heavy_ball_threshold(lr, beta) if optimizer == "momentum" else adam_threshold(lr, beta)


def beta(config: Any, optimizer: str) -> float:
    """The β of ``optimizer``'s threshold in ``config``: the momentum, or Adam's β₁."""
    return config.momentum if optimizer == "momentum" else config.beta1


def planned(config: Any) -> list[tuple[str, float]]:
    """(optimizer, η) of every planned run: heavy-ball momentum then Adam, each largest η first."""
    return [("momentum", lr) for lr in sorted(config.momentum_lrs, reverse=True)] + \
           [("adam", lr) for lr in sorted(config.adam_lrs, reverse=True)]


def run_ids(config: Any, runs: pd.DataFrame) -> dict[tuple[str, float], list[str]]:
    """The runs of each planned (optimizer, η): those whose stored config has that optimizer, ``lr`` and the
    configured ``beta`` (none: an empty list)."""
    settings = with_settings(runs.reindex(columns=["run_id"]), runs, ("optimizer", "lr", "beta"))
    settings = settings.reindex(columns=["run_id", "optimizer", "lr", "beta"])
    return {(o, lr): settings.loc[(settings["optimizer"] == o) & (settings["lr"] == lr)
                                  & (settings["beta"] == beta(config, o)), "run_id"].tolist()
            for o, lr in planned(config)}


def traces(config: Any, runs: pd.DataFrame, metrics: pd.DataFrame) -> dict[tuple[str, float], Trace]:
    """A :class:`~implicitreg.studies.edge_of_stability.analysis.Trace` per planned run (empty where none
    is stored): ratio ``over_threshold``, the optimizer's quantity, its Lanczos convergence."""
    return {(o, lr): Trace.of(metrics[metrics["run_id"].isin(ids)], ratio=RATIO, sharpness=QUANTITY[o][0])
            for (o, lr), ids in run_ids(config, runs).items()}


def window(trace: Trace) -> pd.Series:
    """The ratio after sharpening: from its first upward crossing of 0.9 to the last measurement."""
    return after_sharpening(from_first_dip(trace.ratio))


def summary(config: Any, optimizer: str, lr: float, trace: Trace, raw: pd.Series) -> dict[str, Any]:
    """One table row: the run's threshold, its ratio after sharpening and its loss (NaN where nothing was
    measured; a NaN measurement makes the median, range and fraction NaN rather than dropping out);
    ``raw``: Adam's unpreconditioned sharpness (empty for momentum)."""
    ratio, loss = trace.ratio, trace.loss
    after = window(trace)
    nan = after.isna().any() or not len(after)
    last = lambda s: float(s.iloc[-1]) if len(s) else math.nan  # noqa: E731
    start = int(after.index[0]) if len(after) else None
    return {
        "optimizer": optimizer, "lr": lr, "beta": beta(config, optimizer),
        "threshold": threshold(optimizer, lr, beta(config, optimizer)), "quantity": QUANTITY[optimizer][0],
        "initial_ratio": float(ratio.iloc[0]) if len(ratio) else math.nan,
        "sharpened_at_step": start,
        "measurements_after_sharpening": len(after),
        "median_after_sharpening": math.nan if nan else float(after.median()),
        "fraction_in_band": math.nan if nan else float(((after >= BAND[0]) & (after <= BAND[1])).mean()),
        "min_after_sharpening": math.nan if nan else float(after.min()),
        "max_after_sharpening": math.nan if nan else float(after.max()),
        "final_ratio": last(ratio),
        "sharpness_at_sharpening": float(raw.get(start, math.nan)) if start is not None and len(raw) else math.nan,
        "max_sharpness_after": (float(raw[raw.index >= start].max(skipna=False))
                                if start is not None and len(raw[raw.index >= start]) else math.nan),
        "final_sharpness": last(raw) if len(raw) else math.nan,
        "initial_loss": float(loss.iloc[0]) if len(loss) else math.nan,
        "final_loss": last(loss), "loss_drop": loss_drop(loss),
        "loss_increases": last(trace.increases), "diverged": last(trace.diverged_flag),
        "measurements": len(ratio),
        "lanczos_nonconverged": int((trace.converged.reindex(ratio.index) != 1.0).sum()),
    }


def raw_sharpness(config: Any, runs: pd.DataFrame, metrics: pd.DataFrame) -> dict[tuple[str, float], pd.Series]:
    """Adam runs' unpreconditioned sharpness by step (an empty series for momentum, or where none is stored)."""
    out = {}
    for key, ids in run_ids(config, runs).items():
        part = metrics[metrics["run_id"].isin(ids) & (metrics["name"] == "sharpness")].sort_values("step")
        out[key] = (pd.Series(part["value"].to_numpy(), index=part["step"].to_numpy(), dtype=float)
                    if key[0] == "adam" else pd.Series(dtype=float))
    return out


def table(config: Any, runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    raw = raw_sharpness(config, runs, metrics)
    return pd.DataFrame([summary(config, o, lr, trace, raw[(o, lr)])
                         for (o, lr), trace in traces(config, runs, metrics).items()])


def checks(config: Any, runs: pd.DataFrame, metrics: pd.DataFrame) -> list[Check]:
    """For every planned run: the median of its ratio after sharpening in [0.9, 1.1], and the loss drop.

    A run that is missing, stopped short of its last step without diverging, or has a NaN or unconverged
    measurement in its window leaves its band check inconclusive (unless the median already lies above
    the band); see :func:`~implicitreg.studies.edge_of_stability.analysis.band_check`.
    """
    out = []
    for (optimizer, lr), trace in traces(config, runs, metrics).items():
        label = QUANTITY[optimizer][1]
        name = "heavy-ball" if optimizer == "momentum" else "Adam"
        out += [band_check(f"{name} η={lr:g}: median {label} in [{BAND[0]}, {BAND[1]}] after sharpening", trace,
                           config.steps, trace.unfinished(config.steps), statistic="median", label=label,
                           from_below=True, min_window=MIN_WINDOW),
                loss_check(f"{name} η={lr:g}: loss drop (initial/final)", trace, config.steps)]
    return out


def notes(config: Any, table: pd.DataFrame) -> list[str]:
    """What was measured and how the window is found; then, for every Adam run, where its unpreconditioned
    sharpness went after sharpening (from ``table``)."""
    adam = table[table["optimizer"] == "adam"] if "optimizer" in table else table.iloc[0:0]
    observed = [(f"Adam η={row.lr:g}: unpreconditioned sharpness {_number(row.sharpness_at_sharpening)} where the "
                 f"window starts, at most {_number(row.max_sharpness_after)} after, {_number(row.final_sharpness)} at "
                 "the end.") for row in adam.itertuples()]
    return [
        ("heavy-ball: buf ← β·buf + ∇L, θ ← θ − η·buf (torch.optim.SGD, momentum "
         f"{config.momentum:g}, dampening 0); its edge: sharpness = (2 + 2β)/η. Adam: torch.optim.Adam "
         f"(β₁ {config.beta1:g}, β₂ {config.beta2:g}, ε {config.eps:g}), θ ← θ − η·P⁻¹m with "
         "P = (1 − β₁ᵗ)·diag(√(v/(1 − β₂ᵗ)) + ε) (Cohen et al. 2022); its edge: λmax(P⁻¹H) = (2 + 2β₁)/((1 − β₁)η)."),
        ("sharpness: the largest eigenvalue of the Hessian H of L(θ) = ½·mean‖f(x) − y‖²; preconditioned "
         "sharpness: of P⁻¹H, with the P of the step about to be taken (its gradient in v), by Lanczos on "
         f"P^(-1/2)HP^(-1/2) (tol {config.lanczos_tol:g}, at most {config.max_hvp} HVPs) every "
         f"{config.measure_every} steps. over_threshold: that value / the optimizer's threshold."),
        (f"after sharpening: from the first measurement with over_threshold ≥ {SHARPENED} that follows one below "
         f"{SHARPENED} (Adam's starts far above 1: at step 0 P is 1 − β₁ of its later size), to the last step; the "
         f"check holds the median of that window to [{BAND[0]}, {BAND[1]}] (at the edge the ratio oscillates, "
         f"each crossing followed by a drop); fewer than {MIN_WINDOW} measurements there is inconclusive."),
        ("Adam's unpreconditioned sharpness (sharpness_at_sharpening, max_sharpness_after, final_sharpness) is "
         "reported, not checked: Cohen et al. (2022) find it keeps rising at the adaptive edge while P adapts."),
        *observed,
    ]


def _number(value: float) -> str:
    return fmt(value if math.isfinite(value) else None)
