"""The max-margin study: SVM and LP references, the logistic dynamics against autograd, and the CLI contract."""

import itertools
import json

import numpy as np
import pytest
import torch
from conftest import run_cli_many, invoke_cli, assert_user_error, solved_frames
from scipy.optimize import nnls
from sklearn.svm import SVC

from implicitreg.dynamics import logistic as dyn
from implicitreg.config import build_config
from implicitreg.references import svm
from implicitreg.runner import read_solutions
from implicitreg.studies.base import no_progress
from implicitreg.studies.max_margin import STUDY, generic_separable

SIZES = [(10, 2), (25, 3), (40, 5)]



def gaussian_separable(n, d, seed, gap=0.3):
    """Plain Gaussian points labelled by a random direction, points within ``gap`` of its hyperplane dropped."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    x = rng.standard_normal((4 * n, d))
    x = x[np.abs(x @ u) >= gap][:n]
    return x, np.sign(x @ u)


@pytest.mark.parametrize("seed,size", [(s, size) for s in range(3) for size in SIZES])
def test_svm_qp_matches_sklearn_on_the_symmetrized_data(seed, size):
    # an SVM with intercept on {(x, y)} ∪ {(−x, −y)} has intercept 0 by symmetry, so its w is the SVM
    # through the origin; libsvm with a huge C is a hard-margin SVM to its tolerance (1e-10 here)
    x, y = gaussian_separable(*size, seed)
    w_hat = svm.hard_margin_svm(x, y)
    fitted = SVC(kernel="linear", C=1e10, tol=1e-10).fit(np.vstack([x, -x]), np.concatenate([y, -y]))
    np.testing.assert_allclose(w_hat, fitted.coef_[0], rtol=1e-5, atol=1e-6 * np.linalg.norm(w_hat))
    assert np.min(y * (x @ w_hat)) == pytest.approx(1.0, abs=1e-7)


@pytest.mark.parametrize("seed,size", [(s, size) for s in range(3) for size in SIZES])
def test_generator_has_a_known_svm_with_positive_dual_coefficients(seed, size):
    n, d = size
    x, y = generic_separable(n, d, gap=0.5, spread=1.0, seed=seed)
    w_hat = svm.hard_margin_svm(x, y)
    assert np.linalg.norm(w_hat) == pytest.approx(1.0, abs=1e-6)  # constructed with margin 1 along a unit u
    support = svm.support_vectors(x, y, w_hat)
    assert len(support) == d
    alpha, residual = nnls((y[support, None] * x[support]).T, w_hat)  # ŵ = Σ αᵢ yᵢxᵢ over support vectors
    assert residual < 1e-6 and np.all(alpha > 1e-3)
    others = np.setdiff1d(np.arange(n), support)
    assert np.min(y[others] * (x[others] @ w_hat)) >= 1.5 - 1e-6  # the margin gap


def test_log_time_rate_is_the_smallest_eigenvalue_of_the_linearized_residual_flow():
    """λ from the generator's known duals (β/Σβ, support vectors u + vⱼ) in closed form, against the
    reference computed from the cvxpy SVM and nnls."""
    n, d, seed = 40, 5, 0
    x, y = generic_separable(n, d, gap=0.5, spread=1.0, seed=seed)
    rng = np.random.default_rng([seed, 5])  # the generator's own stream, replayed
    u = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    v = rng.standard_normal((d, d)) @ (np.eye(d) - np.outer(u, u))
    beta = rng.uniform(0.5, 1.5, d)
    v -= (beta @ v) / beta.sum()
    z, alpha = u + v, beta / beta.sum()
    expected = np.linalg.eigvalsh(z.T @ np.diag(alpha) @ z)[0]
    assert svm.log_time_rate(x, y, svm.hard_margin_svm(x, y)) == pytest.approx(expected, rel=1e-5)  # QP tolerance


def test_separability_lp():
    x, y = generic_separable(30, 3, 0.5, 1.0, seed=0)
    assert svm.separable_through_origin(x, y)
    assert not svm.separable_through_origin(np.vstack([x, x[:1]]), np.concatenate([y, -y[:1]]))
    assert not svm.separable_through_origin(np.vstack([x, np.zeros((1, 3))]), np.concatenate([y, [1.0]]))
    with pytest.raises(ValueError, match="infeasible"):
        svm.hard_margin_svm(np.vstack([x, x[:1]]), np.concatenate([y, -y[:1]]))


def test_gradient_and_loss_match_autograd():
    x, y = generic_separable(20, 4, 0.5, 1.0, seed=1)
    for w in (np.zeros(4), np.random.default_rng(2).standard_normal(4) * 5):
        wt = torch.tensor(w, requires_grad=True)
        loss = torch.nn.functional.softplus(-torch.tensor(y) * (torch.tensor(x) @ wt)).mean()
        loss.backward()
        assert dyn.logistic_loss(x, y, w) == pytest.approx(loss.item(), rel=1e-12)
        np.testing.assert_allclose(dyn.logistic_gradient(x, y, w), wt.grad.numpy(), rtol=1e-10, atol=1e-15)


def test_descend_is_the_plain_update_loop():
    x, y = generic_separable(15, 3, 0.5, 1.0, seed=3)
    lr, lr0, steps = 0.5 * dyn.stable_step(x), 0.3, 40
    paths = dyn.descend(x, y, lr, steps, lr0, points=steps)
    w, v = np.zeros(3), np.zeros(3)
    for t in range(steps):
        w = w - lr * dyn.logistic_gradient(x, y, w)
        v = v - lr0 * dyn.logistic_gradient(x, y, v) / (dyn.logistic_loss(x, y, v) * np.sqrt(t + 1))
    assert paths.steps[-1] == steps
    np.testing.assert_allclose(paths.gd[-1], w, rtol=1e-12)
    np.testing.assert_allclose(paths.normalized[-1], v, rtol=1e-12)


def test_normalized_gd_keeps_going_after_the_loss_underflows():
    x, y = generic_separable(15, 3, 0.5, 1.0, seed=4)
    w_hat = svm.hard_margin_svm(x, y)
    paths = dyn.descend(x, y, 1.0, 20_000, normalized_lr=20.0, points=30)
    final = paths.normalized[-1]
    assert np.all(np.isfinite(paths.normalized))
    assert np.min(y * (x @ final)) > 800  # L < e^-800: zero in float64
    assert dyn.logistic_loss(x, y, final) == 0.0
    gaps = [1 - np.min(y * (x @ w)) / np.linalg.norm(w) * np.linalg.norm(w_hat) for w in paths.normalized[-10:]]
    assert all(b < a for a, b in itertools.pairwise(gaps))  # the margin still improves, step after step


@pytest.mark.parametrize("seed", range(3))
def test_gd_direction_approaches_the_svm(seed):
    x, y = generic_separable(30, 3, 0.5, 1.0, seed=seed)
    unit = svm.hard_margin_svm(x, y)
    lr = 0.9 * dyn.stable_step(x)
    paths = dyn.descend(x, y, lr, 20_000, lr * np.log(2), points=20)
    cosine = lambda w: w @ unit / np.linalg.norm(w)
    # at 2e4 steps GD's direction is within a few degrees (distance ~ 1/ln t), normalized GD closer still
    assert cosine(paths.gd[-1]) > 0.99 and cosine(paths.gd[-1]) > cosine(paths.gd[len(paths.steps) // 2])
    assert 1 - cosine(paths.normalized[-1]) < 1 - cosine(paths.gd[-1])
    # t·L(t) → ‖ŵ‖²/η for the mean loss: by 2e4 steps within 20% of the limit (it approaches from below)
    limit_ratio = paths.steps[-1] * dyn.logistic_loss(x, y, paths.gd[-1]) * lr
    assert 0.8 < limit_ratio < 1.05


def test_quick_run_and_data_round_trip(tmp_path):
    x, y = generic_separable(24, 3, 0.5, 1.0, seed=7)
    np.savez(tmp_path / "mine.npz", X=x, y=(y > 0).astype(int))  # labels as 0/1
    default, mine = run_cli_many([
        ["run", "max-margin", "--quick", "--out", tmp_path / "default"],
        ["run", "max-margin", "--quick", "--data", tmp_path / "mine.npz", "--set", "steps=20000",
         "--set", "window_start=1000", "--out", tmp_path / "mine"]])
    failing = {}
    for result, name in ((default, "default"), (mine, "mine")):
        assert result.returncode == 0, result
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        checks = summary["checks"]
        assert len(checks) == 4 and all(c["value"] is not None for c in checks)
        # the direction converges and normalized GD is closer, on either data set
        assert checks[0]["passed"] and checks[0]["value"] >= 0.99
        assert checks[3]["passed"] and checks[3]["value"] < 1
        failing[name] = [c["name"].split(" over ")[0] for c in checks if c["passed"] is False]
        assert summary["verdict"] == ("fail" if failing[name] else "pass")
        solutions = read_solutions(tmp_path / name)
        assert set(solutions) == {"gd", "gd_normalized", "ref_svm", "ref_log_time_rate"}
        assert solutions["gd"].shape == ((5,) if name == "default" else (3,))
    # the default data fail dist·ln t honestly at --quick as at full size (0.117 here, 0.118 over [1e4, 1e6]):
    # the residual's transient t^(−λ) has not died out; 2e4 steps on the user's data are too few for the slope too
    assert failing == {"default": ["GD: dist·ln t constant"],
                       "mine": ["GD: dist·ln t constant", "GD: slope of ‖w(t)‖ vs ln t"]}
    summary = json.loads((tmp_path / "default" / "summary.json").read_text())
    assert 0.1 < summary["checks"][1]["value"] < 0.15
    # --quick: t up to 1e5 and the window [1e3, 1e5], as the checks' names say
    assert any("[1e+03, 1e+05]" in c["name"] for c in summary["checks"])
    cosine = next(c for c in summary["checks"] if c["name"].startswith("GD: cosine"))
    assert cosine["passed"] and cosine["value"] >= 0.99
    np.testing.assert_allclose(read_solutions(tmp_path / "mine")["ref_svm"], svm.hard_margin_svm(x, y), rtol=1e-6)
    for figure in ("distance_vs_t.png", "margin_vs_t.png", "norm_and_loss_vs_t.png"):
        assert (tmp_path / "default" / "figures" / figure).exists()


def test_malformed_files_exit_2_with_one_line_and_write_nothing(tmp_path):
    x, y = generic_separable(20, 3, 0.5, 1.0, seed=2)
    nan = x.copy()
    nan[0, 1] = np.nan
    cases = {
        "missing": ({"y": y}, "missing array"),
        "shape": ({"X": x, "y": y[:-1]}, "y must have shape (20,)"),
        "nan": ({"X": nan, "y": y}, "NaN"),
        "labels": ({"X": x, "y": np.arange(20) % 3}, "binary labels"),
        "one_column": ({"X": x[:, :1], "y": np.sign(x[:, 0])}, "at least 2 columns"),
        "overlap": ({"X": np.vstack([x, x[:1]]), "y": np.concatenate([y, -y[:1]])},
                    "not linearly separable through the origin"),
    }
    for name, (arrays, expected) in cases.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        result = invoke_cli(["run", "max-margin", "--quick", "--data", tmp_path / f"{name}.npz", "--out", tmp_path / name])
        assert_user_error(result, [expected, f"{name}.npz"], tmp_path / name)


# points near ŵ's direction (spread 0.3) with a wide margin gap: every check passes by 2e4 steps
SMALL = {"steps": 20_000, "window_start": 2000, "n": 12, "d": 3, "spread": 0.3, "gap": 2.0}


@pytest.fixture(scope="module")
def small_run():
    """config, runs, metrics and solutions of a 20 000-step solve (the frames the store would return)."""
    config = build_config(STUDY.Config, {}, SMALL)
    solved = STUDY.solve(config, STUDY.problem(config), no_progress)
    runs, metrics = solved_frames(solved)
    return config, runs, metrics, solved.arrays


def test_analysis_without_solutions_is_inconclusive(small_run):
    config, runs, metrics, solutions = small_run
    analysis = STUDY.analyze(config, runs, metrics, solutions)
    assert [c.value is not None for c in analysis.checks] == [True] * 4
    assert "[2e+03, 2e+04]" in analysis.checks[1].name
    interrupted = STUDY.analyze(config, runs, metrics, {})
    assert interrupted.verdict == "inconclusive" and all(c.passed is None for c in interrupted.checks)


def test_missing_metrics_or_runs_are_inconclusive_not_an_exception(small_run):
    config, runs, metrics, solutions = small_run
    assert STUDY.analyze(config, runs, metrics, solutions).verdict == "pass"
    # GD is listed but its metrics are missing: every check is inconclusive (it raised IndexError)
    analysis = STUDY.analyze(config, runs, metrics[metrics["run_id"] != "gd"], solutions)
    assert analysis.verdict == "inconclusive" and [c.passed for c in analysis.checks] == [None] * 4
    assert "GD's cosine was not recorded" in analysis.checks[0].detail
    # normalized GD did not run although the config asks for it: its check stays, inconclusive (it was dropped)
    analysis = STUDY.analyze(config, runs[runs["run_id"] == "gd"], metrics[metrics["run_id"] == "gd"], solutions)
    assert len(analysis.checks) == 4 and [c.passed for c in analysis.checks] == [True, True, True, None]
    assert analysis.verdict == "inconclusive" and "normalized GD did not run" in analysis.checks[3].detail
    # without normalized GD in the config there is no such check
    plain = config.model_copy(update={"normalized": False})
    assert len(STUDY.analyze(plain, runs[runs["run_id"] == "gd"], metrics[metrics["run_id"] == "gd"],
                             solutions).checks) == 3


def test_a_nan_or_an_empty_window_is_inconclusive_not_a_failure(small_run):
    config, runs, metrics, solutions = small_run
    # one NaN distance inside the window: the spread is unknown (it failed: NaN <= 0.1 is False)
    inside = (metrics["run_id"] == "gd") & (metrics["name"] == "dist") & metrics["step"].between(3000, 10_000)
    nan = metrics.copy()
    nan.loc[nan.index[inside][0], "value"] = np.nan
    analysis = STUDY.analyze(config, runs, nan, solutions)
    spread = analysis.checks[1]
    assert spread.passed is None and spread.value is None and "not finite" in spread.detail
    assert analysis.verdict == "inconclusive"
    # a NaN norm in the window: no slope (np.polyfit raised on NaN)
    inside = (metrics["run_id"] == "gd") & (metrics["name"] == "norm") & metrics["step"].between(3000, 10_000)
    nan = metrics.copy()
    nan.loc[nan.index[inside][0], "value"] = np.nan
    assert STUDY.analyze(config, runs, nan, solutions).checks[2].passed is None
    # records that stop before the window: nothing in it, and nothing at the horizon (it failed)
    early = metrics[metrics["step"] < config.window_start]
    analysis = STUDY.analyze(config, runs, early, solutions)
    assert [c.passed for c in analysis.checks] == [None] * 4 and analysis.verdict == "inconclusive"
    assert "no recorded step in the window" in analysis.checks[1].detail
    assert f"not at the horizon {config.steps}" in analysis.checks[0].detail
