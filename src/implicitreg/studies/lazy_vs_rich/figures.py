"""lazy-vs-rich: kernel movement, distance to the linearization and test accuracy against α; the training loss
along GD for every α of the first seed, with the linearization's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from implicitreg.report import kinds
from implicitreg.studies.lazy_vs_rich.analysis import AGREEMENT, finals, table


def against_alpha(config: Any, runs: pd.DataFrame, metrics: pd.DataFrame, path: Path) -> Path | None:
    """Three panels against α (log): mean kernel movement, mean relative difference to the linearization
    (the check's 1e-2 dashed) and mean test accuracy (the linearization's dashed); dots: single seeds."""
    frame = finals(runs, metrics)
    summary = table(config, runs, metrics)
    net = summary[summary["model"] == "network"]
    if net.empty or frame.empty:
        return None
    seeds = frame[frame["model"] == "network"]
    panels = []
    for column, title, ylabel, log_y in (
            ("kernel_movement", "movement of the NTK", "‖K_T − K_0‖_F / ‖K_0‖_F", True),
            ("relative_difference_test", "distance to the linearization", "‖f_α − f_lin‖ / ‖f_lin‖ (test)", True),
            ("test_acc", "test accuracy (an observation)", "test accuracy", False)):
        panel = kinds.value_vs_parameter(net, "alpha", [(f"{column}_mean", "mean over seeds", {"color": "C0"})],
                                         xlabel="output scale α", ylabel=ylabel, title=title, log=(True, log_y))
        if column in seeds:
            panel.curves.append(kinds.Curve(seeds["alpha"], seeds[column], "seeds",
                                            {"color": "C0", "marker": ".", "linestyle": "none", "alpha": 0.5}))
        if column == "relative_difference_test":
            panel.lines.append(kinds.Line(AGREEMENT, f"check: {AGREEMENT:g}"))
        if column == "test_acc":
            linear = summary.loc[summary["model"] == "linearized", "test_acc_mean"]
            if len(linear) and pd.notna(linear.iloc[0]):
                panel.lines.append(kinds.Line(float(linear.iloc[0]), "linearization"))
        panels.append(panel)
    return kinds.draw(panels, path, size=(5.0, 3.6))


def losses(config: Any, runs: pd.DataFrame, metrics: pd.DataFrame, path: Path) -> Path | None:
    """Training loss against the step (log-log), seed 0: one curve per α and the linearization (black)."""
    frame = finals(runs, metrics)
    if frame.empty:
        return None
    first = frame[frame["seed"] == frame["seed"].min()]
    curves = [(row["run_id"], f"α = {row['alpha']:g}", {"color": f"C{i}"})
              for i, (_, row) in enumerate(first[first["model"] == "network"].sort_values("alpha").iterrows())]
    curves += [(run_id, "linearization", {"color": "black", "linestyle": "--"})
               for run_id in first.loc[first["model"] == "linearized", "run_id"]]
    panels = kinds.series_vs_step(metrics, ["loss"], curves, ylabels=["½·mean‖f − y‖² (train)"],
                                  titles=["training loss, first seed"], floor=1e-12)
    return kinds.draw(panels, path, size=(6.0, 4.0))


def draw_all(config: Any, runs: pd.DataFrame, metrics: pd.DataFrame, directory: Path) -> list[Path]:
    paths = [against_alpha(config, runs, metrics, directory / "against_alpha.png"),
             losses(config, runs, metrics, directory / "losses.png")]
    return [p for p in paths if p is not None]
