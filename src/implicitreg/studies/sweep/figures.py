"""A sweep's figures: test accuracy and tracked measures along training per grid point, and each
final metric against each grid axis (mean ± std over seeds)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from implicitreg.report import figures as fig
from implicitreg.studies.base import tagged
from implicitreg.studies.sweep.analysis import cell
from implicitreg.studies.sweep.settings import Config, Point, axis_names, value_text

MAX_LINES = 6  # curves per panel before the other axes are averaged over


def _point_label(point: Point, keys: list[str], names: dict[str, str], empty: str) -> str:
    return ", ".join(f"{names[k]}={value_text(point.values[k])}" for k in keys) or empty


def step_figures(config: Config, grid: list[Point], runs: pd.DataFrame, metrics: pd.DataFrame,
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


def versus_axis(config: Config, grid: list[Point], finished: pd.DataFrame, key: str, metrics: list[str],
                 directory: Path) -> Path | None:
    """Each final metric against the grid axis ``key`` (mean ± std over seeds), one line per
    combination of the other axes (their mean when there are more than :data:`MAX_LINES`)."""
    shown = [m for m in metrics if m in finished and finished[m].notna().any()]
    if finished.empty or not shown:
        return None
    names = axis_names(config)
    values = config.grid[key]
    numeric = _numeric(values)
    position = {cell(v): (v if numeric else i) for i, v in enumerate(values)}
    frame = finished.assign(x=finished[key].map(position).astype(float))
    others = [k for k in config.grid if k != key]
    combos = list(dict.fromkeys(tuple(cell(p.values[k]) for k in others) for p in grid))
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
        ax.set_xticks([float(position[cell(v)]) for v in values], [value_text(v) for v in values],
                      rotation=0 if numeric else 30, fontsize=8)
        if log_x:
            ax.minorticks_off()
    figure.suptitle(f"final values against {key}, mean ± std over seeds")
    return fig.save_figure(figure, directory / f"final_vs_{key.replace('.', '_')}.png")
