"""igr's judgement: distances at T from ``solutions.npz``, their shrink factor per halving of h, the
checks of the orders (×4 to the modified flow, ×2 to the plain one; SGD closer to L̃_SGD) and the notes.

Every distance is computed from the stored end points (run ids and array names are built from the
configured step sizes, never parsed); a missing array leaves its row out and the checks that need it
inconclusive.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from implicitreg.studies.base import Check

MODIFIED_BAND = (3.5, 4.5)  # distance to the flow of L̃ shrinks by this factor per halving of h
PLAIN_BAND = (1.7, 2.3)  # distance to the flow of L shrinks by this factor per halving of h
MODELS = ("two_param", "mlp")


def h_label(h: float) -> str:
    """How a step size names its runs and arrays: ``h_0.05``."""
    return f"h_{h:g}"


def table(config: Any, solutions: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per run, every distance computed from ``solutions.npz`` (empty if it is missing)."""
    rows = []
    for model in MODELS:
        rows += _arm(config, solutions, model, "gd", lambda h: round(config.end_time / h), f"{model}_gd_{{h}}",
                     {"dist_plain": f"ref_{model}_flow", "dist_modified": f"ref_{model}_modified_{{h}}"})
    return pd.DataFrame(rows + _arm(config, solutions, "mlp", "sgd", lambda h: config.batches, "mlp_sgd_mean_{h}",
                                    {"dist_sgd_flow": "ref_mlp_sgd_flow_{h}", "dist_igr_flow": "ref_mlp_igr_epoch_{h}"}))


def _arm(config: Any, solutions: dict[str, np.ndarray], model: str, kind: str, steps: Callable[[float], int],
         learned: str, references: dict[str, str]) -> list[dict[str, Any]]:
    """The rows of one arm over the step sizes: the distance of its end point (the array ``learned``;
    SGD: the mean over orders) to each reference array (in both names ``{h}`` is the step size's label),
    and each distance's shrink factor from the previous step size."""
    rows: list[dict[str, Any]] = []
    previous: dict[str, float] = {}  # the distances at the previous step size (empty if it is missing)
    for h in config.step_sizes:
        point = solutions.get(learned.format(h=h_label(h)))
        refs = {column: solutions.get(key.format(h=h_label(h))) for column, key in references.items()}
        if point is None or any(ref is None for ref in refs.values()):
            previous = {}  # a shrink factor spans one halving only, never a gap
            continue
        row = {"run_id": f"{model}/{kind}_{h_label(h)}", "model": model, "kind": kind, "h": h, "steps": steps(h),
               **{column: float(np.linalg.norm(point - ref)) for column, ref in refs.items()}}
        if kind == "sgd":
            row["sgd_over_igr"] = row["dist_sgd_flow"] / row["dist_igr_flow"]
        for column in references:
            row[f"{column}_shrink"] = previous[column] / row[column] if column in previous else math.nan
            previous[column] = row[column]
        rows.append(row)
    return rows


def band_check(name: str, part: pd.DataFrame, column: str, band: tuple[float, float], planned: int) -> Check:
    """Every per-halving shrink factor in ``band``. The value is the factor farthest outside the band
    (in log; inside it, the one nearest an edge), so the value is in the band exactly when all are.
    Inconclusive unless every one of the ``planned`` halvings has a finite factor."""
    shrinks = part[f"{column}_shrink"].to_numpy()[1:] if len(part) else np.array([])
    finite = shrinks[np.isfinite(shrinks) & (shrinks > 0)] if len(shrinks) else shrinks
    if len(finite):
        excess = np.maximum(np.log(band[0] / finite), np.log(finite / band[1]))
        worst = float(finite[np.argmax(excess)])
    else:
        worst = None
    complete = len(part) == planned + 1 and len(finite) == planned
    outside = worst is not None and not band[0] <= worst <= band[1]  # fails whatever the missing ones are
    return Check.within(name, worst, *band, of="every halving",
                        detail=(f"shrink factors per halving: {', '.join(f'{v:.3f}' for v in shrinks)}"
                                if len(shrinks) else ""),
                        unreliable="" if complete or outside else
                        f"{len(finite)} of {planned} halvings have a finite shrink factor (no solutions.npz, or a "
                        "distance missing or not finite)")


def checks(config: Any, table: pd.DataFrame) -> list[Check]:
    """Per model, the GD distance shrinks ×4 per halving to the modified flow and ×2 to the plain one;
    the mean SGD epoch is closer to the flow of L̃_SGD than of L̃_IGR at every h."""
    halvings = len(config.step_sizes) - 1
    found = []
    for model in MODELS:
        part = table[(table["model"] == model) & (table["kind"] == "gd")] if not table.empty else table
        for column, band, target, flow in (("dist_modified", MODIFIED_BAND, 4.0, "L + (h/4)‖∇L‖²"),
                                           ("dist_plain", PLAIN_BAND, 2.0, "L")):
            found.append(band_check(f"{model}: GD distance to the flow of {flow} shrinks ×{target:g} per halving",
                                     part, column, band, halvings))
    sgd = table[table["kind"] == "sgd"] if not table.empty else table
    ratio = sgd["sgd_over_igr"].to_numpy() if len(sgd) else np.array([])
    finite = ratio[np.isfinite(ratio)]
    largest = float(finite.max()) if len(finite) else None
    complete = len(finite) == len(config.step_sizes)
    found.append(Check.at_most(
        "mlp: mean one-epoch SGD is closer to the flow of L̃_SGD than of L + (h/4)‖∇L‖²", largest, 1.0, strict=True,
        of="dist(L̃_SGD flow) / dist(L̃_IGR flow) at every h",
        detail="ratio per h: " + ", ".join(f"h={h:g}: {r:.3f}" for h, r in zip(sgd["h"], ratio)) if len(ratio) else "",
        # a ratio ≥ 1 already fails the claim; otherwise every step size must have a finite ratio
        unreliable="" if complete or (largest is not None and largest >= 1.0) else
        f"{len(finite)} of {len(config.step_sizes)} step sizes have a finite SGD distance ratio"))
    return found


def notes(config: Any, table: pd.DataFrame) -> list[str]:
    """The loss, the integrator, what a shrink factor is, the SGD set-up and the SGD orders measured."""
    found = [
        (f"L(θ) = (1/2n)·Σ(ŷ_i − y_i)²; GD runs T/h steps to T = {config.end_time:g} for h = "
         + ", ".join(f"{h:g}" for h in config.step_sizes) + "; distances are Euclidean in parameter space at T, "
         "computed from solutions.npz."),
        f"flows: scipy solve_ivp DOP853, rtol = atol = {config.tol:g}; H∇L = ∇(½‖∇L‖²) by autograd double backward.",
        "shrink factor: distance at h divided by distance at h/2 (4 for an O(h²) error, 2 for O(h)).",
        (f"SGD: the MLP's points split into m = {config.batches} fixed equal batches; one epoch (one step per batch) "
         f"for every one of the {math.factorial(config.batches)} orders, averaged, against the flows of "
         "L̃_SGD = L + (h/4)‖∇L‖² + (h/4m)·Σ_k‖∇L_k − ∇L‖² and L̃_IGR = L + (h/4)‖∇L‖² over T = m·h."),
    ]
    sgd = table[table["kind"] == "sgd"] if not table.empty else table
    if len(sgd) > 1:
        slope = lambda col: np.log2(sgd[f"{col}_shrink"].to_numpy()[1:])
        found.append("SGD orders of convergence per halving (log2 of the shrink factor): to L̃_SGD "
                     + ", ".join(f"{s:.2f}" for s in slope("dist_sgd_flow")) + " (3 expected: O(h³)); to L̃_IGR "
                     + ", ".join(f"{s:.2f}" for s in slope("dist_igr_flow")) + " (2 expected: the dropped term is O(h²)).")
    return found
