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
class Check:
    """One numeric test of the claim: ``passed`` is None when the value could not be computed."""

    name: str
    value: float | None
    threshold: str
    passed: bool | None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Analysis:
    """A study's judgement of what ran: the table, the checks and the verdict they imply."""

    table: pd.DataFrame
    checks: list[Check]
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """pass if every check passed; fail if any failed; inconclusive if any could not be computed."""
        if any(c.passed is False for c in self.checks):
            return "fail"
        if not self.checks or any(c.passed is None for c in self.checks):
            return "inconclusive"
        return "pass"


class Study(Protocol):
    """The interface every study implements (see :mod:`implicitreg.studies.explicit_vs_implicit`)."""

    name: ClassVar[str]
    claim: ClassVar[str]
    paper: ClassVar[str]
    Config: ClassVar[type[BaseModel]]

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


def final_values(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its columns from ``runs`` plus every metric's value at the run's last
    recorded step (runs stop at different steps). A run with no metrics has NaN values.
    """
    last_step = metrics.groupby("run_id")["step"].transform("max")
    last = metrics[metrics["step"] == last_step].pivot(index="run_id", columns="name", values="value")
    return runs.drop(columns=["config", "provenance"]).merge(last.reset_index(), on="run_id", how="left")


def mean_std(values: pd.Series) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) over finite values."""
    finite = values.dropna()
    if finite.empty:
        return math.nan, math.nan
    return float(finite.mean()), float(finite.std(ddof=1)) if len(finite) > 1 else 0.0


def with_model(frame: pd.DataFrame) -> pd.DataFrame:
    """Add the model column (the first part of ``model/arm/seedN`` run ids)."""
    return frame.assign(model=frame["run_id"].str.split("/").str[0])


def n_classes(data: Any) -> int:
    """Classes of a study's classification data set (``data``: its DataConfig)."""
    return 2 if data.name == "separable" else 10
