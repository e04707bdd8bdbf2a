"""A sweep's analysis: one table row per grid point, the measure-vs-gap ranking (measure-ranking's
own code) and the notes that say how the grid was trained."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from implicitreg.plan import Group
from implicitreg.studies.base import Analysis, final_values, tagged
from implicitreg.studies.measure_ranking import mark_unconverged, rank_measures
from implicitreg.studies.sweep.settings import PER_MEMBER, Config, Point, value_text

#: The final metrics of the table, before the tracked measures.
FINAL = ("train_acc", "test_acc", "gap")


@dataclass
class SweepAnalysis(Analysis):
    """The grid table and notes, plus what ``summary.json`` shows beside them: the sweep's name and
    description and the measure ranking (``summary_fields``)."""

    summary_fields: dict[str, Any] = field(default_factory=dict)
    ranking: pd.DataFrame | None = None


def cell(value: Any) -> Any:
    """An axis value as a table cell (and a group key): numbers and strings as they are, lists as text."""
    return value if isinstance(value, (int, float, str)) and not isinstance(value, bool) else value_text(value)


def final_table(config: Config, grid: list[Point], runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per stored run: its final metrics (NaN unless it finished), ``point`` (its grid
    index) and a column per axis (its value there, :func:`cell`)."""
    if runs.empty:
        final = pd.DataFrame(columns=["run_id", "status", "point"])
    else:
        final = tagged(final_values(runs, metrics), runs, required=("point",))
    by_index = {p.index: p for p in grid}
    for key in config.grid:
        final[key] = [cell(by_index[int(i)].values[key]) if int(i) in by_index else None for i in final["point"]]
    return final


def ranking(config: Config, grid: list[Point], final: pd.DataFrame, measures: list[str]) -> pd.DataFrame | None:
    """The measure-vs-gap ranking over the finished runs (None: fewer than two grid points or no
    measure tracked); the grid's axes that vary among them are the hyperparameters of Ψ."""
    if len(grid) < 2 or not measures:
        return None
    gap = pd.to_numeric(final["gap"], errors="coerce") if "gap" in final else pd.Series(np.nan, index=final.index)
    models = final[(final["status"] == "done") & np.isfinite(gap.astype(float))]
    models = mark_unconverged(models.reset_index(drop=True), measures)
    varied = [key for key in config.grid if models[key].nunique() > 1]
    return rank_measures(models, measures, varied)


def grid_note(config: Config, grid: list[Point], groups: list[Group]) -> str:
    axes = " × ".join(f"{k} ({len(v)})" for k, v in config.grid.items()) or "no axes (the base configuration)"
    shared = [k for k in config.grid if k in PER_MEMBER]
    split = [k for k in config.grid if k not in PER_MEMBER]
    how = []
    if shared:
        how.append(f"{', '.join(shared)} {'vary' if len(shared) > 1 else 'varies'} inside a population")
    if split:
        how.append(f"{', '.join(split)} {'make' if len(split) > 1 else 'makes'} separate populations")
    runs = len(grid) * config.seeds
    return (f"grid: {len(grid)} point(s) over {axes}, × {config.seeds} seed(s) = {runs} run(s) in "
            f"{len(groups)} population(s)" + (f"; {'; '.join(how)}." if how else "."))


def engine_notes(runs: pd.DataFrame) -> list[str]:
    """A line for the runs that trained on the sequential engine because the population engine
    could not take their model (the reason is in each run's provenance)."""
    if runs.empty or "provenance" not in runs:
        return []
    reasons = [p.get("engine_reason") for p in runs["provenance"] if isinstance(p, dict) and p.get("engine_reason")]
    if not reasons:
        return []
    first = reasons[0]
    return [f"{len(reasons)} run(s) trained on the sequential engine, one model at a time: {first}, which the "
            "population engine cannot stack."]


def ranking_note(ranked: pd.DataFrame, config: Config) -> str:
    best = ranked.iloc[0]
    psi = "" if best["psi"] != best["psi"] else f", Ψ {best['psi']:+.2f}"
    tau = "τ undefined" if best["tau"] != best["tau"] else f"τ {best['tau']:+.2f}"
    axes = ", ".join(config.grid) or "none"
    return (f"measure ranking (as measure-ranking computes it): Kendall τ between sign·measure and the gap over "
            f"{int(ranked['models'].max())} finished run(s), granulated τ (Ψ) over the grid axes ({axes}); first: "
            f"{best['measure']} ({tau}{psi}). Unlike measure-ranking, every finished run counts, whatever its "
            "train loss: runs trained to different losses are compared as they are.")
