"""Every string that reaches report.html or index.html is escaped: config values, paths, study
names, claims, verdicts, checks, notes, table cells and figure names."""

import html

import pandas as pd

from conftest import TINY, invoke_cli
from implicitreg.report.html import write_report
from implicitreg.report.index import write_index

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
QUOTE = "x' onmouseover='alert(1)"  # breaks out of a single-quoted attribute if not escaped
PAYLOADS = (SCRIPT, IMG, QUOTE)


def assert_inert(page: str, shown: tuple[str, ...] = PAYLOADS) -> None:
    """No payload appears raw; each of ``shown`` appears escaped exactly once-escaped."""
    for payload in PAYLOADS:
        assert payload not in page, payload
    for payload in shown:
        assert html.escape(payload) in page, payload
    assert "&amp;lt;" not in page and "&amp;#x27;" not in page  # nothing escaped twice


def test_payloads_in_set_and_out_never_reach_the_report_raw(tmp_path):
    out = tmp_path / IMG / "run"
    out.parent.mkdir()
    result = invoke_cli([*TINY, "--set", f"data.root={SCRIPT}", "--out", out])
    assert result.returncode == 0, result
    page = (out / "report.html").read_text(encoding="utf-8")
    assert_inert(page, shown=(SCRIPT,))  # the resolved config is shown (escaped) in the provenance
    assert "<script" not in page.lower()


def test_report_escapes_every_field(tmp_path):
    figure = tmp_path / f"{IMG}.png"
    figure.write_bytes(b"\x89PNG\r\n\x1a\n")
    summary = {
        "study": SCRIPT, "paper": IMG, "claim": SCRIPT, "verdict": QUOTE,
        "checks": [{"name": IMG, "value": 0.5, "threshold": f"<= {SCRIPT}", "passed": None, "detail": QUOTE}],
        "notes": [f"note {IMG}"], "config": {"data_file": SCRIPT}, "provenance": {"host": QUOTE},
    }
    table = pd.DataFrame([{"run": IMG, "acc_mean": SCRIPT, "acc_std": 0.1, "other": QUOTE}])
    page = write_report(summary, table, [figure], tmp_path / "report.html").read_text(encoding="utf-8")
    assert_inert(page)
    assert f"{html.escape(SCRIPT)} ± 0.1" in page  # a mean ± std cell is escaped once


def test_index_escapes_every_field(tmp_path):
    summary = {"claim": SCRIPT, "verdict": QUOTE,
               "checks": [{"name": IMG, "value": 1.0, "threshold": f"> {SCRIPT}", "passed": False}]}
    page = write_index(tmp_path, [(IMG, summary)]).read_text(encoding="utf-8")
    assert_inert(page)
    assert "href='%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E/report.html'" in page  # a URL-quoted link
