"""The batch-size study: its plan, its verdict on hand-made results with known rank correlations,
the exclusion of diverged and unfitted runs, and one tiny run through the CLI."""

import json
import math

import pandas as pd
import pytest
from conftest import read_store, run_cli, assert_user_error
from scipy import stats

from implicitreg.config import ConfigError, build_config
from implicitreg.studies.batch_size import SHARPNESS, STUDY, run_id


def parse_run_id(run: str) -> tuple[int, float, int]:
    """``B<batch>/lr<η>/seed<s>`` → (batch, η, seed), for building and reading fake stores."""
    b, lr, seed = run.split("/")
    return int(b[1:]), float(lr[2:]), int(seed[4:])


def config(**overrides):
    return build_config(STUDY.Config, {}, overrides)


# --------------------------------------------------------------------------------------------
# plan
# --------------------------------------------------------------------------------------------


def test_plan_has_one_population_per_batch_size_with_the_same_epochs():
    cfg = config(data={"n_train": 1000}, batch_sizes=[16, 100, 1000], lrs=[0.1, 0.3], seeds=2, epochs=7,
                 eval_epochs=2)
    groups = STUDY.plan(cfg)
    assert [g.train.batch_size for g in groups] == [16, 100, 1000]
    # epochs · ⌊n/B⌋ steps: 1000 // 16 = 62 batches an epoch (the last 8 points of a permutation skipped)
    assert [g.train.max_steps for g in groups] == [7 * 62, 7 * 10, 7 * 1]
    assert [g.train.eval_every for g in groups] == [2 * 62, 2 * 10, 2]
    for g in groups:
        assert (g.train.optimizer, g.train.schedule, g.train.target_train_acc) == ("sgd", "constant", 0.99)
        assert g.train.track == [SHARPNESS]
        assert g.train.track_every == g.train.track_expensive_every == g.train.max_steps  # once, at the end
        assert [(m.lr, m.seed) for m in g.members] == [(0.1, 0), (0.1, 1), (0.3, 0), (0.3, 1)]
        assert {parse_run_id(m.run_id)[0] for m in g.members} == {g.train.batch_size}
    ids = [m.run_id for g in groups for m in g.members]
    assert len(ids) == len(set(ids)) == 3 * 2 * 2
    assert parse_run_id(run_id(64, 0.03, 2)) == (64, 0.03, 2)


def test_quick_plan_is_smaller():
    work = lambda groups: sum(len(g.members) * g.train.max_steps for g in groups)
    assert work(STUDY.plan(config(**STUDY.defaults(True)))) < work(STUDY.plan(config())) / 4


@pytest.mark.parametrize("overrides", [
    {"batch_sizes": [64, 16]}, {"batch_sizes": [16, 16]}, {"batch_sizes": [16, 2048]}, {"lrs": [0.3, 0.1]},
    {"lrs": [0.0, 0.1]}, {"data": {"n_train": None}}, {"data": {"name": "regression"}}, {"epochs": 0},
])
def test_bad_configurations_are_rejected(overrides):
    with pytest.raises(ConfigError):
        config(**overrides)


# --------------------------------------------------------------------------------------------
# analysis on hand-made results
# --------------------------------------------------------------------------------------------

BATCHES, LRS, N = [16, 64, 256], [0.1, 0.3, 1.0], 256


def stored(spec: dict[str, dict]):
    """runs/metrics frames as the store returns them; spec: run id → final values (and status)."""
    runs, rows = [], []
    for rid, values in spec.items():
        batch = parse_run_id(rid)[0]
        final_step = values.get("final_step", 10 * (N // batch))
        runs.append({"run_id": rid, "study": STUDY.name, "arm": rid.rsplit("/", 1)[0], "seed": parse_run_id(rid)[2],
                     "config": {"member": {"tags": {"batch": batch, "lr": parse_run_id(rid)[1]}}},
                     "provenance": {}, "status": values.get("status", "done"),
                     "final_step": final_step, "target_step": None, "error": None, "started_at": "",
                     "ended_at": ""})
        for name in ("train_loss", "train_acc", "test_acc", SHARPNESS):
            if name in values:
                rows.append({"run_id": rid, "step": final_step, "name": name, "value": values[name]})
        if "train_acc" in values and "test_acc" in values:
            rows.append({"run_id": rid, "step": final_step, "name": "gap",
                         "value": values["train_acc"] - values["test_acc"]})
    return pd.DataFrame(runs), pd.DataFrame(rows)


def clean_spec(seeds: int = 1, sign: float = 1.0, jitter: float = 0.01, lrs=LRS) -> dict[str, dict]:
    """Every run fitted; sharpness = 0.01 / (η/B) (strictly decreasing in η/B) and test accuracy
    0.4 + η/B (increasing) — so Spearman ρ is −1 and +1 (``sign=-1`` flips the sharpness trend);
    seed s scales the sharpness by 1 + s·jitter and adds s·jitter/10 to the test accuracy."""
    spec = {}
    for b in BATCHES:
        for lr in lrs:
            ratio = lr / b
            for s in range(seeds):
                spec[run_id(b, lr, s)] = {"train_loss": 0.01, "train_acc": 1.0,
                                          "test_acc": 0.4 + ratio + 0.1 * jitter * s,
                                          SHARPNESS: (0.01 / ratio) ** sign * (1 + jitter * s)}
    return spec


def analyze(spec, **overrides):
    """The analysis of ``spec`` under a plan of its own grid (batch sizes BATCHES, the learning rates
    and seeds of its runs) unless ``overrides`` say otherwise."""
    parsed = [parse_run_id(r) for r in spec]
    cfg = config(**{"data": {"n_train": N}, "batch_sizes": BATCHES, "lrs": sorted({p[1] for p in parsed}),
                    "seeds": 1 + max(p[2] for p in parsed), "epochs": 10, **overrides})
    return STUDY.analyze(cfg, *stored(spec))


def checks(analysis):
    return {c.name: c for c in analysis.checks}


def test_a_perfect_monotone_relation_gives_rho_minus_one_and_plus_one():
    analysis = analyze(clean_spec())
    assert analysis.verdict == "pass", analysis.checks
    found = checks(analysis)
    assert found["Spearman ρ(η/B, sharpness)"].value == pytest.approx(-1.0)
    assert found["Spearman ρ(η/B, test accuracy)"].value == pytest.approx(1.0)
    table = analysis.table.set_index(["batch", "lr"])
    assert len(table) == 9 and set(table["fitted"]) == {"1/1"}
    assert table.loc[(64, 0.3), "lr_over_batch"] == pytest.approx(0.3 / 64)
    assert table.loc[(64, 0.3), "sharpness_mean"] == pytest.approx(0.01 * 64 / 0.3)
    assert table.loc[(16, 1.0), "epochs_mean"] == 10
    assert "no run was excluded" in " ".join(analysis.notes)
    # Keskar's comparison: the smallest vs the largest batch at every η
    keskar = next(n for n in analysis.notes if n.startswith("Keskar"))
    assert "B = 16 vs full batch" in keskar
    assert ("η = 0.3: B = 16 sharpness 0.533, test 0.419 (fitted in 10 epochs) vs full batch sharpness 8.53, test "
            "0.401 (fitted in 10 epochs)") in keskar


def test_keskar_comparison_shows_a_full_batch_that_did_not_fit_at_the_end_of_its_budget():
    spec = clean_spec()
    spec[run_id(256, 0.1, 0)] = {"train_loss": 0.9, "train_acc": 0.8, "test_acc": 0.35, SHARPNESS: 4.0}
    analysis = analyze(spec)
    keskar = next(n for n in analysis.notes if n.startswith("Keskar"))
    assert ("η = 0.1: B = 16 sharpness 1.6, test 0.406 (fitted in 10 epochs) vs full batch not fitted after 10 "
            "epochs (train 0.800, test 0.350, sharpness 4)") in keskar
    assert checks(analysis)["Spearman ρ(η/B, sharpness)"].detail.startswith("8 runs")


def test_rho_matches_scipy_on_noisy_seeds_with_tied_ratios():
    spec = clean_spec(seeds=2)
    # η/B ties across cells (0.1/16 = 0.4/64): ranks are shared
    spec[run_id(64, 0.4, 0)] = {"train_loss": 0.01, "train_acc": 1.0, "test_acc": 0.3, SHARPNESS: 0.5}
    analysis = analyze(spec)
    _, metrics = stored(spec)
    final = metrics.pivot(index="run_id", columns="name", values="value")
    ratio = pd.Series({r: parse_run_id(r)[1] / parse_run_id(r)[0] for r in final.index})
    expected = stats.spearmanr(ratio[final.index], final[SHARPNESS]).statistic
    assert checks(analysis)["Spearman ρ(η/B, sharpness)"].value == pytest.approx(expected)
    assert -1 < expected < -0.5


def test_diverged_and_unfitted_runs_are_excluded_and_reported():
    spec = clean_spec(seeds=2, jitter=0.0)  # two identical seeds: ρ stays exactly ∓1
    # each would wreck ρ = −1 if it were counted: large η/B with a huge sharpness or a poor test accuracy
    spec[run_id(16, 3.0, 0)] = {"status": "diverged", "final_step": 37, "train_loss": 0.5, "train_acc": 0.99,
                                "test_acc": 0.1, SHARPNESS: 1e3}  # the loop froze it; its last records looked fine
    spec[run_id(16, 3.0, 1)] = {"train_loss": 2.5, "train_acc": 0.1, "test_acc": 0.1, SHARPNESS: 1e3}  # ≥ ln 10
    spec[run_id(64, 3.0, 0)] = {"train_loss": 1.2, "train_acc": 0.7, "test_acc": 0.2, SHARPNESS: 1e3}  # not fitted
    spec[run_id(64, 3.0, 1)] = {"train_loss": math.nan, "train_acc": math.nan, "test_acc": math.nan}
    # collapsed: a finite loss just under ln 10, near-chance accuracy (dead units), after the whole budget
    spec[run_id(256, 3.0, 0)] = {"train_loss": 2.28, "train_acc": 0.14, "test_acc": 0.12, SHARPNESS: 0.16}
    # B256/η3/seed1 never ran: the one point the correlations miss (18 of the 19 not excluded by design)
    analysis = analyze(spec)
    assert analysis.verdict == "pass", analysis.checks
    found = checks(analysis)
    assert found["Spearman ρ(η/B, sharpness)"].value == pytest.approx(-1.0)
    assert found["Spearman ρ(η/B, test accuracy)"].value == pytest.approx(1.0)
    assert found["Spearman ρ(η/B, sharpness)"].detail.startswith("computed from 18 of 19 runs; 18 runs")
    table = analysis.table.set_index(["batch", "lr"])
    assert (table.loc[(16, 3.0), "diverged"], table.loc[(16, 3.0), "fitted"]) == (2, "0/2")
    assert (table.loc[(64, 3.0), "diverged"], table.loc[(64, 3.0), "fitted"]) == (1, "0/2")
    assert math.isnan(table.loc[(16, 3.0), "sharpness_mean"])
    note = next(n for n in analysis.notes if n.startswith("excluded"))
    assert (table.loc[(256, 3.0), "diverged"], table.loc[(256, 3.0), "fitted"]) == (1, "0/1")
    assert "(5 of 23 runs)" in note
    assert "diverged: final train accuracy ≤ 2/10 (collapsed) — B256/η3 (1/1)" in note
    assert "diverged: non-finite loss — B16/η3 (1/2)" in note
    assert "diverged: final train loss ≥ ln 10 — B16/η3 (1/2)" in note
    assert "did not fit: train accuracy < 0.99 after 10 epochs — B64/η3 (1/2)" in note
    assert "diverged: no finite train loss — B64/η3 (1/2)" in note
    # the unfitted run (not diverged) is counted in the extra test-accuracy correlation of the notes
    assert any(n.startswith("with the runs that did not fit counted too (19 runs): ρ(η/B, sharpness) = ")
               for n in analysis.notes)


def test_a_learning_rate_at_which_every_run_diverged_is_excluded_and_the_rest_decide():
    # η = 1e6 diverges at every batch size: the loop froze those runs; with their last records kept
    # (final_values(keep_diverged=True)) they would put the largest η/B at the largest sharpness
    spec = clean_spec()
    for b in BATCHES:
        spec[run_id(b, 1e6, 0)] = {"status": "diverged", "final_step": 3, "train_loss": 0.01, "train_acc": 1.0,
                                   "test_acc": 0.1, SHARPNESS: 1e9}
    analysis = analyze(spec)
    found = checks(analysis)
    assert found["Spearman ρ(η/B, sharpness)"].value == pytest.approx(-1.0)
    assert found["Spearman ρ(η/B, sharpness)"].detail.startswith("9 runs")  # 9 of the 9 not diverged
    assert set(analysis.table.set_index("lr").loc[1e6, "diverged"]) == {1}
    assert analysis.verdict == "pass"


def test_divergence_that_leaves_too_few_runs_is_inconclusive():
    # every run at two of the three learning rates diverged: 3 runs remain, too few for a correlation
    spec = clean_spec()
    for rid in spec:
        if parse_run_id(rid)[1] != 0.1:
            spec[rid] = {**spec[rid], "status": "diverged"}
    analysis = analyze(spec)
    assert [c.passed for c in analysis.checks] == [None, None]
    assert "fewer than 4 runs kept" in analysis.checks[0].detail
    assert analysis.verdict == "inconclusive"


def test_runs_that_did_not_finish_or_lost_their_sharpness_count_as_missing():
    spec = clean_spec(seeds=2)
    # B16's runs were interrupted: their last records are mid-training; B64 lost its sharpness values
    for rid in spec:
        batch = parse_run_id(rid)[0]
        if batch == 16:
            spec[rid] = {**spec[rid], "status": "interrupted"}
        if batch == 64:
            spec[rid] = {k: v for k, v in spec[rid].items() if k != SHARPNESS}
    analysis = analyze(spec)
    found = checks(analysis)
    sharp, test = found["Spearman ρ(η/B, sharpness)"], found["Spearman ρ(η/B, test accuracy)"]
    assert sharp.passed is None and "computed from 6 of 18 runs (fewer than half)" in sharp.detail
    assert test.passed is True and "computed from 12 of 18 runs" in test.detail
    assert analysis.verdict == "inconclusive"


def test_a_sharpness_estimate_that_did_not_converge_makes_its_check_inconclusive():
    spec = clean_spec(seeds=2)
    _, metrics = stored(spec)
    runs, _ = stored(spec)
    flags = metrics[metrics["name"] == SHARPNESS].assign(name=f"{SHARPNESS}.converged", value=1.0)
    flags.loc[flags.index[:2], "value"] = 0.0  # Lanczos stopped at its iteration cap on two runs
    cfg = config(data={"n_train": N}, batch_sizes=BATCHES, lrs=LRS, seeds=2, epochs=10)
    analysis = STUDY.analyze(cfg, runs, pd.concat([metrics, flags], ignore_index=True))
    sharp, test = analysis.checks
    assert sharp.passed is None and sharp.value == pytest.approx(stats.spearmanr(
        [parse_run_id(r)[1] / parse_run_id(r)[0] for r in spec], [v[SHARPNESS] for v in spec.values()]).statistic)
    assert "the Hessian eigenvalue did not converge for 2 of 18 runs" in sharp.detail
    assert test.passed is True  # the test accuracy rests on no Hessian
    assert analysis.verdict == "inconclusive"
    # every estimate converged: the same numbers decide
    flags["value"] = 1.0
    assert STUDY.analyze(cfg, runs, pd.concat([metrics, flags], ignore_index=True)).verdict == "pass"


def test_the_wrong_trend_fails_and_too_few_runs_are_inconclusive():
    analysis = analyze(clean_spec(sign=-1.0))  # sharper with larger η/B
    assert analysis.verdict == "fail"
    assert checks(analysis)["Spearman ρ(η/B, sharpness)"].value == pytest.approx(1.0)
    assert [c.name for c in analysis.checks if c.passed is False] == ["Spearman ρ(η/B, sharpness)"]
    few = {k: v for k, v in clean_spec().items() if k.startswith("B16/")}  # 3 runs < 4
    assert analyze(few).verdict == "inconclusive"
    assert all(c.passed is None for c in analyze(few).checks)


# --------------------------------------------------------------------------------------------
# end to end
# --------------------------------------------------------------------------------------------

TINY = ["--quick", "--threads", "1", "--set", "data.n_train=64", "--set", "data.n_test=64",
        "--set", "mlp.hidden=[8]", "--set", "batch_sizes=[16,64]", "--set", "lrs=[0.1,0.5]",
        "--set", "epochs=6", "--set", "eval_epochs=2"]


def test_tiny_run_end_to_end(tmp_path):
    out = tmp_path / "run"
    result = run_cli(["run", STUDY.name, *TINY, "--out", out])
    assert result.returncode == 0, result
    summary = json.loads((out / "summary.json").read_text())
    assert [c["name"] for c in summary["checks"]] == ["Spearman ρ(η/B, sharpness)",
                                                      "Spearman ρ(η/B, test accuracy)"]
    # 6 epochs fit none of the 4 runs: no run is kept, and a correlation needs 4
    assert any(n.startswith("excluded from the correlations (4 of 4 runs)") for n in summary["notes"])
    for check in summary["checks"]:
        assert check["passed"] is None and check["value"] is None
        assert check["detail"].startswith("no value") and "fewer than 4 runs kept" in check["detail"]
    assert summary["verdict"] == "inconclusive"
    assert {(row["batch"], row["lr"]) for row in summary["table"]} == {(16, 0.1), (16, 0.5), (64, 0.1), (64, 0.5)}
    runs, metrics = read_store(out)
    assert len(runs) == 4
    sharp = metrics[metrics["name"] == SHARPNESS].merge(runs[["run_id", "final_step", "status"]], on="run_id")
    done = runs[runs["status"] == "done"]
    # the sharpness is taken once per run, at its own last step
    assert len(sharp) == len(done) and (sharp["step"] == sharp["final_step"]).all()
    assert (sharp["value"] > 0).all()
    for name in ("sharpness_vs_lr_over_batch", "test_acc_vs_lr_over_batch", "sharpness_vs_lr", "curves_test_acc"):
        assert (out / "figures" / f"{name}.png").exists()


def test_a_batch_larger_than_the_training_set_exits_2_and_writes_nothing(tmp_path):
    out = tmp_path / "bad"
    result = run_cli(["run", STUDY.name, *TINY, "--set", "batch_sizes=[16,128]", "--out", out])
    assert_user_error(result, ["batch_sizes", "64"], out)
