"""What a study is: configuration, a plan of runs, and an analysis that ends in a verdict.

A study never stores anything itself. A deep-network study declares its grid of runs
(:class:`~implicitreg.plan.Group`), which the population engine trains. A study whose claim is
about an exact solution (min-norm, max-margin, …) also has ``problem()`` and ``solve()``: it
computes its dynamics on a small float64 problem and returns the runs' metrics and the learned
and reference solutions (:class:`Solved`), which the driver stores (``solutions.npz``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol

import numpy as np
import pandas as pd
from pydantic import BaseModel

from implicitreg.plan import Group


@dataclass(frozen=True)
class Support:
    """How many runs a value was computed from, of how many the plan asked for."""

    used: int
    planned: int
    unit: str = "runs"

    @classmethod
    def of(cls, values: pd.Series, planned: int, unit: str = "runs") -> "Support":
        """The finite entries of ``values`` (one per run) out of ``planned``."""
        numeric = pd.to_numeric(values, errors="coerce").astype(float)
        return cls(int(np.isfinite(numeric).sum()), planned, unit)

    @property
    def enough(self) -> bool:
        """At least half of the planned runs remain (a check on fewer is inconclusive)."""
        return 2 * self.used >= self.planned and self.used > 0

    def describe(self) -> str:
        return f"{self.used} of {self.planned} {self.unit}" if self.planned else f"no {self.unit} planned"


def weakest(*supports: Support | None) -> Support | None:
    """The support of a value computed from several parts: the part with the fewest runs left."""
    given = [s for s in supports if s is not None]
    return min(given, key=lambda s: (s.used / s.planned if s.planned else 1.0)) if given else None


def _number(value: Any) -> float | None:
    """A finite float, or None for None, NaN, ±inf and what is not a number."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class Check:
    """One numeric test of the claim: ``passed`` is None when it could not be decided.

    Build checks with :meth:`at_most`, :meth:`at_least`, :meth:`within` or :meth:`equals`: they
    compute ``passed`` and the displayed threshold from the same numbers, and make the check
    inconclusive (``passed = None``, the reason in ``detail``) when the value is None, NaN or
    infinite, when it was computed from fewer than half of the planned runs (``support``), or
    when it rests on something that did not converge (``unreliable``: the reason).
    """

    name: str
    value: float | None
    threshold: str
    passed: bool | None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def at_most(cls, name: str, value: Any, limit: float, *, strict: bool = False, of: str = "",
                detail: str = "", support: Support | None = None, unreliable: str = "") -> "Check":
        """Passes when ``value <= limit`` (``<`` if ``strict``); ``of`` names the compared quantity
        in the threshold when it is not the value itself (``max sharpness·η/2 < 1``)."""
        test = (lambda v: v < limit) if strict else (lambda v: v <= limit)
        return cls._decide(name, value, of, f"{'<' if strict else '<='} {limit:g}", test,
                           detail, support, unreliable)

    @classmethod
    def at_least(cls, name: str, value: Any, limit: float, *, strict: bool = False, of: str = "",
                 detail: str = "", support: Support | None = None, unreliable: str = "") -> "Check":
        """Passes when ``value >= limit`` (``>`` if ``strict``)."""
        test = (lambda v: v > limit) if strict else (lambda v: v >= limit)
        return cls._decide(name, value, of, f"{'>' if strict else '>='} {limit:g}", test,
                           detail, support, unreliable)

    @classmethod
    def within(cls, name: str, value: Any, low: float, high: float, *, of: str = "", detail: str = "",
               support: Support | None = None, unreliable: str = "") -> "Check":
        """Passes when ``low <= value <= high``."""
        return cls._decide(name, value, of, f"in [{low:g}, {high:g}]",
                           lambda v: low <= v <= high, detail, support, unreliable)

    @classmethod
    def equals(cls, name: str, value: Any, target: float, *, tolerance: float = 0.0, of: str = "",
               detail: str = "", support: Support | None = None, unreliable: str = "") -> "Check":
        """Passes when ``|value − target| <= tolerance``."""
        shown = f"= {target:g}" + (f" ± {tolerance:g}" if tolerance else "")
        return cls._decide(name, value, of, shown, lambda v: abs(v - target) <= tolerance,
                           detail, support, unreliable)

    @classmethod
    def interval_above(cls, name: str, estimate: Any, low: Any, high: Any, limit: float, *, detail: str = "",
                       support: Support | None = None, unreliable: str = "") -> "Check":
        """Passes when the whole confidence interval [low, high] of ``estimate`` lies above ``limit``,
        fails when it lies below, and is inconclusive when it contains ``limit``."""
        bounds = (_number(low), _number(high))
        if None in bounds:
            unreliable = "; ".join(filter(None, [unreliable, "no interval"]))
        straddles = None not in bounds and bounds[0] <= limit <= bounds[1]
        if straddles:
            detail = "; ".join(filter(None, [f"the interval contains {limit:g}", detail]))
        return cls._decide(name, estimate, "", f"interval > {limit:g}",
                           lambda _: None if straddles else bounds[0] > limit, detail, support, unreliable)

    @classmethod
    def _decide(cls, name: str, value: Any, of: str, threshold: str, test: Callable[[float], bool | None],
                detail: str, support: Support | None, unreliable: str) -> "Check":
        number = _number(value)
        reasons = []
        if number is None:
            reasons.append("no value" if value is None else f"the value is {value}")
        if support is not None and not support.enough:
            reasons.append(f"computed from {support.describe()} (fewer than half)")
        if unreliable:
            reasons.append(unreliable)
        partial = support is not None and support.enough and support.used < support.planned
        parts = [*reasons, f"computed from {support.describe()}" if partial else "", detail]
        outcome = None if reasons else test(number)
        return cls(name, number, " ".join(filter(None, [of, threshold])), None if outcome is None else bool(outcome),
                   "; ".join(filter(None, parts)))


@dataclass
class Analysis:
    """A study's judgement of what ran: the table, the checks and the verdict they imply."""

    table: pd.DataFrame
    checks: list[Check]
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """pass if every check passed; fail if any failed; inconclusive if any could not be computed."""
        return verdict_of(self.checks)


VERDICTS = ("pass", "fail", "inconclusive", "smoke")


def verdict_of(checks: list[Check]) -> str:
    """pass if every check passed; fail if any failed; inconclusive if any could not be decided."""
    if any(c.passed is False for c in checks):
        return "fail"
    if not checks or any(c.passed is None for c in checks):
        return "inconclusive"
    return "pass"


class Study(Protocol):
    """The interface every study implements (see :mod:`implicitreg.studies.explicit_vs_implicit`)."""

    name: ClassVar[str]
    # None for an open experiment (a sweep, a tracked training loop): it makes no claim, has no
    # checks, and its verdict is None ("no claim") whatever ran.
    claim: ClassVar[str | None]
    paper: ClassVar[str]
    Config: ClassVar[type[BaseModel]]
    # Optional: why a --quick run cannot show the claim (its verdict then reads "smoke"), and the
    # minutes a (quick, full) run takes on 2 CPU cores, printed before training starts.
    # quick_caveat: ClassVar[str]
    # minutes: ClassVar[tuple[float, float]]
    # An open experiment whose runs do not come from plan() (a tracked loop) may also say which
    # runs it planned and how unfinished ones continue:
    # def planned_runs(self, config, runs: pd.DataFrame) -> list[str]: ...
    # resume_hint: ClassVar[str]

    def defaults(self, quick: bool) -> dict[str, Any]: ...

    def plan(self, config: Any) -> list[Group]: ...

    def analyze(self, config: Any, runs: pd.DataFrame, metrics: pd.DataFrame) -> Analysis: ...

    def figures(self, config: Any, runs: pd.DataFrame, metrics: pd.DataFrame, directory: Path) -> list[Path]: ...


ProgressBar = Callable[[str, int], Callable[[int], None]]
"""``bar = progress(label, total)`` starts a progress bar; ``bar(done)`` moves it."""


def no_progress(label: str, total: int) -> Callable[[int], None]:
    return lambda done: None


@dataclass
class SolvedRun:
    """One run of a solved study: its identity, settings and metrics rows (step, name, value)."""

    run_id: str
    arm: str
    config: dict[str, Any]
    metrics: list[tuple[int, str, float]]
    final_step: int
    seed: int = 0
    status: str = "done"
    target_step: int | None = None


@dataclass
class Solved:
    """What ``solve()`` returns: the runs, and the arrays for ``solutions.npz`` — every learned
    predictor under its run label and every reference under ``ref_<name>``."""

    runs: list[SolvedRun]
    arrays: dict[str, np.ndarray]


class SolvedStudy(Study, Protocol):
    """A study with an exact reference: ``problem`` loads or generates the data (``config.data_file``:
    a user's ``.npz``; ``ValueError`` naming the array if it is malformed), ``solve`` runs the
    dynamics, and ``analyze``/``figures`` also receive the arrays of ``solutions.npz``."""

    def problem(self, config: Any) -> Any: ...

    def solve(self, config: Any, problem: Any, progress: ProgressBar) -> Solved: ...


def is_solved(study: Any) -> bool:
    """Whether a study computes its runs itself (``solve``) rather than through populations."""
    return callable(getattr(study, "solve", None))


def final_values(runs: pd.DataFrame, metrics: pd.DataFrame, keep_diverged: bool = False) -> pd.DataFrame:
    """One row per run: its columns from ``runs`` plus every metric's value at the run's last
    recorded step (runs stop at different steps). A run with no metrics has NaN values, and so
    has a run that did not finish (failed, interrupted) or diverged (its last records precede the
    divergence) unless ``keep_diverged``.
    """
    last_step = metrics.groupby("run_id")["step"].transform("max")
    last = metrics[metrics["step"] == last_step].pivot(index="run_id", columns="name", values="value")
    final = runs.drop(columns=["config", "provenance"]).merge(last.reset_index(), on="run_id", how="left")
    # only a finished run's last records are its final values
    stale = ~final["status"].isin(("done", "diverged") if keep_diverged else ("done",))
    final.loc[stale, list(last.columns)] = math.nan
    return final


def mean_std(values: pd.Series) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) over the finite values; how many
    there were is :meth:`Support.of`'s to say, and a check's."""
    numeric = pd.to_numeric(values, errors="coerce").astype(float)
    finite = numeric[np.isfinite(numeric)]
    if finite.empty:
        return math.nan, math.nan
    return float(finite.mean()), float(finite.std(ddof=1)) if len(finite) > 1 else 0.0


def tagged(frame: pd.DataFrame, runs: pd.DataFrame, required: tuple[str, ...] = ()) -> pd.DataFrame:
    """``frame`` (one row per run, with ``run_id``) plus a column per plan tag of its runs
    (``Member.tags``: ``model``, ``width``, …), read from the stored run configs — never parsed
    out of run ids. A run without a tag has NaN there; without a ``required`` one, ``KeyError``
    naming it (results stored before the study tagged its runs)."""
    rows = [{"run_id": run_id, **_tags(config)} for run_id, config in zip(runs["run_id"], runs["config"])]
    for row in rows:
        for name in required:
            if name not in row:
                raise KeyError(f"tag {name!r} of run {row['run_id']} (stored by an older version?)")
    tags = pd.DataFrame(rows) if rows else pd.DataFrame(columns=["run_id", *required])
    extra = [c for c in tags.columns if c != "run_id" and c not in frame.columns]
    return frame.merge(tags[["run_id", *extra]], on="run_id", how="left")


def _tags(config: Any) -> dict[str, Any]:
    """A stored run config's ``member.tags``; {} where the config holds none (or is malformed)."""
    member = config.get("member") if isinstance(config, dict) else None
    tags = member.get("tags") if isinstance(member, dict) else None
    return tags if isinstance(tags, dict) else {}


def with_model(frame: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the ``model`` tag of each run (see :func:`tagged`)."""
    return tagged(frame, runs, required=("model",)).reindex(columns=[*dict.fromkeys([*frame.columns, "model"])])


def seed_summary(part: pd.DataFrame, metrics: list[str], planned: int) -> dict[str, Any]:
    """The columns every per-arm results table shares, over the seeds of one arm (``part``: its
    rows of :func:`final_values`): runs stored, diverged, runs that reached the target of the
    ``planned`` ones, mean and std of each metric over the seeds that have it, and of the steps."""
    row: dict[str, Any] = {"runs": len(part), "diverged": int((part["status"] == "diverged").sum()),
                           "reached_target": f"{int(part['target_step'].notna().sum())}/{planned}"}
    for name in metrics:
        row[f"{name}_mean"], row[f"{name}_std"] = mean_std(part[name]) if name in part else (math.nan, math.nan)
    row["steps_mean"], row["steps_std"] = mean_std(part["final_step"].astype(float))
    return row


def n_classes(data: Any) -> int:
    """Classes of a study's classification data set (``data``: its DataConfig)."""
    return 2 if data.name == "separable" else 10


# --- reading a solved study's runs (flat configs: ``SolvedRun.config``) --------------------------------


def run_config(runs: pd.DataFrame, run_id: str) -> dict[str, Any]:
    """The stored config of run ``run_id`` (a solved run's settings: ``depth``, ``lr``, …); {} when the
    run is missing or its config is not a mapping."""
    if "run_id" not in runs or "config" not in runs:
        return {}
    match = runs.loc[runs["run_id"] == run_id, "config"]
    return dict(match.iloc[0]) if len(match) and isinstance(match.iloc[0], dict) else {}


def with_settings(frame: pd.DataFrame, runs: pd.DataFrame, names: tuple[str, ...]) -> pd.DataFrame:
    """``frame`` (one row per run, with ``run_id``) plus a column per setting in ``names`` read from each
    run's stored config — the solved-study counterpart of :func:`tagged`: hyperparameters reach the
    analysis as columns, never parsed out of run ids. NaN where a run's config lacks a setting."""
    configs = runs["config"] if "config" in runs else pd.Series([{}] * len(runs), dtype=object)
    rows = [{"run_id": run_id, **{n: c[n] for n in names if isinstance(c, dict) and n in c}}
            for run_id, c in zip(runs["run_id"] if "run_id" in runs else [], configs)]
    settings = pd.DataFrame(rows).reindex(columns=["run_id", *names])
    extra = [n for n in names if n not in frame.columns]
    return frame.merge(settings[["run_id", *extra]], on="run_id", how="left")


def problem_source(runs: pd.DataFrame, exclude: tuple[str, ...] = ()) -> str:
    """What a solved study ran on, for its notes: ``"<problem> (n=…, d=…)"`` from the first run config
    whose ``problem`` is set and not in ``exclude``; ``"unknown"`` when none is."""
    for config in runs.get("config", []):
        if isinstance(config, dict) and config.get("problem") not in (None, *exclude):
            return f"{config['problem']} (n={config.get('n')}, d={config.get('d')})"
    return "unknown"


def final_value(final: pd.DataFrame, run_id: str, column: str, key: str = "run_id") -> float | None:
    """One run's value in a one-row-per-run frame (e.g. :func:`final_values`, its run in column ``key``):
    None when the run or the column is missing (a check on it is then inconclusive: "no value"), NaN
    when the stored value is NaN (the check then says so)."""
    if key not in final or column not in final:
        return None
    row = final[final[key] == run_id]
    if row.empty:
        return None
    value = row[column].iloc[0]
    return None if value is None else float(value)


def fmt(value: float | None, spec: str = ".3g") -> str:
    """A number for a check's detail or a note, ``n/a`` when it is missing (None)."""
    return "n/a" if value is None else format(value, spec)
