"""Standard figure kinds: a row of panels, each drawn from a declarative :class:`Panel`.

A study describes *what* each panel shows — curves, horizontal or vertical reference lines, shaded
spans, bars, axis scales, labels with units, a title — and :func:`draw` lays the panels out in one
row and writes the PNG. Two builders cover the shapes the solved studies repeat:

- :func:`series_vs_step`: one panel per stored metric, one curve per run, value against the step
  (log–log by default), from the store's long-format metrics;
- :func:`value_vs_parameter`: one curve per table column against a hyperparameter column (α, depth,
  step size h), with markers, one point per row.

Like :mod:`implicitreg.report.figures`, everything goes through matplotlib's object API (no pyplot);
this module imports nothing of the package above ``report``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from implicitreg.report.figures import save_figure, subplots

GUIDE = {"color": "grey", "linestyle": "--", "linewidth": 1}  # the default look of a reference line


@dataclass
class Curve:
    """A line ``y`` against ``x``; ``style`` goes to ``Axes.plot`` (color, linestyle, marker, …).

    ``floor`` clips ``y`` from below (a zero on a log axis would vanish); ``label=None`` keeps it out
    of the legend.
    """

    x: Any
    y: Any
    label: str | None = None
    style: dict[str, Any] = field(default_factory=dict)
    floor: float | None = None


@dataclass
class Line:
    """A reference line at ``value``: horizontal (``axis="y"``) or vertical (``axis="x"``).

    ``label=None`` keeps it out of the legend; a line with a label but no ``value`` is a legend entry
    only (e.g. a reference that would squash a log axis, named with its value). ``style`` overrides
    :data:`GUIDE` (grey, dashed, width 1).
    """

    value: float | None
    label: str | None = None
    style: dict[str, Any] = field(default_factory=dict)
    axis: str = "y"


@dataclass
class Span:
    """A shaded range ``[low, high]`` along ``axis`` (e.g. the steps a check reads), grey by default."""

    low: float
    high: float
    label: str | None = None
    axis: str = "x"
    style: dict[str, Any] = field(default_factory=lambda: {"color": "grey", "alpha": 0.12})


@dataclass
class Bars:
    """Bars of ``heights`` over ``labels`` (x = 0, 1, …), coloured C0, C1, …, each annotated with its
    value in ``fmt`` so that a zero shows as a number and not as a missing bar; a NaN draws no bar."""

    labels: Sequence[str]
    heights: Sequence[float]
    fmt: str = "%.3f"


@dataclass
class Panel:
    """One axes: curves, bars, reference lines and spans, scales, labels and a title.

    ``xscale``/``yscale`` are matplotlib scale names (``"log"``, ``"linear"``); ``xticks`` puts a
    labelled tick at each value (e.g. the depths of a sweep); ``notes`` are ``(text, x, y)``
    annotations in data coordinates; ``grid`` is ``"major"``, ``"both"`` or ``"y"``;
    ``minor_labels=False`` hides minor tick labels (they overlap on a short log axis).
    """

    curves: list[Curve] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    bars: Bars | None = None
    title: str = ""
    xlabel: str = ""
    ylabel: str = ""
    xscale: str = "linear"
    yscale: str = "linear"
    xticks: Sequence[float] | None = None
    notes: list[tuple[str, float, float]] = field(default_factory=list)
    grid: str = "major"
    legend: bool = True
    legend_size: float = 8
    minor_labels: bool = True


def draw(panels: Sequence[Panel], path: Path, size: tuple[float, float] = (5.5, 3.8)) -> Path:
    """Draw ``panels`` side by side, each ``size`` inches (width, height), and save the PNG at ``path``.

    Per panel, in this order: scales, spans, curves (clipped at their ``floor``), bars, reference
    lines, then ticks, labels, title, grid and a legend of everything labelled.
    """
    from matplotlib.ticker import NullFormatter

    fig, axes = subplots(1, len(panels), figsize=(size[0] * len(panels), size[1]), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        ax.set_xscale(panel.xscale)  # first: setting a scale resets the ticks a bar chart sets
        ax.set_yscale(panel.yscale)
        for span in panel.spans:
            (ax.axvspan if span.axis == "x" else ax.axhspan)(span.low, span.high, label=span.label, **span.style)
        for curve in panel.curves:
            y = np.asarray(curve.y, dtype=float)
            ax.plot(curve.x, y if curve.floor is None else np.maximum(y, curve.floor), label=curve.label,
                    **curve.style)
        if panel.bars is not None:
            heights = [np.nan if h is None else h for h in panel.bars.heights]
            drawn = ax.bar(range(len(heights)), heights, color=[f"C{i}" for i in range(len(heights))])
            ax.bar_label(drawn, fmt=panel.bars.fmt)
            ax.set_xticks(range(len(heights)), list(panel.bars.labels))
        for line in panel.lines:
            style = {**GUIDE, **line.style}
            if line.value is None:  # a legend entry only
                ax.plot([], [], label=line.label, **style)
            else:
                (ax.axhline if line.axis == "y" else ax.axvline)(line.value, label=line.label, **style)
        if panel.xticks is not None:
            ax.set_xticks(list(panel.xticks))
        if not panel.minor_labels:
            ax.xaxis.set_minor_formatter(NullFormatter())
        for text, x, y in panel.notes:
            ax.annotate(text, (x, y), fontsize=7, color="grey")
        ax.set(xlabel=panel.xlabel, ylabel=panel.ylabel, title=panel.title)
        ax.grid(alpha=0.3, axis="y" if panel.grid == "y" else "both", which="both" if panel.grid == "both" else "major")
        if panel.legend and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=panel.legend_size)
    return save_figure(fig, path)


def series(metrics: pd.DataFrame, run_id: str, name: str, min_step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """One run's recorded values of metric ``name`` from step ``min_step`` on (a log axis has no step 0),
    sorted by step, from the store's long-format metrics (columns run_id, step, name, value)."""
    part = metrics[(metrics["run_id"] == run_id) & (metrics["name"] == name) & (metrics["step"] >= min_step)]
    part = part.sort_values("step")
    return part["step"].to_numpy(), part["value"].to_numpy(dtype=float)


def series_vs_step(metrics: pd.DataFrame, names: Sequence[str], runs: Sequence[tuple[str, str, dict[str, Any]]],
                   *, titles: Sequence[str] = (), ylabels: Sequence[str] = (), log: tuple[bool, bool] = (True, True),
                   floor: float | None = None, xlabel: str = "step", min_step: int = 1) -> list[Panel]:
    """One panel per metric in ``names``, one curve per run, value against the step.

    Args:
        metrics: long format, columns run_id, step, name, value (as the store returns them).
        names: the metrics, one panel each.
        runs: ``(run_id, legend label, plot style)`` per curve; a run without the metric draws nothing.
        titles, ylabels: per panel (missing entries: none).
        log: log scale of (x, y).
        floor: clips values from below (zeros on a log axis).
        min_step: the first step drawn (1: a log step axis has no 0).

    Returns:
        The panels, for a study to add its reference lines to before :func:`draw`.
    """
    panels = []
    for i, name in enumerate(names):
        curves = []
        for run_id, label, style in runs:
            steps, values = series(metrics, run_id, name, min_step)
            if len(steps):
                curves.append(Curve(steps, values, label, dict(style), floor))
        panels.append(Panel(curves, title=titles[i] if i < len(titles) else "", xlabel=xlabel,
                            ylabel=ylabels[i] if i < len(ylabels) else "", xscale="log" if log[0] else "linear",
                            yscale="log" if log[1] else "linear"))
    return panels


def value_vs_parameter(table: pd.DataFrame, parameter: str, columns: Sequence[tuple[str, str, dict[str, Any]]], *,
                       xlabel: str, ylabel: str = "", title: str = "", log: tuple[bool, bool] = (True, True),
                       floor: float | None = None, lines: Sequence[Line] = ()) -> Panel:
    """One curve per ``(column, legend label, plot style)`` of ``table`` against its ``parameter`` column,
    a marker at each row (style default ``marker="o"``); columns the table lacks are skipped.

    ``lines`` are reference values (a tolerance, a reference solution's value); ``log`` the scales of
    (x, y); ``floor`` clips values from below.
    """
    curves = [Curve(table[parameter], table[column], label, {"marker": "o", **style}, floor)
              for column, label, style in columns if column in table]
    return Panel(curves, list(lines), title=title, xlabel=xlabel, ylabel=ylabel, xscale="log" if log[0] else "linear",
                 yscale="log" if log[1] else "linear")
