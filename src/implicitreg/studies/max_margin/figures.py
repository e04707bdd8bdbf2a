"""max-margin: three figures from the stored metrics — distance to ŵ's direction, margin, and ‖w(t)‖ with t·L(t)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from implicitreg.report import kinds

RUNS = ("gd", "gd_normalized")
LABELS = {"gd": "GD", "gd_normalized": "normalized GD"}


def _ran(runs: pd.DataFrame) -> list[tuple[str, str, dict]]:
    """(run_id, legend label, style) of the runs that ran, each method in its own colour."""
    return [(r, LABELS[r], {"color": f"C{i}"}) for i, r in enumerate(RUNS) if r in set(runs["run_id"])]


def distance_figure(metrics: pd.DataFrame, runs: pd.DataFrame, window: tuple[int, int], path: Path) -> Path:
    """Normalized distance to ŵ/‖ŵ‖ vs t (log-log) per method, and GD's dist·ln t vs t (log x)."""
    distance, scaled = kinds.series_vs_step(metrics, ["dist", "dist"], _ran(runs), floor=1e-17, xlabel="t (steps)",
                                            titles=("‖w/‖w‖ − ŵ/‖ŵ‖‖", "dist·ln t (constant if dist ~ 1/ln t)"))
    scaled.yscale = "linear"
    scaled.curves = [kinds.Curve(c.x[c.x > 1], c.y[c.x > 1] * np.log(c.x[c.x > 1]), "GD: dist·ln t", c.style)
                     for c in scaled.curves if c.label == LABELS["gd"]]
    for panel in (distance, scaled):
        panel.spans = [kinds.Span(*window, "check window")]
    return kinds.draw([distance, scaled], path)


def margin_figure(metrics: pd.DataFrame, runs: pd.DataFrame, norm_hat: float | None, path: Path) -> Path:
    """Normalized margin minᵢ yᵢxᵢᵀw/‖w‖ vs t and its gap to the SVM margin 1/‖ŵ‖ (log scales)."""
    margin, gap = kinds.series_vs_step(metrics, ["margin", "margin"], _ran(runs), xlabel="t (steps)", titles=(
        "normalized margin", "relative margin gap 1 − margin·‖ŵ‖"))
    margin.yscale = "linear"
    gap.curves = [kinds.Curve(c.x, (1.0 / norm_hat - c.y) * norm_hat, c.label, c.style, 1e-17)
                  for c in gap.curves] if norm_hat else []
    margin.lines = [kinds.Line(1.0 / norm_hat, "SVM margin 1/‖ŵ‖")] if norm_hat else []
    return kinds.draw([margin, gap], path)


def norm_figure(metrics: pd.DataFrame, norm_hat: float | None, lr: float | None, window: tuple[int, int],
                path: Path) -> Path:
    """GD's ‖w(t)‖ against ln t with slope ‖ŵ‖, and t·L(t)·η/‖ŵ‖² (→ 1) against t."""
    norm = kinds.Panel(xlabel="ln t", title="‖w(t)‖")
    limit = kinds.Panel(xlabel="t (steps)", title="t·L(t)·η/‖ŵ‖²")
    steps, norms = kinds.series(metrics, "gd", "norm")
    if len(steps):
        log_t = np.log(steps.astype(float))
        norm.curves.append(kinds.Curve(log_t, norms, "GD ‖w(t)‖", {"color": "C0"}))
        if norm_hat:  # the line of slope ‖ŵ‖ through the last point: parallel if ‖w‖ grows like ‖ŵ‖ ln t
            norm.curves.append(kinds.Curve(log_t, norms[-1] + norm_hat * (log_t - log_t[-1]), "slope ‖ŵ‖",
                                           {"color": "grey", "linestyle": "--"}))
        norm.spans.append(kinds.Span(*np.log(window), "check window"))
    steps, loss = kinds.series(metrics, "gd", "loss")
    if len(steps) and norm_hat and lr:
        limit.curves.append(kinds.Curve(steps, steps * loss * lr / norm_hat**2, "GD", {"color": "C0"}))
        limit.lines.append(kinds.Line(1.0, "limit 1"))
        limit.xscale = "log"
    return kinds.draw([norm, limit], path)
