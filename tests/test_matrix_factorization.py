"""matrix-factorization: closed-form gradients against autograd, the completions against the
min-nuclear-norm reference and the truth on fresh problems, Razin–Cohen's 2×2 relation, the --data
round trip, malformed files, and the default --quick verdict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import implicitreg
from implicitreg.config import build_config
from implicitreg.studies.base import no_progress
from implicitreg.references.matrix_completion import min_nuclear_completion
from implicitreg.dynamics.factorization import factorized_gd, orthogonal_factors, product_and_gradients
from implicitreg.studies.matrix_factorization import RAZIN_MASK, RAZIN_OBSERVED, STUDY, Config

from conftest import run_cli, invoke_cli, assert_user_error, solved_frames


def low_rank_problem(n1, n2, rank, fraction, seed):
    """Unit-mean-square rank-r truth and a Bernoulli(fraction) mask with every row and column observed."""
    rng = np.random.default_rng(seed)
    truth = rng.standard_normal((n1, rank)) @ rng.standard_normal((n2, rank)).T
    truth /= np.sqrt(np.mean(truth ** 2))
    while True:
        mask = rng.random((n1, n2)) < fraction
        if mask.any(0).all() and mask.any(1).all():
            return np.where(mask, truth, 0.0), mask, truth


def relative(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# -- the dynamics -------------------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("shape", [(5, 7), (6, 6), (8, 3)])
def test_closed_form_gradients_match_autograd(depth, shape):
    observed, mask, _ = low_rank_problem(*shape, 2, 0.5, seed=depth)
    factors = orthogonal_factors(shape, depth, 0.7, np.random.default_rng(0))
    factors = [f + 0.1 * np.random.default_rng(j).standard_normal(f.shape) for j, f in enumerate(factors)]  # unbalance
    product, loss, grads = product_and_gradients(factors, observed, mask.astype(float))
    tensors = [torch.tensor(f, requires_grad=True) for f in factors]
    w = tensors[0]
    for t in tensors[1:]:
        w = t @ w
    m = torch.tensor(mask, dtype=torch.float64)
    objective = 0.5 * ((w - torch.tensor(observed)) * m).pow(2).sum() / m.sum()
    expected = torch.autograd.grad(objective, tensors)
    objective = objective.detach()
    np.testing.assert_allclose(product, w.detach().numpy(), rtol=1e-12, atol=1e-14)
    assert loss == pytest.approx(2 * objective.item() * float(m.sum()) / np.sum(observed[mask] ** 2), rel=1e-12)
    for g, e in zip(grads, expected):
        np.testing.assert_allclose(g, e.numpy(), rtol=1e-10, atol=1e-14)


def test_initialization_is_balanced_with_the_given_scale():
    factors = orthogonal_factors((7, 5), 3, 0.01, np.random.default_rng(0))
    assert [f.shape for f in factors] == [(5, 5), (5, 5), (7, 5)]
    for lower, upper in zip(factors, factors[1:]):  # W_{j+1}ᵀ W_{j+1} = W_j W_jᵀ = 0.01² I
        np.testing.assert_allclose(upper.T @ upper, lower @ lower.T, atol=1e-15)
        np.testing.assert_allclose(lower @ lower.T, 1e-4 * np.eye(5), atol=1e-15)


def test_depth_one_fills_nothing():
    observed, mask, _ = low_rank_problem(9, 11, 2, 0.4, seed=0)
    start = orthogonal_factors(observed.shape, 1, 0.01, np.random.default_rng(1))
    result = factorized_gd(observed, mask, start, 1e-20, 100, 0.02, 1.0)
    # closed form: the observed entries are fitted, every other entry keeps its initial value
    np.testing.assert_allclose(result.matrix, np.where(mask, observed, start[0]), atol=1e-14)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_depth_three_completion_matches_the_min_nuclear_reference(seed):
    # 12×12 rank 1 with 60% observed: the min-nuclear-norm completion is the truth (to the solver's
    # accuracy), and depth-3 GD from small init finds it too, up to the init's residue (measured ≈ 5e-7)
    observed, mask, truth = low_rank_problem(12, 12, 1, 0.6, seed)
    reference = min_nuclear_completion(observed, mask)
    assert reference.converged and relative(reference.matrix, truth) < 1e-6
    start = orthogonal_factors(observed.shape, 3, 1e-2, np.random.default_rng(seed))
    result = factorized_gd(observed, mask, start, 1e-10, 30_000, 0.02, 1.0)
    assert result.converged, result.steps
    assert relative(result.matrix, reference.matrix) < 1e-4


@pytest.mark.parametrize("shape,rank", [((9, 13), 1), ((14, 14), 2)])
def test_depth_three_recovers_where_min_nuclear_does_not(shape, rank):
    # Arora et al. 2019: with few observations depth 3 recovers the low-rank truth and nuclear-norm
    # minimization does not (measured: depth 3 ≈ 3e-6, min nuclear 0.19 and 0.085 relative error)
    observed, mask, truth = low_rank_problem(*shape, rank, 0.6 if rank == 1 else 0.75, seed=0)
    start = orthogonal_factors(shape, 3, 1e-2, np.random.default_rng(0))
    result = factorized_gd(observed, mask, start, 1e-10, 30_000, 0.02, 1.0)
    assert relative(result.matrix, truth) < 1e-4
    assert relative(min_nuclear_completion(observed, mask).matrix, truth) > 1e-2


def test_depth_two_completion_approaches_the_reference():
    # depth 2 converges sublinearly here (its last directions grow from the init's 1e-4): after
    # 8000 steps it is within 1e-2 of the exact completion
    observed, mask, truth = low_rank_problem(12, 12, 1, 0.6, seed=0)
    start = orthogonal_factors(observed.shape, 2, 1e-2, np.random.default_rng(0))
    result = factorized_gd(observed, mask, start, 1e-14, 8000, 0.02, 1.0)
    assert relative(result.matrix, min_nuclear_completion(observed, mask).matrix) < 1e-2


@pytest.mark.parametrize("init,depth", [(1e-2, 3), (1e-3, 4)])
def test_razin_cohen_norms_diverge_like_one_over_root_loss(init, depth):
    result = factorized_gd(RAZIN_OBSERVED, RAZIN_MASK, [init * np.eye(2)] * depth, 3 * 8e-4, 100_000, 0.02, 1.0,
                           record=set(range(0, 100_000, 50)))
    assert result.converged
    late = 0
    for _, w in result.trace:
        loss = np.sum(((w - RAZIN_OBSERVED) * RAZIN_MASK) ** 2) / 6
        if loss <= 1e-3:
            late += 1
            assert 0.95 <= abs(w[0, 0]) * np.sqrt(6 * loss) <= 1.0  # the lower bound w12·w21/√(6L), nearly tight
            svals = np.linalg.svd(w, compute_uv=False)
            assert svals[1] / svals[0] < 1e-6 and np.linalg.det(w) > 0
    assert late >= 3


def test_min_nuclear_reference_is_feasible_and_no_larger_than_the_truth():
    observed, mask, truth = low_rank_problem(10, 10, 3, 0.45, seed=4)  # too few entries for exact recovery
    result = min_nuclear_completion(observed, mask)
    assert result.converged and result.max_violation < 1e-7
    nuclear = lambda w: np.linalg.svd(w, compute_uv=False).sum()  # noqa: E731
    assert nuclear(result.matrix) <= nuclear(truth) + 1e-6


# -- the CLI: --data round trip, malformed files, default --quick -----------------------------------


SOLUTION_KEYS = {"depth_1", "depth_2", "depth_3", "razin_cohen", "ref_min_nuclear", "status_min_nuclear", "observed",
                 "mask"}


@pytest.mark.parametrize("with_truth", [True, False])
def test_data_round_trip(tmp_path, with_truth):
    observed, mask, truth = low_rank_problem(12, 12, 1, 0.6, seed=5)
    path = tmp_path / "mine.npz"
    np.savez(path, observed=observed, mask=mask, **({"truth": truth} if with_truth else {}))
    out = tmp_path / "out"
    result = invoke_cli(["run", "matrix-factorization", "--quick", "--data", path, "--out", out,
                         "--set", "max_steps=4000"])  # depth 2's slow tail is not what this tests
    assert result.returncode == 0, result
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["data_file"] == str(path.resolve())
    checks = {c["name"]: c for c in summary["checks"]}
    assert len(checks) == 6
    with np.load(out / "solutions.npz") as archive:
        assert set(archive.files) == SOLUTION_KEYS | ({"truth"} if with_truth else set())
        np.testing.assert_array_equal(archive["mask"], mask)
    test_error_checks = [c for n, c in checks.items() if not n.startswith("Razin")]
    if with_truth:
        assert summary["verdict"] == "pass", summary["checks"]  # rank 1 at 60% observed: every depth claim holds
    else:
        assert all(c["passed"] is None for c in test_error_checks) and summary["verdict"] == "inconclusive"
        assert any("holds no truth" in note for note in summary["notes"])
    assert all(c["passed"] for n, c in checks.items() if n.startswith("Razin"))


def malformed_files(root: Path) -> dict[str, tuple[Path, str]]:
    observed, mask, truth = low_rank_problem(10, 10, 1, 0.5, seed=0)
    few = np.zeros_like(mask)
    few[np.arange(10), np.arange(10)] = True  # 10 < n1 + n2 − 1 = 19
    empty_row = mask.copy()
    empty_row[3] = False
    cases = {
        "missing-mask": ({"observed": observed}, "missing array(s) mask"),
        "mask-wrong-shape": ({"observed": observed, "mask": mask[:, :-1]}, "mask must have the shape of observed"),
        "nan": ({"observed": np.where(mask, np.nan, 0.0), "mask": mask}, "array observed holds NaN"),
        "too-few": ({"observed": np.where(few, truth, 0.0), "mask": few}, "too few observed entries: 10"),
        "empty-row": ({"observed": np.where(empty_row, truth, 0.0), "mask": empty_row}, "unobserved rows [3]"),
        "all-observed": ({"observed": truth, "mask": np.ones_like(mask)}, "observes all 100 entries"),
        "truth-wrong-shape": ({"observed": observed, "mask": mask, "truth": truth[:5]}, "truth must have the shape"),
    }
    files = {}
    for name, (arrays, message) in cases.items():
        path = root / f"{name}.npz"
        np.savez(path, **arrays)
        files[name] = (path, message)
    return files


@pytest.mark.parametrize("name", ["missing-mask", "mask-wrong-shape", "nan", "too-few", "empty-row", "all-observed",
                                  "truth-wrong-shape"])
def test_malformed_file_exits_2_with_one_line(tmp_path, name):
    path, message = malformed_files(tmp_path)[name]
    out = tmp_path / "out"
    assert_user_error(invoke_cli(["run", "matrix-factorization", "--quick", "--data", path, "--out", out]), [message], out)


def test_malformed_file_in_a_real_process(tmp_path):
    path, message = malformed_files(tmp_path)["too-few"]
    result = run_cli(["run", "matrix-factorization", "--quick", "--data", path, "--out", tmp_path / "out"])
    assert_user_error(result, [message], tmp_path / "out")


def test_default_quick_run_passes(tmp_path):
    result = implicitreg.run("matrix-factorization", quick=True, out=tmp_path / "quick")
    assert result.verdict == "pass", result.summary["checks"]
    assert len(result.summary["checks"]) == 6
    # the checks come from the stored metrics alone: without solutions.npz the verdict is the same
    config = Config.model_validate(result.summary["config"])
    analysis = STUDY.analyze(config, result.runs(), result.metrics(), {})
    assert [c.value for c in analysis.checks] == [c["value"] for c in result.summary["checks"]]
    assert analysis.verdict == "pass"
    STUDY.figures(config, result.runs(), result.metrics(), {}, tmp_path / "figures")


# -- the analysis on incomplete results ----------------------------------------------------------------

SMALL = {"size": 16, "rank": 1, "observed": 120, "max_steps": 4000}  # every check passes (≈ 2 s)


@pytest.fixture(scope="module")
def small_solve():
    """config, runs, metrics and solutions of a small --quick solve, as the store returns them."""
    config = build_config(Config, STUDY.defaults(True), SMALL)
    solved = STUDY.solve(config, STUDY.problem(config), no_progress)
    runs, metrics = solved_frames(solved)
    return config, runs, metrics, solved.arrays


def with_nan(metrics, run_id, name, step=None):
    """``metrics`` with one value of ``name`` set to NaN: at ``step``, or at the run's last step."""
    rows = (metrics["run_id"] == run_id) & (metrics["name"] == name)
    step = metrics.loc[rows, "step"].max() if step is None else step
    return metrics.assign(value=metrics["value"].mask(rows & (metrics["step"] == step)))


def test_a_nan_in_the_razin_cohen_run_is_inconclusive_not_a_failure(small_solve):
    config, runs, metrics, solutions = small_solve
    assert STUDY.analyze(config, runs, metrics, solutions).verdict == "pass"
    late = metrics[(metrics["run_id"] == "razin_cohen") & (metrics["name"] == "loss") & (metrics["value"] <= 1e-3)]
    step = int(late["step"].iloc[0])
    # |w11|·√(6L) NaN at a late step: idxmax skipped it and between().all() made the check fail
    analysis = STUDY.analyze(config, runs, with_nan(metrics, "razin_cohen", "w11_sqrt_6l", step), solutions)
    assert analysis.checks[4].passed is None and analysis.verdict == "inconclusive"
    # σ₂/σ₁ NaN at a late step: max() skipped it and the check passed
    analysis = STUDY.analyze(config, runs, with_nan(metrics, "razin_cohen", "sigma_ratio", step), solutions)
    assert analysis.checks[5].passed is None and analysis.verdict == "inconclusive"
    # a NaN loss: which steps count as late is unknown
    analysis = STUDY.analyze(config, runs, with_nan(metrics, "razin_cohen", "loss", step), solutions)
    assert analysis.checks[4].passed is None and "NaN" in analysis.checks[4].detail


def test_a_nan_or_missing_depth_is_inconclusive(small_solve):
    config, runs, metrics, solutions = small_solve
    analysis = STUDY.analyze(config, runs, with_nan(metrics, "depth_3", "test_mse"), solutions)
    assert [c.passed for c in analysis.checks[:2]] == [None, None] and analysis.verdict == "inconclusive"
    assert "nan" in analysis.checks[0].detail and "no truth" not in analysis.checks[0].detail
    analysis = STUDY.analyze(config, runs[runs["run_id"] != "depth_2"], metrics[metrics["run_id"] != "depth_2"],
                             solutions)
    assert [c.passed for c in analysis.checks] == [True, None, True, True, True, True]
    assert "depth 2 did not run" in analysis.checks[1].detail and analysis.verdict == "inconclusive"
