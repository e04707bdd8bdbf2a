"""Study analysis: verdicts computed from stored results, on hand-made tables with known answers."""

import sys

import pandas as pd
import pytest

from implicitreg.config import build_config
from implicitreg.studies import STUDIES, get_study
from implicitreg.studies.base import is_solved
from implicitreg.studies.base import Analysis, Check, final_values
from implicitreg.studies.explicit_vs_implicit import ARMS, STUDY


def stored(finals: dict[str, dict[str, float]], final_steps: dict[str, int]):
    """runs/metrics frames as the store returns them; each run also has an earlier evaluation."""
    runs = pd.DataFrame([{"run_id": r, "study": STUDY.name, "arm": r.split("/")[1], "seed": 0,
                          "config": {"member": {"tags": {"model": r.split("/")[0]}}},
                          "provenance": {}, "status": "done", "final_step": final_steps[r],
                          "target_step": None, "error": None, "started_at": "", "ended_at": ""} for r in finals])
    rows = []
    for run_id, values in finals.items():
        for name, value in values.items():
            rows.append({"run_id": run_id, "step": 10, "name": name, "value": -1.0})  # an earlier evaluation
            rows.append({"run_id": run_id, "step": final_steps[run_id], "name": name, "value": value})
    return runs, pd.DataFrame(rows)


def test_final_values_takes_each_runs_own_last_step():
    runs, metrics = stored({"mlp/none/seed0": {"test_acc": 0.6}, "mlp/wd/seed0": {"test_acc": 0.7}},
                           {"mlp/none/seed0": 100, "mlp/wd/seed0": 400})
    final = final_values(runs, metrics).set_index("run_id")
    assert final.loc["mlp/none/seed0", "test_acc"] == 0.6  # not NaN from the other run's step 400
    assert final.loc["mlp/wd/seed0", "test_acc"] == 0.7


def outcome(none_test, best_explicit_test, random_train, random_test, none_train=1.0):
    finals, steps = {}, {}
    for seed in range(2):
        for arm in ARMS:
            train, test = {"none": (none_train, none_test), "random_labels": (random_train, random_test)}.get(
                arm, (0.95, best_explicit_test if arm == "dropout" else best_explicit_test - 0.02))
            run_id = f"mlp/{arm}/seed{seed}"
            finals[run_id] = {"train_acc": train, "test_acc": test, "gap": train - test, "l2_norm": 1.0,
                              "dist_init": 0.5}
            steps[run_id] = 100 + 50 * seed + 10 * ARMS.index(arm)
    config = STUDY.Config(models=["mlp"], seeds=2)
    return STUDY.analyze(config, *stored(finals, steps))


def test_verdict_passes_when_every_number_is_inside_its_threshold():
    analysis = outcome(none_test=0.66, best_explicit_test=0.70, random_train=0.99, random_test=0.11)
    assert analysis.verdict == "pass"
    values = {c.name: c.value for c in analysis.checks}
    assert values["mlp: best explicit test accuracy minus unregularized"] == pytest.approx(0.04)
    assert values["mlp: random-label test accuracy distance from chance"] == pytest.approx(0.01)


@pytest.mark.parametrize("kwargs,failing", [
    (dict(none_test=0.60, best_explicit_test=0.70, random_train=0.99, random_test=0.10),
     "mlp: best explicit test accuracy minus unregularized"),
    (dict(none_test=0.66, best_explicit_test=0.66, random_train=0.90, random_test=0.10),
     "mlp: random-label train accuracy"),
    (dict(none_test=0.66, best_explicit_test=0.66, random_train=1.0, random_test=0.14),
     "mlp: random-label test accuracy distance from chance"),
    (dict(none_test=0.66, best_explicit_test=0.66, random_train=1.0, random_test=0.10, none_train=0.98),
     "mlp: unregularized train accuracy"),
])
def test_verdict_fails_on_the_check_that_fails(kwargs, failing):
    analysis = outcome(**kwargs)
    assert analysis.verdict == "fail"
    assert [c.name for c in analysis.checks if c.passed is False] == [failing]


def test_missing_arm_makes_the_verdict_inconclusive():
    runs, metrics = stored({"mlp/none/seed0": {"train_acc": 1.0, "test_acc": 0.6, "gap": 0.4, "l2_norm": 1.0,
                                               "dist_init": 1.0}}, {"mlp/none/seed0": 100})
    analysis = STUDY.analyze(STUDY.Config(models=["mlp"]), runs, metrics)
    assert analysis.verdict == "inconclusive"
    assert any(c.passed is None and c.value is None for c in analysis.checks)


def test_analysis_verdict_rules():
    ok, bad, unknown = Check("a", 1.0, ">= 0", True), Check("b", -1.0, ">= 0", False), Check("c", None, "", None)
    empty = pd.DataFrame()
    assert Analysis(empty, [ok]).verdict == "pass"
    assert Analysis(empty, [ok, unknown]).verdict == "inconclusive"
    assert Analysis(empty, [bad, unknown]).verdict == "fail"
    assert Analysis(empty, []).verdict == "inconclusive"


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_every_study_names_its_paper_and_has_a_smaller_quick_plan(name):
    study = get_study(name)
    docstring = sys.modules[type(study).__module__].__doc__
    first_author = study.paper.split(";")[0].split(",")[0].split(" et al")[0].split()[0]
    assert study.claim and first_author in docstring
    full = study.plan(build_config(study.Config, study.defaults(False), {}))
    quick = study.plan(build_config(study.Config, study.defaults(True), {}))
    if is_solved(study):  # its work is in solve(): quick must change something
        assert study.defaults(True) and not study.defaults(False)
    if not full:
        assert is_solved(study), "a study without populations must solve its problem itself"
        return
    ids = [m.run_id for g in full for m in g.members]
    assert ids and len(ids) == len(set(ids))
    work = lambda groups: sum(len(g.members) * g.train.max_steps for g in groups)  # noqa: E731
    assert work(quick) < work(full)
