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

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, ValidationError, field_validator, model_validator

from implicitreg.config import (
    CNNConfig,
    DataConfig,
    MLPConfig,
    Strict,
    TrainConfig,
    allowed_keys,
    deep_merge,
    format_validation_error,
)
from implicitreg.models.factory import ModuleConfig
from implicitreg.plan import Group, Member, group_runs
from implicitreg.report import figures as fig
from implicitreg.studies.base import Analysis, final_values, mean_std, tagged
from implicitreg.studies.measure_ranking import mark_unconverged, rank_measures, ranking_figure

#: Settings each member of a population holds for itself (the rest is shared by the population).
PER_MEMBER = ("train.lr", "member.weight_decay", "member.dropout", "member.label_noise", "member.init_scale")
#: The final metrics of the table, before the tracked measures.
FINAL = ("train_acc", "test_acc", "gap")
#: Keys of ``model`` by architecture (``arch`` itself belongs to all).
ARCH_KEYS = {"mlp": ("hidden",), "cnn": ("channels", "layers", "kernel_size"), "module": ("factory",)}
MAX_LINES = 6  # curves per panel before the other axes are averaged over


class ModelSettings(Strict):
    """The network: ``arch`` and the keys of that architecture (the others stay unset)."""

    arch: Literal["mlp", "cnn", "module"] = Field("mlp", description='"mlp", "cnn" or "module" (your own, '
                                                                     "built by factory)")
    hidden: list[int] | None = Field(None, min_length=1, description="mlp: hidden widths (default [256, 256])")
    channels: int | None = Field(None, ge=1, description="cnn: channels per layer (default 25)")
    layers: int | None = Field(None, ge=1, le=6, description="cnn: convolution layers (default 3)")
    kernel_size: int | None = Field(None, ge=1, description="cnn: kernel size (default 5)")
    factory: str | None = Field(None, description='module: "package.module:function", called with '
                                                  "(input_dim, n_classes), returning an nn.Module")

    @model_validator(mode="after")
    def _keys_of_the_arch(self) -> "ModelSettings":
        for key, owners in ((k, [a for a, keys in ARCH_KEYS.items() if k in keys]) for k in
                            ("hidden", "channels", "layers", "kernel_size", "factory")):
            if getattr(self, key) is not None and self.arch not in owners:
                raise ValueError(f"{key} applies to arch = {owners[0]!r}, not {self.arch!r}")
        if self.arch == "module":
            if self.factory is None:
                raise ValueError('arch = "module" needs factory = "package.module:function"')
            ModuleConfig(factory=self.factory)  # its spelling, checked where the model config checks it
        if self.hidden is not None and any(h < 1 for h in self.hidden):
            raise ValueError(f"model.hidden: every width must be >= 1, got {self.hidden}")
        return self

    def spec(self) -> tuple[str, MLPConfig | CNNConfig | ModuleConfig]:
        """The architecture and its model config, as a :class:`~implicitreg.plan.Group` holds them."""
        given = {k: getattr(self, k) for k in ARCH_KEYS[self.arch] if getattr(self, k) is not None}
        model = {"mlp": MLPConfig, "cnn": CNNConfig, "module": ModuleConfig}[self.arch](**given)
        return self.arch, model


class MemberSettings(Strict):
    """Settings each run holds for itself; runs that differ only here (and in seed and ``train.lr``)
    share a population."""

    weight_decay: float = Field(0.0, ge=0.0, description="L2 penalty (train.weight_decay_mode: coupled or "
                                                         "decoupled)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout rate on hidden activations (mlp, cnn)")
    label_noise: float = Field(0.0, ge=0.0, le=1.0, description="fraction of training labels replaced at random")
    init_scale: float = Field(1.0, gt=0.0, description="multiplies the initialization")


class Settings(Strict):
    """One run's settings: the base configuration, or a grid point's."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelSettings = Field(default_factory=ModelSettings)
    train: TrainConfig = Field(default_factory=TrainConfig)
    member: MemberSettings = Field(default_factory=MemberSettings)

    @model_validator(mode="after")
    def _dropout_needs_masks(self) -> "Settings":
        if self.model.arch == "module" and self.member.dropout > 0:
            raise ValueError(f"member.dropout = {self.member.dropout}: dropout masks apply to mlp and cnn, whose "
                             "forward takes them; a module of your own applies its own dropout (with the "
                             "sequential engine) — set member.dropout = 0")
        return self


def grid_paths() -> list[str]:
    """Every dotted config path a grid may vary."""
    return [f"{section}.{key}" for section, model in (("data", DataConfig), ("model", ModelSettings),
                                                      ("train", TrainConfig), ("member", MemberSettings))
            for key in allowed_keys(model)]


def _flatten(grid: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"hidden": [...]}}`` (TOML's unquoted dotted keys) → ``{"model.hidden": [...]}``."""
    flat: dict[str, Any] = {}
    for key, value in grid.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def value_text(value: Any) -> str:
    """A grid value as a label shows it: strings bare, the rest as compact JSON (``[64,64]``, ``0.0001``)."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


class Config(Settings):
    """A sweep file: its name and description, seeds per grid point, the base settings and the grid."""

    name: str | None = Field(None, description="shown in the report and the summary")
    description: str | None = Field(None, description="free text shown in the report")
    seeds: int = Field(1, ge=1, description="runs per grid point (seeds 0 … seeds − 1)")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="dotted config path → its values; every "
                                                                         "combination is a grid point")

    @field_validator("grid", mode="before")
    @classmethod
    def _dotted(cls, grid: Any) -> Any:
        return _flatten(grid) if isinstance(grid, dict) else grid

    @field_validator("grid")
    @classmethod
    def _axes(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        paths = grid_paths()
        for key, values in grid.items():
            if key not in paths:
                hint = ("seeds is the number of runs per point, not an axis" if key in ("seeds", "member.seed")
                        else f"expected one of: {', '.join(paths)}")
                raise ValueError(f"{key!r} is not a config path; {hint}")
            if not values:
                raise ValueError(f"{key}: expected a non-empty list of values, got []")
            texts = [value_text(v) for v in values]
            repeated = sorted({t for t in texts if texts.count(t) > 1})
            if repeated:
                raise ValueError(f"{key}: the value(s) {', '.join(repeated)} appear more than once; list each once")
        return grid

    @model_validator(mode="after")
    def _every_point_validates(self) -> "Config":
        points(self)  # a grid value out of range fails here, naming its point
        return self


@dataclass(frozen=True)
class Point:
    """One grid point: its position in the grid's order, its label, its axis values and settings."""

    index: int
    label: str
    values: dict[str, Any]
    settings: Settings


def axis_names(config: Config) -> dict[str, str]:
    """Each grid key → the short name labels use: its last component where that is unique, else the
    whole dotted path."""
    last = [key.rsplit(".", 1)[-1] for key in config.grid]
    return {key: short if last.count(short) == 1 else key for key, short in zip(config.grid, last)}


def _nested(key: str, value: Any) -> dict[str, Any]:
    node: dict[str, Any] = value
    for part in reversed(key.split(".")):
        node = {part: node}
    return node


def points(config: Config) -> list[Point]:
    """Every combination of the grid's values, in the grid's order (the last axis fastest); a point
    whose settings do not validate raises ``ValueError`` naming the point and the field."""
    base = Settings.model_validate({k: getattr(config, k) for k in Settings.model_fields}).model_dump()
    names = axis_names(config)
    found = []
    for index, combination in enumerate(itertools.product(*config.grid.values())):
        values = dict(zip(config.grid, combination))
        label = ",".join(f"{names[k]}={value_text(v)}" for k, v in values.items()) or "base"
        merged = base
        for key, value in values.items():
            merged = deep_merge(merged, _nested(key, value))
        try:
            settings = Settings.model_validate(merged)
        except ValidationError as err:
            raise ValueError(f"grid point {label}: {format_validation_error(err)}") from None
        found.append(Point(index, label, values, settings))
    return found


def tracked(config: Config) -> list[str]:
    """The measures tracked at any grid point, in order of first appearance."""
    return list(dict.fromkeys(name for point in points(config) for name in point.settings.train.track))


@dataclass
class SweepAnalysis(Analysis):
    """The grid table and notes, plus what ``summary.json`` shows beside them: the sweep's name and
    description and the measure ranking (``summary_fields``)."""

    summary_fields: dict[str, Any] = field(default_factory=dict)
    ranking: pd.DataFrame | None = None


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
        final = _final(config, grid, runs, metrics)
        rows = []
        for point in grid:
            part = final[final["point"] == point.index]
            row: dict[str, Any] = {"point": point.label, **{axis_names(config)[k]: _cell(v)
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
        ranked = _ranking(config, grid, final, measures)
        notes = [_grid_note(config, grid, self.plan(config)), *_engine_notes(runs)]
        if ranked is not None:
            notes.append(_ranking_note(ranked, config))
        elif measures and len(grid) < 2:
            notes.append("measure ranking: needs a grid of two points or more.")
        fields = {"name": config.name, "description": config.description,
                  "ranking": ranked.to_dict("records") if ranked is not None else None}
        return SweepAnalysis(table, [], notes, fields, ranked)

    def figures(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame, directory: Path) -> list[Path]:
        grid = points(config)
        measures = tracked(config)
        paths = _step_figures(config, grid, runs, metrics, measures, directory)
        final = _final(config, grid, runs, metrics)
        finished = final[final["status"] == "done"]
        for key in config.grid:
            paths.append(_versus_axis(config, grid, finished, key, [*FINAL, *measures], directory))
        ranked = _ranking(config, grid, final, measures)
        if ranked is not None:
            paths.append(ranking_figure(ranked, directory / "ranking.png"))
        return [p for p in paths if p is not None]


def _cell(value: Any) -> Any:
    """An axis value as a table cell (and a group key): numbers and strings as they are, lists as text."""
    return value if isinstance(value, (int, float, str)) and not isinstance(value, bool) else value_text(value)


def _final(config: Config, grid: list[Point], runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per stored run: its final metrics (NaN unless it finished), ``point`` (its grid
    index) and a column per axis (its value there, :func:`_cell`)."""
    if runs.empty:
        final = pd.DataFrame(columns=["run_id", "status", "point"])
    else:
        final = tagged(final_values(runs, metrics), runs, required=("point",))
    by_index = {p.index: p for p in grid}
    for key in config.grid:
        final[key] = [_cell(by_index[int(i)].values[key]) if int(i) in by_index else None for i in final["point"]]
    return final


def _ranking(config: Config, grid: list[Point], final: pd.DataFrame, measures: list[str]) -> pd.DataFrame | None:
    """The measure-vs-gap ranking over the finished runs (None: fewer than two grid points or no
    measure tracked); the grid's axes that vary among them are the hyperparameters of Ψ."""
    if len(grid) < 2 or not measures:
        return None
    gap = pd.to_numeric(final["gap"], errors="coerce") if "gap" in final else pd.Series(np.nan, index=final.index)
    models = final[(final["status"] == "done") & np.isfinite(gap.astype(float))]
    models = mark_unconverged(models.reset_index(drop=True), measures)
    varied = [key for key in config.grid if models[key].nunique() > 1]
    return rank_measures(models, measures, varied)


def _grid_note(config: Config, grid: list[Point], groups: list[Group]) -> str:
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


def _engine_notes(runs: pd.DataFrame) -> list[str]:
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


def _ranking_note(ranked: pd.DataFrame, config: Config) -> str:
    best = ranked.iloc[0]
    psi = "" if best["psi"] != best["psi"] else f", Ψ {best['psi']:+.2f}"
    tau = "τ undefined" if best["tau"] != best["tau"] else f"τ {best['tau']:+.2f}"
    axes = ", ".join(config.grid) or "none"
    return (f"measure ranking (as measure-ranking computes it): Kendall τ between sign·measure and the gap over "
            f"{int(ranked['models'].max())} finished run(s), granulated τ (Ψ) over the grid axes ({axes}); first: "
            f"{best['measure']} ({tau}{psi}). Unlike measure-ranking, every finished run counts, whatever its "
            "train loss: runs trained to different losses are compared as they are.")


def _point_label(point: Point, keys: list[str], names: dict[str, str], empty: str) -> str:
    return ", ".join(f"{names[k]}={value_text(point.values[k])}" for k in keys) or empty


def _step_figures(config: Config, grid: list[Point], runs: pd.DataFrame, metrics: pd.DataFrame,
                  measures: list[str], directory: Path) -> list[Path]:
    """Test accuracy and each tracked measure against the step, mean ± std over seeds: one panel per
    value of the first axis, one line per combination of the others (one line per point when the
    grid has one axis, a single line when it has none)."""
    if metrics.empty or runs.empty:
        return []
    names = axis_names(config)
    keys = list(config.grid)
    panel_keys, line_keys = (keys[:1], keys[1:]) if len(keys) > 1 else ([], keys)
    tags = tagged(runs[["run_id"]].copy(), runs, required=("point",))
    labels = {p.index: (_point_label(p, panel_keys, names, ""), _point_label(p, line_keys, names, "mean over seeds"))
              for p in grid}
    tags["panel"] = [labels.get(int(i), ("?", "?"))[0] for i in tags["point"]]
    tags["line"] = [labels.get(int(i), ("?", "?"))[1] for i in tags["point"]]
    long = metrics.merge(tags[["run_id", "panel", "line"]], on="run_id")
    order = {"panel": list(dict.fromkeys(labels[p.index][0] for p in grid)),
             "line": list(dict.fromkeys(labels[p.index][1] for p in grid))}
    paths = []
    for name in ["test_acc", *measures]:
        if not (long["name"] == name).any():
            continue
        title = f"{fig.label(name)} along training, mean ± std over seeds"
        paths.append(fig.curves(long, name, "panel", "line", directory / f"steps_{name}.png", title=title,
                                order=order))
    return paths


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _versus_axis(config: Config, grid: list[Point], finished: pd.DataFrame, key: str, metrics: list[str],
                 directory: Path) -> Path | None:
    """Each final metric against the grid axis ``key`` (mean ± std over seeds), one line per
    combination of the other axes (their mean when there are more than :data:`MAX_LINES`)."""
    shown = [m for m in metrics if m in finished and finished[m].notna().any()]
    if finished.empty or not shown:
        return None
    names = axis_names(config)
    values = config.grid[key]
    numeric = _numeric(values)
    position = {_cell(v): (v if numeric else i) for i, v in enumerate(values)}
    frame = finished.assign(x=finished[key].map(position).astype(float))
    others = [k for k in config.grid if k != key]
    combos = list(dict.fromkeys(tuple(_cell(p.values[k]) for k in others) for p in grid))
    if len(combos) > MAX_LINES:
        lines = [("mean over the other axes", frame)]
    else:
        lines = [(", ".join(f"{names[k]}={c}" for k, c in zip(others, combo)) or None,
                  frame[np.logical_and.reduce([frame[k] == c for k, c in zip(others, combo)])] if others else frame)
                 for combo in combos]
    columns = min(4, len(shown))
    figure, grid_axes = fig.subplots(math.ceil(len(shown) / columns), columns, figsize=(4.2 * columns,
                                     3.4 * math.ceil(len(shown) / columns)), squeeze=False)
    axes = list(grid_axes.flat)
    for ax in axes[len(shown):]:
        ax.set_visible(False)
    positive = numeric and all(v > 0 for v in values)
    log_x = positive and max(values) / min(values) >= 10
    for ax, metric in zip(axes, shown):
        for colour, (label, part) in enumerate(lines):
            fig.trend(ax, part, "x", metric, colour=f"C{colour}", label=label)
        fig.dress(ax, names[key], fig.axis_label(metric), log_x=log_x, legend=7 if ax is axes[0] else None)
        # after dress: a log scale set later would replace the ticks at the grid's values
        ax.set_xticks([float(position[_cell(v)]) for v in values], [value_text(v) for v in values],
                      rotation=0 if numeric else 30, fontsize=8)
        if log_x:
            ax.minorticks_off()
    figure.suptitle(f"final values against {key}, mean ± std over seeds")
    return fig.save_figure(figure, directory / f"final_vs_{key.replace('.', '_')}.png")


STUDY = Sweep()
