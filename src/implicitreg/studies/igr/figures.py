"""igr's figure: the distance at T against h, log-log, per model and for the SGD epoch, with slope guides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from implicitreg.report import kinds
from implicitreg.studies.igr.analysis import MODELS


def distance_vs_h(config: Any, table: pd.DataFrame, path: Path) -> Path:
    """GD's distance to the plain and the modified flow against h, per model (slopes 1 and 2), and the
    mean SGD epoch's distance to the flows of L̃_IGR and L̃_SGD (slopes 2 and 3)."""
    panels = []
    for model in MODELS:
        part = table[(table["model"] == model) & (table["kind"] == "gd")]
        panels.append(kinds.value_vs_parameter(
            part, "h", [("dist_plain", "GD ↔ flow of L", {"color": "C0"}),
                        ("dist_modified", "GD ↔ flow of L + (h/4)‖∇L‖²", {"color": "C1"})],
            xlabel="step size h", ylabel=f"‖θ_GD(T) − θ_flow(T)‖, T = {config.end_time:g}",
            title=f"{model}: distance at T vs h"))
        _slope_guides(panels[-1], part, {1: "dist_plain", 2: "dist_modified"})
    sgd = table[table["kind"] == "sgd"]
    panels.append(kinds.value_vs_parameter(
        sgd, "h", [("dist_igr_flow", "mean SGD ↔ flow of L + (h/4)‖∇L‖²", {"color": "C1"}),
                   ("dist_sgd_flow", "mean SGD ↔ flow of L̃_SGD", {"color": "C2"})],
        xlabel="step size h", ylabel=f"distance after one epoch (T = {config.batches}h)",
        title=f"mlp: SGD, {config.batches} batches, mean over all orders"))
    _slope_guides(panels[-1], sgd, {2: "dist_igr_flow", 3: "dist_sgd_flow"})
    for panel in panels:  # the minor labels of a short log axis overlap
        panel.grid, panel.legend_size, panel.minor_labels = "both", 7, False
    return kinds.draw(panels, path, size=(5.0, 4.2))


def _slope_guides(panel: kinds.Panel, part: pd.DataFrame, anchors: dict[int, str]) -> None:
    """Dashed lines ∝ h^slope through each anchor column's value at the largest h (none without rows)."""
    if part.empty:
        return
    hs = part["h"].to_numpy()
    for slope, column in anchors.items():
        value = part[column].iloc[0]
        panel.curves.append(kinds.Curve(hs, value * (hs / hs[0]) ** slope, None,
                                        {"color": "grey", "linestyle": "--", "linewidth": 0.8}))
        panel.notes.append((f"slope {slope}", hs[-1], value * (hs[-1] / hs[0]) ** slope))
