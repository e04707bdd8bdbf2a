"""min-norm's figures: distance and residual along training, and the test errors on Wilson's construction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from implicitreg.report import kinds
from implicitreg.studies.base import final_value
from implicitreg.studies.min_norm.analysis import (ADAPTIVE_DIST_MIN, EXACT_TOL, FROM_ZERO, LABELS, RESIDUAL_MAX,
                                                   WILSON)


def trajectories(metrics: pd.DataFrame, path: Path) -> Path:
    """Relative distance to X⁺y (GD from w₀: to X⁺y + (I − P)w₀) and relative residual vs step, log-log."""
    runs = [(label, LABELS[label], {"color": f"C{i}", "linestyle": "--" if label == "gd_w0" else "-"})
            for i, label in enumerate([*FROM_ZERO, "gd_w0"])]
    distance, residual = kinds.series_vs_step(metrics, ["dist_ref", "residual"], runs, floor=1e-17, titles=(
        "relative distance to X⁺y", "relative residual ‖Xw − y‖/‖y‖"))
    for curve in distance.curves:
        curve.label += " (to X⁺y + (I − P)w₀)" if curve.label == LABELS["gd_w0"] else ""
    distance.lines = [kinds.Line(EXACT_TOL, f"{EXACT_TOL:g}", {"linestyle": ":"}),
                      kinds.Line(ADAPTIVE_DIST_MIN, f"{ADAPTIVE_DIST_MIN:g}", {"color": "black", "linestyle": ":"})]
    residual.lines = [kinds.Line(RESIDUAL_MAX, f"{RESIDUAL_MAX:g}", {"linestyle": ":"})]
    return kinds.draw([distance, residual], path)


def wilson_errors(final: pd.DataFrame, path: Path) -> Path:
    """Test error on Wilson's construction per optimizer, with the fraction of negative test points."""
    negatives = final_value(final, f"{WILSON}_gd", "test_negative_fraction")
    shown = negatives is not None and np.isfinite(negatives)
    errors = [final_value(final, f"{WILSON}_{o}", "test_error") for o in FROM_ZERO]
    return kinds.draw([kinds.Panel(bars=kinds.Bars([LABELS[o] for o in FROM_ZERO], errors), grid="y",
                                   lines=[kinds.Line(negatives, "fraction of negative test points")] if shown else [],
                                   ylabel="test error", title="Wilson et al.'s construction")], path)
