"""Reusable study figures: metric curves with seed bands, and bar charts by arm. PNG, headless.

Figures are built on matplotlib's object API (:class:`~matplotlib.figure.Figure`), never through
pyplot: no backend is switched and no global figure state is touched, so a notebook user's own
plots are left as they were.
"""

from __future__ import annotations

from pathlib import Path

from typing import Any

import pandas as pd
from matplotlib.figure import Figure

LABELS = {"train_acc": "train accuracy", "test_acc": "test accuracy", "gap": "generalization gap",
          "l2_norm": "parameter ℓ2 norm", "dist_init": "distance from init", "train_loss": "train loss",
          "test_loss": "test loss"}


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
           order: dict[str, list] | None = None, reference: tuple[float, str] | None = None) -> Path:
    """Mean of ``name`` over seeds against step, one line per ``line`` value, ±1 std band.

    ``metrics`` is long format with columns step, name, value, ``panel`` and ``line``. Runs that
    stopped early leave the band, so late points average over the runs still training.
    ``order`` fixes the order (and so the colours) of panel and line values; ``reference`` draws
    a dashed horizontal line (value, label), e.g. chance accuracy.
    """
    data = metrics[metrics["name"] == name]
    order = order or {}
    keys = [k for k in order.get(panel, dict.fromkeys(data[panel])) if k in set(data[panel])]
    lines = [k for k in order.get(line, dict.fromkeys(data[line])) if k in set(data[line])]
    fig, axes = _panels(max(1, len(keys)))
    for ax, key in zip(axes, keys):
        part = data[data[panel] == key]
        for colour, label in enumerate(lines):
            stats = part[part[line] == label].groupby("step")["value"].agg(["mean", "std"]).reset_index()
            if stats.empty:
                continue
            ax.plot(stats["step"], stats["mean"], label=f"{label}", marker="o", markersize=2.5, color=f"C{colour}")
            ax.fill_between(stats["step"], stats["mean"] - stats["std"].fillna(0),
                            stats["mean"] + stats["std"].fillna(0), alpha=0.2, color=f"C{colour}")
        if reference is not None:
            ax.axhline(reference[0], color="grey", linestyle="--", linewidth=1, label=reference[1])
        ax.set_title(f"{key}")
        ax.set_xlabel("step")
        ax.set_ylabel(LABELS.get(name, name))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def bars(final: pd.DataFrame, names: list[str], panel: str, bar: str, path: Path, title: str = "") -> Path:
    """One row of panels per ``panel`` value, one bar per ``bar`` value: mean ± std of each metric."""
    keys = list(dict.fromkeys(final[panel]))
    fig, axes = subplots(len(keys), len(names), figsize=(3.6 * len(names), 3.2 * len(keys)), squeeze=False)
    for row, key in enumerate(keys):
        part = final[final[panel] == key]
        order = list(dict.fromkeys(part[bar]))
        for col, name in enumerate(names):
            stats = part.groupby(bar, sort=False)[name].agg(["mean", "std"]).reindex(order)
            ax = axes[row][col]
            ax.bar(range(len(order)), stats["mean"], yerr=stats["std"].fillna(0), capsize=3,
                   color=[f"C{i}" for i in range(len(order))])
            ax.set_xticks(range(len(order)), order, rotation=30, ha="right", fontsize=8)
            ax.set_title(f"{key}: {LABELS.get(name, name)}", fontsize=9)
            ax.grid(axis="y", alpha=0.3)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
