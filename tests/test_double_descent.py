"""The double-descent study: random-features fits against pinv, the peak at N ≈ n on fresh data,
verdicts on known MLP tables, and the CLI contract (a tiny end-to-end run; bad settings exit 2)."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli, invoke_cli, assert_user_error, solved_frames
from threadpoolctl import threadpool_limits

from implicitreg.config import build_config
from implicitreg.references.random_features import (
    draw_relu_features,
    min_norm_fit,
    relu_features,
)
from implicitreg.runner import read_solutions
from implicitreg.studies.base import no_progress
from implicitreg.studies.double_descent import MLP_CHECKS, RF_CHECKS, STUDY, Config

# a tiny run of both parts: 100 points for the random features, 3 widths × 1 seed × 60 steps
TINY = ["--set", "rf.n_train=100", "--set", "rf.n_test=100", "--set", "rf.ratios=[0.5,0.9,1.0,1.1,2,5]",
        "--set", "widths=[4,16,64]", "--set", "seeds=1", "--set", "n_train=200", "--set", "n_test=100",
        "--set", "train.max_steps=60", "--set", "train.eval_every=30"]


@pytest.fixture(autouse=True)
def one_blas_thread():
    """These problems are tiny: one BLAS thread is fastest, and it stays fast on a busy machine."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield



def gaussian_inputs(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), np.eye(3)[rng.integers(0, 3, n)]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("n,n_features", [(30, 10), (30, 30), (30, 90), (50, 200)])
def test_min_norm_fit_is_the_pseudo_inverse_solution(seed, n, n_features):
    x, targets = gaussian_inputs(n, 5, seed)
    weights, bias = draw_relu_features(5, n_features, seed)
    features = relu_features(x, weights, bias)
    fit = min_norm_fit(features, targets)
    reference = np.linalg.pinv(features, rcond=1e-13) @ targets
    # both are backward-stable SVD solutions in float64: they agree to about cond(Φ)·eps relative;
    # cond(Φ) stays below ~1e5 at these sizes (N = n included), so 1e-8 leaves a wide margin
    assert np.linalg.norm(fit - reference) <= 1e-8 * np.linalg.norm(reference)
    residual = features @ fit - targets
    if n_features > n:  # more features than points: an interpolant ...
        assert np.abs(residual).max() < 1e-9
        # ... of least norm: it lies in the row space of Φ (orthogonal to its null space)
        null = np.linalg.svd(features)[2][n:]
        assert np.abs(null @ fit).max() < 1e-9 * max(1.0, np.abs(fit).max())
    if n_features < n:  # fewer: the least-squares residual is orthogonal to every feature
        assert np.abs(features.T @ residual).max() < 1e-9


def test_feature_draws_are_nested_and_seeded():
    big_w, big_b = draw_relu_features(7, 50, seed=3)
    small_w, small_b = draw_relu_features(7, 20, seed=3)
    np.testing.assert_array_equal(big_w[:, :20], small_w)
    np.testing.assert_array_equal(big_b[:20], small_b)
    assert not np.array_equal(draw_relu_features(7, 20, seed=4)[0], small_w)
    assert abs(big_w.std() * np.sqrt(7) - 1) < 0.2  # W ~ N(0, 1/d)
    with pytest.raises(ValueError, match="expected inputs of shape"):
        relu_features(np.zeros((3, 6)), small_w, small_b)


@pytest.mark.parametrize("data_seed,n", [(1, 200), (2, 150)])
def test_random_features_peak_at_the_interpolation_threshold_on_fresh_data(data_seed, n):
    # fresh MNIST-1D points (data seeds the study does not use by default), two feature seeds, N up to 5n
    config = build_config(Config, {}, {"seed": data_seed, "rf": {
        "n_train": n, "n_test": 200, "feature_seeds": 2, "ratios": [0.1, 0.5, 0.8, 0.9, 1.0, 1.1, 1.2, 2.0, 5.0]}})
    solved = STUDY.solve(config, STUDY.problem(config), no_progress)
    assert {f"rf_N{n}", f"rf_N{5 * n}", "rf_weights", "rf_bias", "rf_n_features"} == set(solved.arrays)
    assert solved.arrays[f"rf_N{5 * n}"].shape == (5 * n, 10)
    analysis = STUDY.analyze(config, *solved_frames(solved), solved.arrays)
    rf = {c.name: c for c in analysis.checks if c.name.startswith("rf:")}
    assert len(rf) == 4 and all(c.passed for c in rf.values()), rf
    mlp = [c for c in analysis.checks if c.name.startswith("mlp:")]
    assert mlp and all(c.passed is None for c in mlp)  # no MLP runs here: those checks cannot be computed
    assert analysis.verdict == "inconclusive"


def test_random_features_checks_are_inconclusive_without_solutions():
    config = build_config(Config, {}, {"rf": {"n_train": 50, "n_test": 50, "feature_seeds": 1,
                                              "ratios": [0.5, 1.0, 2.0]}})
    solved = STUDY.solve(config, STUDY.problem(config), no_progress)
    analysis = STUDY.analyze(config, *solved_frames(solved), {})
    assert all(c.passed is None for c in analysis.checks if c.name.startswith("rf:"))


def mlp_frames(train_acc: dict[int, list[float]], test_acc: dict[int, list[float]],
               status: dict[int, str] | None = None):
    runs, rows = [], []
    for width, accs in train_acc.items():
        for seed, (train, test) in enumerate(zip(accs, test_acc[width])):
            run_id = f"mlp/w{width}/seed{seed}"  # the width reaches the analysis as a plan tag, as stored
            runs.append({"run_id": run_id, "arm": "mlp", "seed": seed, "provenance": {},
                         "config": {"member": {"tags": {"width": width}}},
                         "status": (status or {}).get(width, "done"), "final_step": 100, "target_step": None})
            rows += [{"run_id": run_id, "step": 100, "name": name, "value": value}
                     for name, value in (("train_acc", train), ("test_acc", test), ("test_loss", 1.0),
                                         ("l2_norm", 1.0))]
    return pd.DataFrame(runs), pd.DataFrame(rows)


@pytest.mark.parametrize("test_acc,outcome", [
    # peak (lowest test accuracy) at width 64, the threshold width 128 (first mean train acc ≥ 0.99)
    ({16: [0.55, 0.57], 64: [0.45, 0.47], 128: [0.50, 0.50], 512: [0.60, 0.62]}, [True, True, True]),
    # the peak at width 16, a factor 8 below the threshold
    ({16: [0.40, 0.42], 64: [0.45, 0.47], 128: [0.50, 0.50], 512: [0.60, 0.62]}, [True, False, True]),
    # no second descent: the widest network tests worst
    ({16: [0.55, 0.57], 64: [0.50, 0.52], 128: [0.50, 0.50], 512: [0.45, 0.47]}, [True, False, False]),
    # a drop from the peak smaller than two standard errors of the seeds
    ({16: [0.55, 0.57], 64: [0.40, 0.50], 128: [0.50, 0.50], 512: [0.45, 0.55]}, [True, True, False]),
])
def test_mlp_verdict_on_known_tables(test_acc, outcome):
    config = build_config(Config, {}, {"widths": [16, 64, 128, 512], "seeds": 2})
    train = {16: [0.6, 0.6], 64: [0.95, 0.97], 128: [0.995, 1.0], 512: [1.0, 1.0]}
    checks = [c for c in STUDY.analyze(config, *mlp_frames(train, test_acc), {}).checks if c.name.startswith("mlp:")]
    assert [c.passed for c in checks] == outcome, checks


def mlp_checks(train, test, seeds=2, status=None, widths=(16, 64, 128, 512)):
    config = build_config(Config, {}, {"widths": list(widths), "seeds": seeds})
    analysis = STUDY.analyze(config, *mlp_frames(train, test, status), {})
    return analysis, [c for c in analysis.checks if c.name.startswith("mlp:")]


TRAIN = {16: [0.6, 0.6], 64: [0.95, 0.97], 128: [0.995, 1.0], 512: [1.0, 1.0]}
TEST = {16: [0.55, 0.57], 64: [0.45, 0.47], 128: [0.50, 0.50], 512: [0.60, 0.62]}


def test_mlp_checks_need_every_width():
    config = build_config(Config, {}, {"widths": [16, 64, 128], "seeds": 1})
    runs, metrics = mlp_frames({16: [0.6], 64: [1.0]}, {16: [0.5], 64: [0.4]})
    checks = [c for c in STUDY.analyze(config, runs, metrics, {}).checks if c.name.startswith("mlp:")]
    assert all(c.passed is None and "128" in c.detail for c in checks)


def test_mlp_known_numbers_and_thresholds():
    _, (fits, peak, drop) = mlp_checks(TRAIN, TEST)
    assert (fits.value, fits.threshold, fits.passed) == (1.0, ">= 0.99", True)
    assert (peak.value, peak.threshold, peak.passed) == (0.5, "in [0.5, 2]", True)  # peak 64, threshold 128
    std = 0.02 / math.sqrt(2)  # each cell's two seeds differ by 0.02
    se = math.sqrt(std ** 2 / 2 + std ** 2 / 2)
    assert drop.value == pytest.approx(0.15) and drop.threshold == f"> {2 * se:g}" and drop.passed is True


def test_mlp_peak_at_the_widest_width_fails_with_a_zero_drop():
    _, (_, _, drop) = mlp_checks(TRAIN, {**TEST, 512: [0.40, 0.42]})
    assert drop.value == 0.0 and drop.passed is False and "peaks at the widest width" in drop.detail


def test_mlp_diverged_widest_width_is_inconclusive():
    # the widest width at a learning rate far too large: both seeds diverged; their last records
    # (before the divergence) look like a second descent and must not be judged
    analysis, checks = mlp_checks(TRAIN, TEST, status={512: "diverged"})
    assert [c.passed for c in checks] == [None, None, None]
    assert "computed from 0 of 2 seeds" in checks[0].detail and "widths [512]" in checks[1].detail
    assert analysis.verdict == "inconclusive"


def test_mlp_width_that_lost_seeds_says_so_and_under_half_is_inconclusive():
    train3 = {w: v + v[:1] for w, v in TRAIN.items()}
    test3 = {w: v + v[:1] for w, v in TEST.items()}
    _, checks = mlp_checks(train3, test3, seeds=3)
    assert [c.passed for c in checks] == [True, True, True]
    runs, metrics = mlp_frames(train3, test3)
    gone = metrics["run_id"] == "mlp/w512/seed2"
    config = build_config(Config, {}, {"widths": [16, 64, 128, 512], "seeds": 3})
    checks = [c for c in STUDY.analyze(config, runs, metrics[~gone], {}).checks if c.name.startswith("mlp:")]
    assert [c.passed for c in checks] == [True, True, True]
    assert "computed from 2 of 3 seeds" in checks[0].detail and "computed from 2 of 3 seeds" in checks[2].detail
    gone = metrics["run_id"].isin(["mlp/w64/seed1", "mlp/w64/seed2"])  # the peak width keeps 1 of 3 seeds
    checks = [c for c in STUDY.analyze(config, runs, metrics[~gone], {}).checks if c.name.startswith("mlp:")]
    assert [c.passed for c in checks] == [True, None, None]
    assert "widths [64]" in checks[1].detail


def test_mlp_width_without_train_accuracy_leaves_the_threshold_unknown():
    runs, metrics = mlp_frames(TRAIN, TEST)
    gone = (metrics["run_id"].str.startswith("mlp/w64/")) & (metrics["name"] == "train_acc")
    config = build_config(Config, {}, {"widths": [16, 64, 128, 512], "seeds": 2})
    checks = [c for c in STUDY.analyze(config, runs, metrics[~gone], {}).checks if c.name.startswith("mlp:")]
    assert checks[1].passed is None and "width 64 has train accuracy from 0 of 2 seeds" in checks[1].detail
    assert checks[2].passed is True  # the second descent rests on test errors alone


def rf_frames(points: dict[int, list[tuple[float, float]]]):
    """runs/metrics of the random-features part: N → (train MSE, test MSE) per feature seed."""
    seeds = len(next(iter(points.values())))
    runs = pd.DataFrame([{"run_id": f"rf/seed{k}", "arm": "rf", "seed": k, "config": {}, "provenance": {},
                          "status": "done", "final_step": max(points), "target_step": None} for k in range(seeds)])
    rows = [{"run_id": f"rf/seed{k}", "step": count, "name": name, "value": value}
            for count, per_seed in points.items() for k, (train, test) in enumerate(per_seed)
            for name, value in (("train_mse", train), ("test_mse", test), ("train_err", 0.0), ("test_err", 0.5),
                                ("coef_norm", 1.0))]
    return runs, pd.DataFrame(rows)


def rf_checks(points, ratios, seeds=1):
    config = build_config(Config, {}, {"rf": {"n_train": 100, "feature_seeds": seeds, "ratios": ratios}})
    analysis = STUDY.analyze(config, *rf_frames(points), {"rf_n_features": np.asarray(sorted(points))})
    return [c for c in analysis.checks if c.name.startswith("rf:")]


def test_rf_checks_on_a_known_curve():
    points = {50: [(0.05, 0.2)], 100: [(1e-20, 5.0)], 200: [(1e-25, 0.5)], 1000: [(1e-28, 0.1)]}
    peak, descent, steps, interpolates = rf_checks(points, [0.5, 1.0, 2.0, 10.0])
    assert (peak.value, peak.passed) == (0.0, True)
    assert (descent.value, descent.passed) == (pytest.approx(50.0), True)
    assert (steps.value, steps.threshold, steps.passed) == (pytest.approx(0.2), "< 1", True)
    assert (interpolates.value, interpolates.passed) == (0.0, True)


def test_rf_no_interpolation_anywhere_on_a_wide_grid_fails_with_a_number():
    # nothing interpolates up to N = 10n: the threshold is beyond it, at least 9 from n — the claim fails
    points = {50: [(0.05, 0.2)], 100: [(1e-3, 5.0)], 200: [(1e-4, 0.5)], 1000: [(1e-5, 0.1)]}
    interpolates = rf_checks(points, [0.5, 1.0, 2.0, 10.0])[3]
    assert interpolates.value == pytest.approx(9.0) and interpolates.passed is False
    assert "beyond it" in interpolates.detail


def test_rf_no_interpolation_on_a_grid_that_ends_near_n_is_inconclusive():
    points = {50: [(0.05, 0.2)], 90: [(1e-3, 5.0)], 105: [(1e-4, 0.5)]}
    interpolates = rf_checks(points, [0.5, 0.9, 1.05])[3]
    assert interpolates.passed is None and "may lie beyond the grid" in interpolates.detail


def test_rf_a_nan_test_mse_leaves_the_peak_unlocated():
    # one feature seed of two failed at N = 200 (a non-finite fit): the geometric mean uses the other,
    # and the checks say so (1 of 2 is half: still decided)
    points = {50: [(0.05, 0.2)] * 2, 100: [(1e-20, 5.0)] * 2, 200: [(1e-25, 0.5), (1e-25, math.nan)],
              1000: [(1e-28, 0.1)] * 2}
    peak, descent, steps, _ = rf_checks(points, [0.5, 1.0, 2.0, 10.0], seeds=2)
    assert peak.passed is True and "computed from 1 of 2 feature seeds" in peak.detail
    # ... and both failed there: N = 200 has no test MSE, and the peak cannot be located
    points[200] = [(1e-25, math.nan)] * 2
    checks = rf_checks(points, [0.5, 1.0, 2.0, 10.0], seeds=2)
    assert [c.passed for c in checks[:3]] == [None, None, None]
    assert "N = [200]" in checks[0].detail


def test_tiny_run_end_to_end(tmp_path):
    out = tmp_path / "dd"
    result = run_cli(["run", "double-descent", "--quick", "--threads", "1", "--json", "--out", out, *TINY])
    assert result.returncode == 0, result
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads(result.stdout)
    checks = {c["name"]: c for c in summary["checks"]}
    assert list(checks) == [*RF_CHECKS, *MLP_CHECKS]
    # the random features show the claim even at n = 100: the peak at N = n, a tenfold descent
    rf = [checks[name] for name in RF_CHECKS]
    assert [c["passed"] for c in rf] == [True, True, True, True], rf
    assert rf[0]["value"] == 0.0 and rf[1]["value"] >= 10
    # 60 steps fit no MLP: the widest width's own train accuracy fails the fit check
    fits = checks[MLP_CHECKS[0]]
    table = {row["size"]: row for row in summary["table"] if row["part"] == "mlp"}
    assert fits["value"] == pytest.approx(table[64]["train_acc_mean"]) and fits["passed"] is False
    assert summary["verdict"] == "fail"
    assert {row["part"] for row in summary["table"]} == {"rf", "mlp"}
    solutions = read_solutions(out)
    # quick: one feature seed; the grid's N nearest n = 100 and its largest N = 500
    assert {"rf_N100", "rf_N500", "rf_weights", "rf_bias", "rf_n_features"} == set(solutions)
    assert solutions["rf_N500"].shape == (500, 10) and solutions["rf_weights"].shape == (40, 500)
    # 1 feature seed + 3 widths × 1 seed
    assert summary["runs"] == {"planned": 4, "done": 4, "diverged": 0, "failed": 0, "missing": 0}
    for figure in ("rf_test_vs_features.png", "mlp_error_vs_width.png", "mlp_curves_test_acc.png"):
        assert (out / "figures" / figure).exists()


@pytest.mark.parametrize("args,expected", [
    (["--data", "{npz}"], "generates its own data"),
    (["--set", "rf.ratios=[1.0,0.5]"], "rf.ratios"),
    (["--set", "widths=[64,16]"], "widths"),
    (["--set", "label_noise=1.5"], "label_noise"),
    (["--set", "rf.n_train=5"], "rf.n_train"),
])
def test_bad_settings_exit_2_with_one_line_and_write_nothing(tmp_path, args, expected):
    npz = tmp_path / "problem.npz"
    np.savez(npz, X=np.zeros((4, 2)), y=np.zeros(4))
    out = tmp_path / "out"
    result = invoke_cli(["run", "double-descent", "--quick", "--out", out, *[a.format(npz=npz) for a in args]])
    assert_user_error(result, [expected], out)
