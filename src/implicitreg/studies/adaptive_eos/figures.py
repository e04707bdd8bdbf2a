"""adaptive-eos: each optimizer's measured quantity against the step with its threshold dashed, the
training loss of every run, and Adam's unpreconditioned sharpness."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from implicitreg.report import kinds
from implicitreg.studies.adaptive_eos.analysis import beta, planned, run_ids, threshold


def _curves(config: Any, runs: pd.DataFrame, optimizer: str | None) -> list[tuple[str, str, dict[str, Any]]]:
    """(run id, legend, style) of the first run of each planned (optimizer, η); colours follow the plan."""
    ids = run_ids(config, runs)
    name = {"momentum": "heavy-ball", "adam": "Adam"}
    return [(run_id, f"{name[o]} η = {lr:g}", {"color": f"C{i}"}) for i, (o, lr) in enumerate(planned(config))
            if optimizer in (None, o) for run_id in ids[(o, lr)][:1]]


def _thresholds(config: Any, optimizer: str) -> list[kinds.Line]:
    return [kinds.Line(threshold(o, lr, beta(config, o)), style={"color": f"C{i}"})
            for i, (o, lr) in enumerate(planned(config)) if o == optimizer]


def edges(config: Any, runs: pd.DataFrame, metrics: pd.DataFrame, path: Path) -> Path:
    """Left: heavy-ball's sharpness, its thresholds (2 + 2β)/η dashed in each run's colour; right: Adam's
    preconditioned sharpness λmax(P⁻¹H) (log y: at step 0 it is far above), thresholds (2 + 2β₁)/((1 − β₁)η)."""
    (momentum,) = kinds.series_vs_step(metrics, ["sharpness"], _curves(config, runs, "momentum"), log=(False, False),
                                       min_step=0, ylabels=("sharpness λmax(H)",),
                                       titles=("heavy-ball; dashed: (2 + 2β)/η",))
    (adam,) = kinds.series_vs_step(metrics, ["preconditioned_sharpness"], _curves(config, runs, "adam"),
                                   log=(False, True), min_step=0, ylabels=("preconditioned sharpness λmax(P⁻¹H)",),
                                   titles=("Adam; dashed: (2 + 2β₁)/((1 − β₁)η)",))
    momentum.lines, adam.lines = _thresholds(config, "momentum"), _thresholds(config, "adam")
    return kinds.draw([momentum, adam], path)


def loss_and_sharpness(config: Any, runs: pd.DataFrame, metrics: pd.DataFrame, path: Path) -> Path:
    """Left: the full-batch training loss of every run (log y); right: Adam's unpreconditioned sharpness,
    which the threshold does not bound."""
    loss, sharp = kinds.series_vs_step(metrics, ["loss", "sharpness"], _curves(config, runs, None),
                                       log=(False, False), min_step=0,
                                       ylabels=("training loss", "sharpness λmax(H)"),
                                       titles=("full-batch training loss", "Adam: unpreconditioned sharpness"))
    loss.yscale = "log"
    sharp.curves = [c for c in sharp.curves if c.label and c.label.startswith("Adam")]
    return kinds.draw([loss, sharp], path)
