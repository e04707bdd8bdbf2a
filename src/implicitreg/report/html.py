"""A self-contained ``report.html``: claim, verdict, checks, table, figures and the resolved config.

Opens without network: no scripts, no external styles, images as data URIs. Every string that
reaches the page (a plugin study's names, a user's config values, stored notes) is escaped once.

Accuracies and the generalization gap are shown in percent, as the terminal shows them
(``display.PERCENT``): mean ± std × 100 with one decimal in the results table, and checks whose
value is an accuracy (or a difference of accuracies) in percent with their threshold.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}
th.num{text-align:right}td.num{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
.wide{overflow-x:auto}
.pass{color:#0a7d28;font-weight:bold}.fail{color:#b3261e;font-weight:bold}
.inconclusive{color:#9a6700;font-weight:bold}.smoke{color:#0b6e99;font-weight:bold}
.verdict{display:inline-block;padding:1px 10px;border-radius:4px;color:#fff}
.verdict.pass{background:#0a7d28}.verdict.fail{background:#b3261e}
.verdict.inconclusive{background:#b07800}.verdict.smoke{background:#0b6e99}
td.yes{color:#0a7d28;background:#e6f4ea;font-weight:bold;text-align:center}
td.no{color:#b3261e;background:#fce8e6;font-weight:bold;text-align:center}
td.na{color:#8a5a00;background:#fef3d6;font-weight:bold;text-align:center}
tr.failed td{background-color:#fdf3f2}tr.failed td:first-child{border-left:4px solid #b3261e}
tr.undecided td:first-child{border-left:4px solid #e0a800}
dl.keys{columns:2 28em;column-gap:2em;font-size:0.9em;margin:0.5em 0}
dl.keys div{break-inside:avoid;display:grid;grid-template-columns:17em 1fr;gap:0.8em;padding:1px 0;
border-bottom:1px solid #f0f0f0}
dl.keys dt{font-family:monospace;color:#555;overflow-wrap:anywhere}
dl.keys dd{margin:0;font-family:monospace;overflow-wrap:anywhere}
img{max-width:100%;border:1px solid #eee;margin:0.5em 0}
code,pre{background:#f6f6f6;padding:2px 4px}
pre{white-space:pre-wrap;word-break:break-word}
"""

PERCENT = ("train_acc", "test_acc", "gap")  # as display.PERCENT: shown ×100, one decimal
HEADERS = {"train_acc": "train acc. (%)", "test_acc": "test acc. (%)", "gap": "gap (points)"}
PASSED = {True: ("yes", "yes"), False: ("no", "no"), None: ("n/a", "na")}  # passed → (text, cell class)
ROW = {True: "", False: "failed", None: "undecided"}

# A check is on an accuracy (or error) when its name says so — "train accuracy", "test error",
# "test-accuracy rise" — and is not a rank correlation or a ratio of something else.
_ACCURACY = re.compile(r"\b(?:train|test)[ -](?:accuracy|error)\b", re.IGNORECASE)
_NOT_ACCURACY = re.compile(r"ρ|τ|spearman|kendall|correlation|ratio| / ", re.IGNORECASE)
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_BOUND = re.compile(rf"^(<=|>=|<|>|=)\s*({_NUMBER})$")
_RANGE = re.compile(rf"^in \[({_NUMBER}), ({_NUMBER})\]$")


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _text(value: Any, digits: int = 4) -> str:
    """A table value as plain text (not yet escaped): ``digits`` significant digits, whole numbers
    written out up to 10⁷ (``15740``, not ``1.574e+04``)."""
    if isinstance(value, float):
        if value != value:
            return ""
        return f"{value:.0f}" if 10 ** digits <= abs(value) < 1e7 else f"{value:.{digits}g}"
    return str(value)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _percent(value: float, digits: int = 1) -> str:
    return f"{100 * value:.{digits}f}"


def is_accuracy_check(name: str) -> bool:
    """Whether a check's value is an accuracy or error, or a difference of them (shown in %)."""
    return bool(_ACCURACY.search(name)) and not _NOT_ACCURACY.search(name)


def check_numbers(check: dict[str, Any]) -> tuple[str, str, bool]:
    """A check's value and threshold as shown: ``("98.96%", ">= 99%", True)`` for an accuracy check
    whose threshold is a plain bound, else the value (4 significant digits) and the threshold as
    stored, and False. Both are rewritten or neither, so value and threshold share their unit."""
    value, threshold = check.get("value"), str(check.get("threshold", ""))
    if is_accuracy_check(str(check.get("name", ""))) and isinstance(value, (int, float, type(None))) \
            and not isinstance(value, bool):
        bound, span = _BOUND.match(threshold.strip()), _RANGE.match(threshold.strip())
        shown_threshold = None
        if bound:
            shown_threshold = f"{bound.group(1)} {100 * float(bound.group(2)):g}%"
        elif span:
            shown_threshold = f"in [{100 * float(span.group(1)):g}%, {100 * float(span.group(2)):g}%]"
        if shown_threshold is not None:
            return ("n/a" if _missing(value) else f"{_percent(value, 2)}%"), shown_threshold, True
    if _missing(value):
        return "n/a", threshold, False
    return (f"{value:.4g}" if isinstance(value, float) else str(value)), threshold, False


def _cell(value: Any, css: str = "") -> str:
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    classes = " ".join(filter(None, ["num" if numeric else "", css]))
    return f"<td class='{classes}'>{_esc(_text(value))}</td>" if classes else f"<td>{_esc(_text(value))}</td>"


def _table(rows: list[dict[str, Any]]) -> str:
    """A plain table of ``rows`` (one dict per row, the first row's keys as columns)."""
    if not rows:
        return "<p>(no rows)</p>"
    columns = list(rows[0])
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(r.get(c)) for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _checks_table(checks: list[dict[str, Any]]) -> str:
    """The checks, the passed cell coloured (yes green, no red, n/a amber) and its row marked."""
    if not checks:
        return "<p>(no checks)</p>"
    head = ("<tr><th>check</th><th class='num'>value</th><th>threshold</th><th>passed</th>"
            "<th>detail</th></tr>")
    rows = []
    for check in checks:
        passed = check.get("passed")
        passed = passed if passed in (True, False) else None
        text, css = PASSED[passed]
        value, threshold, percent = check_numbers(check)
        raw = check.get("value")
        tip = f" title='{_esc(f'{raw:.6g}')}'" if percent and isinstance(raw, float) else ""
        row = f" class='{ROW[passed]}'" if ROW[passed] else ""
        rows.append(f"<tr{row}><td>{_esc(check.get('name', ''))}</td><td class='num'{tip}>{_esc(value)}</td>"
                    f"<td class='num'>{_esc(threshold)}</td><td class='{css}'>{text}</td>"
                    f"<td>{_esc(check.get('detail', ''))}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _mean_std(name: str, mean: Any, std: Any) -> str:
    """``mean ± std`` as text: in % with one decimal for accuracies and the gap, else 4 and 2
    significant digits."""
    if _missing(mean):
        return "–"
    if name in PERCENT and isinstance(mean, (int, float)):
        spread = "–" if _missing(std) else _percent(float(std))
        return f"{_percent(float(mean))} ± {spread}"
    spread = "–" if _missing(std) else _text(float(std), 2) if isinstance(std, (int, float)) else str(std)
    return f"{_text(mean)} ± {spread}"


def _results_table(table: pd.DataFrame) -> str:
    """Columns ``X_mean``/``X_std`` become one right-aligned, unwrapped column ``X`` reading
    ``mean ± std`` (accuracies and the gap in %)."""
    rows = table.to_dict("records")
    if not rows:
        return "<p>(no rows)</p>"
    first = rows[0]
    columns: list[tuple[str, str]] = []  # (shown name, kind: "pair" or "plain")
    for key in first:
        if key.endswith("_std") and f"{key[:-4]}_mean" in first:
            continue
        if key.endswith("_mean") and f"{key[:-5]}_std" in first:
            columns.append((key[:-5], "pair"))
        else:
            columns.append((key, "plain"))
    def header(name: str) -> str:  # identifiers may break after an underscore
        return _esc(HEADERS.get(name, name)).replace("_", "_<wbr>")

    head = "".join(f"<th class='num'>{header(name)}</th>" if kind == "pair" or name in PERCENT
                   else f"<th>{header(name)}</th>" for name, kind in columns)
    body = []
    for row in rows:
        cells = []
        for name, kind in columns:
            if kind == "pair":
                cells.append(f"<td class='num'>{_esc(_mean_std(name, row[f'{name}_mean'], row[f'{name}_std']))}</td>")
            elif name in PERCENT and isinstance(row[name], float):
                cells.append(f"<td class='num'>{_esc('–' if _missing(row[name]) else _percent(row[name]))}</td>")
            else:
                cells.append(_cell(row[name]))
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<div class='wide'><table><tr>{head}</tr>{''.join(body)}</table></div>"


def flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as ``(dotted.key, value)`` pairs, in order; lists and scalars are leaves."""
    if isinstance(value, dict) and value:
        pairs = []
        for key, item in value.items():
            pairs.extend(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return pairs
    return [(prefix, value)]


def _leaf(value: Any) -> str:
    """A config value as written in a ``--set`` override: strings bare, the rest as JSON."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


def _keys(mapping: dict[str, Any] | None) -> str:
    """A definition list of dotted keys → values (escaped)."""
    pairs = flatten(mapping or {})
    if not pairs or pairs == [("", {})]:
        return "<p>(none recorded)</p>"
    items = "".join(f"<div><dt>{_esc(key)}</dt><dd>{_esc(_leaf(value))}</dd></div>" for key, value in pairs)
    return f"<dl class='keys'>{items}</dl>"


def _image(path: Path) -> str:
    encoded = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{_esc(path.stem)}" src="data:image/png;base64,{encoded}"></figure>'


def _runs_text(runs: Any) -> str:
    if not isinstance(runs, dict) or not runs:
        return ""
    counts = dict(runs)
    total = counts.pop("planned", counts.pop("total", None))
    parts = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    return f"runs: {total} planned" + (f" ({parts})" if parts else "")


HOW_TO_READ = (
    "<p>Each check compares one number computed from the runs with the threshold that states the claim. "
    "The verdict is:</p><ul>"
    "<li><span class='pass'>PASS</span> — every check passed;</li>"
    "<li><span class='fail'>FAIL</span> — a check failed: its number is on the wrong side of its threshold "
    "(the red row above);</li>"
    "<li><span class='inconclusive'>INCONCLUSIVE</span> — planned runs did not finish (continue them with "
    "<code>--resume</code>; the checks on the rest are in the notes), or no check failed but one could not be "
    "decided (n/a, amber): its number could not be computed, rests on fewer than half of the planned runs, or "
    "rests on an estimate that did not converge — the detail column says which;</li>"
    "<li><span class='smoke'>SMOKE</span> — a <code>--quick</code> run of a study whose claim needs the full "
    "size: the checks ran and are shown, but at this size they cannot judge the claim; run without "
    "<code>--quick</code> to judge it.</li></ul>"
    "<p>Other <code>--quick</code> runs check the same claim with the same checks at a smaller size (fewer "
    "seeds, data points or steps), and their verdict is read as above. Accuracies and the gap are in percent. "
    "Curves show the mean over seeds with a ±1 std band; runs that reached their train-accuracy target stop, "
    "so late points average over fewer runs.</p>")


HOW_TO_READ_OPEN = (
    "<p>An open experiment (a sweep, a tracked training loop) makes no claim: it has no checks and no verdict, "
    "and its table and figures are the result. Accuracies and the gap are in percent. Curves over steps show "
    "each run, or the mean over seeds with a ±1 std band where runs differ only in their seed; runs that "
    "stopped early leave the band, so late points average over fewer runs.</p>")


def _judged(summary: dict[str, Any], passed: int, checks: list[dict[str, Any]], runs: str) -> list[str]:
    """Claim, verdict and checks of a study that makes a claim."""
    verdict = str(summary["verdict"])
    return [f"<p><strong>Claim.</strong> {_esc(summary['claim'])}</p>",
            f"<p><strong>Verdict:</strong> <span class='verdict {_esc(verdict)}'>{_esc(verdict.upper())}</span> "
            f"— {passed}/{len(checks)} checks passed{_esc(runs)}</p>",
            "<h2>Checks</h2>", _checks_table(checks)]


def write_report(summary: dict[str, Any], table: pd.DataFrame, figures: list[Path], path: Path) -> Path:
    """Write the report for one study run; returns ``path``."""
    verdict = summary["verdict"]
    # a tracked loop's table has a row per run; a study's or a sweep's, mean ± std over seeds
    over_seeds = verdict is not None or any(str(c).endswith("_std") for c in table.columns)
    checks = list(summary.get("checks", []))
    passed = sum(c.get("passed") is True for c in checks)
    provenance = summary.get("provenance", {}) or {}
    raw = json.dumps({"config": summary.get("config"), **provenance}, indent=2, default=str)
    runs = _runs_text(summary.get("runs"))
    runs = f"; {runs}" if runs else ""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{_esc(summary['study'])}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{_esc(summary['study'])}{_esc(': ' + str(summary['name'])) if summary.get('name') else ''}</h1>",
        f"<p><em>{_esc(summary.get('paper', ''))}</em></p>",
        *([f"<p>{_esc(summary['description'])}</p>"] if summary.get("description") else []),
        *(_judged(summary, passed, checks, runs) if verdict is not None else
          [f"<p><strong>An open experiment</strong>: it makes no claim and has no verdict{_esc(runs)}.</p>"]),
        *[f"<p>{_esc(note)}</p>" for note in summary.get("notes", [])],
        f"<h2>Results ({'mean ± std over seeds; ' if over_seeds else ''}"
        "accuracies and gap in %)</h2>", _results_table(table),
        *(["<h2>Measure ranking</h2><p>Kendall τ between each measure (sign-flipped where higher means simpler) "
           "and the generalization gap over the runs, and the granulated τ (Ψ) over the grid's axes; ranked by Ψ, "
           "then τ.</p>", _table(summary["ranking"])] if summary.get("ranking") else []),
        "<h2>Figures</h2>", *[_image(p) for p in figures if p.exists()],
        "<h2>How to read this report</h2>", HOW_TO_READ if verdict is not None else HOW_TO_READ_OPEN,
        "<h2>Configuration</h2>",
        "<p>The resolved configuration of this run"
        + ("; any key can be changed with <code>--set key=value</code>.</p>" if verdict is not None else ".</p>"),
        _keys(summary.get("config")),
        "<h2>Provenance</h2>", _keys(provenance),
        f"<details><summary>raw JSON (as in summary.json)</summary><pre>{_esc(raw)}</pre></details>",
        "</body></html>",
    ]
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
