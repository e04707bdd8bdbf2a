"""report.html and index.html read as the terminal does: a failed check is coloured and its row
marked, accuracies and the gap are in percent, mean ± std cells do not wrap, the resolved config is
a readable list of dotted keys, and every verdict (smoke too) has its colour and its explanation."""

import re

import pandas as pd
import pytest

from implicitreg.report.html import STYLE, check_numbers, flatten, is_accuracy_check, write_report
from implicitreg.report.index import write_index

CHECKS = [
    {"name": "mlp: unregularized train accuracy", "value": 0.9896, "threshold": ">= 0.99", "passed": False,
     "detail": ""},
    {"name": "mlp: best explicit test accuracy minus unregularized", "value": 0.012, "threshold": "<= 0.05",
     "passed": True, "detail": "best explicit arm wd"},
    {"name": "Spearman ρ(η/B, test accuracy)", "value": -0.8, "threshold": "<= -0.5", "passed": None,
     "detail": "computed from 1 of 3 seeds (fewer than half)"},
]
CONFIG = {"data": {"name": "mnist1d", "n_train": 2000, "seed": None}, "mlp": {"hidden": [256, 256]},
          "train": {"lr": 0.05, "track": ["path_norm"]}, "seeds": 5}


def report(tmp_path, verdict="fail", checks=CHECKS, table=None) -> str:
    summary = {"study": "explicit-vs-implicit", "paper": "Zhang et al. 2017", "claim": "a claim", "verdict": verdict,
               "checks": checks, "notes": [], "runs": {"planned": 4, "done": 4, "missing": 0},
               "config": CONFIG, "provenance": {"git_sha": "abc", "versions": {"torch": "2.13.0"}}}
    if table is None:
        table = pd.DataFrame([{"model": "mlp", "arm": "none", "runs": 2, "train_acc_mean": 0.97123,
                               "train_acc_std": 0.0034, "test_acc_mean": 0.5710, "test_acc_std": 0.0042,
                               "gap_mean": 0.40023, "gap_std": 0.0051, "l2_norm_mean": 24.26, "l2_norm_std": 0.091,
                               "spectral_complexity_mean": 15740.3, "spectral_complexity_std": 49.6}])
    return write_report(summary, table, [], tmp_path / "report.html").read_text(encoding="utf-8")


def rows(page: str) -> dict[str, str]:
    """Each checks-table row's HTML, by check name."""
    return {name: row for row, name in re.findall(r"(<tr[^>]*><td>([^<]+)</td>.*?</tr>)", page)}


def test_a_failed_check_is_coloured_and_its_row_marked(tmp_path):
    by_name = rows(report(tmp_path))
    failed, passed, undecided = (by_name[c["name"]] for c in CHECKS)
    assert failed.startswith("<tr class='failed'>") and "<td class='no'>no</td>" in failed
    assert passed.startswith("<tr>") and "<td class='yes'>yes</td>" in passed
    assert undecided.startswith("<tr class='undecided'>") and "<td class='na'>n/a</td>" in undecided
    for css in ("td.yes{", "td.no{", "td.na{", "tr.failed td"):  # the classes are styled
        assert css in STYLE


def test_accuracies_and_the_gap_are_in_percent(tmp_path):
    page = report(tmp_path)
    # the results table: mean ± std × 100, one decimal, as the terminal shows them
    assert "97.1 ± 0.3" in page and "57.1 ± 0.4" in page and "40.0 ± 0.5" in page
    assert "0.9712" not in page and "0.571 ±" not in page
    assert "train acc. (%)" in page and "gap (points)" in page
    # other measures keep their scale; a large one is written out rather than in e-notation
    assert "24.26 ± 0.091" in page and "15740 ± 50" in page
    # checks on accuracies: value and threshold in the same unit; a rank correlation is not converted
    failed = rows(page)[CHECKS[0]["name"]]
    assert ">98.96%<" in failed and ">&gt;= 99%<" in failed and "title='0.9896'" in failed
    assert ">1.20%<" in rows(page)[CHECKS[1]["name"]]
    spearman = rows(page)[CHECKS[2]["name"]]
    assert ">-0.8<" in spearman and "&lt;= -0.5" in spearman


@pytest.mark.parametrize("name, value, threshold, shown", [
    ("widest width train accuracy", 1.0, ">= 0.99", ("100.00%", ">= 99%", True)),
    ("test error at the widest minus at the interpolation threshold", -0.01, "<= 0", ("-1.00%", "<= 0%", True)),
    ("cnn: test-accuracy rise beyond 2 SE", None, "<= 0", ("n/a", "<= 0%", True)),
    ("mlp: test-error peak width / interpolation-threshold width", 1.5, "in [0.5, 2]", ("1.5", "in [0.5, 2]", False)),
    ("rf: test MSE at the peak / at the largest N", 3.0, ">= 2", ("3", ">= 2", False)),
    ("train accuracy of something", 0.5, "interval > 0.4", ("0.5", "interval > 0.4", False)),  # not a plain bound
    ("mlp: test accuracy in range", 0.5, "in [0.4, 0.6]", ("50.00%", "in [40%, 60%]", True)),
])
def test_check_numbers_convert_value_and_threshold_together(name, value, threshold, shown):
    assert check_numbers({"name": name, "value": value, "threshold": threshold}) == shown
    assert is_accuracy_check(name) == shown[2] or threshold.startswith("interval")


def test_mean_std_cells_do_not_wrap(tmp_path):
    page = report(tmp_path)
    assert "<td class='num'>97.1 ± 0.3</td>" in page
    assert re.search(r"td\.num\{[^}]*white-space:nowrap", STYLE)


def test_the_resolved_config_is_a_readable_list_of_dotted_keys(tmp_path):
    page = report(tmp_path)
    section = page[page.index("<h2>Configuration</h2>"):page.index("<h2>Provenance</h2>")]
    for key, value in (("data.name", "mnist1d"), ("data.n_train", "2000"), ("data.seed", "null"),
                       ("mlp.hidden", "[256, 256]"), ("train.lr", "0.05"), ("seeds", "5"),
                       ("train.track", "[&quot;path_norm&quot;]")):
        assert f"<dt>{key}</dt><dd>{value}</dd>" in section, key
    assert "<dt>versions.torch</dt><dd>2.13.0</dd>" in page  # provenance the same way
    assert flatten({"a": {"b": {"c": 1}, "d": []}, "e": {}}) == [("a.b.c", 1), ("a.d", []), ("e", {})]


@pytest.mark.parametrize("verdict", ["pass", "fail", "inconclusive", "smoke"])
def test_every_verdict_has_its_colour_and_its_explanation(tmp_path, verdict):
    page = report(tmp_path, verdict=verdict)
    assert f"<span class='verdict {verdict}'>{verdict.upper()}</span>" in page
    assert f".verdict.{verdict}{{" in STYLE and f".{verdict}{{" in STYLE
    how = page[page.index("How to read this report"):page.index("<h2>Configuration</h2>")]
    assert f"<span class='{verdict}'>{verdict.upper()}</span>" in how
    assert "1/3 checks passed" in page


def test_how_to_read_names_every_reason_for_inconclusive(tmp_path):
    how = report(tmp_path).split("How to read this report")[1]
    for reason in ("could not be computed", "fewer than half of the planned runs", "did not converge",
                   "planned runs did not finish", "--quick"):
        assert reason in how, reason


def test_index_colours_smoke_and_describes_quick_runs(tmp_path):
    summaries = [("width", {"claim": "c", "verdict": "smoke", "provenance": {"quick": True},
                            "checks": [{"name": "widest width train accuracy", "value": 0.9896,
                                        "threshold": ">= 0.99", "passed": False}]})]
    page = write_index(tmp_path, summaries).read_text(encoding="utf-8")
    assert "<td class='smoke'>SMOKE</td>" in page and ".smoke{" in page
    assert "widest width train accuracy = 98.96% (&gt;= 99%)" in page  # the key number in percent too
    assert "same claim with the same checks at a smaller size" in page
    assert "smoke tests with fewer seeds" not in page
