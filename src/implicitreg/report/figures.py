"""Reusable study figures: metric curves with seed bands, bar charts by arm, and the pieces of a
comparison against a threshold (points with error bars, a shaded band). PNG, headless.

Accuracies and the generalization gap are drawn in percent (``PERCENT``), as the terminal and the
HTML report show them; every axis is labelled with :func:`axis_label` (a readable name and its unit).

Figures are built on matplotlib's object API (:class:`~matplotlib.figure.Figure`), never through
pyplot: no backend is switched and no global figure state is touched, so a notebook user's own
plots are left as they were.
"""

from __future__ import annotations

from pathlib import Path

from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, NullLocator

LABELS = {"train_acc": "train accuracy", "test_acc": "test accuracy", "gap": "generalization gap",
          "l2_norm": "parameter ℓ2 norm", "dist_init": "distance from init", "train_loss": "train loss",
          "test_loss": "test loss", "steps": "steps",
          # measures (implicitreg.measures registry names)
          "l1_norm": "parameter ℓ1 norm", "distance_from_init": "distance from init", "path_norm": "path norm",
          "spectral_complexity": "spectral complexity", "spectral_product": "product of spectral norms",
          "frobenius_product": "product of Frobenius norms", "sum_of_spectral": "sum of spectral norms",
          "sum_of_frobenius": "sum of Frobenius norms", "nuclear_norm": "nuclear norm",
          "effective_rank": "effective rank", "stable_rank": "stable rank", "margin": "margin",
          "normalized_margin": "normalized margin", "top_hessian_eigenvalue": "sharpness (top Hessian eigenvalue)",
          "hessian_trace": "Hessian trace", "epsilon_sharpness": "ε-sharpness", "pac_bayes_sigma": "PAC-Bayes σ",
          "pac_bayes_flatness": "PAC-Bayes flatness", "pac_bayes_orig": "PAC-Bayes bound (origin)",
          "pac_bayes_init": "PAC-Bayes bound (init)", "pac_bayes_mag_flatness": "PAC-Bayes magnitude flatness",
          "pac_bayes_mag_init": "PAC-Bayes magnitude bound (init)",
          "pac_bayes_mag_orig": "PAC-Bayes magnitude bound (origin)", "param_count": "parameters",
          "hessian_trace_hutchpp": "Hessian trace (Hutch++)", "top_ggn_eigenvalue": "top GGN eigenvalue",
          "ggn_trace": "GGN trace", "empirical_fisher_trace": "empirical Fisher trace",
          "mc_fisher_trace": "Monte-Carlo Fisher trace",
          "mean_alpha": "mean power-law α of layer spectra", "alpha_weighted": "α-weighted log λmax (WeightWatcher)",
          "log_spectral_norm": "mean log₁₀ λmax of layer spectra", "n_spikes": "spectral spikes above the MP edge",
          "gradient_noise_scale": "gradient noise scale B_simple", "gradient_diversity": "gradient diversity",
          "gradient_snr": "gradient signal-to-noise ratio",
          "kernel_movement": "relative NTK movement since init"}
PERCENT = ("train_acc", "test_acc", "gap")  # drawn ×100, in %: the terminal's and the report's unit
UNITS = {"train_acc": "%", "test_acc": "%", "gap": "% points", "steps": "steps"}


def label(name: str) -> str:
    """A readable name for a metric or measure (its identifier with spaces where it has no entry)."""
    return LABELS.get(name, name.replace("_", " "))


def axis_label(name: str) -> str:
    """An axis label: the readable name and, where it has one, the unit (``test accuracy (%)``)."""
    unit = UNITS.get(name)
    return f"{label(name)} ({unit})" if unit and unit != label(name) else label(name)


def scale(name: str) -> float:
    """The factor from stored values to drawn ones: 100 for accuracies and the gap (drawn in %)."""
    return 100.0 if name in PERCENT else 1.0


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None,
             **kwargs: Any) -> tuple[Figure, Any]:
    """A figure and its axes, as ``pyplot.subplots`` returns them, without pyplot."""
    figure = Figure(figsize=figsize)
    return figure, figure.subplots(nrows, ncols, **kwargs)


def _panels(n: int, width: float = 5.0, height: float = 3.6):
    fig, axes = subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, axes[0]


def save_figure(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def curves(metrics: pd.DataFrame, name: str, panel: str, line: str, path: Path, title: str = "",
           order: dict[str, list] | None = None, reference: tuple[float, str] | None = None,
           x: str = "step", xlabel: str = "training step", log_x: bool = False) -> Path:
    """Mean of ``name`` over seeds against step (or another clock column ``x``: epochs), one line
    per ``line`` value, ±1 std band.

    ``metrics`` is long format with columns step, name, value, ``panel`` and ``line``. Runs that
    stopped early leave the band, so late points average over the runs still training.
    ``order`` fixes the order (and so the colours) of panel and line values; ``reference`` draws
    a dashed horizontal line (value, label), e.g. chance accuracy, in the stored unit (a fraction
    for an accuracy: it is drawn in % with the curves).
    """
    data = metrics[metrics["name"] == name]
    data = data.assign(value=data["value"] * scale(name))  # accuracies in %
    order = order or {}
    keys = [k for k in order.get(panel, dict.fromkeys(data[panel])) if k in set(data[panel])]
    lines = [k for k in order.get(line, dict.fromkeys(data[line])) if k in set(data[line])]
    fig, axes = _panels(max(1, len(keys)))
    for ax, key in zip(axes, keys):
        part = data[data[panel] == key]
        for colour, label in enumerate(lines):
            stats = part[part[line] == label].groupby(x)["value"].agg(["mean", "std"]).reset_index()
            if stats.empty:
                continue
            ax.plot(stats[x], stats["mean"], label=f"{label}", marker="o", markersize=2.5, color=f"C{colour}")
            ax.fill_between(stats[x], stats["mean"] - stats["std"].fillna(0),
                            stats["mean"] + stats["std"].fillna(0), alpha=0.2, color=f"C{colour}")
        if reference is not None:
            ax.axhline(reference[0] * scale(name), color="grey", linestyle="--", linewidth=1, label=reference[1])
        ax.set_title(f"{key}")
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(axis_label(name))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def bars(final: pd.DataFrame, names: list[str], panel: str, bar: str, path: Path, title: str = "") -> Path:
    """One row of panels per ``panel`` value, one bar per ``bar`` value: mean ± std of each metric.

    Bars start at 0 (a bar's length is its value), so they suit quantities read as sizes (norms,
    the gap); to compare values against a threshold, draw :func:`points` and :func:`band` instead.
    """
    keys = list(dict.fromkeys(final[panel]))
    fig, axes = subplots(len(keys), len(names), figsize=(3.6 * len(names), 3.2 * len(keys)), squeeze=False)
    for row, key in enumerate(keys):
        part = final[final[panel] == key]
        order = list(dict.fromkeys(part[bar]))
        for col, name in enumerate(names):
            stats = part.groupby(bar, sort=False)[name].agg(["mean", "std"]).reindex(order) * scale(name)
            ax = axes[row][col]
            ax.bar(range(len(order)), stats["mean"], yerr=stats["std"].fillna(0), capsize=3,
                   color=[f"C{i}" for i in range(len(order))])
            ax.set_xticks(range(len(order)), order, rotation=30, ha="right", fontsize=8)
            ax.set_title(f"{key}: {label(name)}", fontsize=9)
            ax.set_ylabel(axis_label(name), fontsize=8)
            ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def points(ax, labels: list[str], means: list[float], stds: list[float], colours: list[str] | None = None,
           marker: str = "o", offset: float = 0.0, legend: str | None = None) -> None:
    """One point per label at x = 0, 1, … (+ ``offset``) with a ±std error bar; a NaN mean draws nothing.

    Unlike a bar, a point does not claim its axis starts at 0: the axis can zoom onto the values
    being compared (a difference of a few points stays visible).
    """
    colours = colours or [f"C{i}" for i in range(len(labels))]
    for x, (mean, std, colour) in enumerate(zip(means, stds, colours)):
        if mean != mean:
            continue
        ax.errorbar([x + offset], [mean], yerr=[0.0 if std != std else std], marker=marker, markersize=7,
                    capsize=4, color=colour, linestyle="none", label=legend if x == 0 else None)
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlim(-0.6, len(labels) - 0.4)


def band(ax, low: float, high: float, text: str, colour: str = "tab:green") -> None:
    """A shaded horizontal band ``[low, high]`` labelled ``text`` in the legend (a tolerance)."""
    ax.axhspan(low, high, color=colour, alpha=0.15, linewidth=0, label=text)


class _PlainLogFormatter(LogFormatter):
    """Log-axis tick labels as plain numbers (``30``, ``4000``, ``0.02``), not ``3×10¹``."""

    def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
        return f"{x:g}"


def log_axis(ax, axis: str = "y") -> None:
    """A log₁₀ ``axis`` whose ticks read as plain numbers; within a decade the minor ticks are
    labelled too, so a narrow range still shows its values."""
    getattr(ax, f"set_{axis}scale")("log")
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(_PlainLogFormatter(labelOnlyBase=False))
    target.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def log_ticks(ax, values: list, base: int = 2, axis: str = "x", fontsize: float = 8) -> None:
    """A log-``base`` ``axis`` with a tick at each of ``values`` (e.g. the widths of a sweep),
    labelled with the value itself and no minor ticks."""
    getattr(ax, f"set_{axis}scale")("log", base=base)
    getattr(ax, f"set_{axis}ticks")(values, [f"{v:g}" for v in values], fontsize=fontsize)
    (ax.xaxis if axis == "x" else ax.yaxis).set_minor_locator(NullLocator())


def panels(n: int, width: float = 5.0, height: float = 3.6):
    """A figure with ``n`` panels side by side, and the flat list of their axes."""
    return _panels(n, width, height)


def trend(ax, frame: pd.DataFrame, x: str, y: str, *, colour: str = "C0", label: str | None = None,
          spread: str = "std", dots: bool = False, marker: str = "o", linestyle: str = "-") -> None:
    """Mean of ``y`` over the rows that share each value of ``x`` (the seeds of a hyperparameter
    value) with error bars: ±1 std (0 for one row), or the rows' min–max when ``spread="range"``
    (on a log axis mean − std can fall below zero). ``dots`` draws each row as a small dot too.
    Rows without ``y`` or ``x`` are left out; accuracies and the gap are drawn in %."""
    part = frame[frame[y].notna() & frame[x].notna()] if y in frame and x in frame else frame.iloc[:0]
    if part.empty:
        return
    stats = (part.groupby(x)[y].agg(["mean", "std", "min", "max"]) * scale(y)).reset_index()
    bars = ([stats["mean"] - stats["min"], stats["max"] - stats["mean"]] if spread == "range"
            else stats["std"].fillna(0))
    if dots:
        ax.scatter(part[x], part[y] * scale(y), s=10, alpha=0.35, color=colour)
    ax.errorbar(stats[x], stats["mean"], yerr=bars, marker=marker, capsize=3, color=colour, label=label,
                linestyle=linestyle)


def reference(ax, value: float, text: str, name: str = "", linestyle: str = "--") -> None:
    """A grey horizontal line at ``value`` labelled ``text`` (chance, the zero predictor), given in
    the stored unit of the metric ``name`` (a fraction for an accuracy, drawn in % like it)."""
    ax.axhline(value * scale(name), color="grey", linestyle=linestyle, linewidth=1, label=text)


def dress(ax, xlabel: str, ylabel: str, *, title: str = "", log_x: float | bool = False, log_y: bool = False,
          legend: float | None = 8, **legend_options: Any) -> None:
    """Labels, log axes (``log_x`` may be a base: 2 for widths), a light grid on both tick levels and
    a legend of font size ``legend`` (None: no legend)."""
    if log_x:
        ax.set_xscale("log", **({} if log_x is True else {"base": log_x}))
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=legend, **legend_options)


def versus(frame: pd.DataFrame, x: str, names: list[str], path: Path, *, xlabel: str, title: str = "",
           panel: str | None = None, order: list | None = None, ylabel: str | None = None,
           reference_line: tuple[float, str] | None = None, log_x: float | bool = False,
           aside: tuple[float, str] | None = None) -> Path:
    """Each metric of ``names`` against a hyperparameter ``x``: mean ± std over the rows (seeds) at
    each value, one line per metric, one panel per ``panel`` value (in ``order``), ticks at the
    values of ``x``. ``reference_line`` = (value, label) in the stored unit (chance accuracy).
    ``aside`` = (position, tick label): rows with no ``x`` (an arm off the hyperparameter's axis,
    such as random inputs) are drawn as one square at that position."""
    keys = [None] if panel is None else [k for k in (order or dict.fromkeys(frame[panel])) if k in set(frame[panel])]
    keys = keys or list(order or [None])
    figure, axes = _panels(len(keys))
    values = sorted(frame[x].dropna().unique())
    for ax, key in zip(axes, keys):
        part = frame if key is None else frame[frame[panel] == key]
        for colour, name in enumerate(names):
            trend(ax, part, x, name, colour=f"C{colour}", label=label(name))
            if aside is not None and name in part:
                trend(ax, part[part[x].isna()].assign(**{x: aside[0]}), x, name, colour=f"C{colour}", marker="s",
                      linestyle="none")
        if reference_line is not None:
            reference(ax, *reference_line, name=names[0])
        ticks, shown = list(values), [f"{v:g}" for v in values]
        if aside is not None:
            ticks, shown = [*ticks, aside[0]], [*shown, aside[1]]
        ax.set_xticks(ticks, shown)
        dress(ax, xlabel, axis_label(names[0]) if ylabel is None else ylabel, log_x=log_x, legend=8)
        ax.set_title("" if key is None else f"{key}")
    if title:
        figure.suptitle(title)
    return save_figure(figure, path)
