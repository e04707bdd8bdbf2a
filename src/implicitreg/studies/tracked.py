"""An open experiment fed by a user's own training loop: the runs :class:`implicitreg.Tracker` stores.

Each run is one Tracker (a model, an optimizer, a loop of the user's) writing, every ``every``
steps, the train/test loss and accuracy of the model and the measures it tracks into the
directory's store. Nothing is planned or trained here: the study reads what the Trackers stored,
makes no claim (verdict None, "no claim"), and reports one row per run with its final values and
one figure per measure with a line per run — several Trackers in one directory compare their
optimizers, learning rates or models side by side.

``implicitreg show DIR`` and ``implicitreg report DIR`` read it like any study's directory; it is not
listed by ``implicitreg list`` and cannot be started by ``implicitreg run`` (its runs come from a
training loop).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import Field

from implicitreg.config import ConfigError, Strict
from implicitreg.measures.core import REGISTRY
from implicitreg.plan import Group
from implicitreg.report.figures import PERCENT, axis_label, label
from implicitreg.report.kinds import draw, series_vs_step
from implicitreg.studies.base import Analysis

EVALUATION = ("train_acc", "test_acc", "gap", "train_loss", "test_loss")
"""What every measured step stores besides the measures (accuracies only for class labels, test
values only with test data; ``gap`` is train − test accuracy, or test − train loss for regression)."""


class RunConfig(Strict):
    """What a Tracker stores for its run (the run's ``config`` in the store).

    Attributes:
        measures: the tracked measures (registry names), in the order given.
        every: a measurement every ``every`` steps (and at the run's first step and last one).
        config: the user's own settings (optimizer, learning rate, …): any JSON object.
        loss: the name of the loss function measured and differentiated.
        n_train, n_test: the points evaluated (``n_test`` 0: no test data).
        input_shape: the per-sample input shape of the data.
        init: where θ₀ of the "init" measures (distance from initialization) was taken: the model
            given to the Tracker before training ("construction"), or at its first ``step()``.
    """

    measures: list[str] = Field(default_factory=list)
    every: int = Field(ge=1)
    config: dict[str, Any] = Field(default_factory=dict)
    loss: str
    n_train: int = Field(ge=1)
    n_test: int = Field(ge=0)
    input_shape: list[int]
    init: Literal["construction", "first step"] = "construction"


class Config(Strict):
    """A tracker directory's own settings: none. Every run carries its :class:`RunConfig`; runs with
    different measures, cadences and settings share one directory."""


def _flat(config: Any, prefix: str = "") -> dict[str, Any]:
    """A run's user config as dotted keys → scalars (lists and other values as compact JSON)."""
    if not isinstance(config, dict):
        return {}
    out: dict[str, Any] = {}
    for key, value in config.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flat(value, dotted + "."))
        elif value is None or isinstance(value, (str, int, float, bool)):
            out[dotted] = value
        else:
            out[dotted] = json.dumps(value)
    return out


def _measures(runs: pd.DataFrame) -> list[str]:
    """Every run's measures, in the order they were first tracked."""
    names: dict[str, None] = {}
    for config in runs.get("config", []):
        if isinstance(config, dict):
            names.update(dict.fromkeys(config.get("measures") or []))
    return list(names)


def _last(metrics: pd.DataFrame) -> pd.DataFrame:
    """run_id × metric → its value at the last step it was recorded."""
    if metrics.empty:
        return pd.DataFrame()
    latest = metrics.sort_values("step").groupby(["run_id", "name"]).tail(1)
    return latest.pivot(index="run_id", columns="name", values="value")


class Tracked:
    name = "tracker"
    claim = None
    paper = "your own training loop (implicitreg.Tracker)"
    resume_hint = "Reopen their Tracker (same directory and name) to continue them."
    started_by = "its runs come from your own training loop through implicitreg.Tracker"
    Config = Config

    def defaults(self, quick: bool) -> dict[str, Any]:
        raise ConfigError("tracker: its runs come from your own training loop through implicitreg.Tracker; "
                          "`implicitreg run` cannot start them (show and report read a tracker directory)")

    def plan(self, config: Config) -> list[Group]:
        return []

    def planned_runs(self, config: Config, runs: pd.DataFrame) -> list[str]:
        """Every stored run was planned: a Tracker opened it."""
        return list(runs["run_id"]) if "run_id" in runs else []

    def analyze(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame) -> Analysis:
        """One row per run: its status, its settings, the last step measured, and there the train and
        test accuracy and loss, the gap and every tracked measure (values of a run that failed or
        is still running are its last measured ones: the status column says so)."""
        measures = _measures(runs)
        last = _last(metrics)
        settings = [_flat(c.get("config") if isinstance(c, dict) else None) for c in runs.get("config", [])]
        reserved = {"run", "status", "every", "step", *EVALUATION, *measures}
        keys = list(dict.fromkeys(k for s in settings for k in s))
        rows = []
        for (_, run), setting in zip(runs.iterrows(), settings):
            row: dict[str, Any] = {"run": run["run_id"], "status": run["status"]}
            row.update({(f"config.{k}" if k in reserved else k): setting.get(k) for k in keys})
            row["every"] = run["config"].get("every") if isinstance(run["config"], dict) else None
            step = run["final_step"]
            row["step"] = None if step is None or (isinstance(step, float) and math.isnan(step)) else int(step)
            for name in [*EVALUATION, *measures]:
                has = run["run_id"] in last.index and name in last.columns
                if name in EVALUATION and not (name in last.columns):
                    continue  # no run measured it (no test data, regression labels)
                row[name] = float(last.loc[run["run_id"], name]) if has else math.nan
            rows.append(row)
        return Analysis(pd.DataFrame(rows), [], self._notes(runs, metrics, measures))

    @staticmethod
    def _notes(runs: pd.DataFrame, metrics: pd.DataFrame, measures: list[str]) -> list[str]:
        notes = []
        for _, run in runs.iterrows():
            if run["status"] == "failed" and run.get("error"):
                notes.append(f"run {run['run_id']} failed: {str(run['error']).splitlines()[0]}")
            config = run["config"] if isinstance(run["config"], dict) else {}
            uses_init = any("init" in REGISTRY[m].needs for m in config.get("measures", []) if m in REGISTRY)
            if uses_init and config.get("init") == "first step":
                notes.append(f"run {run['run_id']}: θ₀ of its init measures is the model at its first step() (no "
                             "model= was given to the Tracker before training)")
        for name in measures:
            flags = metrics[metrics["name"] == f"{name}.converged"]
            for run_id, part in flags.groupby("run_id", sort=False):
                failed = int((part["value"] < 0.5).sum())
                if failed:
                    notes.append(f"{name}: the estimate did not converge at {failed} of {len(part)} measured steps "
                                 f"of run {run_id} (stored and drawn as they are)")
        return notes

    def figures(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame, directory: Path) -> list[Path]:
        """accuracy.png (train | test accuracy), loss.png (train | test loss) and one figure per
        measure: value against the step, one line per run."""
        shown = metrics.assign(value=[v * 100 if n in PERCENT else v for n, v in zip(metrics["name"], metrics["value"])])
        styles = [(run_id, run_id, {"color": f"C{i % 10}", "marker": "o", "markersize": 2.5})
                  for i, run_id in enumerate(runs["run_id"])]
        stored = set(metrics["name"])
        groups = [("accuracy", ["train_acc", "test_acc"]), ("loss", ["train_loss", "test_loss"])]
        groups += [(name, [name]) for name in _measures(runs)]
        paths = []
        for stem, names in groups:
            names = [n for n in names if n in stored]
            if not names:
                continue
            panels = series_vs_step(shown, names, styles, titles=[label(n) for n in names],
                                    ylabels=[axis_label(n) for n in names], log=(False, False), min_step=0)
            paths.append(draw(panels, directory / f"{stem}.png"))
        return paths


STUDY = Tracked()
