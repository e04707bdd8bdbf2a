"""Terminal rendering of a study's results (rich tables); used by ``run`` and ``show``."""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

VERDICT_STYLE = {"pass": "bold green", "fail": "bold red", "inconclusive": "bold yellow"}


def _fmt(value: Any, digits: int = 3) -> str:
    """Fixed decimals, or significant digits where fixed ones would hide a small or huge value."""
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    if isinstance(value, float):
        if value != 0 and not 10 ** -digits <= abs(value) < 1e6:
            return f"{value:.{digits}g}"
        return f"{value:.{digits}f}"
    return str(value)


HEADERS = {"train_acc": "train", "test_acc": "test", "gap": "gap", "l2_norm": "‖θ‖₂",
           "dist_init": "‖θ−θ₀‖₂", "steps": "steps", "reached_target": "hit",
           # measure-ranking: Kendall τ, granulated τ (Ψ) and its per-hyperparameter parts
           "tau": "τ", "psi": "Ψ", "sign": "±", "models": "n", "psi_width": "ψ width", "psi_depth": "ψ depth",
           "psi_lr": "ψ lr", "psi_batch_size": "ψ batch", "psi_weight_decay": "ψ wd", "psi_dropout": "ψ drop"}
PERCENT = ("train_acc", "test_acc", "gap")


def _cell(row: dict[str, Any], column: str) -> str:
    mean, std = row[f"{column}_mean"], row[f"{column}_std"]
    if column in PERCENT:
        mean, std = (None if v is None else 100 * v for v in (mean, std))
        return f"{_fmt(mean, 1)}±{_fmt(std, 1)}"
    if column == "steps":  # the spread of stopping steps is in the report; the mean is enough here
        return _fmt(mean, 0)
    return _pair(mean, std)


def _pair(mean: float | None, std: float | None) -> str:
    """Compact ``mean±std`` for any scale: no decimals above 1000, one above 1, three significant
    digits below (the std in the mean's format)."""
    if mean is None or mean != mean:
        return "–"
    if abs(mean) >= 1000:
        spec = ".0f"
    elif abs(mean) >= 1:
        spec = ".1f"
    else:
        spec = ".3g"
    spread = "–" if std is None or std != std else format(std, spec)
    return f"{format(mean, spec)}±{spread}"


def results_table(summary: dict[str, Any]) -> Table:
    """Columns ``X_mean``/``X_std`` of the summary table are shown as ``mean±std``."""
    rows = summary["table"]
    paired = [c[: -len("_mean")] for c in rows[0] if c.endswith("_mean")] if rows else []
    title = summary["study"] + (" — mean±std over seeds; accuracies and gap in %" if paired else "")
    table = Table(title=title,
                  title_justify="left", box=box.SIMPLE_HEAD,
                  padding=0, show_edge=False, pad_edge=False)
    if not rows:
        return table
    plain = [c for c in rows[0] if not c.endswith(("_mean", "_std")) and c not in ("runs", "diverged")]
    for column in plain:
        table.add_column(HEADERS.get(column, column), no_wrap=True)
    for column in paired:
        table.add_column(HEADERS.get(column, column), justify="right", no_wrap=True)
    for row in rows:
        cells = [_fmt(row[c]) for c in plain]
        if row.get("diverged"):
            cells[-1] += f" ({row['diverged']} div.)"
        cells += [_cell(row, c) for c in paired]
        table.add_row(*cells)
    return table


def checks_table(summary: dict[str, Any]) -> Table:
    table = Table(title="checks", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
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
    checks = summary["checks"]
    passed = sum(c["passed"] is True for c in checks)
    failing = [c for c in checks if c["passed"] is not True]
    numbers = "; ".join(f"{c['name']} = {_fmt(c['value'], 4)} (needs {c['threshold']})" for c in failing)
    console.print(f"verdict: [{VERDICT_STYLE[verdict]}]{verdict.upper()}[/] — {passed}/{len(checks)} checks passed"
                  + (f"; not passed: {numbers}" if failing else " (values and thresholds above)"))
    runs = summary.get("runs", {})
    wall = summary.get("provenance", {}).get("wall_seconds")
    console.print(f"runs: {runs}; wall time: {wall} s")
    console.print(f"results: {out}/results.sqlite · summary: {out}/summary.json · report: {out}/report.html")
