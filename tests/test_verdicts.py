"""A verdict never misleads: runs that diverged, failed or never ran make the checks that need
them inconclusive, never pass, and the summary says which runs are missing."""

import json
import sqlite3

import pandas as pd

from conftest import TINY, invoke_cli
from implicitreg.config import build_config
from implicitreg.studies.explicit_vs_implicit import ARMS, STUDY


def evi_frames(seeds=3, diverged_arm=None, lost=0):
    """Runs and final metrics of an explicit-vs-implicit sweep of MLPs where every arm meets the
    claim; ``diverged_arm`` diverges in every seed; ``lost`` seeds of the "none" arm are missing."""
    runs, metrics = [], []
    for arm in ARMS:
        for seed in range(seeds):
            if arm == "none" and seed < lost:
                continue
            run_id = f"mlp/{arm}/seed{seed}"
            status = "diverged" if arm == diverged_arm else "done"
            runs.append({"run_id": run_id, "study": STUDY.name, "arm": arm, "seed": seed,
                         "config": {"member": {"tags": {"model": "mlp"}}},
                         "status": status, "final_step": 100, "target_step": 100, "error": None,
                         "provenance": {}, "started_at": "", "ended_at": ""})
            random = arm == "random_labels"
            values = {"train_acc": 1.0, "test_acc": 0.1 if random else 0.66, "gap": 0.9 if random else 0.34,
                      "l2_norm": 20.0, "dist_init": 15.0}
            metrics += [{"run_id": run_id, "step": 100, "name": k, "value": v} for k, v in values.items()]
    return pd.DataFrame(runs), pd.DataFrame(metrics)


def config(seeds=3):
    return build_config(STUDY.Config, {}, {"models": ["mlp"], "seeds": seeds})


def test_complete_sweep_passes():
    analysis = STUDY.analyze(config(), *evi_frames())
    assert analysis.verdict == "pass" and all(c.detail.count(" of 3 seeds") == 0 for c in analysis.checks)


def test_an_arm_that_diverged_makes_its_checks_inconclusive_never_pass():
    """Forced to NaN (e.g. a learning rate of 1e6): the diverged runs' last records precede the
    divergence and must not be judged; the best explicit arm is not picked from the survivors."""
    for arm in ARMS:
        analysis = STUDY.analyze(config(), *evi_frames(diverged_arm=arm))
        assert analysis.verdict == "inconclusive", arm
        affected = [c for c in analysis.checks if c.passed is None]
        assert affected and all("0 of 3 seeds" in c.detail or "no test accuracy" in c.detail for c in affected), arm


def test_a_check_on_fewer_seeds_than_planned_says_so_and_needs_half():
    partial = STUDY.analyze(config(), *evi_frames(lost=1))
    train = partial.checks[0]
    assert train.passed is True and "computed from 2 of 3 seeds" in train.detail
    thin = STUDY.analyze(config(), *evi_frames(lost=2))
    assert thin.checks[0].passed is None and "1 of 3 seeds" in thin.checks[0].detail
    assert thin.verdict == "inconclusive"


def test_runs_that_did_not_finish_make_the_stored_verdict_inconclusive(tmp_path):
    out = tmp_path / "evi"
    args = [a for a in TINY]
    result = invoke_cli([*args, "--out", out, "--json"])
    assert result.returncode == 0, result
    summary = json.loads(result.stdout)
    assert summary["runs"] == {"planned": 5, "done": 5, "diverged": 0, "failed": 0, "missing": 0}
    with sqlite3.connect(out / "results.sqlite") as conn:  # as if its population had failed
        conn.execute("UPDATE runs SET status = 'failed' WHERE run_id = 'mlp/none/seed0'")
        conn.execute("DELETE FROM runs WHERE run_id = 'mlp/wd/seed0'")  # and another never started
        conn.execute("DELETE FROM metrics WHERE run_id IN ('mlp/none/seed0', 'mlp/wd/seed0')")
    shown = invoke_cli(["show", out, "--json"])
    summary = json.loads(shown.stdout)
    assert summary["verdict"] == "inconclusive"
    assert summary["runs"] == {"planned": 5, "done": 3, "diverged": 0, "failed": 1, "missing": 2}
    assert "mlp/none/seed0" in summary["notes"][0] and "mlp/wd/seed0" in summary["notes"][0]


def test_a_learning_rate_that_diverges_every_run_never_passes(tmp_path):
    result = invoke_cli([*TINY, "--set", "train.lr=1e6", "--out", tmp_path / "nan", "--json"])
    assert result.returncode == 0, result
    summary = json.loads(result.stdout)
    assert summary["runs"]["diverged"] == 5 and summary["verdict"] == "inconclusive"
    assert all(c["passed"] is None for c in summary["checks"])


def test_results_without_plan_tags_are_one_clear_error(tmp_path):
    """A store whose runs carry no plan tags (written before the study tagged them) cannot be
    analyzed: `show` says which tag is missing, in one line, instead of a traceback."""
    out = tmp_path / "evi"
    assert invoke_cli([*TINY, "--out", out]).returncode == 0
    with sqlite3.connect(out / "results.sqlite") as conn:
        conn.execute("UPDATE runs SET config = json_remove(config, '$.member.tags')")
    shown = invoke_cli(["show", out])
    assert shown.returncode == 2 and "Traceback" not in shown.stderr, shown
    assert "tag 'model'" in shown.stderr and len(shown.stderr.strip().splitlines()) == 1
