"""double-descent: test error peaks at the interpolation threshold and falls again beyond it.

Belkin, Hsu, Ma & Mandal (2019), "Reconciling modern machine-learning practice and the classical
bias–variance trade-off"; Nakkiran, Kaplun, Bansal, Yang, Barak & Sutskever (2019), "Deep double
descent: where bigger models and more data hurt"; reproduced on MNIST-1D by Greydanus & Kobak
(2020/2024), "Scaling down deep learning with MNIST-1D".

Claim checked, in two parts on MNIST-1D:

(a) exact — random ReLU features ``φ(x) = ReLU(Wx + b)/√N`` (W ~ N(0, 1/d), b ~ N(0, 1), fixed per
    feature seed) with the minimum-norm least-squares fit to one-hot targets (``numpy.linalg.lstsq``,
    float64) on n training points, for N from n/10 to 10n, denser near n. The test MSE is largest
    at N ≈ n (the grid point of the peak lies within 10% of n), and falls again beyond it: at every
    grid step from the peak on, and by at least 10× from the peak to the largest N. The first N whose
    fits interpolate (train MSE ≤ 1e-12) also lies within 10% of n: the peak is at the interpolation
    threshold.
(b) trained — one-hidden-layer ReLU MLPs of widths spanning the interpolation threshold, trained
    by Adam (no explicit regularization, a fixed budget of steps for every width) on MNIST-1D with
    15% of the training labels replaced by random classes: the test error over widths peaks near
    the interpolation threshold (the narrowest width whose mean train accuracy on its noisy labels
    is ≥ 0.99; the peak width within a factor 2 of it) and the widest network tests better than the
    peak by more than two standard errors (the second descent).

Design:
- Part (a) is computed in ``solve`` (runs ``rf/seed<k>``, arm ``rf``; each run sweeps N, and its
  metrics rows use the number of features N as their ``step``). Part (b) is a plan of populations
  (runs ``mlp/w<width>/seed<s>``, arm ``mlp``) that the engine trains; ``analyze`` and ``figures``
  see both in the same tables.
- Feature sets are nested: the model with N features uses the first N features of the seed's
  largest draw, so the sweep of one seed is one growing model.
- Test MSE is the mean over test points and classes of (f(x) − one-hot)²: predicting zero scores
  0.1. Its spread over feature seeds is multiplicative (the smallest singular value of the feature
  matrix sets the size of the peak), so the checks use the geometric mean over seeds.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from implicitreg.config import DataConfig, MLPConfig, Strict, TrainConfig
from implicitreg.data import Dataset, load_dataset
from implicitreg.plan import Group, Member, group_runs
from implicitreg.references.random_features import (
    draw_relu_features,
    min_norm_fit,
    relu_features,
)
from implicitreg.report.figures import save_figure, curves, subplots
from implicitreg.studies.base import (
    Analysis,
    Check,
    ProgressBar,
    Solved,
    SolvedRun,
    Support,
    final_values,
    mean_std,
    weakest,
)

RF_ARM, MLP_ARM = "rf", "mlp"
RF_METRICS = ("train_mse", "test_mse", "train_err", "test_err", "coef_norm")
PEAK_TOLERANCE = 0.10  # (a): |N_peak / n − 1| ≤ 10%
ROUNDING = 1e-9  # N/n − 1 in floating point: 1100/1000 − 1 is 0.10000000000000009
DESCENT_FACTOR = 10.0  # (a): test MSE at the peak ≥ 10 × at the largest N
INTERPOLATION_MSE = 1e-12  # (a): train MSE of a fit that interpolates (every feature seed), in float64
FIT_MIN = 0.99  # (b): "fits its noisy training labels": mean train accuracy over seeds
PEAK_FACTOR = 2.0  # (b): peak width within a factor 2 of the interpolation threshold
SE_MULTIPLIER = 2.0  # (b): the widest network tests better than the peak by > 2 standard errors


def _increasing(values: list, what: str) -> list:
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
        return _increasing(value, "rf.ratios")


class Config(Strict):
    """Configuration of ``double-descent``; every field can be set with ``--set``."""

    seed: int | None = Field(None, ge=0, description="MNIST-1D generation seed (both parts); None = the paper's "
                             "data set (seed 42)")
    rf: RandomFeatures = Field(default_factory=RandomFeatures)
    n_train: int = Field(4000, ge=10, description="MLP part: training points (4000/1000 is MNIST-1D's own split)")
    n_test: int = Field(1000, ge=1, description="MLP part: test points")
    widths: list[int] = Field(default_factory=lambda: [16, 32, 64, 128, 256, 512, 1024, 2048], min_length=3)
    seeds: int = Field(3, ge=1, description="MLP seeds per width (init, batch order, corrupted labels)")
    label_noise: float = Field(0.15, ge=0.0, le=1.0, description="fraction of MLP training labels randomized")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(
        optimizer="adam", lr=1e-3, batch_size=128, max_steps=8000, eval_every=500, target_train_acc=None,
        schedule="constant"))

    @field_validator("widths")
    @classmethod
    def _widths(cls, value: list[int]) -> list[int]:
        return _increasing(value, "widths")


def feature_counts(rf: RandomFeatures) -> list[int]:
    """The grid of N: ``round(ratio · n)``, at least 1, without repeats (increasing)."""
    return sorted({max(1, round(r * rf.n_train)) for r in rf.ratios})


def mlp_data(config: Config) -> DataConfig:
    return DataConfig(name="mnist1d", n_train=config.n_train, n_test=config.n_test, seed=config.seed)


def rf_data(config: Config) -> DataConfig:
    return DataConfig(name="mnist1d", n_train=config.rf.n_train, n_test=config.rf.n_test, seed=config.seed)


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


class DoubleDescent:
    name = "double-descent"
    claim = ("Test error peaks at the interpolation threshold and falls again beyond it: random ReLU features "
             "with the min-norm fit at N ≈ n features, and MLPs with noisy labels near the width that first "
             "fits them.")
    paper = "Belkin, Hsu, Ma & Mandal 2019; Nakkiran et al. 2019"
    Config = Config
    minutes = (1.5, 7.7)  # quick, full: on 2 CPU cores, --threads 1

    def defaults(self, quick: bool) -> dict[str, Any]:
        if not quick:
            return {}
        # the same checks at a smaller size: (a) one feature draw on n = 500 points and a coarser grid (still
        # 0.9n … 1.1n around the peak); (b) 2 seeds on 2000 of MNIST-1D's 4000 training points, widths 16 …
        # 1024, the full budget of steps (a shorter one leaves the widest width short of fitting its noisy
        # labels). Measured on 2 busy cores: the test error peaks at the threshold width 128 and falls by
        # 0.046 to width 1024 (2·SE 0.033), in 83 s; 3 seeds: the peak at 64, 0.047 vs 2·SE 0.040, 115 s.
        return {"rf": {"n_train": 500, "n_test": 500, "feature_seeds": 1,
                       "ratios": [0.1, 0.5, 0.9, 0.95, 1.0, 1.05, 1.1, 2.0, 5.0, 10.0]},
                "seeds": 2, "n_train": 2000, "widths": [16, 32, 64, 128, 256, 512, 1024]}

    # --- part (a): exact ------------------------------------------------------------------------

    def problem(self, config: Config) -> Dataset:
        """The MNIST-1D split of the random-features part (generated from ``config.seed``)."""
        data = load_dataset(rf_data(config))
        if not np.all(np.isfinite(data.x_train)) or not np.all(np.isfinite(data.x_test)):
            raise ValueError("double-descent: MNIST-1D inputs are not finite (corrupt cache? clear "
                             "$IMPLICITREG_CACHE)")
        return data

    def solve(self, config: Config, problem: Dataset, progress: ProgressBar) -> Solved:
        counts = feature_counts(config.rf)
        n = config.rf.n_train
        at_n = min(counts, key=lambda c: (abs(c - n), c))  # the grid point nearest the threshold
        bar = progress("random features: min-norm fits", config.rf.feature_seeds * len(counts))
        runs, arrays = [], {}
        for feature_seed in range(config.rf.feature_seeds):
            rows, kept = sweep_features(problem, counts, feature_seed, config.rf.bias_scale,
                                        keep=(at_n, counts[-1]) if feature_seed == 0 else ())
            bar((feature_seed + 1) * len(counts))
            runs.append(SolvedRun(f"{RF_ARM}/seed{feature_seed}", RF_ARM,
                                  {"part": "random features", "n_train": n, "n_test": config.rf.n_test,
                                   "n_features": counts, "feature_seed": feature_seed,
                                   "bias_scale": config.rf.bias_scale, "data_seed": config.seed},
                                  rows, final_step=counts[-1], seed=feature_seed))
            for count, coefficients in kept.items():
                arrays[f"{RF_ARM}_N{count}"] = coefficients
        weights, bias = draw_relu_features(problem.x_train.shape[1], counts[-1], 0, config.rf.bias_scale)
        arrays.update({f"{RF_ARM}_weights": weights, f"{RF_ARM}_bias": bias,
                       f"{RF_ARM}_n_features": np.asarray(counts)})
        return Solved(runs, arrays)

    # --- part (b): populations ------------------------------------------------------------------

    def plan(self, config: Config) -> list[Group]:
        # every width is its own architecture, hence its own population of seeds
        runs = []
        for width in config.widths:
            for seed in range(config.seeds):
                member = Member(f"{MLP_ARM}/w{width}/seed{seed}", seed=seed, lr=config.train.lr,
                                label_noise=config.label_noise, arm=MLP_ARM, tags={"width": width})
                runs.append(("mlp", MLPConfig(hidden=[width]), mlp_data(config), config.train, member))
        return group_runs(runs)

    # --- analysis -------------------------------------------------------------------------------

    def analyze(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame,
                solutions: dict[str, np.ndarray] | None = None) -> Analysis:
        rf_table = _rf_table(config, runs, metrics)
        mlp_final = _mlp_final(runs, metrics)
        mlp_table = _mlp_table(config, mlp_final)
        checks = _rf_checks(config, rf_table, solutions or {}) + _mlp_checks(config, mlp_table, mlp_final)
        parts = [t for t in (rf_table, mlp_table) if len(t)]
        table = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
        notes = [
            f"(a) random features φ(x) = ReLU(Wx + b)/√N, W ~ N(0, 1/d), b ~ N(0, {config.rf.bias_scale:g}²), "
            f"min-norm least squares (numpy.linalg.lstsq) to one-hot targets on n = {config.rf.n_train} MNIST-1D "
            "points; rows 'rf': size = N features; test MSE = mean over test points and classes of "
            "(f(x) − one-hot)² (0.1 for the zero predictor); test_mse_geo = geometric mean over feature seeds, "
            "which the checks use; accuracy = argmax of f(x).",
            f"(b) rows 'mlp': size = hidden width of a one-hidden-layer ReLU MLP trained with "
            f"{config.train.optimizer} (lr {config.train.lr:g}, batch {config.train.batch_size}, "
            f"{config.train.max_steps} steps for every width) on n = {config.n_train} MNIST-1D points with "
            f"{config.label_noise:.0%} of the labels randomized; train accuracy is on those noisy labels, test "
            f"on clean ones; interpolation threshold = the narrowest width with mean train accuracy ≥ {FIT_MIN}; "
            "test error = 1 − test accuracy, means over seeds.",
            "size/n: N/n for rf; parameters/n for mlp.",
            "solutions.npz: rf_N<N> = min-norm coefficients (N × 10) of feature seed 0 at the grid point nearest n "
            "and at the largest N; rf_weights (d × N_max) and rf_bias (N_max) = that seed's features (the first N "
            "columns make the N-feature model; divide by √N); rf_n_features = the grid of N.",
        ]
        notes += _rf_context(rf_table) + _mlp_context(mlp_table)
        return Analysis(table, checks, notes)

    def figures(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame,
                solutions: dict[str, np.ndarray] | None, directory: Path) -> list[Path]:
        paths = []
        rf_table = _rf_table(config, runs, metrics)
        if len(rf_table):
            paths.append(_rf_figure(config, runs, metrics, directory / "rf_test_vs_features.png"))
        mlp_table = _mlp_table(config, _mlp_final(runs, metrics))
        if len(mlp_table):
            paths.append(_mlp_figure(config, mlp_table, directory / "mlp_error_vs_width.png"))
            mlp = _mlp_runs(runs)
            labelled = metrics[metrics["run_id"].isin(mlp["run_id"])].merge(mlp[["run_id", "width"]], on="run_id")
            labelled = labelled.assign(model="mlp", width=labelled["width"].map(lambda w: f"w{w}"))
            order = {"model": ["mlp"], "width": [f"w{w}" for w in config.widths]}
            paths.append(curves(labelled, "test_acc", panel="model", line="width", order=order,
                                title="test accuracy along training (clean test labels)",
                                path=directory / "mlp_curves_test_acc.png"))
        return paths


# --- (a) tables and checks ------------------------------------------------------------------------

def _rf_rows(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """Wide frame: one row per (run, N) of the random-features runs, a column per metric."""
    ids = runs.loc[runs["arm"] == RF_ARM, "run_id"]
    part = metrics[metrics["run_id"].isin(ids)]
    if part.empty:
        return pd.DataFrame(columns=["run_id", "step", *RF_METRICS])
    return part.pivot_table(index=["run_id", "step"], columns="name", values="value").reset_index()


def _rf_table(config: Config, runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    wide = _rf_rows(runs, metrics)
    rows = []
    for count, part in wide.groupby("step", sort=True):
        row: dict[str, Any] = {"part": RF_ARM, "size": int(count), "size/n": count / config.rf.n_train,
                               "runs": len(part)}
        # feature seeds with a finite test / train MSE at this N (what the checks rest on)
        row["test_mse_n"] = Support.of(part["test_mse"], config.rf.feature_seeds).used
        row["train_mse_n"] = Support.of(part["train_mse"], config.rf.feature_seeds).used
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


def _rf_checks(config: Config, table: pd.DataFrame, solutions: dict[str, np.ndarray]) -> list[Check]:
    """The four random-features checks from the per-N table (geometric means over feature seeds).

    The peak is only located when every N of the grid has a test MSE, and the threshold of
    interpolation only when every N up to it has its train MSE: a missing N could be either.
    """
    n = config.rf.n_train
    peak_at, descent, steps_after, interpolates = RF_CHECKS
    tolerance = PEAK_TOLERANCE + ROUNDING
    grid = feature_counts(config.rf)
    if table.empty or f"{RF_ARM}_n_features" not in solutions:
        why = "the random-features fits did not finish (no rf metrics or solutions.npz)"
        return [Check.at_most(peak_at, None, PEAK_TOLERANCE, detail=why),
                Check.at_least(descent, None, DESCENT_FACTOR, detail=why),
                Check.at_most(steps_after, None, 1.0, strict=True, detail=why),
                Check.at_most(interpolates, None, PEAK_TOLERANCE, detail=why)]
    table = table.set_index("size").reindex(grid)  # every N of the grid, NaN where it did not run
    seeds = config.rf.feature_seeds
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
    checks.append(_interpolation_check(config, table, grid, tolerance))
    return checks


def _interpolation_check(config: Config, table: pd.DataFrame, grid: list[int], tolerance: float) -> Check:
    """The first N of the grid whose fits (every feature seed) interpolate, against n.

    When no N of the grid interpolates, the threshold lies beyond the largest N: if that is already
    more than the tolerance away from n the claim fails (the value is the distance of the largest N,
    a lower bound); if not, where it lies is unknown.
    """
    n, name = config.rf.n_train, RF_CHECKS[3]
    seeds = config.rf.feature_seeds
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


def _rf_context(table: pd.DataFrame) -> list[str]:
    """Where the second descent ends up against the under-parameterized side: reported, not judged."""
    if table.empty:
        return []
    first, last = table.iloc[0], table.iloc[-1]
    best = table.loc[table["test_mse_geo"].idxmin()]
    return [f"(a) not judged: test MSE at the largest N ({int(last['size'])}) {last['test_mse_geo']:.4g} vs "
            f"{first['test_mse_geo']:.4g} at the smallest ({int(first['size'])}), lowest {best['test_mse_geo']:.4g} at "
            f"N = {int(best['size'])}; test error {1 - last['test_acc_mean']:.3f} at the largest N vs "
            f"{1 - first['test_acc_mean']:.3f} at the smallest."]


# --- (b) tables and checks ------------------------------------------------------------------------

def _mlp_runs(runs: pd.DataFrame) -> pd.DataFrame:
    part = runs[runs["arm"] == MLP_ARM]
    return part.assign(width=part["run_id"].str.split("/").str[1].str[1:].astype(int))


def _mlp_params(width: int, input_dim: int = 40, classes: int = 10) -> int:
    return input_dim * width + width + width * classes + classes


MLP_METRICS = ("train_acc", "test_acc", "test_loss", "l2_norm")


def _mlp_final(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per MLP run with its final metrics; NaN for a run that diverged, did not finish or was
    never evaluated (its last records are not those of a finished run)."""
    mlp = _mlp_runs(runs)
    if mlp.empty:
        return pd.DataFrame(columns=["run_id", "width", "status", *MLP_METRICS])
    final = final_values(mlp, metrics[metrics["run_id"].isin(mlp["run_id"])])
    final = final.reindex(columns=list(dict.fromkeys([*final.columns, *MLP_METRICS])))
    final.loc[final["status"] != "done", list(MLP_METRICS)] = math.nan
    return final


def _mlp_table(config: Config, final: pd.DataFrame) -> pd.DataFrame:
    """One row per width that has runs: means over seeds, and how many seeds each mean rests on."""
    rows = []
    for width, part in final.groupby("width", sort=True):
        params = _mlp_params(int(width))
        row: dict[str, Any] = {"part": MLP_ARM, "size": int(width), "size/n": params / config.n_train,
                               "runs": int(np.isfinite(part["test_acc"].astype(float)).sum())}
        for name in ("train_acc", "test_acc", "test_loss"):
            row[f"{name}_mean"], row[f"{name}_std"] = mean_std(part[name])
        row["norm_mean"], row["norm_std"] = mean_std(part["l2_norm"])
        rows.append(row)
    return pd.DataFrame(rows)


def _mlp_context(table: pd.DataFrame) -> list[str]:
    """The test cross-entropy over widths: reported, not judged (the claim is about the error)."""
    if table.empty:
        return []
    loss = table.set_index("size")["test_loss_mean"]
    return [f"(b) not judged: test cross-entropy lowest at width {int(loss.idxmin())} ({loss.min():.3f}), "
            f"highest at width {int(loss.idxmax())} ({loss.max():.3f}); at the widest width {loss.iloc[-1]:.3f}."]


MLP_CHECKS = ("mlp: mean train accuracy (noisy labels) at the widest width",
              "mlp: test-error peak width / interpolation-threshold width",
              "mlp: test error at the peak minus at the widest width")


def _mlp_checks(config: Config, table: pd.DataFrame, final: pd.DataFrame) -> list[Check]:
    """The three MLP checks from the per-width means (``table``) and the per-run values (``final``:
    how many of the ``config.seeds`` planned per width each rests on). The peak is only located when
    every width has its test error from at least half its seeds; the interpolation threshold when
    every width up to it has its train accuracy."""
    fits_name, peak_name, drop_name = MLP_CHECKS

    def support(width: int, column: str) -> Support:
        return Support.of(final.loc[final["width"] == width, column], config.seeds, "seeds")

    widest = config.widths[-1]
    by_width = table.set_index("size").reindex(config.widths) if len(table) else pd.DataFrame(
        index=config.widths, columns=["train_acc_mean", "test_acc_mean", "test_acc_std"], dtype=float)
    checks = [Check.at_least(fits_name, by_width.loc[widest, "train_acc_mean"], FIT_MIN, detail=f"width {widest}",
                             support=support(widest, "train_acc"))]
    test_supports = {w: support(w, "test_acc") for w in config.widths}
    lost = [w for w, s in test_supports.items() if not s.enough]
    if lost:
        why = f"widths {lost} have test accuracy from fewer than half their seeds: the peak cannot be located"
        return checks + [Check.within(peak_name, None, 1 / PEAK_FACTOR, PEAK_FACTOR, detail=why),
                         Check.at_least(drop_name, None, 0.0, strict=True, detail=why,
                                        support=weakest(*test_supports.values()))]
    error = 1.0 - by_width["test_acc_mean"].to_numpy(dtype=float)
    widths = list(config.widths)
    peak = int(np.argmax(error))
    peak_detail = f"test error by width: {dict(zip(widths, np.round(error, 4).tolist()))}"
    threshold, unknown = None, None
    for width in widths:
        accuracy = by_width.loc[width, "train_acc_mean"]
        if not support(width, "train_acc").enough or pd.isna(accuracy):
            unknown = width
            break
        if accuracy >= FIT_MIN:
            threshold = width
            break
    if unknown is not None:
        checks.append(Check.within(peak_name, None, 1 / PEAK_FACTOR, PEAK_FACTOR, detail=(
            f"width {unknown} has train accuracy from {support(unknown, 'train_acc').describe()}: the interpolation "
            "threshold is unknown; " + peak_detail)))
    elif threshold is None:
        checks.append(Check.within(peak_name, None, 1 / PEAK_FACTOR, PEAK_FACTOR, detail=(
            f"no width reached mean train accuracy {FIT_MIN}: no interpolation threshold; " + peak_detail)))
    else:
        checks.append(Check.within(peak_name, widths[peak] / threshold, 1 / PEAK_FACTOR, PEAK_FACTOR,
                                   support=weakest(*test_supports.values()), detail=(
                                       f"peak at width {widths[peak]}, interpolation threshold at width {threshold}; "
                                       + peak_detail)))
    # the second descent: the widest network tests better than the peak by more than 2 SE of the
    # difference of the two seed means (one seed: no spread, so any drop counts)
    used = {w: test_supports[w].used for w in (widths[peak], widest)}
    se = math.sqrt(sum(np.nan_to_num(float(by_width.loc[w, "test_acc_std"])) ** 2 / used[w] for w in used))
    drop = float(error[peak] - error[-1])  # 0 when the peak is the widest width: no second descent
    seeds = min(used.values())
    checks.append(Check.at_least(
        drop_name, drop, SE_MULTIPLIER * se, strict=True,
        support=weakest(test_supports[widths[peak]], test_supports[widest]),
        detail=(f"the test error peaks at the widest width ({widest}): no second descent" if peak == len(widths) - 1
                else f"peak width {widths[peak]}: {error[peak]:.4f}; widest width {widest}: {error[-1]:.4f}; "
                f"{SE_MULTIPLIER:g}·SE = {SE_MULTIPLIER * se:.4f} over {seeds} seed(s)"
                + (" (one seed: no spread, so any drop counts)" if seeds < 2 else ""))))
    return checks


# --- figures --------------------------------------------------------------------------------------

def _rf_figure(config: Config, runs: pd.DataFrame, metrics: pd.DataFrame, path: Path) -> Path:
    """Test MSE, train MSE (log–log) and classification error against N/n; a thin line per feature
    seed and, for the test MSE, their geometric mean (what the checks use)."""
    wide = _rf_rows(runs, metrics)
    n = config.rf.n_train
    fig, axes = subplots(1, 3, figsize=(14, 3.8))
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
    table = _rf_table(config, runs, metrics)
    axes[0].plot(table["size/n"], table["test_mse_geo"], color="C0", marker="o", markersize=3.5,
                 label="geometric mean")
    axes[0].axhline(0.1, color="grey", linestyle=":", linewidth=1, label="zero predictor")
    labels = ("test MSE (per class)", "train MSE (per class)", "classification error")
    for ax, label, corner in zip(axes, labels, ("upper left", "upper right", "center right")):
        ax.set_xscale("log")
        if ax is not axes[2]:
            ax.set_yscale("log")
        ax.axvline(1.0, color="grey", linestyle="--", linewidth=1, label="N = n")
        ax.set_xlabel(f"features N / n (n = {n})")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8, loc=corner)  # corners the curves leave free
    fig.suptitle(f"random ReLU features, min-norm fit: {wide['run_id'].nunique()} feature seed(s)")
    return save_figure(fig, path)


def _mlp_figure(config: Config, table: pd.DataFrame, path: Path) -> Path:
    """Train and test error (mean ± std over seeds) and test loss against the hidden width."""
    fig, axes = subplots(1, 2, figsize=(10.5, 3.8))
    for name, colour, label in (("train_acc", "C1", "train error (noisy labels)"),
                                ("test_acc", "C0", "test error (clean labels)")):
        axes[0].errorbar(table["size"], 1.0 - table[f"{name}_mean"], yerr=table[f"{name}_std"].fillna(0),
                         marker="o", capsize=3, color=colour, label=label)
    axes[1].errorbar(table["size"], table["test_loss_mean"], yerr=table["test_loss_std"].fillna(0), marker="o",
                     capsize=3, color="C0")
    axes[0].set_ylabel("error")
    axes[1].set_ylabel("test cross-entropy")
    axes[1].set_yscale("log")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("hidden width")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"MLP, {config.label_noise:.0%} label noise, n = {config.n_train}, {config.train.max_steps} steps")
    return save_figure(fig, path)


STUDY = DoubleDescent()
