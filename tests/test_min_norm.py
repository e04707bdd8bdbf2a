"""The min-norm study: its dynamics against pinv / lstsq / torch.optim, Wilson's construction, and the CLI contract."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_cli_many, invoke_cli, assert_user_error, solved_frames

from implicitreg.dynamics import squared_loss as dyn
from implicitreg.config import build_config
from implicitreg.references import least_squares as ref
from implicitreg.runner import read_solutions
from implicitreg.studies.base import no_progress
from implicitreg.studies.min_norm import (
    STUDY,
    classification_error,
    gaussian_regression,
    wilson_construction,
)

SIZES = [(5, 12), (10, 40), (20, 100)]



def relative(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


def test_pinv_references_agree_with_lstsq():
    for seed, (n, d) in enumerate(SIZES):
        x, y = gaussian_regression(n, d, seed)
        w0 = np.random.default_rng(seed).standard_normal(d)
        # lstsq returns the minimum-norm solution of an underdetermined system (SVD-based)
        np.testing.assert_allclose(ref.min_norm_interpolant(x, y), np.linalg.lstsq(x, y, rcond=None)[0], atol=1e-10)
        # the interpolant nearest w0: w0 + the minimum-norm correction of the residual
        nearest = w0 + np.linalg.lstsq(x, y - x @ w0, rcond=None)[0]
        np.testing.assert_allclose(ref.min_norm_from(x, y, w0), nearest, atol=1e-10)
        p = ref.row_space_projector(x)
        np.testing.assert_allclose(p @ p, p, atol=1e-12)
        assert ref.rank(x) == n


@pytest.mark.parametrize("seed,size", [(s, size) for s in range(3) for size in SIZES])
def test_gd_and_sgd_reach_the_min_norm_interpolant(seed, size):
    n, d = size
    x, y = gaussian_regression(n, d, seed)
    target = ref.min_norm_interpolant(x, y)
    zero = np.zeros(d)
    # both stop at relative residual 1e-12; in the row space the distance is at most the residual
    # times the condition number (< 20 for these Gaussian sizes), far below the study's 1e-6
    gd = dyn.gd(x, y, zero, n / np.linalg.norm(x, 2) ** 2, 100_000, 1e-12)
    sgd = dyn.sgd(x, y, zero, 1 / np.max(np.sum(x * x, 1)), 200_000, 1e-12, np.random.default_rng(seed))
    assert gd.converged and sgd.converged
    assert relative(gd.w, target) < 1e-9 and relative(sgd.w, target) < 1e-9
    w0 = np.random.default_rng([seed, 9]).standard_normal(d)
    from_w0 = dyn.gd(x, y, w0, n / np.linalg.norm(x, 2) ** 2, 100_000, 1e-12)
    assert relative(from_w0.w, ref.min_norm_from(x, y, w0)) < 1e-9
    assert relative(from_w0.w, target) > 0.1  # the orthogonal part of w0 stays


@pytest.mark.parametrize("seed", range(3))
def test_adaptive_methods_interpolate_away_from_the_min_norm_solution(seed):
    x, y = gaussian_regression(20, 100, seed)
    target = ref.min_norm_interpolant(x, y)
    for path in (dyn.adam(x, y, np.zeros(100), 0.01, 50_000, 1e-6, decay_steps=1000.0),
                 dyn.adagrad(x, y, np.zeros(100), 0.1, 50_000, 1e-6)):
        assert path.converged and dyn.relative_residual(x, y, path.w) <= 1e-6
        assert relative(path.w, target) > 0.1


def torch_path(x, y, make, steps, scheduler=None):
    """Weights after each of ``steps`` full-batch steps of a torch optimizer on ‖Xw − y‖²/(2n)."""
    xt, yt = torch.tensor(x), torch.tensor(y)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    opt = make([w])
    sched = scheduler(opt) if scheduler else None
    out = []
    for _ in range(steps):
        opt.zero_grad()
        ((xt @ w - yt) ** 2).sum().div(2 * x.shape[0]).backward()
        opt.step()
        if sched:
            sched.step()
        out.append(w.detach().numpy().copy())
    return np.stack(out)


def test_adam_and_adagrad_are_torchs_updates():
    x, y = gaussian_regression(6, 15, 4)
    steps = 50
    ours = dyn.adam(x, y, np.zeros(15), 0.01, steps, 0.0, decay_steps=10.0, points=steps)
    # torch's LambdaLR multiplies lr by the factor of the *next* step: step t (1-based) uses 1/sqrt(1 + t/10)
    theirs = torch_path(x, y, lambda p: torch.optim.Adam(p, lr=0.01), steps,
                        lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda k: 1 / np.sqrt(1 + (k + 1) / 10)))
    np.testing.assert_allclose(ours.weights[1:], theirs[ours.steps[1:] - 1], rtol=1e-10, atol=1e-14)
    ours = dyn.adagrad(x, y, np.zeros(15), 0.1, steps, 0.0, points=steps)
    theirs = torch_path(x, y, lambda p: torch.optim.Adagrad(p, lr=0.1), steps)
    np.testing.assert_allclose(ours.weights[1:], theirs[ours.steps[1:] - 1], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("seed", range(4))
def test_wilson_construction(seed):
    problem = wilson_construction(30, 80, 0.75, seed)
    x, y = problem.x_train, problem.y_train
    assert (y > 0).sum() > (y < 0).sum()
    np.testing.assert_array_equal(x @ np.sign(x.T @ y), 4 * y)  # the property the construction is built on
    assert classification_error(ref.min_norm_interpolant(x, y), problem.x_test, problem.y_test) == 0.0
    adam = dyn.adam(x, y, np.zeros(x.shape[1]), 0.01, 50_000, 1e-6, decay_steps=1000.0)
    # Adam stays proportional to sign(Xᵀy) (= 1/4 of it at interpolation) and so predicts +1 everywhere
    np.testing.assert_allclose(adam.w, np.sign(x.T @ y) / 4, atol=1e-4)
    assert np.all(problem.x_test @ adam.w > 0)
    assert classification_error(adam.w, problem.x_test, problem.y_test) == np.mean(problem.y_test < 0)


def test_default_quick_run_passes_and_data_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 30))
    y = x @ rng.standard_normal(30)
    np.savez(tmp_path / "mine.npz", X=x, y=y)
    default, mine = run_cli_many([["run", "min-norm", "--quick", "--out", tmp_path / "default"],
                                  ["run", "min-norm", "--quick", "--data", tmp_path / "mine.npz",
                                   "--out", tmp_path / "mine"]])
    assert default.returncode == 0, default
    summary = json.loads((tmp_path / "default" / "summary.json").read_text())
    assert summary["verdict"] == "pass", summary["checks"]
    assert len(summary["checks"]) == 11
    assert mine.returncode == 0, mine
    summary = json.loads((tmp_path / "mine" / "summary.json").read_text())
    # the claim holds on the user's 8×30 problem too: GD and SGD at X⁺y to rounding, Adam/AdaGrad far from it
    assert summary["verdict"] == "pass", summary["checks"]
    values = {c["name"]: c["value"] for c in summary["checks"]}
    assert values["GD from zero: relative distance to X⁺y"] < 1e-9
    assert values["SGD from zero: relative distance to X⁺y"] < 1e-9
    assert values["Adam from zero: relative distance to X⁺y"] > 0.1
    assert summary["config"]["data_file"] == str((tmp_path / "mine.npz").resolve())
    solutions = read_solutions(tmp_path / "mine")
    assert {"gd", "sgd", "adam", "adagrad", "gd_w0", "ref_min_norm", "ref_min_norm_from_w0",
            "wilson_gd", "ref_wilson_min_norm"} <= set(solutions)
    assert solutions["gd"].shape == (30,)
    np.testing.assert_allclose(solutions["ref_min_norm"], np.linalg.pinv(x) @ y, rtol=1e-10)
    assert relative(solutions["gd"], np.linalg.lstsq(x, y, rcond=None)[0]) < 1e-6
    assert (tmp_path / "default" / "figures" / "distance_vs_step.png").exists()
    assert (tmp_path / "default" / "figures" / "wilson_test_error.png").exists()


def test_malformed_files_exit_2_with_one_line_and_write_nothing(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 20))
    y = x @ rng.standard_normal(20)
    nan = x.copy()
    nan[2, 3] = np.nan
    square = rng.standard_normal((10, 10))
    tall = rng.standard_normal((12, 5))
    cases = {
        "missing": ({"X": x}, "missing array"),
        "shape": ({"X": x, "y": y[:4]}, "y must have shape (6,)"),
        "nan": ({"X": nan, "y": y}, "NaN"),
        "unique": ({"X": square, "y": square @ rng.standard_normal(10)}, "rank 10 = d"),
        "no_interpolant": ({"X": np.hstack([tall, tall]), "y": rng.standard_normal(12)}, "no w solves Xw = y"),
    }
    commands = []
    for name, (arrays, _) in cases.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        commands.append(["run", "min-norm", "--quick", "--data", tmp_path / f"{name}.npz", "--out", tmp_path / name])
    commands.append(["run", "min-norm", "--quick", "--data", tmp_path / "absent.npz", "--out", tmp_path / "absent"])
    results = [invoke_cli(command) for command in commands]
    for (name, (_, expected)), result in zip(cases.items(), results):
        assert_user_error(result, [expected, f"{name}.npz"], tmp_path / name)
    assert results[-1].returncode == 2 and "does not exist" in results[-1].stderr




@pytest.fixture(scope="module")
def small_solve():
    config = build_config(STUDY.Config, STUDY.defaults(True), {"wilson_n_train": 10, "wilson_n_test": 20})
    solved = STUDY.solve(config, STUDY.problem(config), no_progress)
    return config, *solved_frames(solved), solved.arrays


def test_analysis_without_solutions_is_inconclusive(small_solve):
    config, runs, metrics, solutions = small_solve
    assert STUDY.analyze(config, runs, metrics, solutions).verdict == "pass"
    interrupted = STUDY.analyze(config, runs, metrics, {})
    assert interrupted.verdict == "inconclusive"
    assert any(c.passed is None and c.value is None for c in interrupted.checks)


def test_a_final_nan_or_a_missing_run_is_inconclusive(small_solve):
    config, runs, metrics, solutions = small_solve
    # Adam's last recorded residual is NaN: its check must not fall back on an earlier, finite value
    last = metrics[(metrics["run_id"] == "adam") & (metrics["name"] == "residual")]["step"].max()
    nan = pd.concat([metrics, pd.DataFrame([("adam", last + 1, "residual", np.nan)], columns=metrics.columns)])
    analysis = STUDY.analyze(config, runs, nan, solutions)
    residual = {c.name: c for c in analysis.checks}["Adam from zero: relative residual"]
    assert residual.passed is None and "nan" in residual.detail
    assert analysis.verdict == "inconclusive"
    # a missing run (and its solution): its checks are inconclusive, the other runs' are decided
    keep = [k for k in solutions if k != "wilson_adagrad"]
    analysis = STUDY.analyze(config, runs[runs["run_id"] != "wilson_adagrad"],
                             metrics[metrics["run_id"] != "wilson_adagrad"], {k: solutions[k] for k in keep})
    undecided = [c.name for c in analysis.checks if c.passed is None]
    assert undecided == ["Wilson's construction: AdaGrad test error minus the fraction of negative test points"]
    assert analysis.verdict == "inconclusive" and all(c.passed for c in analysis.checks if c.name not in undecided)
