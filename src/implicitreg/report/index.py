"""The index of `implicitreg run all`: one line per study — claim, verdict, key number, report link."""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from implicitreg.report.html import STYLE, check_numbers


def key_check(summary: dict[str, Any]) -> dict[str, Any] | None:
    """The number a reader should see first: the first check that did not pass, else the first check."""
    checks = summary.get("checks", [])
    return next((c for c in checks if c["passed"] is not True), checks[0] if checks else None)


def write_index(directory: Path, summaries: list[tuple[str, dict[str, Any]]]) -> Path:
    """Write ``index.html`` and ``index.json`` into ``directory``; returns the HTML path."""
    rows, records = [], []
    for name, summary in summaries:
        check = key_check(summary)
        if check is None:
            number = ""
        else:  # accuracies in %, as in the report
            shown, threshold, _ = check_numbers(check)
            number = f"{check['name']} = {shown} ({threshold})"
        verdict = summary["verdict"]
        # every string may come from a plugin study: escape it, and URL-quote the link's directory name
        rows.append(f"<tr><td><a href='{html.escape(quote(name))}/report.html'>{html.escape(name)}</a></td>"
                    f"<td style='text-align:left'>{html.escape(summary['claim'])}</td>"
                    f"<td class='{html.escape(verdict)}'>{html.escape(verdict.upper())}</td>"
                    f"<td>{html.escape(number)}</td></tr>")
        records.append({"study": name, "claim": summary["claim"], "verdict": verdict, "key_check": check,
                        "report": f"{name}/report.html"})
    quick = any(s.get("provenance", {}).get("quick") for _, s in summaries)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>implicitreg studies</title>"
            f"<style>{STYLE} th,td{{text-align:left}} td:first-child{{white-space:nowrap}}</style></head>"
            "<body><h1>implicitreg: every study</h1>"
            + ("<p>--quick: each study checks the same claim with the same checks at a smaller size (fewer "
               "seeds, data points or steps); a study whose claim needs the full size reads SMOKE "
               "(its checks are shown, but cannot judge the claim at that size): run it without --quick to judge "
               "it.</p>" if quick else "")
            + "<table><tr><th>study</th><th>claim</th><th>verdict</th><th>key number</th></tr>"
            + "".join(rows) + "</table></body></html>")
    directory.mkdir(parents=True, exist_ok=True)
    for filename, text in (("index.json", json.dumps(records, indent=2)), ("index.html", page)):
        tmp = directory / f"{filename}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, directory / filename)
    return directory / "index.html"
