"""label-noise: the Hessian trace and the test error along training for both arms (every seed), and the
diagonal net's final β against β* for the first seed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from implicitreg.report import kinds
from implicitreg.studies.label_noise.analysis import ARMS, finals

STYLE = {"label_noise": {"color": "tab:blue"}, "gd": {"color": "tab:orange"}}
LABEL = {"label_noise": "label noise", "gd": "GD"}


def trajectories(config: Any, runs: pd.DataFrame, metrics: pd.DataFrame, problem: str, path: Path) -> Path | None:
    """tr ∇²L and the test error against the step, one curve per run; dotted: the end of the noise."""
    frame = finals(runs, metrics)
    part = frame[frame["problem"] == problem] if len(frame) else frame
    if part.empty:
        return None
    noise_end = config.sparse_noise_steps if problem == "sparse" else config.relu_noise_steps
    panels = []
    for name, ylabel in (("hessian_trace", "tr ∇²L (clean loss)"), ("test_error", "test error")):
        panel = kinds.Panel(title=f"{problem}: {ylabel}", xlabel="step", ylabel=ylabel, yscale="log")
        for arm in ARMS:
            for i, run_id in enumerate(part[part["arm"] == arm].sort_values("seed")["run_id"]):
                steps, values = kinds.series(metrics, run_id, name, min_step=0)
                if len(steps):
                    panel.curves.append(kinds.Curve(steps, values, LABEL[arm] if i == 0 else None, STYLE[arm],
                                                    floor=1e-30))
        panel.lines.append(kinds.Line(noise_end, "noise annealed", {"linestyle": ":"}, axis="x"))
        panels.append(panel)
    return kinds.draw(panels, path)


def coefficients(solutions: dict[str, np.ndarray], path: Path) -> Path | None:
    """β_j of both arms and β*_j against the coordinate j, first seed."""
    truth = solutions.get("truth_seed0")
    if truth is None:
        return None
    panel = kinds.Panel(title="sparse, seed 0: final β", xlabel="coordinate j", ylabel="β_j")
    index = np.arange(len(truth))
    # β* first, as large open circles, so that the arms' dots stay visible on top of it
    panel.curves.append(kinds.Curve(index, truth, "β*", {"color": "black", "marker": "o", "markerfacecolor": "none",
                                                         "markersize": 9, "linestyle": "none"}))
    for arm in ARMS:
        beta = solutions.get(f"sparse_{arm}_seed0")
        if beta is not None:
            panel.curves.append(kinds.Curve(index, beta, LABEL[arm], {**STYLE[arm], "marker": "o", "linestyle": "none",
                                                                      "markersize": 3}))
    return kinds.draw([panel], path, size=(7.0, 3.6))


def draw_all(config: Any, runs: pd.DataFrame, metrics: pd.DataFrame, solutions: dict[str, np.ndarray],
             directory: Path) -> list[Path]:
    paths = [trajectories(config, runs, metrics, problem, directory / f"trajectories_{problem}.png")
             for problem in config.problems]
    if "sparse" in config.problems:
        paths.append(coefficients(solutions, directory / "coefficients_sparse.png"))
    return [p for p in paths if p is not None]
