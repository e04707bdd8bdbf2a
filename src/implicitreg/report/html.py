"""A self-contained ``report.html``: claim, verdict, checks, table and figures (embedded PNGs).

Opens without network: no scripts, no external styles, images as data URIs.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

import pandas as pd

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}
th{background:#f3f3f3}
.pass{color:#0a7d28;font-weight:bold}.fail{color:#b3261e;font-weight:bold}.inconclusive{color:#9a6700;font-weight:bold}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}
code,pre{background:#f6f6f6;padding:2px 4px}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _text(value: Any) -> str:
    """A table value as plain text (not yet escaped)."""
    if isinstance(value, float):
        return "" if value != value else f"{value:.4g}"
    return str(value)


def _cell(value: Any) -> str:
    return _esc(_text(value))


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>(no rows)</p>"
    columns = list(rows[0])
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _merge_mean_std(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Columns ``X_mean``/``X_std`` become one column ``X`` reading ``mean ± std``."""
    merged = []
    for row in rows:
        out: dict[str, Any] = {}
        for key, value in row.items():
            if key.endswith("_std") and f"{key[:-4]}_mean" in row:
                continue
            if key.endswith("_mean") and f"{key[:-5]}_std" in row:
                std = row[f"{key[:-5]}_std"]
                spread = "" if std is None or std != std else f"{std:.2g}"
                out[key[:-5]] = f"{_text(value)} ± {spread}"  # escaped once, as a cell
            else:
                out[key] = value
        merged.append(out)
    return merged


def _image(path: Path) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{_esc(path.stem)}" src="data:image/png;base64,{encoded}"></figure>'


def write_report(summary: dict[str, Any], table: pd.DataFrame, figures: list[Path], path: Path) -> Path:
    """Write the report for one study run; returns ``path``."""
    verdict = summary["verdict"]
    checks = [{"check": c["name"], "value": c["value"], "threshold": c["threshold"],
               "passed": {True: "yes", False: "no", None: "n/a"}[c["passed"]], "detail": c.get("detail", "")}
              for c in summary["checks"]]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_esc(summary['study'])}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{_esc(summary['study'])}</h1>",
        f"<p><em>{_esc(summary.get('paper', ''))}</em></p>",
        f"<p><strong>Claim.</strong> {_esc(summary['claim'])}</p>",
        f"<p><strong>Verdict:</strong> <span class='{_esc(verdict)}'>{_esc(verdict.upper())}</span></p>",
        "<h2>Checks</h2>", _table(checks),
        *[f"<p>{_esc(note)}</p>" for note in summary.get("notes", [])],
        "<h2>Results (mean ± std over seeds)</h2>", _table(_merge_mean_std(table.to_dict("records"))),
        "<h2>Figures</h2>", *[_image(p) for p in figures if p.exists()],
        "<h2>How to read this report</h2>",
        "<p>Each check compares a number computed from the runs with the threshold that states the claim; "
        "the verdict is <em>pass</em> when all pass, <em>fail</em> when any fails, <em>inconclusive</em> when a "
        "number could not be computed (missing or diverged runs). Curves show the mean over seeds with a ±1 std "
        "band; runs that reached their train-accuracy target stop, so late points average over fewer runs.</p>",
        "<h2>Provenance</h2>",
        f"<pre>{_esc(json.dumps({'config': summary.get('config'), **summary.get('provenance', {})}, indent=2))}</pre>",
        "</body></html>",
    ]
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
