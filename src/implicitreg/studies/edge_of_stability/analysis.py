"""edge-of-stability: the per-step-size table, the checks and the notes, from the stored measurements.

A run's step size η is read from its stored run config (``lr``); the planned step sizes come from the
study's :class:`~implicitreg.studies.edge_of_stability.Config`, so a planned η without a run leaves its
checks inconclusive. The pieces a study of another stability threshold reuses — a run's
:class:`Trace`, :func:`after_sharpening`, :func:`band_check`, :func:`loss_check` — take the metric of
sharpness / threshold (here ``sharpness_x_lr_over_2`` = sharpness·η/2) and the check's name; the band
check also takes the statistic it judges (every measurement here, or their median), how the
after-sharpening window starts (here at the first measurement ≥ 0.9; or at the first crossing from
below, for a ratio that starts above the level) and how the ratio is named in its details.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from implicitreg.studies.base import Check, with_settings

BAND = (0.9, 1.1)  # sharpness·η/2 after sharpening (the band)
SHARPENED = 0.9  # "after sharpening": from the first measurement with sharpness·η/2 ≥ this on
LOSS_DROP = 100.0  # initial / final training loss, for the large step sizes
RATIO = "sharpness_x_lr_over_2"
LABEL = "sharpness·η/2"  # how band_check names the ratio in its details
STATISTICS = ("every", "median")  # what band_check holds to the band


def series(part: pd.DataFrame, name: str) -> pd.Series:
    """Metric ``name`` of one run's metrics rows, indexed by step (sorted)."""
    values = part[part["name"] == name].sort_values("step")
    return pd.Series(values["value"].to_numpy(), index=values["step"].to_numpy(), dtype=float)


@dataclass(frozen=True)
class Trace:
    """One run's measurements: ``ratio`` (sharpness / stability threshold), ``sharpness``, ``converged``
    (Lanczos, 1/0), ``loss``, and the last-step ``increases`` and ``diverged`` (1/0) records.

    :meth:`of` reads them from metrics named ``ratio``, ``sharpness`` and ``converged`` (defaults: this
    study's ``sharpness_x_lr_over_2``, ``sharpness``, ``lanczos_converged``), ``loss``, ``loss_increases``
    and ``diverged``."""

    ratio: pd.Series
    sharpness: pd.Series
    converged: pd.Series
    loss: pd.Series
    increases: pd.Series
    diverged_flag: pd.Series

    @classmethod
    def of(cls, part: pd.DataFrame, ratio: str = RATIO, sharpness: str = "sharpness",
           converged: str = "lanczos_converged") -> Trace:
        return cls(*(series(part, n) for n in (ratio, sharpness, converged, "loss", "loss_increases", "diverged")))

    @property
    def diverged(self) -> bool:
        return bool(len(self.diverged_flag) and self.diverged_flag.iloc[-1] == 1.0)

    def unfinished(self, steps: int) -> str:
        """Why the run cannot be judged as a whole ('' if it can): nothing measured, or the last
        measurement precedes ``steps`` without a divergence (an interrupted run)."""
        if not len(self.ratio):
            return "no sharpness was measured"
        if not self.diverged and int(self.ratio.index[-1]) != steps:
            return f"the last measurement is at step {int(self.ratio.index[-1])}, not {steps} (an unfinished run?)"
        return ""


def planned(config: Any) -> list[float]:
    """The step sizes of the plan, largest first."""
    return sorted(config.lrs, reverse=True)


def run_ids(config: Any, runs: pd.DataFrame) -> dict[float, list[str]]:
    """The runs of each planned step size: those whose stored config has that ``lr`` (none: an empty list)."""
    settings = with_settings(runs.reindex(columns=["run_id"]), runs, ("lr",))
    return {lr: settings.loc[settings["lr"] == lr, "run_id"].tolist() for lr in planned(config)}


def traces(config: Any, runs: pd.DataFrame, metrics: pd.DataFrame) -> dict[float, Trace]:
    """A :class:`Trace` per planned step size (an empty one where no run has it)."""
    return {lr: Trace.of(metrics[metrics["run_id"].isin(ids)]) for lr, ids in run_ids(config, runs).items()}


def after_sharpening(ratio: pd.Series, level: float = SHARPENED) -> pd.Series:
    """The measurements from the first with ratio ≥ ``level`` on (empty if none crossed)."""
    crossed = ratio[ratio >= level]
    return ratio[ratio.index >= crossed.index[0]] if len(crossed) else ratio.iloc[0:0]


def from_first_dip(ratio: pd.Series, level: float = SHARPENED) -> pd.Series:
    """The measurements from the first with ratio < ``level`` on (all of them if none is below): a ratio
    that starts above the level — Adam's preconditioned sharpness at step 0, whose bias-corrected
    preconditioner is 1 − β₁ of its later size — sharpens only after it has first fallen below it."""
    below = ratio[ratio < level]
    return ratio[ratio.index >= below.index[0]] if len(below) else ratio


def loss_drop(loss: pd.Series) -> float:
    """Initial / final training loss (0 if the run diverged to an infinite loss; NaN if unknown)."""
    if not len(loss) or not loss.iloc[-1] > 0:
        return math.nan
    return float(loss.iloc[0] / loss.iloc[-1])


def uncertain(values: pd.Series, converged: pd.Series) -> pd.Series:
    """Which measurements do not pin the top eigenvalue: NaN, or Lanczos did not converge (then the value
    is only a lower bound of it)."""
    return values.isna() | (converged.reindex(values.index) != 1.0)


def summary(lr: float, trace: Trace) -> dict[str, Any]:
    """One table row: the step size's sharpness and loss statistics (NaN where nothing was measured;
    a NaN measurement makes the maxima and minima NaN rather than dropping out of them)."""
    ratio, loss, converged, sharp = trace.ratio, trace.loss, trace.converged, trace.sharpness
    after = after_sharpening(ratio)
    last = lambda s: float(s.iloc[-1]) if len(s) else math.nan  # noqa: E731
    return {
        "lr": lr, "two_over_lr": 2 / lr,
        "initial_sharpness": float(sharp.iloc[0]) if len(sharp) else math.nan,
        "max_sharpness_x_lr_over_2": float(ratio.max(skipna=False)) if len(ratio) else math.nan,
        "sharpened_at_step": int(after.index[0]) if len(after) else None,
        "min_after_sharpening": float(after.min(skipna=False)) if len(after) else math.nan,
        "max_after_sharpening": float(after.max(skipna=False)) if len(after) else math.nan,
        "measurements_after_sharpening": len(after),
        "final_sharpness_x_lr_over_2": last(ratio),
        "initial_loss": float(loss.iloc[0]) if len(loss) else math.nan,
        "final_loss": last(loss),
        "loss_drop": loss_drop(loss),
        "loss_increases": last(trace.increases), "diverged": last(trace.diverged_flag),
        "measurements": len(ratio), "lanczos_nonconverged": int((converged.reindex(ratio.index) != 1.0).sum()),
        "lanczos_nonconverged_after_sharpening": int((converged.reindex(after.index) != 1.0).sum()) if len(after) else 0,
    }


def table(config: Any, runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame([summary(lr, trace) for lr, trace in traces(config, runs, metrics).items()])


def checks(config: Any, runs: pd.DataFrame, metrics: pd.DataFrame) -> list[Check]:
    """The edge-of-stability band and loss drop for the two largest η; stability for the smallest.

    A measurement that is NaN or whose Lanczos did not converge (a lower bound) leaves a check
    inconclusive unless the check already fails on measurements that are certain; so does a run that
    stopped short of its last step without diverging.
    """
    out = []
    found = traces(config, runs, metrics)
    for i, (lr, trace) in enumerate(found.items()):
        short = trace.unfinished(config.steps)
        if i < 2:
            out += [band_check(f"η={lr:g}: sharpness·η/2 in [{BAND[0]}, {BAND[1]}] after sharpening", trace,
                               config.steps, short),
                    loss_check(f"η={lr:g}: loss drop (initial/final)", trace, config.steps)]
        if i == len(found) - 1:  # lrs has at least 3 step sizes
            out.append(stable_check(lr, trace, short))
    return out


def band_check(name: str, trace: Trace, steps: int, short: str, *, statistic: str = "every", label: str = LABEL,
               from_below: bool = False, min_window: int = 1) -> Check:
    """The ratio after sharpening lies within :data:`BAND`: every measurement of the window
    (``statistic="every"``) or their median (``"median"``).

    The window runs from the first measurement with ratio ≥ :data:`SHARPENED` (:func:`after_sharpening`)
    to the last; with ``from_below``, from the first such measurement after one below it
    (:func:`from_first_dip`). A window of fewer than ``min_window`` measurements leaves the check
    inconclusive (sharpened too late to tell where the ratio settles); ``label`` names the ratio in the
    details; ``short`` is why the run cannot be judged ('' if it can: :meth:`Trace.unfinished`).
    """
    if statistic not in STATISTICS:
        raise ValueError(f"statistic: expected one of {STATISTICS}, got {statistic!r}")
    ratio, converged = (from_first_dip(trace.ratio) if from_below else trace.ratio), trace.converged
    after = after_sharpening(ratio)
    if not len(after):
        # never sharpened: the peak lies below the band, so the claim fails (or is unknown if a measurement
        # is NaN or a lower bound)
        doubtful = uncertain(ratio, converged)
        peak = float(ratio.max(skipna=False)) if len(ratio) else None
        return Check.within(name, peak, *BAND, of="every measurement" if statistic == "every" else "peak",
                            detail=(f"never sharpened: {label} peaked at {peak:.3f} < {SHARPENED} in "
                                    f"{steps} steps" if peak is not None and math.isfinite(peak) else ""),
                            unreliable=short or (f"{int(doubtful.sum())} measurement(s) NaN or not converged"
                                                 if doubtful.any() else ""))
    if statistic == "median":
        return _median_check(name, after, converged, short, min_window)
    doubtful = uncertain(after, converged)
    certain = after[~doubtful]
    # a lower bound above the band is out of it whatever the true value
    outside = ((certain < BAND[0]) | (certain > BAND[1])).any() or (after[doubtful] > BAND[1]).any()
    finite = after.dropna()
    worst = float(finite.iloc[int(np.argmax(np.abs(finite.to_numpy() - 1.0)))]) if len(finite) else None
    doubt = short or (f"{int(doubtful.sum())} of the {len(after)} measurements after sharpening are NaN or did not "
                      "converge (a lower bound of the top eigenvalue)" if doubtful.any() else "")
    return Check.within(name, worst, *BAND, of="every measurement",
                        detail=(f"sharpened at step {int(after.index[0])}; {len(after)} measurements after, range "
                                f"[{finite.min():.3f}, {finite.max():.3f}]; final {after.iloc[-1]:.3f}"
                                if len(finite) else f"sharpened at step {int(after.index[0])}"),
                        unreliable="" if outside else doubt)


def _median_check(name: str, after: pd.Series, converged: pd.Series, short: str, min_window: int) -> Check:
    """The median of the window ``after`` within :data:`BAND` (see :func:`band_check`)."""
    doubtful = uncertain(after, converged)
    finite = after.dropna()
    median = float(finite.median()) if len(finite) else None
    # a measurement that did not converge is a lower bound, so the true median is at least the median of the
    # values: above the band, it is out of it whatever the true values (a NaN could be anything)
    outside = median is not None and median > BAND[1] and not after.isna().any()
    doubt = short or (f"{int(doubtful.sum())} of the {len(after)} measurements after sharpening are NaN or did not "
                      "converge (a lower bound of the top eigenvalue)" if doubtful.any() else "")
    few = (f"only {len(after)} measurement(s) after sharpening, fewer than {min_window}: sharpened too late to "
           "tell where it settles" if len(after) < min_window else "")
    inside = int(((finite >= BAND[0]) & (finite <= BAND[1])).sum())
    return Check.within(name, median, *BAND, of="median after sharpening",
                        detail=(f"sharpened at step {int(after.index[0])}; {len(after)} measurements after: median "
                                f"{median:.3f}, {inside} in [{BAND[0]}, {BAND[1]}], range [{finite.min():.3f}, "
                                f"{finite.max():.3f}]; final {after.iloc[-1]:.3f}"
                                if len(finite) else f"sharpened at step {int(after.index[0])}"),
                        unreliable=few or ("" if outside else doubt))


def loss_check(name: str, trace: Trace, steps: int) -> Check:
    """The training loss falls at least :data:`LOSS_DROP`× from initialization to step ``steps``."""
    loss, increases = trace.loss, trace.increases
    doubt = ""
    if len(loss) and int(loss.index[0]) != 0:
        doubt = f"the first recorded loss is at step {int(loss.index[0])}, not at initialization"
    elif len(loss) and not trace.diverged and int(loss.index[-1]) != steps:
        doubt = f"the last recorded loss is at step {int(loss.index[-1])}, not {steps} (an unfinished run?)"
    return Check.at_least(
        name, loss_drop(loss), LOSS_DROP, unreliable=doubt,
        detail=(f"loss {loss.iloc[0]:.3g} → {loss.iloc[-1]:.3g}" if len(loss) else "no loss recorded")
        + (f"; {int(increases.iloc[-1])} steps increased the loss" if len(increases) and increases.notna().all() else "")
        + ("; the run diverged" if trace.diverged else ""))


def stable_check(lr: float, trace: Trace, short: str) -> Check:
    """The smallest step size stays below its threshold: max sharpness·η/2 < 1 over every measurement."""
    ratio, loss = trace.ratio, trace.loss
    doubtful = uncertain(ratio, trace.converged)
    finite = ratio.dropna()
    peak = float(finite.max()) if len(finite) else None
    crossed = peak is not None and peak >= 1.0  # a lower bound at or above 1 crosses whatever the true value
    doubt = short or (f"{int(doubtful.sum())} of {len(ratio)} measurements are NaN or did not converge (a lower "
                      "bound of the top eigenvalue)" if doubtful.any() else "")
    detail = f"2/η = {2 / lr:.3g}"
    if peak is not None:
        detail += f"; sharpness {ratio.iloc[0] * 2 / lr:.3g} at init, at most {peak * 2 / lr:.3g}"
    if len(loss):
        detail += f"; loss {loss.iloc[0]:.3g} → {loss.iloc[-1]:.3g}"
    return Check.at_most(f"η={lr:g} (small): sharpness stays below 2/η", peak, 1.0, strict=True,
                         of="max sharpness·η/2", detail=detail, unreliable="" if crossed else doubt)


def notes(config: Any) -> list[str]:
    return [
        ("sharpness: the largest eigenvalue of the Hessian of L(θ) = ½·mean‖f(x) − y‖² over all parameters, "
         f"by Lanczos (tol {config.lanczos_tol:g}, at most {config.max_hvp} HVPs) every {config.measure_every} "
         "steps; shown as sharpness·η/2 (1 = the stability threshold 2/η)."),
        f"after sharpening: from the first measurement with sharpness·η/2 ≥ {SHARPENED} on, to the last step.",
        "loss_increases: GD steps whose full-batch loss exceeded the previous step's (non-monotone descent).",
        ("lanczos_nonconverged: measurements whose Ritz residual stayed above tol (their value is a lower bound "
         "of the top eigenvalue); they are counted, not dropped."),
    ]
