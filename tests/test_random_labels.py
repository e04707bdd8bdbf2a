"""The random-labels study: its plan, its verdict on hand-made results with known answers, one tiny run."""

import json
import math

import pandas as pd
import pytest

import implicitreg
from implicitreg.config import ConfigError, build_config
from implicitreg.studies import STUDIES
from implicitreg.studies.random_labels import RANDOM_INPUTS, STUDY, arm_level, level_arm

LEVELS = [0.0, 0.5, 1.0]


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(STUDIES, STUDY.name, STUDY)
    return STUDY


def test_plan_has_every_level_model_and_seed_plus_random_inputs():
    config = build_config(STUDY.Config, {}, {"seeds": 3})
    groups = STUDY.plan(config)
    members = [(g, m) for g in groups for m in g.members]
    ids = [m.run_id for _, m in members]
    assert len(ids) == len(set(ids)) == 2 * (6 + 1) * 3
    # one population per model for the corruption levels, one per model for the random inputs
    assert sorted((g.arch, g.data.inputs, len(g.members)) for g in groups) == [
        ("cnn", "gaussian", 3), ("cnn", "original", 18), ("mlp", "gaussian", 3), ("mlp", "original", 18)]
    for model in ("mlp", "cnn"):
        for arm in [*map(level_arm, config.levels), RANDOM_INPUTS]:
            runs = [m for g, m in members if g.arch == model and m.arm == arm]
            assert sorted(m.seed for m in runs) == [0, 1, 2]  # matched seeds
            expected_noise = 0.0 if arm == RANDOM_INPUTS else arm_level(arm)
            assert {m.label_noise for m in runs} == {expected_noise}
    for g in groups:
        assert g.train.track == getattr(config.track, g.arch)
        assert g.train.track_every == g.train.track_expensive_every == g.train.max_steps  # once, at the end
        assert g.train.target_train_acc == 1.0 and g.train.schedule == "cosine"
    assert "pac_bayes_sigma" in config.track.mlp and "top_hessian_eigenvalue" in config.track.mlp


def test_quick_plan_is_smaller():
    quick = STUDY.plan(build_config(STUDY.Config, STUDY.defaults(True), {}))
    full = STUDY.plan(build_config(STUDY.Config, STUDY.defaults(False), {}))
    work = lambda groups: sum(len(g.members) * g.train.max_steps for g in groups)  # noqa: E731
    assert work(quick) < work(full) / 3


@pytest.mark.parametrize("overrides", [{"levels": [0.5, 0.2]}, {"levels": [0.0, 1.5]}, {"track": {"cnn": ["nope"]}},
                                       {"train": {"track": ["l2_norm"]}}, {"data": {"inputs": "gaussian"}}])
def test_bad_configurations_are_rejected(overrides):
    with pytest.raises(ConfigError):
        build_config(STUDY.Config, {}, overrides)


def stored(runs_spec: dict[str, dict], max_steps: int = 1000, every: int = 250):
    """runs/metrics frames as the store returns them. Each spec: train/test accuracy at the end,
    the step at which train accuracy first reached 1 (None: never), final measure values, and
    optionally its status."""
    runs, rows = [], []
    for run_id, spec in runs_spec.items():
        runs.append({"run_id": run_id, "study": STUDY.name, "arm": run_id.split("/")[1], "seed": 0,
                     "config": {"member": {"tags": {"model": run_id.split("/")[0]}}},
                     "provenance": {}, "status": spec.get("status", "done"), "final_step": max_steps,
                     "target_step": None,
                     "error": None, "started_at": "", "ended_at": ""})
        for step in range(every, max_steps + 1, every):
            fitted = spec["fit"] is not None and step >= spec["fit"]
            last = step == max_steps
            train = spec["train"] if last else (1.0 if fitted else 0.5)
            rows.append({"run_id": run_id, "step": step, "name": "train_acc", "value": train})
            rows.append({"run_id": run_id, "step": step, "name": "test_acc", "value": spec["test"] if last else 0.3})
        for name, value in spec.get("measures", {}).items():
            rows.append({"run_id": run_id, "step": max_steps, "name": name, "value": value})
    return pd.DataFrame(runs), pd.DataFrame(rows)


def outcome(test=(0.66, 0.40, 0.10), fit=(250, 500, 750), train=(1.0, 1.0, 1.0), random_train=1.0, seeds=2,
            jitter=0.0, status=None, planned=None, drop=()):
    """Hand-made MLP results at LEVELS (per-level values; seed s adds ``s * jitter`` to test accuracy);
    ``status``: arm → status of its runs; ``drop``: run ids that never reached the store."""
    spec = {}
    for seed in range(seeds):
        for i, level in enumerate(LEVELS):
            spec[f"mlp/{level_arm(level)}/seed{seed}"] = {
                "train": train[i], "test": test[i] + seed * jitter, "fit": fit[i],
                "measures": {"l2_norm": 10 + 5 * level + seed, "pac_bayes_sigma": 0.1 - 0.05 * level}}
        spec[f"mlp/{RANDOM_INPUTS}/seed{seed}"] = {"train": random_train, "test": 0.1, "fit": 750,
                                                   "measures": {"l2_norm": 20.0, "pac_bayes_sigma": 0.02}}
    for run_id in spec:
        spec[run_id]["status"] = (status or {}).get(run_id.split("/")[1], "done")
    spec = {k: v for k, v in spec.items() if k not in drop}
    config = STUDY.Config(models=["mlp"], levels=LEVELS, seeds=planned or seeds,
                          train={"max_steps": 1000, "eval_every": 250}, track={"mlp": ["l2_norm", "pac_bayes_sigma"]})
    return STUDY.analyze(config, *stored(spec))


def values(analysis):
    return {c.name.removeprefix("mlp: "): c for c in analysis.checks}


def test_verdict_passes_with_known_numbers():
    analysis = outcome()
    assert analysis.verdict == "pass", analysis.checks
    checks = values(analysis)
    assert checks["min over levels of mean train accuracy"].value == pytest.approx(1.0)
    assert checks["test-accuracy rise between consecutive levels beyond 2 SE (worst pair)"].value == pytest.approx(
        -0.26)  # 0→0.5 falls by 0.26, 0.5→1 by 0.30; no seed noise
    assert checks["Spearman ρ(level, mean steps to fit)"].value == pytest.approx(1.0)
    table = analysis.table.set_index("arm")
    assert table.loc[level_arm(0.5), "steps_mean"] == 500 and table.loc[level_arm(0.5), "fitted"] == "2/2"
    assert table.loc[level_arm(1.0), "l2_norm_mean"] == pytest.approx(15.5)  # seeds 0, 1: 15, 16
    assert math.isnan(table.loc[RANDOM_INPUTS, "level"])
    note = " ".join(analysis.notes)
    assert "l2_norm +1.00" in note and "pac_bayes_sigma -1.00" in note and "growing with corruption (ρ ≥ 0.8): l2_norm." in note


def test_a_rise_within_two_standard_errors_is_noise_and_beyond_it_fails():
    # seeds differ by 0.1 in test accuracy: std 0.0707, SE of the difference 0.0707 with 2 seeds
    noisy = outcome(test=(0.40, 0.45, 0.10), jitter=0.1)
    assert noisy.verdict == "pass"
    assert values(noisy)["test-accuracy rise between consecutive levels beyond 2 SE (worst pair)"].value == (
        pytest.approx(0.05 - 2 * 0.1 / math.sqrt(2)))
    clean = outcome(test=(0.40, 0.45, 0.10))
    assert clean.verdict == "fail"
    failing = [c for c in clean.checks if c.passed is False]
    assert [c.name for c in failing] == ["mlp: test-accuracy rise between consecutive levels beyond 2 SE (worst pair)"]
    assert failing[0].value == pytest.approx(0.05)


@pytest.mark.parametrize("kwargs,failing", [
    ({"train": (1.0, 1.0, 0.9), "fit": (250, 500, None)}, "min over levels of mean train accuracy"),
    ({"fit": (750, 500, 250)}, "Spearman ρ(level, mean steps to fit)"),
    ({"random_train": 0.5}, "random-inputs mean train accuracy"),
])
def test_verdict_fails_on_the_check_that_fails(kwargs, failing):
    analysis = outcome(**kwargs)
    assert analysis.verdict == "fail"
    assert [name for name, c in values(analysis).items() if c.passed is False] == [failing]


def test_a_run_that_never_fits_counts_as_the_budget():
    analysis = outcome(train=(1.0, 1.0, 0.99), fit=(250, 500, None))
    row = analysis.table.set_index("arm").loc[level_arm(1.0)]
    assert row["steps_mean"] == 1000 and row["fitted"] == "0/2"
    assert values(analysis)["Spearman ρ(level, mean steps to fit)"].value == pytest.approx(1.0)


def test_a_missing_level_makes_the_verdict_inconclusive():
    runs, metrics = stored({"mlp/corrupt0/seed0": {"train": 1.0, "test": 0.6, "fit": 250}})
    analysis = STUDY.analyze(STUDY.Config(models=["mlp"], levels=LEVELS, random_inputs=False), runs, metrics)
    assert analysis.verdict == "inconclusive"
    assert all(c.passed is None for c in analysis.checks)
    assert "no train_acc at corrupt0.5, corrupt1" in values(analysis)["min over levels of mean train accuracy"].detail


def test_a_diverged_level_is_inconclusive_not_judged_on_its_last_records():
    # level 1 at a learning rate far too large: both seeds diverged. Their last records (before the
    # divergence) say "fitted, test at chance"; judged, they would make every check pass.
    analysis = outcome(status={level_arm(1.0): "diverged"})
    checks = values(analysis)
    for name in ("min over levels of mean train accuracy",
                 "test-accuracy rise between consecutive levels beyond 2 SE (worst pair)",
                 "Spearman ρ(level, mean steps to fit)"):
        assert checks[name].passed is None and checks[name].value is None, checks[name]
        assert f"at {level_arm(1.0)}" in checks[name].detail and "computed from 0 of 2 seeds" in checks[name].detail
    assert checks["random-inputs mean train accuracy"].passed is True
    assert analysis.verdict == "inconclusive"
    assert analysis.table.set_index("arm").loc[level_arm(1.0), "diverged"] == 2


def test_a_diverged_random_inputs_arm_is_inconclusive():
    analysis = outcome(status={RANDOM_INPUTS: "diverged"})
    check = values(analysis)["random-inputs mean train accuracy"]
    assert check.passed is None and "computed from 0 of 2 seeds" in check.detail
    assert analysis.verdict == "inconclusive"


def test_a_level_that_lost_seeds_says_so_and_under_half_is_inconclusive():
    # 3 seeds planned; level 0.5 lost one (never stored): the checks say 2 of 3 and still decide
    lost_one = values(outcome(seeds=3, drop=["mlp/corrupt0.5/seed2"]))
    for check in lost_one.values():
        assert check.passed is True
    assert "computed from 2 of 3 seeds" in lost_one["min over levels of mean train accuracy"].detail
    assert "computed from 2 of 3 seeds" not in lost_one["random-inputs mean train accuracy"].detail
    # ... two of them: one seed of three is under half, and the levels' checks are inconclusive
    lost_two = outcome(seeds=3, drop=["mlp/corrupt0.5/seed1", "mlp/corrupt0.5/seed2"])
    assert [c.passed for c in lost_two.checks] == [None, None, None, True]
    assert "computed from 1 of 3 seeds (fewer than half)" in lost_two.checks[0].detail
    assert lost_two.verdict == "inconclusive"


def test_tiny_run_end_to_end(registered, tmp_path):
    result = implicitreg.run(
        "random-labels", quick=True, seeds=1, threads=1, out=tmp_path / "run",
        **{"models": ["mlp"], "mlp.hidden": [16], "data.n_train": 200, "data.n_test": 100, "levels": [0.0, 1.0],
           "train.max_steps": 40, "train.eval_every": 20, "track.mlp": ["l2_norm", "path_norm"]})
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    names = [c["name"] for c in summary["checks"]]
    assert names == ["mlp: min over levels of mean train accuracy",
                     "mlp: test-accuracy rise between consecutive levels beyond 2 SE (worst pair)",
                     "mlp: Spearman ρ(level, mean steps to fit)", "mlp: random-inputs mean train accuracy"]
    # the checks' values are the stored final accuracies: 40 steps of a 16-unit MLP fit nothing
    final = result.metrics().sort_values("step").groupby(["run_id", "name"])["value"].last()
    train_min = min(final[("mlp/corrupt0/seed0", "train_acc")], final[("mlp/corrupt1/seed0", "train_acc")])
    fitted, _, rho, random_inputs = summary["checks"]
    assert fitted["value"] == pytest.approx(train_min) and train_min < 0.95 and fitted["passed"] is False
    assert random_inputs["value"] == pytest.approx(final[(f"mlp/{RANDOM_INPUTS}/seed0", "train_acc")])
    assert rho["passed"] is None and rho["value"] is None  # no run fits: every level takes the whole budget
    assert summary["verdict"] == result.verdict == "fail"
    assert {row["arm"] for row in summary["table"]} == {"corrupt0", "corrupt1", RANDOM_INPUTS}
    metrics = result.metrics()
    tracked = metrics[metrics["name"] == "path_norm"]  # (l2_norm is also part of every evaluation)
    assert len(tracked) == 3 and set(tracked["step"]) == {40}  # each run, once, at the last step
    assert all(row["l2_norm_mean"] > 0 for row in summary["table"])
    assert (tmp_path / "run" / "figures" / "accuracy_vs_level.png").exists()
    assert (tmp_path / "run" / "figures" / "l2_norm_vs_level.png").exists()
