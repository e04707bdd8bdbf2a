"""double-descent, part (a): random ReLU features with the minimum-norm least-squares fit.

The sweep over the number of features N (``solve`` stores one run per feature seed, its metrics rows
with N as their ``step``), the per-N table, the four checks and the figure.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from implicitreg.config import Strict
from implicitreg.data import Dataset
from implicitreg.references.random_features import draw_relu_features, min_norm_fit, relu_features
from implicitreg.report import figures as fig
from implicitreg.studies.base import Check, Support, mean_std, weakest

RF_ARM = "rf"
RF_METRICS = ("train_mse", "test_mse", "train_err", "test_err", "coef_norm")
PEAK_TOLERANCE = 0.10  # |N_peak / n − 1| ≤ 10%
ROUNDING = 1e-9  # N/n − 1 in floating point: 1100/1000 − 1 is 0.10000000000000009
DESCENT_FACTOR = 10.0  # test MSE at the peak ≥ 10 × at the largest N
INTERPOLATION_MSE = 1e-12  # train MSE of a fit that interpolates (every feature seed), in float64


def increasing(values: list, what: str) -> list:
    if any(v <= 0 for v in values) or sorted(set(values)) != list(values):
        raise ValueError(f"{what} must be strictly increasing positive numbers, got {values}")
    return values


class RandomFeatures(Strict):
    """Part (a): the random-features sweep (``--set rf.ratios=[…]`` etc.)."""

    n_train: int = Field(1000, ge=10, description="training points n of the random-features fits")
    n_test: int = Field(1000, ge=10, description="test points of the random-features fits")
    ratios: list[float] = Field(
        default_factory=lambda: [0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 1.5, 2.0, 3.0,
                                 5.0, 10.0],
        min_length=3, description="numbers of features N as multiples of n (increasing)")
    feature_seeds: int = Field(3, ge=1, description="independent feature draws (error bars)")
    bias_scale: float = Field(1.0, ge=0.0, description="standard deviation of the feature biases")

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, value: list[float]) -> list[float]:
        return increasing(value, "rf.ratios")



def feature_counts(rf: RandomFeatures) -> list[int]:
    """The grid of N: ``round(ratio · n)``, at least 1, without repeats (increasing)."""
    return sorted({max(1, round(r * rf.n_train)) for r in rf.ratios})


def one_hot(labels: np.ndarray, n_classes: int) -> np.ndarray:
    return np.eye(n_classes)[labels]


def sweep_features(data: Dataset, counts: list[int], feature_seed: int, bias_scale: float,
                   keep: tuple[int, ...] = ()) -> tuple[list[tuple[int, str, float]], dict[int, np.ndarray]]:
    """Fit the min-norm random-features model at every N of ``counts`` for one feature seed.

    Args:
        data: train/test inputs (n, d) and integer labels; targets are one-hot (n, k).
        counts: increasing numbers of features N; the models are nested (first N of one draw).
        keep: the N whose (N, k) coefficients are returned.

    Returns:
        metrics rows (N, name, value) for ``RF_METRICS`` and the kept coefficients by N.
    """
    k = data.n_classes
    targets, test_targets = one_hot(data.y_train, k), one_hot(data.y_test, k)
    weights, bias = draw_relu_features(data.x_train.shape[1], counts[-1], feature_seed, bias_scale)
    rows, kept = [], {}
    for count in counts:
        w, b = weights[:, :count], bias[:count]
        train_features, test_features = relu_features(data.x_train, w, b), relu_features(data.x_test, w, b)
        coefficients = min_norm_fit(train_features, targets)
        fit, predicted = train_features @ coefficients, test_features @ coefficients
        rows += [
            (count, "train_mse", float(np.mean((fit - targets) ** 2))),
            (count, "test_mse", float(np.mean((predicted - test_targets) ** 2))),
            (count, "train_err", float(np.mean(fit.argmax(1) != data.y_train))),
            (count, "test_err", float(np.mean(predicted.argmax(1) != data.y_test))),
            (count, "coef_norm", float(np.linalg.norm(coefficients))),
        ]
        if count in keep:
            kept[count] = coefficients
    return rows, kept



def rf_rows(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """Wide frame: one row per (run, N) of the random-features runs, a column per metric."""
    ids = runs.loc[runs["arm"] == RF_ARM, "run_id"]
    part = metrics[metrics["run_id"].isin(ids)]
    if part.empty:
        return pd.DataFrame(columns=["run_id", "step", *RF_METRICS])
    return part.pivot_table(index=["run_id", "step"], columns="name", values="value").reset_index()


def rf_table(rf: RandomFeatures, runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    wide = rf_rows(runs, metrics)
    rows = []
    for count, part in wide.groupby("step", sort=True):
        row: dict[str, Any] = {"part": RF_ARM, "size": int(count), "size/n": count / rf.n_train,
                               "runs": len(part)}
        # feature seeds with a finite test / train MSE at this N (what the checks rest on)
        row["test_mse_n"] = Support.of(part["test_mse"], rf.feature_seeds).used
        row["train_mse_n"] = Support.of(part["train_mse"], rf.feature_seeds).used
        row["train_acc_mean"], row["train_acc_std"] = mean_std(1.0 - part["train_err"])
        row["test_acc_mean"], row["test_acc_std"] = mean_std(1.0 - part["test_err"])
        row["test_mse_geo"] = _geometric_mean(part["test_mse"])
        row["test_mse_mean"], row["test_mse_std"] = mean_std(part["test_mse"])
        row["train_mse_max"] = float(part["train_mse"].max())
        row["norm_mean"], row["norm_std"] = mean_std(part["coef_norm"])
        rows.append(row)
    return pd.DataFrame(rows)


def _geometric_mean(values: pd.Series) -> float:
    finite = values[np.isfinite(values) & (values > 0)]
    return float(np.exp(np.log(finite).mean())) if len(finite) else math.nan


RF_CHECKS = ("rf: N at the test-MSE peak, relative distance from n",
             "rf: test MSE at the peak / at the largest N",
             "rf: largest step-to-step ratio of test MSE beyond the peak",
             "rf: first N whose fits interpolate, relative distance from n")


def rf_checks(rf: RandomFeatures, table: pd.DataFrame, solutions: dict[str, np.ndarray]) -> list[Check]:
    """The four random-features checks from the per-N table (geometric means over feature seeds).

    The peak is only located when every N of the grid has a test MSE, and the threshold of
    interpolation only when every N up to it has its train MSE: a missing N could be either.
    """
    n = rf.n_train
    peak_at, descent, steps_after, interpolates = RF_CHECKS
    tolerance = PEAK_TOLERANCE + ROUNDING
    grid = feature_counts(rf)
    if table.empty or f"{RF_ARM}_n_features" not in solutions:
        why = "the random-features fits did not finish (no rf metrics or solutions.npz)"
        return [Check.at_most(peak_at, None, PEAK_TOLERANCE, detail=why),
                Check.at_least(descent, None, DESCENT_FACTOR, detail=why),
                Check.at_most(steps_after, None, 1.0, strict=True, detail=why),
                Check.at_most(interpolates, None, PEAK_TOLERANCE, detail=why)]
    table = table.set_index("size").reindex(grid)  # every N of the grid, NaN where it did not run
    seeds = rf.feature_seeds
    test_support = [Support(int(u) if pd.notna(u) else 0, seeds, "feature seeds") for u in table["test_mse_n"]]
    mse = table["test_mse_geo"].to_numpy(dtype=float)
    sizes = np.asarray(grid)
    lost = [int(N) for N, s in zip(grid, test_support) if not s.enough or not np.isfinite(mse[grid.index(N)])]
    support = weakest(*test_support)
    if lost:
        why = f"no test MSE from half the feature seeds at N = {lost}: the peak cannot be located"
        checks = [Check.at_most(peak_at, None, PEAK_TOLERANCE, detail=why, support=support),
                  Check.at_least(descent, None, DESCENT_FACTOR, detail=why, support=support),
                  Check.at_most(steps_after, None, 1.0, strict=True, detail=why, support=support)]
    else:
        peak = int(np.argmax(mse))
        peak_n = int(sizes[peak])
        checks = [Check.at_most(peak_at, abs(peak_n / n - 1.0), tolerance,
                                detail=f"peak at N = {peak_n} (test MSE {mse[peak]:.4g}), n = {n}; grid {grid}",
                                support=support)]
        if peak == len(sizes) - 1:
            why = f"the peak is at the largest N ({peak_n}): nothing beyond it ran"
            checks += [Check.at_least(descent, None, DESCENT_FACTOR, detail=why),
                       Check.at_most(steps_after, None, 1.0, strict=True, detail=why)]
        else:
            steps = mse[peak + 1:] / mse[peak:-1]
            worst = int(np.argmax(steps))
            checks += [
                Check.at_least(descent, mse[peak] / mse[-1], DESCENT_FACTOR, support=support,
                               detail=f"test MSE {mse[peak]:.4g} at N = {peak_n} vs {mse[-1]:.4g} at N = {grid[-1]}"),
                Check.at_most(steps_after, steps[worst], 1.0, strict=True, support=support,
                              detail=(f"N {int(sizes[peak + worst])} → {int(sizes[peak + worst + 1])}: test MSE "
                                      f"{mse[peak + worst]:.4g} → {mse[peak + worst + 1]:.4g}")),
            ]
    checks.append(_interpolation_check(rf, table, grid, tolerance))
    return checks


def _interpolation_check(rf: RandomFeatures, table: pd.DataFrame, grid: list[int], tolerance: float) -> Check:
    """The first N of the grid whose fits (every feature seed) interpolate, against n.

    When no N of the grid interpolates, the threshold lies beyond the largest N: if that is already
    more than the tolerance away from n the claim fails (the value is the distance of the largest N,
    a lower bound); if not, where it lies is unknown.
    """
    n, name = rf.n_train, RF_CHECKS[3]
    seeds = rf.feature_seeds
    supports = [Support(int(u) if pd.notna(u) else 0, seeds, "feature seeds") for u in table["train_mse_n"]]
    train = table["train_mse_max"].to_numpy(dtype=float)
    for i, (count, support) in enumerate(zip(grid, supports)):
        if not support.enough or not np.isfinite(train[i]):
            return Check.at_most(name, None, PEAK_TOLERANCE, support=support, detail=(
                f"no train MSE from half the feature seeds at N = {count}: the first interpolating N is unknown"))
        if train[i] <= INTERPOLATION_MSE:
            below = f"; at N = {grid[i - 1]} train MSE {train[i - 1]:.3g}" if i > 0 else ""
            return Check.at_most(name, abs(count / n - 1.0), tolerance,
                                 support=weakest(*supports[:i + 1]), detail=(
                                     f"first interpolating N = {count}, n = {n}{below} (features that are zero on "
                                     "every training point add nothing, so the threshold can sit a little above n)"))
    beyond = grid[-1] / n - 1.0
    why = f"no fit interpolates (train MSE ≤ {INTERPOLATION_MSE:g}) up to N = {grid[-1]}"
    if beyond > tolerance:
        return Check.at_most(name, beyond, tolerance,
                             support=weakest(*supports),
                             detail=f"{why}: the first interpolating N is beyond it, more than {beyond:.3g} from n")
    return Check.at_most(name, None, PEAK_TOLERANCE, detail=f"{why}, which is within {PEAK_TOLERANCE:g} of n: "
                         "the first interpolating N may lie beyond the grid")


def rf_context(table: pd.DataFrame) -> list[str]:
    """Where the second descent ends up against the under-parameterized side: reported, not judged."""
    if table.empty:
        return []
    first, last = table.iloc[0], table.iloc[-1]
    best = table.loc[table["test_mse_geo"].idxmin()]
    return [f"(a) not judged: test MSE at the largest N ({int(last['size'])}) {last['test_mse_geo']:.4g} vs "
            f"{first['test_mse_geo']:.4g} at the smallest ({int(first['size'])}), lowest {best['test_mse_geo']:.4g} at "
            f"N = {int(best['size'])}; test error {1 - last['test_acc_mean']:.3f} at the largest N vs "
            f"{1 - first['test_acc_mean']:.3f} at the smallest."]



def rf_figure(rf: RandomFeatures, runs: pd.DataFrame, metrics: pd.DataFrame, path: Path) -> Path:
    """Test MSE, train MSE (log–log) and classification error against N/n; a thin line per feature
    seed and, for the test MSE, their geometric mean (what the checks use)."""
    wide = rf_rows(runs, metrics)
    n = rf.n_train
    figure, axes = fig.subplots(1, 3, figsize=(14, 3.8))
    for seed, (run_id, part) in enumerate(wide.groupby("run_id", sort=True)):
        part = part.sort_values("step")
        ratio = part["step"] / n
        first = seed == 0
        axes[0].plot(ratio, part["test_mse"], color="C0", alpha=0.35, linewidth=1,
                     label="test MSE, each feature seed" if first else None)
        # an interpolating fit has train MSE ~1e-28: floor it at 1e-32 so that the log axis shows it
        axes[1].plot(ratio, part["train_mse"].clip(lower=1e-32), color="C1", alpha=0.6, marker=".",
                     label="train MSE" if first else None)
        axes[2].plot(ratio, part["test_err"], color="C0", alpha=0.6, marker="o", markersize=3,
                     label="test error" if first else None)
        axes[2].plot(ratio, part["train_err"], color="C1", alpha=0.6, marker=".",
                     label="train error" if first else None)
    table = rf_table(rf, runs, metrics)
    axes[0].plot(table["size/n"], table["test_mse_geo"], color="C0", marker="o", markersize=3.5,
                 label="geometric mean")
    fig.reference(axes[0], 0.1, "zero predictor", linestyle=":")
    labels = ("test MSE (per class)", "train MSE (per class)", "classification error")
    for ax, label, corner in zip(axes, labels, ("upper left", "upper right", "center right")):
        ax.axvline(1.0, color="grey", linestyle="--", linewidth=1, label="N = n")
        # legends in the corners the curves leave free
        fig.dress(ax, f"features N / n (n = {n})", label, log_x=True, log_y=ax is not axes[2], loc=corner)
    figure.suptitle(f"random ReLU features, min-norm fit: {wide['run_id'].nunique()} feature seed(s)")
    return fig.save_figure(figure, path)

