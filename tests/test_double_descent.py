"""The double-descent study: random-features fits against pinv, the peak at N ≈ n on fresh data,
verdicts on known MLP tables, and the CLI contract (a tiny end-to-end run; bad settings exit 2)."""

import json

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli, invoke_cli, assert_user_error
from threadpoolctl import threadpool_limits

from implicitreg.config import build_config
from implicitreg.references.random_features import (
    draw_relu_features,
    min_norm_fit,
    relu_features,
)
from implicitreg.runner import read_solutions
from implicitreg.studies.base import no_progress
from implicitreg.studies.double_descent import STUDY, Config

# a tiny run of both parts: 100 points for the random features, 3 widths × 1 seed × 60 steps
TINY = ["--set", "rf.n_train=100", "--set", "rf.n_test=100", "--set", "rf.ratios=[0.5,0.9,1.0,1.1,2,5]",
        "--set", "widths=[4,16,64]", "--set", "n_train=200", "--set", "n_test=100",
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


def solved_frames(solved) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The runs and metrics frames the store would hold for a solved part."""
    runs = pd.DataFrame([{"run_id": r.run_id, "arm": r.arm, "seed": r.seed, "config": r.config, "provenance": {},
                          "status": r.status, "final_step": r.final_step, "target_step": None} for r in solved.runs])
    metrics = pd.DataFrame([{"run_id": r.run_id, "step": s, "name": name, "value": v}
                            for r in solved.runs for s, name, v in r.metrics])
    return runs, metrics


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


def mlp_frames(train_acc: dict[int, list[float]], test_acc: dict[int, list[float]]):
    runs, rows = [], []
    for width, accs in train_acc.items():
        for seed, (train, test) in enumerate(zip(accs, test_acc[width])):
            run_id = f"mlp/w{width}/seed{seed}"
            runs.append({"run_id": run_id, "arm": "mlp", "seed": seed, "config": {}, "provenance": {},
                         "status": "done", "final_step": 100, "target_step": None})
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


def test_mlp_checks_need_every_width():
    config = build_config(Config, {}, {"widths": [16, 64, 128], "seeds": 1})
    runs, metrics = mlp_frames({16: [0.6], 64: [1.0]}, {16: [0.5], 64: [0.4]})
    checks = [c for c in STUDY.analyze(config, runs, metrics, {}).checks if c.name.startswith("mlp:")]
    assert all(c.passed is None and "128" in c.detail for c in checks)


def test_tiny_run_end_to_end(tmp_path):
    out = tmp_path / "dd"
    result = run_cli(["run", "double-descent", "--quick", "--threads", "1", "--json", "--out", out, *TINY])
    assert result.returncode == 0, result
    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads(result.stdout)
    assert summary["verdict"] in ("pass", "fail", "inconclusive")
    names = [c["name"] for c in summary["checks"]]
    assert sum(n.startswith("rf:") for n in names) == 4 and sum(n.startswith("mlp:") for n in names) == 3
    assert all(c["passed"] is not None for c in summary["checks"] if c["name"].startswith("rf:"))
    assert {row["part"] for row in summary["table"]} == {"rf", "mlp"}
    solutions = read_solutions(out)
    # quick: one feature seed; the grid's N nearest n = 100 and its largest N = 500
    assert {"rf_N100", "rf_N500", "rf_weights", "rf_bias", "rf_n_features"} == set(solutions)
    assert solutions["rf_N500"].shape == (500, 10) and solutions["rf_weights"].shape == (40, 500)
    assert summary["runs"] == {"total": 4, "done": 4}  # 1 feature seed + 3 widths × 1 seed
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
