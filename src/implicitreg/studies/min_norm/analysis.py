"""min-norm's judgement: the per-run table, the checks of the claim and the notes.

Every check rests on one run (its final metrics or its stored solution): a missing run, solution
or metric, or a NaN, leaves that check inconclusive.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from implicitreg.studies.base import Check, final_value, final_values, fmt, problem_source
from implicitreg.studies.min_norm.problem import relative_distance

EXACT_TOL = 1e-6  # GD/SGD: relative distance to their reference
ADAPTIVE_DIST_MIN = 0.1  # Adam/AdaGrad: relative distance to X⁺y at least this
RESIDUAL_MAX = 1e-3  # Adam/AdaGrad: relative residual at most this
FROM_ZERO = ("gd", "sgd", "adam", "adagrad")
ADAPTIVE = ("adam", "adagrad")
WILSON = "wilson"
LABELS = {"gd": "GD", "sgd": "SGD", "adam": "Adam", "adagrad": "AdaGrad", "gd_w0": "GD from w₀"}
METRICS = ["dist_ref", "residual", "test_error", "converged", "test_negative_fraction", "dist_min_norm"]


def final(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its optimizer (``arm``), steps taken, and every metric at its last recorded
    step, NaN included (NaN where a run lacks one)."""
    return final_values(runs, metrics).reindex(columns=["run_id", "arm", "final_step", *METRICS])


def table(final: pd.DataFrame) -> pd.DataFrame:
    return final[["run_id", "arm", "final_step", "converged", "dist_ref", "residual", "test_error"]].rename(
        columns={"arm": "optimizer", "dist_ref": "relative distance to reference",
                 "residual": "relative residual", "test_error": "Wilson test error"})


def checks(final: pd.DataFrame, solutions: dict[str, np.ndarray]) -> list[Check]:
    """GD and SGD reach their references; Adam and AdaGrad interpolate far from X⁺y; on Wilson's
    construction GD/SGD classify every test point and Adam/AdaGrad predict the majority class."""
    def distance(label: str, reference: str) -> float | None:
        if label not in solutions or reference not in solutions:
            return None
        return relative_distance(solutions[label], solutions[reference])

    def steps(run_id: str) -> str:
        value = final_value(final, run_id, "final_step")
        return "?" if value is None or not np.isfinite(value) else f"{int(value)}"

    found = []
    for label in ("gd", "sgd"):
        found.append(Check.at_most(f"{LABELS[label]} from zero: relative distance to X⁺y",
                                   distance(label, "ref_min_norm"), EXACT_TOL, detail=f"after {steps(label)} steps"))
    found.append(Check.at_most("GD from w₀: relative distance to X⁺y + (I − P)w₀",
                               distance("gd_w0", "ref_min_norm_from_w0"), EXACT_TOL,
                               detail=f"after {steps('gd_w0')} steps; its distance to X⁺y is "
                                      f"{fmt(distance('gd_w0', 'ref_min_norm'))}"))
    for label in ADAPTIVE:
        found.append(Check.at_most(f"{LABELS[label]} from zero: relative residual",
                                   final_value(final, label, "residual"), RESIDUAL_MAX,
                                   detail=f"after {steps(label)} steps"))
        found.append(Check.at_least(f"{LABELS[label]} from zero: relative distance to X⁺y",
                                    distance(label, "ref_min_norm"), ADAPTIVE_DIST_MIN))
    for label in ("gd", "sgd"):
        run_id = f"{WILSON}_{label}"
        found.append(Check.equals(f"Wilson's construction: {LABELS[label]} test error",
                                  final_value(final, run_id, "test_error"), 0.0,
                                  detail=f"distance to the construction's X⁺y: "
                                         f"{fmt(distance(run_id, f'ref_{WILSON}_min_norm'))}"))
    for label in ADAPTIVE:
        # each Wilson run records the fraction of negative test points (the majority class's error)
        run_id = f"{WILSON}_{label}"
        error, negatives = final_value(final, run_id, "test_error"), final_value(final, run_id, "test_negative_fraction")
        found.append(Check.equals(
            f"Wilson's construction: {LABELS[label]} test error minus the fraction of negative test points",
            None if error is None or negatives is None else error - negatives, 0.0, tolerance=1e-12,
            detail=(f"test error {fmt(error)}, fraction of negative test points {fmt(negatives)} (0: the majority "
                    f"class everywhere); residual {fmt(final_value(final, run_id, 'residual'))}")))
    return found


def notes(config: Any, runs: pd.DataFrame) -> list[str]:
    return [
        ("relative distance = ‖w − w_ref‖/‖w_ref‖ with w_ref = X⁺y (from zero; Wilson runs: their own X⁺y) or "
         "X⁺y + (I − P)w₀ (gd_w0); relative residual = ‖Xw − y‖/‖y‖."),
        (f"problem: {problem_source(runs, exclude=(WILSON,))}; Wilson's construction: {config.wilson_n_train} "
         f"train / {config.wilson_n_test} test points, P(y=+1) = {config.wilson_p}."),
        ("GD and SGD stop at relative residual ≤ tol; Adam and AdaGrad at ≤ adaptive_tol (final_step = steps "
         "taken; an SGD step is one sample)."),
    ]
