"""The width study: its plan, and verdicts computed from known tables."""

import pandas as pd
import pytest

import implicitreg
from implicitreg.config import build_config
from implicitreg.studies.width import STUDY, Config

TINY = {"widths": [4, 64], "data.n_train": 200, "data.n_test": 100, "train.max_steps": 40,
        "train.eval_every": 20, "train.track_every": 40}


def test_plan_has_one_population_per_width_with_matched_seeds():
    config = build_config(Config, {}, {"widths": [4, 16, 64], "seeds": 2})
    groups = STUDY.plan(config)
    assert [g.model.hidden for g in groups] == [[4], [16], [64]]
    assert [[m.seed for m in g.members] for g in groups] == [[0, 1]] * 3
    with pytest.raises(Exception, match="increasing"):
        build_config(Config, {}, {"widths": [64, 4]})


def frames(train_acc: dict[int, float], test_acc: dict[int, float]):
    runs = pd.DataFrame([{"run_id": f"w{w}/seed0", "study": "width", "arm": f"w{w}", "seed": 0, "config": {},
                          "provenance": {}, "status": "done", "final_step": 100, "target_step": None, "error": None,
                          "started_at": "", "ended_at": ""} for w in train_acc])
    metrics = pd.DataFrame([{"run_id": f"w{w}/seed0", "step": 100, "name": name, "value": value}
                            for w in train_acc
                            for name, value in (("train_acc", train_acc[w]), ("test_acc", test_acc[w]),
                                                ("gap", train_acc[w] - test_acc[w]), ("l2_norm", 1.0),
                                                ("path_norm", 2.0), ("spectral_complexity", 3.0))])
    return runs, metrics


@pytest.mark.parametrize("test_at_widest,verdict", [(0.70, "pass"), (0.60, "fail")])
def test_verdict_compares_the_widest_with_the_interpolation_threshold(test_at_widest, verdict):
    config = build_config(Config, {}, {"widths": [4, 64, 1024], "seeds": 1})
    analysis = STUDY.analyze(config, *frames({4: 0.5, 64: 1.0, 1024: 1.0}, {4: 0.4, 64: 0.65, 1024: test_at_widest}))
    assert analysis.verdict == verdict
    gap_check = analysis.checks[-1]
    assert gap_check.value == pytest.approx(0.65 - test_at_widest)
    assert "threshold width 64" in gap_check.detail


def test_no_width_beyond_the_threshold_is_inconclusive():
    config = build_config(Config, {}, {"widths": [4, 64], "seeds": 1})
    analysis = STUDY.analyze(config, *frames({4: 0.5, 64: 1.0}, {4: 0.4, 64: 0.6}))
    assert analysis.verdict == "inconclusive"


def test_tiny_run_end_to_end(tmp_path):
    result = implicitreg.run("width", quick=True, seeds=1, threads=1, out=tmp_path / "w", **TINY)
    names = {c["name"] for c in result.summary["checks"]}
    assert names and result.verdict in ("pass", "fail", "inconclusive")
    assert {"path_norm", "spectral_complexity"} <= set(result.metrics()["name"])
    assert (tmp_path / "w" / "figures" / "accuracy_vs_width.png").exists()
