"""lazy-vs-rich: Spearman's ρ against scipy, the analysis on fabricated runs (pass, fail, NaN, diverged and
missing runs), the study contract, and a tiny solve through analysis and figures. The dynamics
(implicitreg.dynamics.lazy) are tested against their references in tests/test_dynamics_lazy.py."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from implicitreg.config import build_config
from implicitreg.studies import lazy_vs_rich as lr
from implicitreg.studies.base import no_progress
from implicitreg.studies.lazy_vs_rich.analysis import slope, spearman

ALPHAS = [0.1, 1.0, 10.0, 100.0]


@pytest.mark.parametrize("x,y", [([1, 2, 3, 4, 5], [5, 3, 4, 1, 2]), ([0.1, 1, 10, 100], [3.0, 2.0, 2.0, 0.5]),
                                 ([1, 2, 3, 4, 5, 6], [1, 4, 9, 16, 25, 36])])
def test_spearman_equals_scipy(x, y):
    from scipy.stats import spearmanr

    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, rel=1e-12, abs=1e-12)


def test_spearman_and_slope_degenerate_inputs():
    assert math.isnan(spearman([1, 2], [2, 1])) and math.isnan(spearman([1, 2, 3], [1, 1, 1]))
    with pytest.raises(ValueError, match="equal length"):
        spearman([1, 2, 3], [1, 2])
    assert slope([1, 10, 100], [1.0, 0.1, 0.01]) == pytest.approx(-1.0, rel=1e-12)
    assert math.isnan(slope([1, 10], [1.0, math.nan]))


def fabricated(movement, gap, status=None, drop=(), unconverged=()):
    """runs/metrics frames as the store returns them: movement[seed][i] and gap[seed][i] for ALPHAS[i];
    an earlier recording precedes each final one; a linearized run per seed."""
    runs, rows = [], []

    def add(run_id, model, alpha, seed, finals):
        if run_id in drop:
            return
        runs.append({"run_id": run_id, "study": lr.STUDY.name, "arm": model, "seed": seed,
                     "config": {"model": model, "alpha": alpha, "seed": seed,
                                "lanczos_converged": run_id not in (unconverged or ())}, "provenance": {},
                     "status": (status or {}).get(run_id, "done"), "final_step": 100, "target_step": 100,
                     "error": None, "started_at": "", "ended_at": ""})
        for name, value in finals.items():
            rows.extend([{"run_id": run_id, "step": 10, "name": name, "value": -7.0},
                         {"run_id": run_id, "step": 100, "name": name, "value": value}])

    for seed in range(len(movement)):  # the seeds stored (the config may plan more)
        add(lr.linearized_id(seed), "linearized", None, seed, {"loss": 0.3, "train_acc": 0.4, "test_acc": 0.3})
        for i, alpha in enumerate(ALPHAS):
            add(lr.network_id(alpha, seed), "network", alpha, seed,
                {"kernel_movement": movement[seed][i], "relative_difference_test": gap[seed][i],
                 "param_movement": 1 / alpha, "loss": 0.1 * i, "train_acc": 0.9 - 0.1 * i,
                 "test_acc": 0.4 - 0.02 * i, "test_loss": 0.4})
    return pd.DataFrame(runs), pd.DataFrame(rows)


def analyze(movement, gap, seeds=2, **kwargs):
    config = lr.Config(alphas=ALPHAS, seeds=seeds, n_train=64, ntk_points=8)
    result = lr.STUDY.analyze(config, *fabricated(movement, gap, **kwargs))
    return result, {c.name.split(":")[0]: c for c in result.checks}


GOOD_MOVEMENT = [[5.0, 2.0, 0.1, 0.01], [6.0, 3.0, 0.2, 0.02]]
GOOD_GAP = [[1.2, 1.0, 0.09, 0.009], [1.1, 0.9, 0.08, 0.004]]


def test_analysis_passes_and_reports_the_worst_seed():
    result, checks = analyze(GOOD_MOVEMENT, GOOD_GAP)
    assert result.verdict == "pass"
    assert checks["kernel movement decreases in α"].value == pytest.approx(-1.0)
    assert checks["α=100"].value == pytest.approx(0.009)  # the worse of 0.009 and 0.004
    table = result.table
    assert list(table["model"]) == ["network"] * 4 + ["linearized"]
    assert table.loc[0, "kernel_movement_mean"] == pytest.approx(5.5)
    assert table.loc[4, "test_acc_mean"] == pytest.approx(0.3)
    assert any("slope" in note for note in result.notes) and any("observation" in note for note in result.notes)


def test_analysis_fails_when_one_seed_moves_more_at_large_alpha_or_disagrees():
    movement = [GOOD_MOVEMENT[0], [0.1, 0.2, 0.3, 0.4]]  # seed 1 increasing: ρ = +1
    gap = [[1.2, 1.0, 0.09, 0.02], GOOD_GAP[1]]  # seed 0: 2e-2 > 1e-2
    result, checks = analyze(movement, gap)
    assert result.verdict == "fail"
    assert checks["kernel movement decreases in α"].value == pytest.approx(1.0)
    assert checks["kernel movement decreases in α"].passed is False
    assert checks["α=100"].value == pytest.approx(0.02) and checks["α=100"].passed is False


def test_nan_diverged_and_missing_runs_reduce_the_support():
    movement = [[5.0, math.nan, 0.1, 0.01], GOOD_MOVEMENT[1]]  # seed 0 keeps 3 of 4 scales: ρ still defined
    status = {lr.network_id(100.0, 1): "diverged"}  # a diverged run has no final values
    result, checks = analyze(movement, GOOD_GAP, status=status)
    assert checks["kernel movement decreases in α"].passed is True  # seed 1: 3 finite scales, ρ = −1
    agreement = checks["α=100"]
    assert agreement.passed is True and agreement.value == pytest.approx(0.009) and "1 of 2 seeds" in agreement.detail
    assert any("diverged" in note for note in result.notes)
    result, _ = analyze(GOOD_MOVEMENT, GOOD_GAP, unconverged=(lr.linearized_id(1),))
    assert any("Lanczos did not converge" in note and lr.linearized_id(1) in note for note in result.notes)
    # three seeds planned, two stored, one of them missing α=100: the agreement rests on 1 of 3 seeds
    result, checks = analyze(GOOD_MOVEMENT, GOOD_GAP, seeds=3, drop=(lr.network_id(100.0, 0),))
    assert checks["α=100"].passed is None and "1 of 3 seeds" in checks["α=100"].detail
    assert result.verdict == "inconclusive"
    # half the scales missing in a seed: its ρ is not computed
    movement = [[5.0, math.nan, math.nan, 0.01], [math.nan, math.nan, 0.1, 0.01]]
    result, checks = analyze(movement, GOOD_GAP)
    assert checks["kernel movement decreases in α"].passed is None
    empty = lr.STUDY.analyze(lr.Config(alphas=ALPHAS, seeds=2, n_train=64, ntk_points=8),
                             *(frame.iloc[0:0] for frame in fabricated(GOOD_MOVEMENT, GOOD_GAP)))
    assert empty.verdict == "inconclusive" and all(c.value is None for c in empty.checks)


def test_config_refuses_bad_scales_and_ntk_points():
    with pytest.raises(ValueError, match="alphas"):
        lr.Config(alphas=[1.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="alphas"):
        lr.Config(alphas=[0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="ntk_points"):
        lr.Config(n_train=10, ntk_points=20)


def test_a_tiny_solve_runs_every_scale_and_the_linearization(tmp_path):
    config = build_config(lr.Config, {"alphas": [0.5, 5.0, 500.0], "seeds": 1, "n_train": 24, "n_test": 12,
                                      "hidden": [8], "steps": 40, "ntk_points": 6}, {})
    problem = lr.STUDY.problem(config)
    assert problem.x.shape == (24, 40) and problem.y.shape == (24, 10)
    assert torch.equal(problem.y.argmax(1), problem.labels)
    solved = lr.STUDY.solve(config, problem, no_progress)
    assert sorted(r.run_id for r in solved.runs) == sorted(
        [lr.linearized_id(0), *(lr.network_id(a, 0) for a in config.alphas)])
    finals = {r.run_id: {n: v for s, n, v in r.metrics if s == r.final_step} for r in solved.runs}
    for alpha in config.alphas:
        values = finals[lr.network_id(alpha, 0)]
        assert {"kernel_movement", "relative_difference_test", "param_movement", "test_acc"} <= set(values)
    # the laziest network is closest to its linearization, and its kernel moves least
    gaps = [finals[lr.network_id(a, 0)]["relative_difference_test"] for a in config.alphas]
    moves = [finals[lr.network_id(a, 0)]["kernel_movement"] for a in config.alphas]
    assert gaps[-1] < gaps[0] and moves[-1] < moves[0]
    # every run of a seed shares η₀; the step is η₀/α²
    eta0 = {r.config["eta0"] for r in solved.runs}
    assert len(eta0) == 1
    assert all(r.config["lr"] == pytest.approx(r.config["eta0"] / r.config["alpha"] ** 2)
               for r in solved.runs if r.arm == "network")
    runs = pd.DataFrame([{"run_id": r.run_id, "arm": r.arm, "seed": r.seed, "config": r.config, "provenance": {},
                          "status": r.status, "final_step": r.final_step, "target_step": r.target_step}
                         for r in solved.runs])
    metrics = pd.DataFrame([{"run_id": r.run_id, "step": s, "name": n, "value": v} for r in solved.runs
                            for s, n, v in r.metrics])
    result = lr.STUDY.analyze(config, runs, metrics)
    assert len(result.checks) == 2 and all(c.value is not None for c in result.checks)
    assert len(lr.STUDY.figures(config, runs, metrics, solved.arrays, tmp_path)) == 2
    assert np.isfinite(solved.arrays["ref_linearized_test_outputs_seed0"]).all()
