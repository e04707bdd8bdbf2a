"""catapult: per model, the loss and the NTK's top eigenvalue along GD at each rate (one seed), and the final
curvature against the rate with the bisected maximal rate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from implicitreg.report import kinds
from implicitreg.studies.base import run_config
from implicitreg.studies.catapult.analysis import PAPER_ETA_MAX, bisection_part, eta_max_estimates, finals, phase_part


def trajectories(config: Any, runs: pd.DataFrame, metrics: pd.DataFrame, model: str, path: Path) -> Path:
    """Left: L_t/L₀ against the step (log–log) for the first seed at each rate; right: λ_t/λ₀, with each rate's
    stability edge 2/(η·λ₀) = 2/c dashed in its colour. A rate without a run draws nothing."""
    loss, lam = kinds.Panel(title=f"{model}: training loss", xlabel="step", ylabel="L_t / L₀", xscale="log",
                            yscale="log"), \
        kinds.Panel(title=f"{model}: NTK top eigenvalue; dashed: 2/η", xlabel="step", ylabel="λ_t / λ₀",
                    xscale="log", yscale="log")
    frame = finals(runs, metrics)
    for i, rate in enumerate(config.rates):
        part = phase_part(frame, model, rate)
        if part.empty:
            continue
        run_id = part.sort_values("seed")["run_id"].iloc[0]
        phase = part.sort_values("seed")["phase"].iloc[0] or "n/a"
        style = {"color": f"C{i}"}
        steps, values = kinds.series(metrics, run_id, "loss", min_step=1)
        first = kinds.series(metrics, run_id, "loss", min_step=0)[1][:1]
        if len(steps) and len(first):
            finite = np.isfinite(values)
            loss.curves.append(kinds.Curve(steps[finite], values[finite] / first[0], f"η·λ₀ = {rate:g} ({phase})",
                                           style, floor=1e-30))
        lambda0 = run_config(runs, run_id).get("lambda0")
        steps, values = kinds.series(metrics, run_id, "ntk_lambda", min_step=1)
        if len(steps) and lambda0:
            lam.curves.append(kinds.Curve(steps, values / lambda0, f"η·λ₀ = {rate:g}", style))
            lam.lines.append(kinds.Line(2 / rate, style={"color": f"C{i}"}))
    return kinds.draw([loss, lam], path)


def final_curvature(config: Any, runs: pd.DataFrame, metrics: pd.DataFrame, path: Path) -> Path:
    """One panel per model: η·λ_T (each seed that did not diverge) against c = η·λ₀, the line η·λ_T = c (a
    curvature that did not move), the edge η·λ_T = 2, the bisected η_max·λ₀ (range over seeds, shaded) and
    the paper's (dotted)."""
    frame = finals(runs, metrics)
    panels = []
    for model in config.models:
        panel = kinds.Panel(title=f"{model}: final curvature", xlabel="η·λ₀", ylabel="η·λ_T (NTK)")
        xs, ys = [], []
        for rate in config.rates:
            part = phase_part(frame, model, rate)
            if "eta_lambda_end" in part:
                values = part["eta_lambda_end"].dropna().to_numpy(dtype=float)
                xs += [rate] * len(values)
                ys += values.tolist()
        panel.curves.append(kinds.Curve(xs, ys, "seeds (not diverged)", {"marker": "o", "linestyle": "none"}))
        finite = eta_max_estimates(bisection_part(frame, model)).estimates.dropna()
        top = max([*config.rates, PAPER_ETA_MAX[model], *finite]) * 1.1
        panel.curves.append(kinds.Curve([0, top], [0, top], "λ_T = λ₀", {"color": "grey", "linewidth": 0.8}))
        panel.lines.append(kinds.Line(2.0, "λ_T = 2/η"))
        if len(finite):  # the union of the seeds' final brackets (each midpoint ± half the bracket's width)
            half = (config.bisection_high - config.bisection_low) / 2 ** config.bisection_iterations / 2
            panel.spans.append(kinds.Span(float(finite.min()) - half, float(finite.max()) + half,
                                          f"η_max·λ₀ by bisection (mean {float(finite.mean()):.3g})",
                                          style={"color": "tab:red", "alpha": 0.2}))
        panel.lines.append(kinds.Line(PAPER_ETA_MAX[model], f"paper's η_max·λ₀ ≈ {PAPER_ETA_MAX[model]:g}",
                                      {"color": "tab:red", "linestyle": ":"}, axis="x"))
        panels.append(panel)
    return kinds.draw(panels, path)


def draw_all(config: Any, runs: pd.DataFrame, metrics: pd.DataFrame, directory: Path) -> list[Path]:
    paths = [trajectories(config, runs, metrics, model, directory / f"trajectories_{model}.png")
             for model in config.models]
    return [*paths, final_curvature(config, runs, metrics, directory / "final_curvature.png")]
