"""The edge-of-stability study: its sharpness against dense Hessians, its GD, its verdict logic, and the CLI contract."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from implicitreg.config import build_config
from implicitreg.dynamics.network import build_mlp
from implicitreg.runner import read_solutions
from implicitreg.studies import edge_of_stability as eos

from conftest import run_cli_many, invoke_cli, assert_user_error



def test_gd_records_the_sharpness_and_its_ratio_to_the_threshold_at_every_measurement():
    # the solver is tested in test_dynamics_network.py (closed form, torch.optim.SGD, dense Hessians); here the
    # study's measurement: sharpness·η/2 is the sharpness times η/2, Lanczos' diagnostics beside it
    x, y = (torch.tensor(a) for a in eos.teacher_data(40, 5, 4, 0))
    rows, last = eos.run_gd(build_mlp(5, [7, 7], 1, 0), x, y, lr=0.1, steps=30, measure_every=10, tol=1e-3,
                            max_hvp=50)
    by_step = {}
    for step, name, value in rows:
        by_step.setdefault(step, {})[name] = value
    assert last == 30 and sorted(s for s, m in by_step.items() if "sharpness" in m) == [0, 10, 20, 30]
    for m in (by_step[s] for s in (0, 10, 20, 30)):
        assert m["sharpness_x_lr_over_2"] == pytest.approx(m["sharpness"] * 0.1 / 2, rel=1e-15)
        assert m["lanczos_converged"] == 1.0 and m["lanczos_hvp"] <= 50 and "loss" in m
    assert by_step[30]["diverged"] == 0.0 and "loss_increases" in by_step[30]


def test_teacher_targets_are_standardized_and_seeded():
    x, y = eos.teacher_data(200, 20, 16, 0)
    assert x.shape == (200, 20) and y.shape == (200, 1)
    assert float(y.mean()) == pytest.approx(0.0, abs=1e-12) and float(y.std()) == pytest.approx(1.0, rel=1e-12)
    np.testing.assert_array_equal(eos.teacher_data(200, 20, 16, 0)[1], y)
    assert not np.array_equal(eos.teacher_data(200, 20, 16, 1)[1], y)


def fabricated(lrs, ratios: dict[float, list[float]], losses: dict[float, tuple[float, float]],
               nonconverged: dict[float, set[int]] | None = None) -> pd.DataFrame:
    """Metrics of runs whose sharpness·η/2 follows ``ratios`` (every 10 steps) and loss goes a → b;
    ``nonconverged``: indices of measurements whose Lanczos did not converge."""
    rows = []
    for lr in lrs:
        for i, r in enumerate(ratios[lr]):
            converged = 0.0 if i in (nonconverged or {}).get(lr, set()) else 1.0
            rows += [(eos.run_label(lr), 10 * i, "sharpness_x_lr_over_2", r), (eos.run_label(lr), 10 * i, "sharpness", 2 * r / lr),
                     (eos.run_label(lr), 10 * i, "lanczos_converged", converged)]
        start, end = losses[lr]
        last = 10 * (len(ratios[lr]) - 1)
        rows += [(eos.run_label(lr), 0, "loss", start), (eos.run_label(lr), last, "loss", end),
                 (eos.run_label(lr), last, "loss_increases", 3.0), (eos.run_label(lr), last, "diverged", 0.0)]
    return pd.DataFrame(rows, columns=["run_id", "step", "name", "value"])


def fabricated_runs(lrs) -> pd.DataFrame:
    """The runs of ``fabricated``: the analysis finds each step size's run by the ``lr`` of its stored config."""
    return pd.DataFrame({"run_id": [eos.run_label(lr) for lr in lrs], "config": [{"lr": lr} for lr in lrs]})


@pytest.mark.parametrize("overshoot,drop,verdict", [(1.04, 1e3, "pass"), (1.2, 1e3, "fail"), (1.04, 10, "fail")])
def test_verdict_follows_the_band_the_loss_drop_and_the_small_step(overshoot, drop, verdict):
    config = build_config(eos.Config, {}, {"lrs": [0.4, 0.3, 0.1], "steps": 60, "measure_every": 10})
    rising = [0.3, 0.6, 0.85]  # before sharpening: not judged
    ratios = {0.4: rising + [0.95, overshoot, 0.99, 1.0], 0.3: rising + [0.92, 1.01, 0.98, 1.0],
              0.1: [0.1, 0.3, 0.5, 0.5, 0.5, 0.5, 0.5]}
    losses = {0.4: (0.5, 0.5 / drop), 0.3: (0.5, 1e-4), 0.1: (0.5, 1e-2)}
    analysis = eos.STUDY.analyze(config, fabricated_runs(config.lrs), fabricated(config.lrs, ratios, losses), {})
    assert analysis.verdict == verdict, [c for c in analysis.checks if not c.passed]
    assert len(analysis.checks) == 5
    assert analysis.checks[0].value == pytest.approx(overshoot if overshoot > 1.08 else 0.95)
    assert "sharpened at step 30" in analysis.checks[0].detail
    assert analysis.table["sharpened_at_step"].tolist()[:2] == [30, 30]


def test_never_sharpening_or_crossing_with_the_small_step_fails_and_no_data_is_inconclusive():
    config = build_config(eos.Config, {}, {"lrs": [0.4, 0.3, 0.1], "steps": 20, "measure_every": 10})
    ratios = {0.4: [0.3, 0.5, 0.7], 0.3: [0.5, 0.95, 1.0], 0.1: [0.5, 0.9, 1.02]}
    losses = {lr: (0.5, 1e-4) for lr in config.lrs}
    checks = eos.STUDY.analyze(config, fabricated_runs(config.lrs), fabricated(config.lrs, ratios, losses), {}).checks
    assert checks[0].passed is False and "never sharpened" in checks[0].detail
    assert checks[2].passed is True and checks[-1].passed is False
    empty = pd.DataFrame(columns=["run_id", "step", "name", "value"])
    assert eos.STUDY.analyze(config, pd.DataFrame(), empty, {}).verdict == "inconclusive"


RISING = [0.3, 0.6, 0.85]
PASSING = {0.4: RISING + [0.95, 1.04, 0.99, 1.0], 0.3: RISING + [0.92, 1.01, 0.98, 1.0],
           0.1: [0.1, 0.3, 0.5, 0.5, 0.5, 0.5, 0.5]}
LOSSES = {0.4: (0.5, 5e-4), 0.3: (0.5, 1e-4), 0.1: (0.5, 1e-2)}


def judged(ratios=PASSING, nonconverged=None, drop_run=None, until=None):
    """The analysis of fabricated runs (60 steps, measured every 10), optionally with one run missing
    or every run's records cut after step ``until``."""
    config = build_config(eos.Config, {}, {"lrs": [0.4, 0.3, 0.1], "steps": 60, "measure_every": 10})
    metrics = fabricated(config.lrs, ratios, LOSSES, nonconverged)
    if drop_run is not None:
        metrics = metrics[metrics["run_id"] != eos.run_label(drop_run)]
    if until is not None:
        metrics = metrics[metrics["step"] <= until]
    return eos.STUDY.analyze(config, fabricated_runs(config.lrs), metrics, {})


def test_a_nan_measurement_a_missing_run_or_a_cut_run_is_inconclusive():
    assert judged().verdict == "pass"
    # a NaN after sharpening must not drop out of the band's min/max (pandas skips it)
    analysis = judged({**PASSING, 0.4: RISING + [0.95, math.nan, 0.99, 1.0]})
    band = analysis.checks[0]
    assert band.passed is None and "NaN" in band.detail and analysis.verdict == "inconclusive"
    # ... nor out of the small step's peak
    analysis = judged({**PASSING, 0.1: [0.1, 0.3, 0.5, math.nan, 0.5, 0.5, 0.5]})
    assert analysis.checks[-1].passed is None and analysis.verdict == "inconclusive"
    # a missing run leaves its step size's checks inconclusive, the others decided
    analysis = judged(drop_run=0.3)
    assert [c.passed for c in analysis.checks] == [True, True, None, None, True]
    assert analysis.verdict == "inconclusive" and "no sharpness was measured" in analysis.checks[2].detail
    # runs whose records stop before their last step (without diverging) are not judged on what is left
    analysis = judged(until=40)
    assert all(c.passed is None for c in analysis.checks[::2]) and analysis.verdict == "inconclusive"
    assert "not 60" in analysis.checks[0].detail


def test_step_sizes_reach_the_analysis_from_the_run_configs_not_the_run_ids():
    config = build_config(eos.Config, {}, {"lrs": [0.4, 0.3, 0.1], "steps": 60, "measure_every": 10})
    metrics = fabricated(config.lrs, PASSING, LOSSES)
    renamed = {eos.run_label(lr): f"run{i}" for i, lr in enumerate(config.lrs)}
    runs = fabricated_runs(config.lrs).assign(run_id=lambda f: f["run_id"].map(renamed))
    analysis = eos.STUDY.analyze(config, runs, metrics.assign(run_id=metrics["run_id"].map(renamed)), {})
    assert analysis.verdict == "pass" and analysis.table["lr"].tolist() == [0.4, 0.3, 0.1]
    # runs stored without their step size cannot be matched to the plan: inconclusive, not guessed from the ids
    bare = eos.STUDY.analyze(config, fabricated_runs(config.lrs).assign(config=[{}] * 3), metrics, {})
    assert bare.verdict == "inconclusive" and "no sharpness was measured" in bare.checks[0].detail


def test_a_lanczos_measurement_that_did_not_converge_is_a_lower_bound():
    # within the band but not converged: the true value may lie above it
    analysis = judged(nonconverged={0.4: {5}})
    assert analysis.checks[0].passed is None and "did not converge" in analysis.checks[0].detail
    assert analysis.verdict == "inconclusive"
    # a lower bound above the band is outside it whatever the true value: a certain failure
    analysis = judged({**PASSING, 0.4: RISING + [0.95, 1.2, 0.99, 1.0]}, nonconverged={0.4: {4}})
    assert analysis.checks[0].passed is False and analysis.checks[0].value == pytest.approx(1.2)
    # the small step: a lower bound below 1 proves nothing, one at 1.02 proves the crossing
    assert judged(nonconverged={0.1: {2}}).checks[-1].passed is None
    crossing = {**PASSING, 0.1: [0.1, 0.3, 1.02, 0.5, 0.5, 0.5, 0.5]}
    assert judged(crossing, nonconverged={0.1: {2}}).checks[-1].passed is False


def test_default_quick_run_passes_and_data_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((60, 5))
    y = np.tanh(x @ rng.standard_normal(5))
    np.savez(tmp_path / "mine.npz", X=x, y=y)
    # --threads 1: the networks are tiny, and the two runs share the test machine's 2 cores
    default, mine = run_cli_many([["run", "edge-of-stability", "--quick", "--threads", "1", "--out", tmp_path / "default"],
                                  ["run", "edge-of-stability", "--quick", "--threads", "1", "--data", tmp_path / "mine.npz",
                                   "--set", "steps=200", "--out", tmp_path / "mine"]])
    assert default.returncode == 0, default
    summary = json.loads((tmp_path / "default" / "summary.json").read_text())
    assert summary["verdict"] == "pass", summary["checks"]
    assert len(summary["checks"]) == 5
    assert (tmp_path / "default" / "figures" / "sharpness_and_loss.png").exists()
    assert mine.returncode == 0, mine
    summary = json.loads((tmp_path / "mine" / "summary.json").read_text())
    # 200 steps on the user's data: the loss falls 100× but the sharpness never reaches 0.9·2/η, so the
    # edge-of-stability checks fail (never sharpened) while the small step stays below 2/η
    checks = summary["checks"]
    assert summary["verdict"] == "fail" and len(checks) == 5
    assert [c["passed"] for c in checks] == [False, True, False, True, True]
    assert all(c["value"] < 0.9 and "never sharpened" in c["detail"] for c in checks[0:4:2])
    assert checks[4]["value"] < 1
    assert summary["config"]["data_file"] == str((tmp_path / "mine.npz").resolve())
    solutions = read_solutions(tmp_path / "mine")
    config = build_config(eos.Config, {}, {})
    labels = {eos.run_label(lr) for lr in config.lrs}
    assert labels | {"ref_stability_threshold"} == set(solutions)
    n_params = 5 * 32 + 32 + 32 * 32 + 32 + 32 + 1
    assert all(solutions[label].shape == (n_params,) for label in labels)
    np.testing.assert_allclose(solutions["ref_stability_threshold"], 2 / np.array(sorted(config.lrs, reverse=True)))


def test_malformed_files_exit_2_with_one_line_and_write_nothing(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((10, 4))
    y = x[:, 0]
    nan = x.copy()
    nan[2, 1] = np.nan
    cases = {
        "missing": ({"y": y}, "missing array"),
        "shape": ({"X": x, "y": y[:5]}, "y must have shape (10,)"),
        "nan": ({"X": nan, "y": y}, "NaN"),
        "constant": ({"X": x, "y": np.full(10, 3.0)}, "y is constant"),
    }
    results = []
    for name, (arrays, _) in cases.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        results.append(invoke_cli(["run", "edge-of-stability", "--quick", "--data", tmp_path / f"{name}.npz",
                               "--out", tmp_path / name]))
    for (name, (_, expected)), result in zip(cases.items(), results):
        assert_user_error(result, [expected, f"{name}.npz"], tmp_path / name)
