"""lazy-vs-rich: the per-α table, the two checks and the notes, from the stored runs.

A run's model (``network`` / ``linearized``) and scale α come from its stored config (:func:`with_settings`),
never from its id; the planned scales and seeds from the study's Config, so a planned (α, seed) without a
finished run counts as missing. A network run that diverged has no final values (:func:`final_values`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from implicitreg.studies.base import Check, Support, final_values, fmt, mean_std, seed_summary, with_settings

RHO_MAX = -0.9  # Spearman ρ(α, kernel movement) in every seed: "decreasing in α" (fixed before running)
AGREEMENT = 1e-2  # the relative difference of network and linearized predictions at the largest α
METRICS = ("kernel_movement", "param_movement", "relative_difference_test", "relative_difference_train", "loss",
           "train_acc", "test_acc", "test_loss")


def finals(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per run: final values (:func:`final_values`) with its ``model`` and ``alpha`` settings."""
    if runs.empty:
        return pd.DataFrame(columns=["run_id", "seed", "status", "final_step", "target_step", "model", "alpha", *METRICS])
    frame = with_settings(final_values(runs, metrics), runs, ("model", "alpha"))
    frame["alpha"] = pd.to_numeric(frame["alpha"], errors="coerce").astype(float)
    return frame


def spearman(x: Any, y: Any) -> float:
    """Spearman's rank correlation of two equal-length sequences (average ranks for ties): the Pearson
    correlation of the ranks. NaN for fewer than 3 points or a constant sequence."""
    x, y = pd.Series(np.asarray(x, dtype=float)), pd.Series(np.asarray(y, dtype=float))
    if len(x) != len(y):
        raise ValueError(f"spearman: expected sequences of equal length, got {len(x)} and {len(y)}")
    if len(x) < 3:
        return math.nan
    rx, ry = x.rank().to_numpy() - (len(x) + 1) / 2, y.rank().to_numpy() - (len(y) + 1) / 2
    denominator = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry) / denominator if denominator > 0 else math.nan


def network_values(config: Any, frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """[seed × planned α] of ``column`` for the network runs (NaN where missing, diverged or not finite)."""
    net = frame[frame["model"] == "network"] if len(frame) else frame
    grid = pd.DataFrame(math.nan, index=range(config.seeds), columns=sorted(config.alphas), dtype=float)
    for _, row in net.iterrows():
        if row["seed"] in grid.index and row["alpha"] in grid.columns and column in row:
            value = pd.to_numeric(row[column], errors="coerce")
            grid.loc[row["seed"], row["alpha"]] = float(value) if np.isfinite(value) else math.nan
    return grid


def movement_rhos(config: Any, frame: pd.DataFrame) -> pd.Series:
    """Per seed: Spearman ρ(α, kernel movement) over that seed's finite α — NaN when fewer than half of the
    planned α (or fewer than 3) have a value."""
    grid = network_values(config, frame, "kernel_movement")
    out = {}
    for seed, row in grid.iterrows():
        finite = row.dropna()
        enough = 2 * len(finite) >= len(row) and len(finite) >= 3
        out[seed] = spearman(finite.index, finite.to_numpy()) if enough else math.nan
    return pd.Series(out, dtype=float)


def table(config: Any, runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per α (network) and one for the linearization (α-free): seeds, divergences and the mean / std
    over seeds of every final metric."""
    frame = finals(runs, metrics)
    rows = []
    for alpha in sorted(config.alphas):
        part = frame[(frame["model"] == "network") & (frame["alpha"] == alpha)]
        rows.append({"model": "network", "alpha": alpha, **seed_summary(part, list(METRICS), config.seeds)})
    part = frame[frame["model"] == "linearized"]
    rows.append({"model": "linearized", "alpha": math.nan, **seed_summary(part, list(METRICS), config.seeds)})
    return pd.DataFrame(rows)


def checks(config: Any, runs: pd.DataFrame, metrics: pd.DataFrame) -> list[Check]:
    frame = finals(runs, metrics)
    rhos = movement_rhos(config, frame)
    finite = rhos.dropna()
    worst_rho = float(finite.max()) if len(finite) else None
    movement = Check.at_most(
        "kernel movement decreases in α: Spearman ρ(α, ‖K_T − K_0‖_F/‖K_0‖_F), worst seed", worst_rho, RHO_MAX,
        support=Support(len(finite), config.seeds, "seeds"),
        detail="per seed: " + ", ".join(f"{seed}: {fmt(None if math.isnan(r) else r, '.3f')}" for seed, r in rhos.items()))
    top = max(config.alphas)
    gaps = network_values(config, frame, "relative_difference_test")[top]
    found = gaps.dropna()
    agreement = Check.at_most(
        f"α={top:g}: ‖f_α − f_lin‖/‖f_lin‖ on the test points, worst seed", float(found.max()) if len(found) else None,
        AGREEMENT, support=Support(len(found), config.seeds, "seeds"),
        detail="per seed: " + ", ".join(f"{seed}: {fmt(None if math.isnan(v) else v, '.2e')}" for seed, v in gaps.items()))
    return [movement, agreement]


def slope(alphas: Any, values: Any) -> float:
    """Least-squares slope of log(values) against log(alphas) over the finite, positive pairs (NaN if < 2)."""
    a, v = np.asarray(alphas, dtype=float), np.asarray(values, dtype=float)
    keep = np.isfinite(a) & np.isfinite(v) & (a > 0) & (v > 0)
    if keep.sum() < 2:
        return math.nan
    return float(np.polyfit(np.log(a[keep]), np.log(v[keep]), 1)[0])


def notes(config: Any, runs: pd.DataFrame, metrics: pd.DataFrame) -> list[str]:
    frame = finals(runs, metrics)
    alphas = sorted(config.alphas)
    out = [
        ("f_α(x) = α·(h(θ, x) − h(θ₀, x)) with h a tanh MLP (hidden "
         f"{config.hidden}), full-batch GD on ½·mean‖f − y‖² (one-hot y), step η₀/α², η₀ = {config.lr_scale:g}·n/λ_max(K_h(θ₀)), "
         f"{config.steps} steps, {config.n_train} MNIST-1D training points; f_lin = α·J_h(θ₀)(θ − θ₀) trained by the "
         "same GD for the same steps (its function-space path is α-free, so it is run once per seed)."),
        (f"kernel movement: ‖K_T − K_0‖_F/‖K_0‖_F of the empirical NTK (all 10 outputs) on the first {config.ntk_points} "
         "training inputs (relative, so α² cancels); relative difference: ‖f_α − f_lin‖_F/‖f_lin‖_F over the test "
         "points' 10 outputs after the last step."),
    ]
    means = {name: network_values(config, frame, name).mean(axis=0, skipna=True) for name in
             ("kernel_movement", "relative_difference_test", "test_acc", "loss")}
    movement, gap = means["kernel_movement"], means["relative_difference_test"]
    if movement.notna().any():
        out.append("mean kernel movement by α: " + ", ".join(f"{a:g}: {fmt(None if math.isnan(m) else m, '.3g')}"
                                                             for a, m in movement.items())
                   + f" — the features move at small α (α={alphas[0]:g}: {fmt(None if math.isnan(movement.iloc[0]) else movement.iloc[0], '.3g')}).")
    large = [a for a in alphas if a >= 1.0][-3:]
    if len(large) >= 2:
        fitted = slope(large, gap[large].to_numpy())
        out.append(f"log(relative difference) against log α over α ∈ {large}: slope {fmt(None if math.isnan(fitted) else fitted, '.2f')} "
                   "(Chizat et al.: the distance to the linearization is O(1/α), slope −1).")
    accuracy = means["test_acc"]
    linear_acc, _ = mean_std(frame.loc[frame["model"] == "linearized", "test_acc"]) if len(frame) else (math.nan, 0)
    if accuracy.notna().any():
        best = float(accuracy.idxmax())
        out.append("observation, not a check — mean test accuracy by α: "
                   + ", ".join(f"{a:g}: {fmt(None if math.isnan(v) else v, '.3f')}" for a, v in accuracy.items())
                   + f"; linearization: {fmt(None if math.isnan(linear_acc) else linear_acc, '.3f')}; best at α={best:g}. "
                   "Mean final train loss by α: "
                   + ", ".join(f"{a:g}: {fmt(None if math.isnan(v) else v, '.3g')}" for a, v in means["loss"].items())
                   + " (at equal steps the lazy models fit the training set more slowly).")
    if len(frame):
        lanczos = with_settings(frame[["run_id"]], runs, ("lanczos_converged",))
        unconverged = lanczos[lanczos["lanczos_converged"] == False]["run_id"].tolist()  # noqa: E712 (NaN: unknown)
        if unconverged:
            out.append("Lanczos did not converge on λ_max(K_h)/n for " + ", ".join(unconverged)
                       + ": their η₀ rests on a lower bound of it (a step above the planned lr_scale).")
    diverged = frame[(frame["model"] == "network") & (frame["status"] == "diverged")] if len(frame) else frame
    if len(diverged):
        out.append(f"{len(diverged)} network run(s) diverged (loss above {1e6:g}× the initial one): "
                   + ", ".join(diverged["run_id"]) + "; they have no final values.")
    return out
