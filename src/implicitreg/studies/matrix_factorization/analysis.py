"""matrix-factorization's judgement: the per-run table, the checks of the claim and the notes.

Every check reads the stored metrics and run settings (test_mse is recorded only when a truth
exists); ``solutions.npz`` only adds detail. A missing run, metric or setting, or a NaN, leaves the
check that needs it inconclusive, naming what is missing.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from implicitreg.studies.base import Check, final_value, final_values, run_config, with_settings
from implicitreg.studies.matrix_factorization.problem import unobserved_error

DEEP_TOL = 1e-3  # depth-3 test MSE (issue text)
RATIO_MIN = 100.0  # depth-2 / depth-3 test MSE
SHALLOW_TOL = 0.05  # |depth-1 test MSE − (1 − m/(n₁n₂))|
RANK_MARGIN = 0.5  # depth-3 effective rank < r + 0.5
RC_LOSS = 1e-3  # Razin–Cohen relations are checked once L ≤ this
RC_BAND = (0.95, 1.05)  # |w₁₁|·√(6L)
RC_RATIO = 1e-6  # σ₂/σ₁
RC_RUN = "razin_cohen"
SHOWN = ("run", "depth", "steps", "converged", "relative_train_loss", "test_mse", "effective_rank", "nuclear_norm",
         "distance_to_min_nuclear")


def depth_run(depth: int) -> str:
    return f"depth_{depth}"


def run_table(runs: pd.DataFrame, metrics: pd.DataFrame, solutions: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per run: depth (from its settings), steps, convergence and the final metrics."""
    if runs.empty or metrics.empty:
        return pd.DataFrame()
    final = with_settings(final_values(runs, metrics), runs, ("depth",))
    columns = ["relative_train_loss", "test_mse", "effective_rank", "nuclear_norm", "frobenius_norm", "loss", "w11",
               "w11_sqrt_6l", "sigma_ratio"]
    recorded = metrics.groupby("run_id")["name"].agg(set).to_dict()
    rows = []
    for _, run in final.iterrows():
        row = {"run": run["run_id"], "depth": int(run["depth"]), "steps": int(run["final_step"]),
               "converged": bool(run.get("converged", 0.0) == 1.0)}
        # a metric the run recorded keeps its final value, NaN included (a NaN must reach the checks)
        row.update({c: float(run[c]) for c in columns if c in run and c in recorded.get(run["run_id"], set())})
        matrix, reference = solutions.get(run["run_id"]), solutions.get("ref_min_nuclear")
        if matrix is not None and reference is not None and matrix.shape == reference.shape:
            row["distance_to_min_nuclear"] = float(np.linalg.norm(matrix - reference) / np.linalg.norm(reference))
        rows.append(row)
    return pd.DataFrame(rows)


def checks(table: pd.DataFrame, metrics: pd.DataFrame, runs: pd.DataFrame,
           solutions: dict[str, np.ndarray]) -> list[Check]:
    """Depth 3 completes (test MSE), sharper than depth 2, depth 1 fills nothing, depth 3 is low rank;
    then Razin & Cohen's two (:func:`razin_checks`)."""
    ran = set(table["run"]) if "run" in table else set()

    def value(depth: int, column: str) -> float | None:
        return final_value(table, depth_run(depth), column, key="run")

    def missing(depth: int, column: str = "test_mse") -> str:
        """Why a depth's value is absent ('' if it is there; a NaN value is the base's to report)."""
        if depth_run(depth) not in ran:
            return f"depth {depth} did not run"
        if column not in table:
            return "no truth: test errors cannot be computed" if column == "test_mse" else f"no {column} recorded"
        return ""

    found = []
    deep, shallow2, one = value(3, "test_mse"), value(2, "test_mse"), value(1, "test_mse")
    found.append(Check.at_most("depth-3 test MSE", deep, DEEP_TOL, detail=missing(3)))

    # depth 3 exactly 0 would make the ratio infinite (the claim holds); the smallest positive float keeps it finite
    ratio = None if deep is None or shallow2 is None else shallow2 / max(deep, np.finfo(float).tiny)
    found.append(Check.at_least("depth-2 / depth-3 test MSE", ratio, RATIO_MIN,
                                detail=missing(2) or missing(3) or f"depth 2: {shallow2:.3e}, depth 3: {deep:.3e}"))

    fraction = run_config(runs, depth_run(1)).get("observed_fraction")
    expected = None if fraction is None else 1.0 - float(fraction)
    detail = missing(1) or ("the observed fraction of depth 1's run is not recorded" if expected is None else "")
    if "truth" in solutions and "mask" in solutions:
        truth, mask = solutions["truth"], solutions["mask"]
        detail = "; ".join(filter(None, [detail, f"the truth's unobserved energy fraction (the exact value for a zero "
                                                 f"fill) = {np.sum((truth * ~mask) ** 2) / np.sum(truth ** 2):.4f}"]))
    shown = f"depth 1: {one:.4f}; 1 − m/(n1·n2) = {expected:.4f}" if one is not None and expected is not None else ""
    found.append(Check.at_most("|depth-1 test MSE − (1 − m/(n1·n2))|",
                               None if one is None or expected is None else abs(one - expected), SHALLOW_TOL,
                               detail="; ".join(filter(None, [shown, detail]))))

    rank = run_config(runs, depth_run(3)).get("true_rank")
    effective = value(3, "effective_rank")
    if rank is None:
        found.append(Check.at_most("depth-3 effective rank", effective, RANK_MARGIN, strict=True,
                                   of="effective rank − r",
                                   unreliable=missing(3, "effective_rank") or "the true rank is unknown (no truth)"))
    else:
        found.append(Check.at_most("depth-3 effective rank", effective, rank + RANK_MARGIN, strict=True,
                                   detail=missing(3, "effective_rank") or f"true rank r = {rank}: r + {RANK_MARGIN:g}"))
    return found + razin_checks(metrics)


def razin_checks(metrics: pd.DataFrame) -> list[Check]:
    """|w11|·√(6L) and σ₂/σ₁ at every recorded step with L ≤ RC_LOSS; a NaN among them (or among the
    losses that choose the steps) makes the checks inconclusive rather than dropping out of max/min."""
    names = (f"Razin–Cohen: |w11|·√(6L) once L ≤ {RC_LOSS:g} (farthest from 1)",
             f"Razin–Cohen: σ₂/σ₁ once L ≤ {RC_LOSS:g} (largest)")
    part = metrics[metrics["run_id"] == RC_RUN].sort_values("step", kind="stable")
    wide = part.drop_duplicates(["step", "name"], keep="last").pivot(index="step", columns="name", values="value")

    def undecided(reason: str) -> list[Check]:
        return [Check.within(names[0], None, *RC_BAND, unreliable=reason),
                Check.at_most(names[1], None, RC_RATIO, unreliable=reason)]

    needed = ("loss", "w11_sqrt_6l", "sigma_ratio")
    if wide.empty or any(c not in wide for c in needed):
        return undecided("the 2×2 run did not run" if wide.empty else
                         f"the 2×2 run did not record {', '.join(c for c in needed if c not in wide)}")
    if wide["loss"].isna().any():
        return undecided(f"{int(wide['loss'].isna().sum())} recorded loss(es) of the 2×2 run are NaN")
    late = wide[wide["loss"] <= RC_LOSS]
    if late.empty:
        return undecided(f"the loss never reached {RC_LOSS:g} (lowest {wide['loss'].min():.3e})")
    products, ratios = late["w11_sqrt_6l"].to_numpy(), late["sigma_ratio"].to_numpy()
    # NaN propagates through these (numpy), so a NaN step makes the value NaN: inconclusive
    farthest = float(products[np.argmax(np.abs(products - 1.0))]) if np.all(np.isfinite(products)) else math.nan
    largest = float(np.max(ratios))
    last = late.iloc[-1]
    detail = (f"{len(late)} recorded steps with L ≤ {RC_LOSS:g} (steps {int(late.index[0])}–{int(late.index[-1])}); "
              f"|w11|·√(6L) from {np.min(products):.4f} to {np.max(products):.4f}; at the last step "
              f"L = {last['loss']:.3e}, w11 = {last.get('w11', math.nan):.3f}, "
              f"‖W‖_F = {last.get('frobenius_norm', math.nan):.3f}")
    return [Check.within(names[0], farthest, *RC_BAND, detail=detail),
            Check.at_most(names[1], largest, RC_RATIO,
                          detail=f"σ₂/σ₁ at the last step {last['sigma_ratio']:.2e}; det W = "
                                 f"{last.get('det', math.nan):.2e}")]


def notes(config: Any, table: pd.DataFrame, solutions: dict[str, np.ndarray]) -> list[str]:
    """What the columns mean, the dynamics' settings, the min-nuclear-norm reference and what did not converge."""
    found = [
        "test_mse = ‖P_Ωᶜ(W − W*)‖²_F / ‖W*‖²_F, the squared error on the unobserved entries relative to the "
        "truth's energy; for the generated truth (unit mean square) it is the squared error on the unobserved "
        "entries averaged over all n1·n2 entries, so predicting 0 there scores the unobserved energy "
        "≈ 1 − m/(n1·n2).",
        "effective_rank = exp(H(σ/Σσ)) (Roy & Vetterli 2007), H the Shannon entropy; k equal nonzero singular "
        "values give k. relative_train_loss = ‖P_Ω(W − M)‖²/‖P_Ω(M)‖²; distance_to_min_nuclear = ‖W − W_nuc‖_F / "
        "‖W_nuc‖_F.",
        f"init: every factor init_scale = {config.init_scale:g} × a random orthogonal matrix (balanced); loss "
        f"(1/2m)‖P_Ω(W − M)‖²; stop at ‖P_Ω(W − M)‖²/‖P_Ω M‖² ≤ {config.loss_tol:g} or {config.max_steps} steps; "
        f"steps capped by stability_step = {config.stability_step:g} / curvature bound and growth_step = "
        f"{config.growth_step:g} relative change per factor.",
        "Razin–Cohen 2×2: observed w12 = w21 = 1, w22 = 0, w11 unobserved; W_j(0) = "
        f"{config.razin_init:g}·I (depth {config.razin_depth}, so det W(0) > 0); L = (1/6)Σ_Ω(W_ij − M_ij)². "
        "Gradient flow keeps det W > 0 (Razin & Cohen 2020), so w11·w22 > w12·w21 → 1 while w22² ≤ 6L: "
        "|w11| ≥ w12·w21/√(6L) → ∞ and every norm diverges. The flow also sends det W → 0⁺ (σ₂ → 0, the rank "
        "falls) with w12, w21 fitted faster than w22, so the bound is tight: |w11|·√(6L) → 1.",
    ]
    mask = solutions.get("mask")
    if mask is not None and "ref_min_nuclear" in solutions:
        status = str(solutions.get("status_min_nuclear", "unknown"))
        line = f"min-nuclear-norm completion (cvxpy, SCS; status {status})"
        if "truth" in solutions:
            line += f": test_mse {unobserved_error(solutions['ref_min_nuclear'], solutions['truth'], mask):.3e}"
        nuclear = np.linalg.svd(solutions["ref_min_nuclear"], compute_uv=False).sum()
        found.append(line + f", nuclear norm {nuclear:.4g}.")
    if not table.empty and "converged" in table:
        slow = table.loc[~table["converged"], "run"].tolist()
        if slow:
            found.append(f"did not reach its stopping loss within its step budget: {', '.join(slow)} (the last "
                         "iterate is used).")
    if config.data_file is not None and (table.empty or "test_mse" not in table):
        found.append(f"{config.data_file} holds no truth: the test-error and effective-rank checks are "
                     "inconclusive.")
    return found
