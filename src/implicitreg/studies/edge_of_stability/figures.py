"""edge-of-stability: sharpness and training loss along GD, one curve per step size, 2/η dashed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from implicitreg.report import kinds
from implicitreg.studies.edge_of_stability.analysis import planned, run_ids


def sharpness_and_loss(config: Any, runs: pd.DataFrame, metrics: pd.DataFrame, path: Path) -> Path:
    """Left: sharpness against the step with each η's threshold 2/η (dashed, same colour); right: the
    full-batch training loss (log y). A step size without a run draws nothing."""
    lrs = planned(config)
    ids = run_ids(config, runs)
    curves = [(run_id, f"η = {lr:g}", {"color": f"C{i}"}) for i, lr in enumerate(lrs) for run_id in ids[lr][:1]]
    sharp, loss = kinds.series_vs_step(metrics, ["sharpness", "loss"], curves, log=(False, False), min_step=0,
                                       ylabels=("sharpness (top Hessian eigenvalue)", "training loss"),
                                       titles=("sharpness; dashed: 2/η", "full-batch training loss"))
    sharp.lines = [kinds.Line(2 / lr, style={"color": f"C{i}"}) for i, lr in enumerate(lrs)]
    loss.yscale = "log"
    return kinds.draw([sharp, loss], path)
