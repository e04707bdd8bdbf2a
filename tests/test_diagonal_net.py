"""diagonal-net: the Q_α reference against closed forms and limits, GD against the reference on fresh
problems, the --data round trip, malformed files, and the default --quick verdict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import implicitreg
from implicitreg.config import build_config
from implicitreg.studies.base import no_progress
from implicitreg.references.sparse_regression import (min_l1_interpolant, min_l2_interpolant, q_alpha,
                                                      q_alpha_interpolant)
from implicitreg.dynamics.diagonal_net import diagonal_gd
from implicitreg.studies.diagonal_net import STUDY, Config, generate

from conftest import run_cli, invoke_cli, assert_user_error, solved_frames


def relative(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# -- the Q_α potential and its minimizer ----------------------------------------------------------

@pytest.mark.parametrize("beta,alpha", [(1e-9, 1.0), (3e-4, 1.0), (0.7, 1.0), (-2.5, 1.0), (40.0, 1.0),
                                        (0.3, 1e-6), (-1e-3, 1e-6), (5e-13, 1e-6), (2.0, 1e3)])
def test_q_alpha_matches_high_precision_arithmetic(beta, alpha):
    # 50-digit evaluation of the textbook form α²(2 − √(4+z²) + z·asinh(z/2)), z = β/α²: the float64
    # textbook form loses every digit at small z (2 − √(4+z²) cancels) and overflows z² at huge z.
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    z = mpmath.mpf(beta) / mpmath.mpf(alpha) ** 2
    exact = mpmath.mpf(alpha) ** 2 * (2 - mpmath.sqrt(4 + z * z) + z * mpmath.asinh(z / 2))
    assert q_alpha(np.array([beta]), alpha) == pytest.approx(float(exact), rel=1e-12, abs=0)


def test_q_alpha_limits_are_l1_and_l2():
    beta = np.array([0.5, -1.5, 0.0, 2e-3])
    # α → 0: α²q(β/α²) = |β|(ln(|β|/α²) − 1) + 2α² + O(α⁴/|β|); α → ∞: 4α²Q_α(β) = ‖β‖² (1 + O(β²/α⁴))
    small = 1e-6
    nonzero = beta[beta != 0]
    expected = np.sum(np.abs(nonzero) * (np.log(np.abs(nonzero) / small ** 2) - 1)) + 2 * small ** 2 * len(nonzero)
    assert q_alpha(beta, small) == pytest.approx(expected, rel=1e-10)
    assert 4 * 1e4 ** 2 * q_alpha(beta, 1e4) == pytest.approx(np.sum(beta ** 2), rel=1e-12)


@pytest.mark.parametrize("alpha", [1e-4, 1e-2, 1.0, 1e2])
def test_q_alpha_interpolant_matches_the_closed_form_of_an_orthogonal_design(alpha):
    # X = [I, 3I]: row i couples β_i and β_{n+i} only. With β = 2α² sinh(Xᵀν): β_i = 2α²s,
    # β_{n+i} = 2α² sinh(3ν) = 2α²(3s + 4s³) for s = sinh(ν_i), and row i reads 12s³ + 10s = y_i/(2α²):
    # one real root (the cubic is increasing), found by numpy.roots.
    y = np.array([1.3, -0.4, 2.0])
    n = len(y)
    x = np.hstack([np.eye(n), 3 * np.eye(n)])
    s = np.array([next(r.real for r in np.roots([12.0, 0.0, 10.0, -yi / (2 * alpha ** 2)]) if abs(r.imag) < 1e-9)
                  for yi in y])
    expected = np.concatenate([2 * alpha ** 2 * s, 2 * alpha ** 2 * (3 * s + 4 * s ** 3)])
    result = q_alpha_interpolant(x, y, alpha)
    assert result.converged and result.residual < 1e-12
    np.testing.assert_allclose(result.beta, expected, rtol=1e-8, atol=1e-12 * np.abs(y).max())
    # and the limits of this design: min-ℓ1 puts everything on the column of weight 3, min-ℓ2 spreads y/10·(1, 3)
    if alpha == 1e-4:
        np.testing.assert_allclose(result.beta, np.concatenate([np.zeros(n), y / 3]), atol=1e-4)
    if alpha == 1e2:
        np.testing.assert_allclose(result.beta, np.concatenate([y / 10, 3 * y / 10]), rtol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_q_alpha_interpolant_is_optimal_and_tends_to_min_l1_and_min_l2(seed):
    config = build_config(Config, {}, {"n": 15, "d": 40, "k": 3, "seed": seed})
    problem = generate(config)
    x, y = problem.x, problem.y
    l1, l2 = min_l1_interpolant(x, y), min_l2_interpolant(x, y)
    assert relative(l1, problem.beta_star) < 1e-8  # 15 Gaussian measurements recover a 3-sparse β*
    # the gap to min-ℓ1 shrinks as α → 0, slowly (Q_α/ln(1/α²) → ‖·‖₁); measured 4e-7 … 4e-3 at α = 1e-8
    gaps = [relative(q_alpha_interpolant(x, y, alpha).beta, l1) for alpha in (1e-2, 1e-4, 1e-6, 1e-8)]
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-2, gaps
    assert relative(q_alpha_interpolant(x, y, 1e3).beta, l2) < 1e-8  # the gap shrinks like β²/α⁴
    # optimality at an intermediate α: feasible perturbations along the null space of X only increase Q_α
    alpha = 0.3
    beta = q_alpha_interpolant(x, y, alpha).beta
    null = np.linalg.svd(x)[2][x.shape[0]:]
    rng = np.random.default_rng(seed)
    for _ in range(20):
        other = beta + 1e-3 * rng.standard_normal(len(null)) @ null
        assert q_alpha(other, alpha) > q_alpha(beta, alpha)


# -- gradient descent against the reference ---------------------------------------------------------

@pytest.mark.parametrize("n,d,k", [(10, 25, 2), (20, 50, 3)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gradient_descent_reaches_the_q_alpha_interpolant(n, d, k, seed):
    problem = generate(build_config(Config, {}, {"n": n, "d": d, "k": k, "seed": seed}))
    alphas = np.array([0.03, 0.3, 3.0, 300.0])
    result = diagonal_gd(problem.x, problem.y, alphas, 1e-10, 20_000, growth_step=0.01, stability_step=0.5)
    assert result.converged.all(), result.steps
    for alpha, beta in zip(alphas, result.beta):
        # 1e-2 is the study's threshold; GD's first-order Euler error at growth_step 0.01 measured ≤ 3e-3 here
        assert relative(beta, q_alpha_interpolant(problem.x, problem.y, alpha).beta) < 1e-2, alpha


def test_halving_the_growth_step_halves_the_distance_to_the_flow_limit():
    # the GD–gradient-flow gap is the first-order Euler error of the multiplicative growth phase
    problem = generate(build_config(Config, {}, {"n": 20, "d": 50, "k": 3, "seed": 0}))
    reference = q_alpha_interpolant(problem.x, problem.y, 0.1).beta
    gaps = [relative(diagonal_gd(problem.x, problem.y, np.array([0.1]), 1e-12, 50_000, step, 0.5).beta[0], reference)
            for step in (0.02, 0.01)]
    assert gaps[1] == pytest.approx(gaps[0] / 2, rel=0.25)


# -- the CLI: --data round trip, malformed files, default --quick -----------------------------------


def sparse_problem(n=15, d=30, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    beta = np.zeros(d)
    beta[[2, 11]] = [1.0, -0.5]
    return x, x @ beta


def test_data_round_trip(tmp_path):
    x, y = sparse_problem()
    path = tmp_path / "mine.npz"
    np.savez(path, X=x, y=y)
    out = tmp_path / "out"
    result = invoke_cli(["run", "diagonal-net", "--quick", "--data", path, "--out", out])
    assert result.returncode == 0, result
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["data_file"] == str(path.resolve())
    # the user's 2-sparse β is the min-ℓ1 interpolant: small α finds it, large α the min-ℓ2 one
    assert summary["verdict"] == "pass", summary["checks"]
    q, l1, l2 = (c["value"] for c in summary["checks"])
    assert len(summary["checks"]) == 3 and q <= 1e-2 and l1 <= 5e-3 and l2 <= 1e-4
    with np.load(out / "solutions.npz") as archive:
        keys = set(archive.files)
        assert archive["ref_min_l2"].shape == (30,)
    alphas = build_config(Config, STUDY.defaults(True), {}).alphas
    labels = {f"alpha_{a:g}" for a in alphas}
    assert keys == labels | {f"ref_q_{label}" for label in labels} | {"ref_min_l1", "ref_min_l2"}  # no truth
    assert (out / "figures" / "alpha_sweep.png").exists()


def malformed_files(root: Path) -> dict[str, tuple[Path, str]]:
    x, y = sparse_problem()
    cases = {
        "missing-y": ({"X": x}, "missing array(s) y"),
        "x-not-2d": ({"X": x[0], "y": y[:1]}, "X must be a 2-D array"),
        "y-wrong-length": ({"X": x, "y": y[:-1]}, "y must have shape (15,)"),
        "nan": ({"X": np.where(np.eye(15, 30) > 0, np.nan, x), "y": y}, "array X holds NaN"),
        "full-rank": ({"X": x.T, "y": x.T @ np.ones(15)}, "has rank 15 = d"),
        "inconsistent": ({"X": np.vstack([x, x[:1]]), "y": np.append(y, y[0] + 1.0)}, "no exact solution"),
        "zero-y": ({"X": x, "y": np.zeros(15)}, "y is all zeros"),
    }
    files = {}
    for name, (arrays, message) in cases.items():
        path = root / f"{name}.npz"
        np.savez(path, **arrays)
        files[name] = (path, message)
    return files


@pytest.mark.parametrize("name", ["missing-y", "x-not-2d", "y-wrong-length", "nan", "full-rank", "inconsistent",
                                  "zero-y"])
def test_malformed_file_exits_2_with_one_line(tmp_path, name):
    path, message = malformed_files(tmp_path)[name]
    out = tmp_path / "out"
    assert_user_error(invoke_cli(["run", "diagonal-net", "--quick", "--data", path, "--out", out]), [message], out)


def test_malformed_file_in_a_real_process(tmp_path):
    path, message = malformed_files(tmp_path)["inconsistent"]
    result = run_cli(["run", "diagonal-net", "--quick", "--data", path, "--out", tmp_path / "out"])
    assert_user_error(result, [message], tmp_path / "out")


def test_default_quick_run_passes(tmp_path):
    result = implicitreg.run("diagonal-net", quick=True, out=tmp_path / "quick")
    assert result.verdict == "pass", result.summary["checks"]
    names = {c["name"] for c in result.summary["checks"]}
    assert any("Q_α" in n for n in names) and any("min-ℓ1" in n for n in names)
    assert_interrupted_run_is_inconclusive(result, tmp_path)


def assert_interrupted_run_is_inconclusive(result, tmp_path):
    """Without solutions.npz (a run stopped while solving) the checks cannot be computed, and figures still draw."""
    config = Config.model_validate(result.summary["config"])
    analysis = STUDY.analyze(config, result.runs(), result.metrics(), {})
    assert analysis.verdict == "inconclusive" and all(c.passed is None for c in analysis.checks)
    STUDY.figures(config, result.runs(), result.metrics(), {}, tmp_path / "figures")


# -- the analysis on incomplete results ----------------------------------------------------------------

SMALL = {"n": 20, "d": 50, "k": 3, "alphas": [1e-3, 1e-1, 1.0, 1e2], "max_steps": 20_000}  # every check passes


@pytest.fixture(scope="module")
def small_solve():
    """config, runs, metrics and solutions of a small solve, as the store returns them."""
    config = build_config(Config, {}, SMALL)
    solved = STUDY.solve(config, STUDY.problem(config), no_progress)
    runs, metrics = solved_frames(solved)
    return config, runs, metrics, solved.arrays


def test_a_nan_error_is_inconclusive_not_dropped_from_the_max(small_solve):
    config, runs, metrics, solutions = small_solve
    assert STUDY.analyze(config, runs, metrics, solutions).verdict == "pass"
    broken = {**solutions, "alpha_0.1": np.full_like(solutions["alpha_0.1"], np.nan)}
    analysis = STUDY.analyze(config, runs, metrics, broken)
    largest = analysis.checks[0]
    assert largest.passed is None and "no error for α = 0.1" in largest.detail  # pandas' max skipped the NaN
    assert analysis.verdict == "inconclusive" and [c.passed for c in analysis.checks[1:]] == [True, True]


def test_a_missing_alpha_is_not_replaced_by_the_next_one(small_solve):
    config, runs, metrics, solutions = small_solve
    keep = runs["run_id"] != "alpha_0.001"
    analysis = STUDY.analyze(config, runs[keep], metrics[metrics["run_id"] != "alpha_0.001"], solutions)
    # the smallest α did not run: the min-ℓ1 check is inconclusive (it judged α = 0.1 instead)
    assert analysis.checks[1].passed is None and "no run for α = 0.001" in analysis.checks[1].detail
    assert analysis.checks[0].passed is None and "no error for α = 0.001" in analysis.checks[0].detail
    assert analysis.verdict == "inconclusive"
    # ... unless the α values that remain already exceed the limit: then the largest error fails, on 3 of 4
    far = {**solutions, "alpha_1": 2 * solutions["alpha_1"]}
    largest = STUDY.analyze(config, runs[keep], metrics[metrics["run_id"] != "alpha_0.001"], far).checks[0]
    assert largest.passed is False and "computed from 3 of 4 α values" in largest.detail


def test_an_unconverged_q_alpha_reference_is_inconclusive(small_solve):
    config, runs, metrics, solutions = small_solve
    flag = (metrics["run_id"] == "alpha_1") & (metrics["name"] == "ref_q_alpha_converged")
    analysis = STUDY.analyze(config, runs, metrics.assign(value=metrics["value"].mask(flag, 0.0)), solutions)
    assert analysis.checks[0].passed is None and "did not converge for α = 1" in analysis.checks[0].detail
    assert analysis.checks[0].value is not None and analysis.verdict == "inconclusive"
