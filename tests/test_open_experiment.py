"""An open experiment (a study whose ``claim`` is None: a sweep, a tracked loop) has no verdict."""

import io

import pandas as pd
from rich.console import Console

from implicitreg.display import NO_CLAIM, print_summary
from implicitreg.report.html import write_report
from implicitreg.runner import judge
from implicitreg.studies.base import Analysis, Check


class Open:
    name, claim, paper = "open", None, ""


class Claimed:
    name, claim, paper = "claimed", "something holds", ""


FAILING = Analysis(pd.DataFrame(), [Check.at_least("x", 0.0, 1.0)])


def test_an_open_experiment_has_no_verdict_even_when_runs_are_missing():
    assert judge(Open(), Analysis(pd.DataFrame(), []), {"planned": 2, "failed": 0}, [], quick=False) == (None, "")
    verdict, why = judge(Open(), Analysis(pd.DataFrame(), []), {"planned": 2, "failed": 1}, ["a/seed1"], quick=True)
    assert verdict is None and "1 of 2 planned runs did not finish" in why and "a/seed1" in why
    # the same checks under a claim decide the verdict
    assert judge(Claimed(), FAILING, {"planned": 1, "failed": 0}, [], quick=False) == ("fail", "")


def test_report_and_terminal_say_no_claim_instead_of_a_verdict(tmp_path):
    summary = {"study": "sweep", "claim": None, "paper": "", "verdict": None, "checks": [], "table": [],
               "notes": [], "runs": {"planned": 2, "done": 2}, "config": {}, "provenance": {}}
    page = write_report(summary, pd.DataFrame(), [], tmp_path / "report.html").read_text()
    assert "open experiment" in page and "Verdict:" not in page and "None" not in page
    buffer = io.StringIO()
    print_summary(Console(file=buffer, width=120), summary, str(tmp_path))
    assert f"verdict: {NO_CLAIM}" in buffer.getvalue() and "NONE" not in buffer.getvalue()


def test_a_report_of_one_row_per_run_does_not_claim_seed_statistics(tmp_path):
    summary = {"study": "tracker", "claim": None, "paper": "", "verdict": None, "checks": [], "table": [],
               "notes": [], "runs": {"planned": 1, "done": 1}, "config": {}, "provenance": {}}
    per_run = write_report(summary, pd.DataFrame({"run": ["sgd"], "test_acc": [0.9]}), [],
                           tmp_path / "a.html").read_text()
    per_point = write_report(summary, pd.DataFrame({"lr": [0.1], "test_acc_mean": [0.9], "test_acc_std": [0.01]}),
                             [], tmp_path / "b.html").read_text()
    assert "over seeds;" not in per_run and "--set" not in per_run
    assert "mean ± std over seeds;" in per_point


def test_run_refuses_an_open_experiment_with_where_its_runs_come_from(tmp_path):
    import pytest

    import implicitreg
    from conftest import invoke_cli
    from implicitreg.config import ConfigError

    for name, where in (("sweep", "implicitreg sweep FILE.toml"), ("tracker", "implicitreg.Tracker")):
        result = invoke_cli(["run", name, "--out", tmp_path / name])
        assert result.returncode == 2 and where in result.stderr and "Traceback" not in result.stderr
        assert not (tmp_path / name).exists()
        with pytest.raises(ConfigError, match=where):
            implicitreg.run(name, out=tmp_path / name)
