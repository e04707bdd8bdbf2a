"""The gd-min-norm study: its dynamics against numpy's least-squares solver, its verdict on what ran
and on doctored results with known answers, and its configuration's errors."""

import numpy as np
import pandas as pd
import pytest

from gd_min_norm.study import STUDY, Config, gradient_descent, problem_of
from implicitreg.config import ConfigError, build_config
from implicitreg.studies.base import no_progress


def frames(solved):
    """The runs and metrics frames the store returns for a solved study's runs."""
    runs = pd.DataFrame([{"run_id": r.run_id, "arm": r.arm, "seed": r.seed, "config": r.config, "provenance": {},
                          "status": r.status, "final_step": r.final_step, "target_step": r.target_step}
                         for r in solved.runs])
    metrics = pd.DataFrame([{"run_id": r.run_id, "step": s, "name": name, "value": v}
                            for r in solved.runs for s, name, v in r.metrics],
                           columns=["run_id", "step", "name", "value"])
    return runs, metrics


@pytest.fixture(scope="module")
def quick():
    config = build_config(Config, STUDY.defaults(True), {})
    solved = STUDY.solve(config, STUDY.problem(config), no_progress)
    return config, solved


def test_gradient_descent_reaches_the_least_squares_min_norm_solution():
    # the reference is numpy's lstsq (an SVD solver), not the pseudo-inverse the study uses. GD stops
    # at relative residual 1e-12; the distance to the limit is at most κ(XXᵀ)^½ times that (κ ≈ 10
    # here), measured 2e-12, so 1e-9 leaves a wide margin for other BLAS builds
    x, y, w0 = problem_of(10, 3.0, seed=1, init_scale=1.0)
    lr = x.shape[0] / np.linalg.norm(x, 2) ** 2
    min_norm = np.linalg.lstsq(x, y, rcond=None)[0]
    w, _, _, converged = gradient_descent(x, y, np.zeros_like(w0), lr, 1e-12, 100_000, set())
    assert converged
    assert np.linalg.norm(w - min_norm) / np.linalg.norm(min_norm) < 1e-9
    # from w0: the part of w0 orthogonal to the row space stays (projector from the SVD's right vectors)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    expected = min_norm + w0 - vt.T @ (vt @ w0)
    w, _, _, converged = gradient_descent(x, y, w0, lr, 1e-12, 100_000, set())
    assert converged and np.linalg.norm(w - expected) / np.linalg.norm(expected) < 1e-9


def test_the_claim_holds_on_the_quick_problems(quick):
    config, solved = quick
    analysis = STUDY.analyze(config, *frames(solved), solved.arrays)
    assert analysis.verdict == "pass", [c.as_dict() for c in analysis.checks]
    assert len(solved.runs) == 2 * len(config.ratios) * config.seeds
    # every check's value is read from what ran: the stored final metrics
    largest = max(v for r in solved.runs if r.arm == "zero" for s, n, v in r.metrics
                  if n == "dist_predicted" and s == r.final_step)
    assert analysis.checks[0].value == pytest.approx(largest)


def test_a_run_off_its_limit_fails_the_check(quick):
    config, solved = quick
    runs, metrics = frames(solved)
    last = metrics.groupby("run_id")["step"].transform("max") == metrics["step"]
    metrics.loc[last & (metrics["run_id"] == runs["run_id"][0]) & (metrics["name"] == "dist_predicted"), "value"] = 1e-3
    analysis = STUDY.analyze(config, runs, metrics, solved.arrays)
    assert analysis.verdict == "fail"
    assert [c.passed for c in analysis.checks][0] is False


def test_an_unfinished_or_unconverged_run_leaves_the_checks_undecided(quick):
    config, solved = quick
    runs, metrics = frames(solved)
    runs.loc[runs["arm"] == "zero", "status"] = "failed"  # every from-zero run: fewer than half remain
    analysis = STUDY.analyze(config, runs, metrics, solved.arrays)
    assert analysis.checks[0].passed is None and "fewer than half" in analysis.checks[0].detail

    runs, metrics = frames(solved)
    stuck = runs["run_id"][runs["arm"] == "w0"].iloc[0]
    metrics.loc[(metrics["run_id"] == stuck) & (metrics["name"] == "converged"), "value"] = 0.0
    analysis = STUDY.analyze(config, runs, metrics, solved.arrays)
    assert analysis.verdict == "inconclusive"
    assert stuck in analysis.checks[1].detail


def test_a_ratio_of_at_most_one_is_refused_naming_the_field():
    with pytest.raises(ConfigError, match=r"ratios: .*> 1"):
        build_config(Config, {}, {"ratios": [0.5, 2.0]})
