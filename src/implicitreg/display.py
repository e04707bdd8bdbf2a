"""Terminal rendering of a study's results (rich tables); used by ``run`` and ``show``."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

VERDICT_STYLE = {"pass": "bold green", "fail": "bold red", "inconclusive": "bold yellow"}


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def results_table(summary: dict[str, Any]) -> Table:
    """Columns ``X_mean``/``X_std`` of the summary table are shown as ``mean ± std``."""
    rows = summary["table"]
    table = Table(title=f"{summary['study']} — mean ± std over seeds", title_justify="left")
    if not rows:
        return table
    plain = [c for c in rows[0] if not c.endswith(("_mean", "_std"))]
    paired = [c[: -len("_mean")] for c in rows[0] if c.endswith("_mean")]
    for column in plain:
        table.add_column(column)
    for column in paired:
        table.add_column(column, justify="right")
    for row in rows:
        cells = [_fmt(row[c]) for c in plain]
        digits = lambda name: 0 if name == "steps" else 3  # noqa: E731
        cells += [f"{_fmt(row[f'{c}_mean'], digits(c))} ± {_fmt(row[f'{c}_std'], digits(c))}" for c in paired]
        table.add_row(*cells)
    return table


def checks_table(summary: dict[str, Any]) -> Table:
    table = Table(title="checks", title_justify="left")
    for column in ("check", "value", "threshold", "passed", "detail"):
        table.add_column(column)
    marks = {True: "[green]yes[/]", False: "[red]no[/]", None: "[yellow]n/a[/]"}
    for check in summary["checks"]:
        table.add_row(check["name"], _fmt(check["value"], 4), check["threshold"], marks[check["passed"]],
                      check.get("detail", ""))
    return table


def print_summary(console: Console, summary: dict[str, Any], out: str) -> None:
    console.print(results_table(summary))
    console.print(checks_table(summary))
    for note in summary.get("notes", []):
        console.print(f"[dim]{note}[/]")
    verdict = summary["verdict"]
    numbers = "; ".join(f"{c['name']} = {_fmt(c['value'], 4)} ({c['threshold']})" for c in summary["checks"])
    console.print(f"verdict: [{VERDICT_STYLE[verdict]}]{verdict.upper()}[/] — {numbers}")
    runs = summary.get("runs", {})
    wall = summary.get("provenance", {}).get("wall_seconds")
    console.print(f"runs: {runs}; wall time: {wall} s")
    console.print(f"results: {out}/results.sqlite · summary: {out}/summary.json · report: {out}/report.html")
