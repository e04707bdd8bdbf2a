"""The width study: its plan, and verdicts computed from known tables."""

import math

import pandas as pd
import pytest

import implicitreg
from implicitreg.config import build_config
from implicitreg.studies.width import FITS, GAP, STUDY, Config

TINY = {"widths": [4, 64], "data.n_train": 200, "data.n_test": 100, "train.max_steps": 40,
        "train.eval_every": 20, "train.track_every": 40}


def test_plan_has_one_population_per_width_with_matched_seeds():
    config = build_config(Config, {}, {"widths": [4, 16, 64], "seeds": 2})
    groups = STUDY.plan(config)
    assert [g.model.hidden for g in groups] == [[4], [16], [64]]
    assert [[m.seed for m in g.members] for g in groups] == [[0, 1]] * 3
    with pytest.raises(Exception, match="increasing"):
        build_config(Config, {}, {"widths": [64, 4]})


def frames(train_acc: dict[int, list[float]], test_acc: dict[int, list[float]],
           status: dict[int, str] | None = None):
    """runs/metrics frames as the store returns them: per width, one run per listed seed value."""
    runs, rows = [], []
    for w, accs in train_acc.items():
        for seed, (train, test) in enumerate(zip(accs, test_acc[w])):
            run_id = f"w{w}/seed{seed}"
            runs.append({"run_id": run_id, "study": "width", "arm": f"w{w}", "seed": seed,
                         "config": {"member": {"tags": {"width": w}}},
                         "provenance": {}, "status": (status or {}).get(w, "done"), "final_step": 100,
                         "target_step": None, "error": None, "started_at": "", "ended_at": ""})
            rows += [{"run_id": run_id, "step": 100, "name": name, "value": value}
                     for name, value in (("train_acc", train), ("test_acc", test), ("gap", train - test),
                                         ("l2_norm", 1.0), ("path_norm", 2.0), ("spectral_complexity", 3.0))]
    return pd.DataFrame(runs), pd.DataFrame(rows)


def analyze(train_acc, test_acc, seeds=1, status=None, widths=None):
    config = build_config(Config, {}, {"widths": widths or sorted(train_acc), "seeds": seeds})
    return STUDY.analyze(config, *frames(train_acc, test_acc, status))


def checks(analysis):
    return {c.name: c for c in analysis.checks}


@pytest.mark.parametrize("test_at_widest,verdict", [(0.70, "pass"), (0.60, "fail")])
def test_verdict_compares_the_widest_with_the_interpolation_threshold(test_at_widest, verdict):
    analysis = analyze({4: [0.5], 64: [1.0], 1024: [1.0]}, {4: [0.4], 64: [0.65], 1024: [test_at_widest]})
    assert analysis.verdict == verdict
    fits, gap = checks(analysis)[FITS], checks(analysis)[GAP]
    assert (fits.value, fits.passed) == (1.0, True)
    assert gap.value == pytest.approx(0.65 - test_at_widest)
    assert gap.passed is (verdict == "pass")
    assert "threshold width 64" in gap.detail and "parameters 3274 → 52234" in gap.detail


def test_no_width_beyond_the_threshold_is_inconclusive():
    analysis = analyze({4: [0.5], 64: [1.0]}, {4: [0.4], 64: [0.6]})
    assert analysis.verdict == "inconclusive"
    gap = checks(analysis)[GAP]
    assert gap.passed is None and "only the widest width (64) fits" in gap.detail


def test_no_width_that_fits_fails_the_fit_check_and_leaves_the_gap_undecided():
    analysis = analyze({4: [0.5], 64: [0.9]}, {4: [0.4], 64: [0.6]})
    assert analysis.verdict == "fail"
    fits, gap = checks(analysis)[FITS], checks(analysis)[GAP]
    assert (fits.value, fits.passed) == (0.9, False)
    assert gap.passed is None and "no width reached mean train accuracy 0.99" in gap.detail


@pytest.mark.parametrize("missing", [math.nan, None])
def test_a_nan_or_missing_test_accuracy_at_the_widest_is_inconclusive_not_a_failure(missing):
    # NaN: a run evaluated to a non-finite accuracy; None: the widest runs never recorded test accuracy.
    # Before Check.at_most, NaN − x compared False against "<= 0" and the study FAILED.
    runs, metrics = frames({4: [0.5], 64: [1.0], 1024: [1.0]}, {4: [0.4], 64: [0.65], 1024: [0.7]})
    widest_test = (metrics["run_id"] == "w1024/seed0") & (metrics["name"] == "test_acc")
    metrics = metrics.assign(value=metrics["value"].where(~widest_test, math.nan)) if missing is not None \
        else metrics[~widest_test]
    analysis = STUDY.analyze(build_config(Config, {}, {"widths": [4, 64, 1024], "seeds": 1}), runs, metrics)
    gap = checks(analysis)[GAP]
    assert gap.passed is None and gap.value is None
    assert "computed from 0 of 1 seeds" in gap.detail
    assert checks(analysis)[FITS].passed is True
    assert analysis.verdict == "inconclusive"


def test_a_diverged_widest_width_is_inconclusive():
    # a learning rate far too large for the widest width: every seed of it diverged; the loop's last
    # records (before the divergence) looked fine and must not be judged
    analysis = analyze({4: [0.5, 0.5], 64: [1.0, 1.0], 1024: [1.0, 1.0]},
                       {4: [0.4, 0.4], 64: [0.65, 0.65], 1024: [0.7, 0.7]}, seeds=2, status={1024: "diverged"})
    fits, gap = checks(analysis)[FITS], checks(analysis)[GAP]
    assert fits.passed is None and gap.passed is None
    assert "computed from 0 of 2 seeds" in fits.detail
    assert analysis.verdict == "inconclusive"


def test_a_narrow_width_without_train_accuracy_leaves_the_threshold_unknown():
    # width 4 lost its runs: it might have been the threshold, so width 64 cannot be declared it
    analysis = analyze({64: [1.0], 1024: [1.0]}, {64: [0.65], 1024: [0.7]}, widths=[4, 64, 1024])
    assert analysis.table["width"].tolist() == [4, 64, 1024]
    assert analysis.table.set_index("width").loc[4, "runs"] == 0
    gap = checks(analysis)[GAP]
    assert gap.passed is None and "width 4 has train accuracy from 0 of 1 seeds" in gap.detail
    assert analysis.verdict == "inconclusive"


def test_a_width_that_lost_seeds_says_so_and_under_half_is_inconclusive():
    two_of_three = analyze({4: [0.5] * 3, 64: [1.0] * 3, 1024: [1.0] * 2}, {4: [0.4] * 3, 64: [0.65] * 3,
                                                                          1024: [0.7] * 2}, seeds=3)
    gap = checks(two_of_three)[GAP]
    assert gap.passed is True and "computed from 2 of 3 seeds" in gap.detail
    one_of_three = analyze({4: [0.5] * 3, 64: [1.0] * 3, 1024: [1.0]}, {4: [0.4] * 3, 64: [0.65] * 3,
                                                                        1024: [0.7]}, seeds=3)
    assert {c.name: c.passed for c in one_of_three.checks} == {FITS: None, GAP: None}
    assert one_of_three.verdict == "inconclusive"


def test_tiny_run_end_to_end(tmp_path):
    result = implicitreg.run("width", quick=True, seeds=1, threads=1, out=tmp_path / "w", **TINY)
    found = {c["name"]: c for c in result.summary["checks"]}
    assert list(found) == [FITS, GAP]
    metrics = result.metrics()
    last = metrics[(metrics["name"] == "train_acc") & (metrics["step"] == 40)]
    widest = float(last.loc[last["run_id"] == "w64/seed0", "value"].iloc[0])
    # 40 steps fit nothing: the fit check fails on the widest width's own number, the gap is undecided
    assert found[FITS]["value"] == pytest.approx(widest) and widest < 0.99 and found[FITS]["passed"] is False
    assert found[GAP]["passed"] is None and "no width reached" in found[GAP]["detail"]
    assert result.verdict == "fail"
    assert {"path_norm", "spectral_complexity"} <= set(metrics["name"])
    assert (tmp_path / "w" / "figures" / "accuracy_vs_width.png").exists()
