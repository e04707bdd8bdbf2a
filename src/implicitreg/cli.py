"""The ``implicitreg`` command: list, run, show, report. It only wires stages together.

User mistakes (unknown study or key, bad value, missing directory) print one line on stderr
and exit with code 2, before anything is written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from implicitreg.config import ConfigError, parse_sets
from implicitreg.display import VERDICT_STYLE, print_summary
from implicitreg.report.index import write_index
from implicitreg.runner import ALL, RunOptions, execute, prepare, prepare_all, summarize, write_outputs
from implicitreg.studies import STUDIES

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="A lab for implicit regularization: canonical studies with verdicts.")
out_console = Console()
err_console = Console(stderr=True)


def fail(message: str) -> None:
    """A user mistake: one line on stderr, exit code 2."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@app.command("list")
def list_studies() -> None:
    """The studies, with their claim and paper."""
    for name, study in STUDIES.items():
        out_console.print(f"[bold]{name}[/] — {study.claim} [dim]({study.paper})[/]")


@app.command("measures")
def list_measures() -> None:
    """The complexity measures: what each needs, whether lower means simpler, its cost."""
    from rich import box
    from rich.table import Table

    from implicitreg.measures import REGISTRY

    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("measure", no_wrap=True)
    for column in ("needs", "lower is simpler", "cost", "what it is"):
        table.add_column(column)
    for info in sorted(REGISTRY.values(), key=lambda i: i.name):
        simpler = {True: "yes", False: "no (higher)", None: "–"}[info.lower_is_simpler]
        table.add_row(info.name, ", ".join(info.needs), simpler, info.cost, info.summary)
    out_console.print(table)


@app.command()
def run(
    study: str = typer.Argument(..., help="study name (see `implicitreg list`), or `all`"),
    quick: bool = typer.Option(False, "--quick", help="fewer seeds and steps: a smoke test of the same code"),
    set_: list[str] = typer.Option([], "--set", help="override a config key: --set train.lr=0.01 (repeatable)"),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="seeds per arm"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    engine: str = typer.Option("population", "--engine", help="population (vectorized) | sequential (reference)"),
    out: Optional[Path] = typer.Option(None, "--out", help="output directory (default runs/<study>-<time>)"),
    resume: bool = typer.Option(False, "--resume", help="continue the runs in --out that did not finish"),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (default: all available)"),
    as_json: bool = typer.Option(False, "--json", help="print summary.json to stdout"),
    data: Optional[Path] = typer.Option(None, "--data", help="your own problem as FILE.npz (theory studies)"),
) -> None:
    """Run a study (or `all` of them): train, store, analyze, report."""
    try:
        options = RunOptions(study, quick, parse_sets(set_), seeds, device, engine, out, resume, threads, data)
        prepared_runs = prepare_all(options) if study == ALL else [prepare(options)]
    except ConfigError as err:
        fail(str(err))
    results = [_execute_with_progress(prepared) for prepared in prepared_runs]
    if study == ALL:
        index = write_index(prepared_runs[0].out.parent, [(p.study.name, r.summary) for p, r in zip(prepared_runs, results)])
        summaries = {p.study.name: r.summary for p, r in zip(prepared_runs, results)}
        if as_json:
            print(json.dumps(summaries, indent=2))
        else:
            for name, summary in summaries.items():
                out_console.print(f"{name}: [{VERDICT_STYLE[summary['verdict']]}]{summary['verdict'].upper()}[/]")
            out_console.print(f"index: {index}")
    elif as_json:
        print(json.dumps(results[0].summary, indent=2))
    else:
        print_summary(out_console, results[0].summary, str(prepared_runs[0].out))
    failed = [(p, r) for p, r in zip(prepared_runs, results) if r.failures]
    if failed:
        prepared, result = failed[0]
        err_console.print(f"[bold red]{len(result.failures)} population(s) failed[/]; first error:\n"
                          f"{result.failures[0]}\nrerun with --resume --out {prepared.out} to retry them")
        raise typer.Exit(1)


def _execute_with_progress(prepared):
    """Execute one prepared study with a progress bar per population; Ctrl-C says how to resume."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=False) as progress:
        def progress_for(task):
            group = task.group
            label = f"{prepared.study.name}: {group.arch} · {len(group.members)} runs ({task.engine})"
            total = group.train.max_steps * (len(group.members) if task.engine == "sequential" else 1)
            handle = progress.add_task(label, total=total)
            count = {"done": 0}

            def advance(step: int, max_steps: int) -> None:
                count["done"] += 1
                progress.update(handle, completed=count["done"])
            return advance

        def finished(outcome) -> None:
            # members that reach their target stop early: the bar ends where the work ended
            for task_id in progress.task_ids:
                progress.update(task_id, total=progress.tasks[task_id].completed)

        def solve_bar(label: str, total: int):
            handle = progress.add_task(f"{prepared.study.name}: {label}", total=total)
            return lambda done: progress.update(handle, completed=done)

        try:
            return execute(prepared, progress=progress_for, on_outcome=finished, solve_progress=solve_bar)
        except KeyboardInterrupt:
            progress.stop()
            err_console.print(f"interrupted: finished populations are stored in {prepared.out}; "
                              f"continue with --resume --out {prepared.out}")
            raise typer.Exit(130) from None


@app.command()
def show(directory: Path = typer.Argument(..., help="the --out directory of a run"),
         as_json: bool = typer.Option(False, "--json", help="print the summary as JSON")) -> None:
    """Tables, checks and verdict of a finished (or interrupted) run, from its stored results."""
    try:
        summary = summarize(directory)[0]
    except FileNotFoundError as err:
        fail(str(err))
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(out_console, summary, str(directory))


@app.command()
def report(directory: Path = typer.Argument(..., help="the --out directory of a run")) -> None:
    """Rebuild figures, summary.json and report.html from the stored results."""
    try:
        result = write_outputs(directory)
    except FileNotFoundError as err:
        fail(str(err))
    out_console.print(f"verdict: {result.verdict}; report: {directory / 'report.html'}")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
