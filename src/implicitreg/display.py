"""Terminal rendering of a study's results (rich tables) and of its progress; used by ``run``,
``show`` and :func:`implicitreg.run`.

Everything that comes from the user or from stored data (paths, names, notes, error messages) is
text, not rich markup: it goes through :func:`plain` (a path such as ``runs/[exp1]`` would
otherwise lose its brackets, or crash the print with a ``MarkupError``).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

VERDICT_STYLE = {"pass": "bold green", "fail": "bold red", "inconclusive": "bold yellow", "smoke": "bold cyan"}


def plain(value: Any) -> str:
    """``value`` as literal text inside a rich markup string (``[`` escaped)."""
    return escape(str(value))


NO_CLAIM = "no claim"
"""How an open experiment's verdict (None: a sweep or a tracked loop makes no claim) is shown."""


def verdict_markup(verdict: str | None) -> str:
    if verdict is None:
        return f"[bold]{NO_CLAIM}[/]"
    return f"[{VERDICT_STYLE.get(verdict, 'bold')}]{plain(verdict.upper())}[/]"


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
    named = f"{summary['study']}: {summary['name']}" if summary.get("name") else summary["study"]  # a sweep's name
    title = plain(named) + (" — mean±std over seeds; accuracies and gap in %" if paired else "")
    table = Table(title=title,
                  title_justify="left", box=box.SIMPLE_HEAD,
                  padding=0, show_edge=False, pad_edge=False)
    if not rows:
        return table
    shown = [c for c in rows[0] if not c.endswith(("_mean", "_std")) and c not in ("runs", "diverged")]
    for column in shown:
        table.add_column(plain(HEADERS.get(column, column)), no_wrap=True)
    for column in paired:
        table.add_column(plain(HEADERS.get(column, column)), justify="right", no_wrap=True)
    for row in rows:
        cells = [_fmt(row[c]) for c in shown]
        if row.get("diverged"):
            cells[-1] += f" ({row['diverged']} div.)"
        cells += [_cell(row, c) for c in paired]
        table.add_row(*map(plain, cells))
    return table


def checks_table(summary: dict[str, Any]) -> Table:
    table = Table(title="checks", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("check", "value", "threshold", "passed", "detail"):
        table.add_column(column)
    marks = {True: "[green]yes[/]", False: "[red]no[/]", None: "[yellow]n/a[/]"}
    for check in summary["checks"]:
        table.add_row(plain(check["name"]), plain(_fmt(check["value"], 4)), plain(check["threshold"]),
                      marks[check["passed"]], plain(check.get("detail", "")))
    return table


def runs_line(runs: dict[str, Any]) -> tuple[str, int]:
    """``"10 planned: 5 done, 5 missing"`` from the summary's run counts (either the planned/missing
    form or the per-status one), and how many runs did not finish."""
    runs = dict(runs or {})
    total = runs.pop("planned", runs.pop("total", None))
    parts = [f"{n} {status}" for status, n in runs.items() if n]
    unfinished = runs.get("missing")
    if unfinished is None:
        unfinished = sum(n for status, n in runs.items() if status not in ("done", "diverged"))
    label = "planned" if "missing" in runs else "runs"
    return f"{total} {label}" + (f": {', '.join(parts)}" if parts else ""), int(unfinished or 0)


def ranking_table(rows: list[dict[str, Any]]) -> Table:
    """A sweep's measure ranking: rank, measure, family, models, Kendall τ and granulated τ (Ψ)."""
    table = Table(title="measures ranked by how they order the runs' generalization gap (Ψ, then τ)",
                  title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("rank", "measure", "family", "runs", "τ", "Ψ"):
        table.add_column(column, justify="right" if column in ("runs", "τ", "Ψ") else "left")
    for row in rows:
        table.add_row(*map(plain, (row.get("rank"), row.get("measure"), row.get("family"), row.get("models"),
                                   _fmt(row.get("tau"), 2), _fmt(row.get("psi"), 2))))
    return table


def print_summary(console: Console, summary: dict[str, Any], out: str) -> None:
    console.print(results_table(summary))
    if summary.get("description"):
        console.print(plain(summary["description"]))
    if summary.get("ranking"):
        console.print(ranking_table(summary["ranking"]))
    if summary["checks"] or summary["verdict"] is not None:  # an open experiment has none to show
        console.print(checks_table(summary))
    for note in summary.get("notes", []):
        console.print(f"[dim]{plain(note)}[/]")
    verdict = summary["verdict"]
    checks = summary["checks"]
    passed = sum(c["passed"] is True for c in checks)
    failing = [c for c in checks if c["passed"] is not True]
    numbers = "; ".join(f"{c['name']} = {_fmt(c['value'], 4)} (needs {c['threshold']})" for c in failing)
    if verdict is None:
        console.print(f"verdict: {verdict_markup(verdict)} — an open experiment: its table and figures are the result")
    else:
        console.print(f"verdict: {verdict_markup(verdict)} — {passed}/{len(checks)} checks passed"
                      + (plain(f"; not passed: {numbers}") if failing else " (values and thresholds above)"))
    counts, unfinished = runs_line(summary.get("runs", {}))
    wall = summary.get("provenance", {}).get("wall_seconds")
    shown_wall = "not recorded" if wall is None else f"{_fmt(float(wall), 1)} s"
    console.print(plain(f"runs: {counts}; wall time: {shown_wall}"))
    if unfinished:
        console.print(plain(f"{unfinished} run(s) did not finish: rerun the same command with --resume --out {out} "
                            "to continue them"))
    files = [f"{label}: {out}/{name}" for label, name in (("results", "results.sqlite"), ("summary", "summary.json"),
                                                          ("report", "report.html")) if (Path(out) / name).exists()]
    console.print(plain(" · ".join(files) if files else f"results: {out}"))


def _group_label(study: str, task: Any) -> str:
    group = task.group
    return f"{study}: {group.arch} · {len(group.members)} runs ({task.engine})"


@contextmanager
def execution_progress(console: Console, study: str, live: bool | None = None) -> Iterator[dict[str, Any]]:
    """The progress reporting of one study's execution: keyword arguments for
    :func:`implicitreg.runner.execute` (``progress``, ``on_outcome``, ``solve_progress``).

    On a terminal or in a notebook (``live``, by default where ``console`` is one), a rich bar per
    population; elsewhere (a log file, CI) one plain line when a population starts and one when it
    ends, printed as it happens.
    """
    with studies_progress(console, live) as hooks_for:
        yield hooks_for(study)


@contextmanager
def studies_progress(console: Console, live: bool | None = None) -> Iterator[Callable[[str], dict[str, Any]]]:
    """One progress display for several studies that run at once (``run all`` on a cluster):
    ``hooks_for(study)`` gives each study's hooks, as :func:`execution_progress` does for one.
    Tasks of a cluster run side by side: each bar ends when its own task ends."""
    if live is None:
        live = console.is_terminal or console.is_jupyter
    if not live:
        yield lambda study: _line_hooks(console, study)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        try:
            yield lambda study: _live_hooks(progress, study)
        finally:
            progress.stop()


def _live_hooks(progress: Progress, study: str) -> dict[str, Any]:
    handles: dict[int, Any] = {}

    def progress_for(task):
        group = task.group
        total = group.train.max_steps * (len(group.members) if task.engine == "sequential" else 1)
        handle = handles[id(task)] = progress.add_task(plain(_group_label(study, task)), total=total)
        count = {"done": 0}

        def advance(step: int, max_steps: int) -> None:
            count["done"] += 1
            progress.update(handle, completed=count["done"])
        return advance

    def finished(outcome) -> None:
        # members that reach their target stop early: the bar ends where the work ended
        handle = handles.pop(id(outcome.task), None)
        if handle is not None:
            progress.update(handle, total=progress.tasks[handle].completed)

    def solve_bar(label: str, total: int):
        handle = progress.add_task(plain(f"{study}: {label}"), total=total)
        return lambda done: progress.update(handle, completed=done)

    return {"progress": progress_for, "on_outcome": finished, "solve_progress": solve_bar}


def _line_hooks(console: Console, study: str) -> dict[str, Any]:
    started: dict[int, float] = {}

    def say(text: str) -> None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)

    def progress_for(task):
        started[id(task)] = time.perf_counter()
        say(f"{_group_label(study, task)}: started")
        return lambda step, max_steps: None

    def finished(outcome) -> None:
        seconds = time.perf_counter() - started.pop(id(outcome.task), time.perf_counter())
        if outcome.error is not None:
            state = f"failed ({outcome.error.splitlines()[0]})"
        else:
            states = [r.status for r in outcome.results]
            state = ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states))
        say(f"{_group_label(study, outcome.task)}: {state} in {seconds:.1f} s")

    def solve_bar(label: str, total: int):
        start = time.perf_counter()
        say(f"{study}: {label}: started ({total} steps)")
        reported = {"done": False}

        def advance(done: int) -> None:
            if done >= total and not reported["done"]:
                reported["done"] = True
                say(f"{study}: {label}: done in {time.perf_counter() - start:.1f} s")
        return advance

    return {"progress": progress_for, "on_outcome": finished, "solve_progress": solve_bar}
