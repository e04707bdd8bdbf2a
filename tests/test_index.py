"""`implicitreg run all`: the index lists every study with its verdict and key number."""

import json

from typer.testing import CliRunner

from implicitreg.cli import app
from implicitreg.report.index import key_check, write_index


def summary(verdict, checks):
    return {"claim": f"claim of a {verdict} study", "verdict": verdict, "checks": checks}


def test_index_lists_each_study_with_its_key_number(tmp_path):
    passing = summary("pass", [{"name": "a", "value": 0.991, "threshold": ">= 0.99", "passed": True}])
    failing = summary("fail", [{"name": "ok", "value": 1.0, "threshold": ">= 0.9", "passed": True},
                               {"name": "gap", "value": 0.08, "threshold": "<= 0.05", "passed": False}])
    missing = summary("inconclusive", [{"name": "gap", "value": None, "threshold": "<= 0.05", "passed": None}])
    path = write_index(tmp_path, [("s1", passing), ("s2", failing), ("s3", missing)])
    page = path.read_text()
    assert "s1/report.html" in page and "PASS" in page and "FAIL" in page and "INCONCLUSIVE" in page
    assert "gap = 0.08 (&lt;= 0.05)" in page  # the failing check, not the first one
    assert "gap = n/a" in page
    records = json.loads((tmp_path / "index.json").read_text())
    assert [r["verdict"] for r in records] == ["pass", "fail", "inconclusive"]
    assert key_check(failing)["name"] == "gap"


def test_run_all_rejects_set_before_writing(tmp_path):
    result = CliRunner().invoke(app, ["run", "all", "--set", "seeds=1", "--out", str(tmp_path / "all")])
    assert result.exit_code == 2
    assert "run all" in result.output and not (tmp_path / "all").exists()
