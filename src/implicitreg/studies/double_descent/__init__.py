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

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from implicitreg.config import DataConfig, MLPConfig, Strict, TrainConfig
from implicitreg.data import Dataset, load_dataset
from implicitreg.plan import Group, Member, group_runs
from implicitreg.references.random_features import draw_relu_features
from implicitreg.studies.base import Analysis, ProgressBar, Solved, SolvedRun
from implicitreg.studies.double_descent.mlp import (FIT_MIN, MLP_ARM, MLP_CHECKS, mlp_checks, mlp_context,
                                                    mlp_curves, mlp_figure, mlp_final, mlp_table)
from implicitreg.studies.double_descent.random_features import (RF_ARM, RF_CHECKS, RandomFeatures, feature_counts,
                                                                increasing, rf_checks, rf_context, rf_figure,
                                                                rf_table, sweep_features)

__all__ = ["Config", "DoubleDescent", "MLP_CHECKS", "RF_CHECKS", "RandomFeatures", "STUDY", "feature_counts",
           "sweep_features"]


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
        return increasing(value, "widths")


def mlp_data(config: Config) -> DataConfig:
    return DataConfig(name="mnist1d", n_train=config.n_train, n_test=config.n_test, seed=config.seed)


def rf_data(config: Config) -> DataConfig:
    return DataConfig(name="mnist1d", n_train=config.rf.n_train, n_test=config.rf.n_test, seed=config.seed)


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
        features = rf_table(config.rf, runs, metrics)
        final = mlp_final(runs, metrics)
        widths = mlp_table(config, final)
        checks = rf_checks(config.rf, features, solutions or {}) + mlp_checks(config, widths, final)
        parts = [t for t in (features, widths) if len(t)]
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
        notes += rf_context(features) + mlp_context(widths)
        return Analysis(table, checks, notes)

    def figures(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame,
                solutions: dict[str, np.ndarray] | None, directory: Path) -> list[Path]:
        paths = []
        if len(rf_table(config.rf, runs, metrics)):
            paths.append(rf_figure(config.rf, runs, metrics, directory / "rf_test_vs_features.png"))
        final = mlp_final(runs, metrics)
        if len(final):
            paths.append(mlp_figure(config, final, directory / "mlp_error_vs_width.png"))
            paths.append(mlp_curves(config, final, metrics, directory / "mlp_curves_test_acc.png"))
        return paths


STUDY = DoubleDescent()
