"""matrix-factorization's figures: completion by depth, training curves, and Razin & Cohen's 2×2 run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from implicitreg.report import kinds
from implicitreg.studies.base import run_config
from implicitreg.studies.matrix_factorization.analysis import RC_LOSS
from implicitreg.studies.matrix_factorization.problem import unobserved_error


def completion(runs: pd.DataFrame, depth_runs: list[str], solutions: dict[str, np.ndarray], path: Path) -> Path:
    """Test MSE by depth (log) beside the singular value spectra of every solution, the reference and the truth."""
    truth, mask = solutions.get("truth"), solutions["mask"]
    panels = []
    if truth is not None:
        depths = [int(run_config(runs, r)["depth"]) for r in depth_runs]
        errors = [unobserved_error(solutions[r], truth, mask) for r in depth_runs]
        panels.append(kinds.Panel(
            [kinds.Curve(depths, errors, "gradient descent", {"marker": "o"})],
            [kinds.Line(unobserved_error(solutions["ref_min_nuclear"], truth, mask), "min nuclear norm",
                        {"linewidth": 1.5}),
             kinds.Line(1 - mask.sum() / mask.size, "1 − m/(n1·n2)", {"linestyle": ":", "linewidth": 1.5})],
            xlabel="depth N", ylabel="test MSE (unobserved entries)", yscale="log", xticks=depths))
    styles = {"ref_min_nuclear": dict(color="grey", linestyle="--"), "truth": dict(color="black", linestyle=":")}
    spectra = [kinds.Curve(np.arange(1, len(svals) + 1), svals, name.replace("_", " ").replace("ref ", ""),
                           {"marker": ".", "markersize": 3, **styles.get(name, {})}, 1e-16)
               for name in [*depth_runs, "ref_min_nuclear", "truth"] if name in solutions
               for svals in [np.linalg.svd(solutions[name], compute_uv=False)]]
    panels.append(kinds.Panel(spectra, xlabel="index i", ylabel="singular value σ_i", yscale="log"))
    return kinds.draw(panels, path, size=(5.25, 3.8) if truth is not None else (5.5, 3.8))


def curves(curves: pd.DataFrame, path: Path) -> Path:
    """Test MSE (if a truth is known), train loss and effective rank along training, one line per depth."""
    names = [n for n in ("test_mse", "relative_train_loss", "effective_rank") if n in set(curves["name"])]
    runs = [(r, r.replace("_", " "), {}) for r in sorted(set(curves["run_id"]))]
    panels = kinds.series_vs_step(curves, names, runs, floor=1e-16, ylabels=[n.replace("_", " ") for n in names])
    for name, panel in zip(names, panels):
        for curve in panel.curves:
            curve.style = {"marker": "o"} if len(curve.x) < 3 else {}
        if name == "effective_rank":
            panel.yscale = "linear"
            for curve in panel.curves:
                curve.floor = None
    return kinds.draw(panels, path, size=(4.6, 3.6))


def razin_cohen(razin: pd.DataFrame, depth: int, path: Path) -> Path:
    """Razin–Cohen 2×2 along training (a depth-``depth`` factorization): |w11| and the norms grow like
    1/√(6L) while σ₂/σ₁ and L fall."""
    wide = razin.pivot_table(index="step", columns="name", values="value").sort_index()
    wide = wide[wide.index > 0]
    norms = [kinds.Curve(wide.index, wide[name].abs(), label)
             for name, label in (("w11", "|w11|"), ("frobenius_norm", "‖W‖_F"), ("nuclear_norm", "‖W‖_*"))]
    norms.append(kinds.Curve(wide.index, 1 / np.sqrt(6 * wide["loss"]), "1/√(6L)", {"color": "grey", "linestyle": "--"}))
    rank = [kinds.Curve(wide.index, wide["sigma_ratio"], "σ₂/σ₁", {"color": "C3"}),
            kinds.Curve(wide.index, wide["loss"], "loss L", {"color": "C4"})]
    return kinds.draw([kinds.Panel(norms, xlabel="step", ylabel="norm", xscale="log", yscale="log",
                                   title=f"Razin–Cohen 2×2, depth {depth}: norms"),
                       kinds.Panel(rank, [kinds.Line(RC_LOSS, f"L = {RC_LOSS:g}", {"linestyle": ":"})], xlabel="step",
                                   xscale="log", yscale="log", title="rank (σ₂/σ₁) and loss")], path, size=(5.25, 3.8))
