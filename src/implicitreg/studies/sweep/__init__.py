"""sweep: a user's own grid of runs — an open experiment (no claim, no verdict).

A sweep file names a base configuration (``data``, ``model``, ``train``, ``member``) and a grid over
dotted config paths; every combination of the grid's values (a *grid point*) × every seed is a run.
Runs that differ only in per-member settings — the seed, ``train.lr``, ``member.weight_decay``,
``member.dropout``, ``member.label_noise``, ``member.init_scale`` (what :class:`~implicitreg.plan.Member`
holds) — train as one population; any other difference (data, model, the rest of ``train``) makes
another population.

The result is the grid itself: one table row per point (mean ± std over seeds of the final train and
test accuracy, the generalization gap and every tracked measure, with the runs done of those
planned), and, when the grid has two points or more and measures are tracked, how well each measure
ranks the runs by their generalization gap — Kendall's τ and Jiang et al.'s granulated τ (Ψ) over the
grid's axes, computed by :func:`implicitreg.studies.measure_ranking.rank_measures`, the
measure-ranking study's own code.

The file is read and checked by :mod:`implicitreg.sweep` (the driver); this module is the study the
runner stores, resumes, summarizes and reports like any other (``studies.get_study("sweep")``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from implicitreg.plan import Group, Member, group_runs
from implicitreg.studies.base import mean_std
from implicitreg.studies.measure_ranking import ranking_figure
from implicitreg.studies.sweep.analysis import (FINAL, SweepAnalysis, cell, engine_notes, final_table, grid_note,
                                                ranking, ranking_note)
from implicitreg.studies.sweep.figures import step_figures, versus_axis
from implicitreg.studies.sweep.settings import Config, axis_names, points, tracked

__all__ = ["Config", "STUDY", "Sweep", "points"]


class Sweep:
    name = "sweep"
    claim = None  # an open experiment: the grid is the result, there is no verdict
    paper = "your own experiment (a sweep file)"
    started_by = "a sweep runs from its file: implicitreg sweep FILE.toml (examples/ has two)"
    quick_note = "--quick: a tenth of the steps (and of the evaluation and tracking cadences), one seed."
    resume_hint = "Continue them with implicitreg sweep FILE.toml --resume --out DIR (the same file and options)."
    Config = Config

    def defaults(self, quick: bool) -> dict[str, Any]:
        # the tenth of the steps is taken of the file's own numbers, by the driver (implicitreg.sweep)
        return {"seeds": 1} if quick else {}

    def plan(self, config: Config) -> list[Group]:
        runs = []
        for point in points(config):
            s = point.settings
            arch, model = s.model.spec()
            # lr is per member: one population serves every learning rate of the grid
            train = s.train.model_copy(update={"lr": config.train.lr})
            for seed in range(config.seeds):
                member = Member(f"{point.label}/seed{seed}", seed=seed, lr=s.train.lr,
                                weight_decay=s.member.weight_decay, dropout=s.member.dropout,
                                label_noise=s.member.label_noise, init_scale=s.member.init_scale,
                                arm=point.label, tags={"point": point.index})
                runs.append((arch, model, s.data, train, member))
        return group_runs(runs)

    def analyze(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame) -> SweepAnalysis:
        grid = points(config)
        measures = tracked(config)
        final = final_table(config, grid, runs, metrics)
        rows = []
        for point in grid:
            part = final[final["point"] == point.index]
            row: dict[str, Any] = {"point": point.label, **{axis_names(config)[k]: cell(v)
                                                            for k, v in point.values.items()}}
            row["done"] = f"{int((part['status'] == 'done').sum())}/{config.seeds}"
            row["diverged"] = int((part["status"] == "diverged").sum())
            for name in [*FINAL, *measures]:
                row[f"{name}_mean"], row[f"{name}_std"] = mean_std(part[name]) if name in part else (math.nan,
                                                                                                     math.nan)
            rows.append(row)
        table = pd.DataFrame(rows)
        if config.grid:
            table = table.drop(columns=["point"])  # the axis columns say it
        ranked = ranking(config, grid, final, measures)
        notes = [grid_note(config, grid, self.plan(config)), *engine_notes(runs)]
        if ranked is not None:
            notes.append(ranking_note(ranked, config))
        elif measures and len(grid) < 2:
            notes.append("measure ranking: needs a grid of two points or more.")
        fields = {"name": config.name, "description": config.description,
                  "ranking": ranked.to_dict("records") if ranked is not None else None}
        return SweepAnalysis(table, [], notes, fields, ranked)

    def figures(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame, directory: Path) -> list[Path]:
        grid = points(config)
        measures = tracked(config)
        paths = step_figures(config, grid, runs, metrics, measures, directory)
        final = final_table(config, grid, runs, metrics)
        finished = final[final["status"] == "done"]
        for key in config.grid:
            paths.append(versus_axis(config, grid, finished, key, [*FINAL, *measures], directory))
        ranked = ranking(config, grid, final, measures)
        if ranked is not None:
            paths.append(ranking_figure(ranked, directory / "ranking.png"))
        return [p for p in paths if p is not None]


STUDY = Sweep()
