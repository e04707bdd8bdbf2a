"""The ``implicitreg`` command: list, config, run, sweep, show, report, measures. It only wires stages together.

Exit codes: 0 a command that did its work (a finished study, whatever its verdict; with
``--strict``, 1 on *fail* and 3 on *inconclusive*); 2 a user mistake (unknown study, option or
key, a bad value, an unusable ``--out``, a directory holding no readable results), printed as one
line on stderr before anything is written; 1 a fault of the machine (a full disk) or failed
populations, also one line, with what was stored kept; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import inspect
import json
import re
import sqlite3
import sys
from pathlib import Path
from typing import Any, NoReturn, Optional

import typer
from pydantic import ValidationError
from rich.console import Console
from typer.core import TyperGroup

from implicitreg.config import ConfigError, SettingError, build_config, describe_fields, format_validation_error, \
    parse_sets, setting_text
from implicitreg.display import execution_progress, plain, print_summary, studies_progress, verdict_markup
from implicitreg.report.index import write_index
from implicitreg.runner import ALL, RunOptions, execute, execute_all, prepare_study, summarize, write_outputs
from implicitreg.store import StorageFault, classify_write_error, describe_write_error
from implicitreg.studies import STUDIES, all_studies, get_study, plugins

try:  # recent typer vendors click
    from typer._click.exceptions import ClickException, NoArgsIsHelpError
except ImportError:  # pragma: no cover - typer on top of click
    from click.exceptions import ClickException, NoArgsIsHelpError

STRICT_EXIT = {"pass": 0, "smoke": 0, None: 0, "fail": 1, "inconclusive": 3}
"""Exit code of a finished study under ``--strict`` (without it: 0 whatever the verdict; an open
experiment, verdict None, makes no claim: 0)."""

out_console = Console()
err_console = Console(stderr=True)


def error_line(message: str) -> None:
    """One line on stderr: ``error: MESSAGE`` (the message as text, never as markup)."""
    one_line = " ".join(str(message).split())
    err_console.print(f"[bold red]error:[/] {plain(one_line)}", highlight=False, soft_wrap=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """A user mistake (code 2) or a fault of the machine (code 1): one line on stderr, then exit."""
    error_line(message)
    raise typer.Exit(code)


class OneLineErrors(TyperGroup):
    """Usage errors (an unknown option or command, a value of the wrong type, a missing argument)
    as one ``error:`` line on stderr with exit code 2, in place of click's five-line usage box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NoArgsIsHelpError as err:  # `implicitreg` alone: the help on stdout and code 2, as click does
            out_console.print(err.format_message(), markup=False, highlight=False)
            sys.exit(err.exit_code)
        except ClickException as err:
            ctx = getattr(err, "ctx", None)
            command = "implicitreg" + (f" {ctx.info_name}" if ctx is not None and ctx.parent is not None else "")
            error_line(f"{err.format_message()} (see {command} --help)")
            sys.exit(err.exit_code)
        except typer.Abort:
            error_line("aborted")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def examples(*lines: str, note: str = "") -> str:
    """A command's ``--help`` epilog: its example command lines (one paragraph each: the help
    formatter joins single newlines), then ``note``. No square brackets: they would read as markup."""
    return "\n\n".join(["Examples:", *lines, *([note] if note else [])])


app = typer.Typer(cls=OneLineErrors, add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="A lab for implicit regularization: canonical studies with verdicts.",
                  epilog=examples("implicitreg list", "implicitreg config min-norm",
                                  "implicitreg run min-norm --quick --out runs/min-norm",
                                  "implicitreg show runs/min-norm",
                                  note="Each command's --help shows its own examples."))


@app.command("list", epilog=examples(
        "implicitreg list",
        note="Studies that installed packages declare (entry-point group implicitreg.studies) are listed with "
             "their package; one that cannot be loaded is listed with its error. See docs/writing-a-study.md."))
def list_studies() -> None:
    """The studies, with their claim and paper; plugins' studies marked with their package."""
    # one study a line, never wrapped by rich (the terminal folds long lines; grep sees whole ones)
    for name, study in STUDIES.items():
        out_console.print(_study_line(name, study), soft_wrap=True)
    for plugin in plugins():
        if plugin.study is not None and plugin.name not in STUDIES:
            out_console.print(f"{_study_line(plugin.name, plugin.study)} [cyan]({plain(plugin.origin)})[/]",
                              soft_wrap=True)
        else:
            out_console.print(f"[red]{plain(plugin.problem_line())}[/]", soft_wrap=True)


def _study_line(name: str, study: Any) -> str:
    claim = study.claim if study.claim is not None else "an experiment with no claim (no verdict)"
    return f"[bold]{plain(name)}[/] — {plain(claim)} [dim]({plain(study.paper)})[/]"


def study_settings(study: Any) -> list:
    """Every settable key of a study (:func:`implicitreg.config.describe_fields`): its default as the
    study runs without ``--set``, and what ``--quick`` changes (``study.defaults(True)`` against
    ``study.defaults(False)``). :class:`ConfigError` if the study's own defaults do not validate."""
    full = build_config(study.Config, study.defaults(False), {})
    quick = build_config(study.Config, study.defaults(True), {})
    return describe_fields(study.Config, full, quick)


# `config` resolves its argument through studies.get_study, like `run`: whatever get_study knows
# (built-in studies, plugins, and a pseudo-study such as a sweep file's settings) is described
# from its Config and defaults the same way.
@app.command("config", epilog=examples(
        "implicitreg config explicit-vs-implicit",
        "implicitreg config min-norm --json",
        note="Set any key for a run with --set KEY=VALUE: implicitreg run min-norm --set n=30 --set d=300. "
             "Lists: --set mlp.hidden=\\[64,64]. None: --set data.n_train=None."))
def config_command(
    study: str = typer.Argument(..., help="study name (see implicitreg list)"),
    as_json: bool = typer.Option(False, "--json", help="the keys as a JSON list (key, type, default, quick, "
                                                      "allowed, description)"),
) -> None:
    """Every setting of a study: key (for --set), type, default, what --quick changes, allowed values and
    description."""
    try:
        chosen = get_study(study)
        rows = study_settings(chosen)
    except ConfigError as err:
        fail(str(err))
    if as_json:
        print(json.dumps([row.as_dict() for row in rows], indent=2))
        return
    from rich import box
    from rich.table import Table

    changed = sum(row.quick_changes for row in rows)
    table = Table(title=f"{chosen.name}: {len(rows)} settings; set one with --set KEY=VALUE. --quick sets "
                        f"{changed} of them to the value in its column.",
                  title_justify="left", box=box.SIMPLE_HEAD)
    for column, options in (("key", {"no_wrap": True, "style": "bold"}), ("type", {}), ("default", {}),
                            ("--quick", {}), ("allowed", {}), ("description", {})):
        table.add_column(column, **options)
    for row in rows:
        table.add_row(*map(plain, (row.key, row.type, setting_text(row.default),
                                   setting_text(row.quick) if row.quick_changes else "", row.allowed,
                                   row.description)))
    out_console.print(table)


DOC_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def doc_text(text: str) -> str:
    """A docstring's reST markup as plain text: ``code`` → code, :func:`a.b` → a.b (:class:`~a.B` → B)."""
    text = DOC_ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1] if m.group(0).count("~") else m.group(1), text)
    return re.sub(r"``([^`]+)``", r"\1", text)


def first_paragraph(fn: Any) -> str:
    doc = inspect.getdoc(fn) or ""
    return " ".join(doc.split("\n\n", 1)[0].split())


# public functions of implicitreg.measures that are machinery (evaluation, registration, model
# transforms), not measures; every other public function that is no registry entry is listed
MEASURE_MACHINERY = ("compute", "register", "stacked",
                     "hessian_vector_product", "fold_batchnorm")


@app.command("measures", epilog=examples(
        "implicitreg measures",
        note="Track measures along training with --set train.track=\\[l2_norm,path_norm] (studies that train "
             "populations), or call them on your own model: implicitreg.measures.compute(names, model, ...)."))
def list_measures() -> None:
    """The complexity measures: their family, what each needs, whether lower means simpler, its cost."""
    from rich import box
    from rich.table import Table

    from implicitreg import measures
    from implicitreg.measures import REGISTRY

    table = Table(title="measures (one value per model; measures.compute(names, ...) or measures.NAME)",
                  title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("measure", no_wrap=True)
    for column in ("family", "needs", "lower is simpler", "cost", "what it is"):
        table.add_column(column)
    for info in sorted(REGISTRY.values(), key=lambda i: (i.family, i.name)):
        simpler = {True: "yes", False: "no (higher)", None: "–"}[info.lower_is_simpler]
        table.add_row(*map(plain, (info.name, info.family, ", ".join(info.needs), simpler, info.cost,
                                   doc_text(info.summary))))
    out_console.print(table)

    several = Table(title="functions returning several values (per layer, top-k, or a result with convergence)",
                    title_justify="left", box=box.SIMPLE_HEAD)
    several.add_column("function", no_wrap=True)
    several.add_column("what it returns")
    for name in sorted(measures.__all__):
        fn = getattr(measures, name)
        if name in REGISTRY or name in MEASURE_MACHINERY or not inspect.isfunction(fn):
            continue
        several.add_row(plain(f"measures.{name}"), plain(doc_text(first_paragraph(fn))))
    out_console.print(several)


THREADS_HELP = ("CPU threads (default: the cores other processes leave free, at least 1); with --backend ray, "
                "each task's (default 1)")
BACKEND_HELP = "local (this process) | ray (Ray tasks: a cluster, or a local Ray instance)"
RAY_ADDRESS_HELP = ("with --backend ray: the cluster (HOST:PORT, auto, ray://HOST:10001); default: RAY_ADDRESS, "
                    "else a new local Ray instance")
RETRIES_HELP = "with --backend ray: how often a task whose worker died is tried again before it is recorded failed"


@app.command(epilog=examples(
        "implicitreg run explicit-vs-implicit --quick --out runs/evi",
        "implicitreg run explicit-vs-implicit --set train.lr=0.02 --set seeds=3 --threads 2",
        "implicitreg run explicit-vs-implicit --resume --out runs/evi",
        "implicitreg run min-norm --data problem.npz",
        "implicitreg run all --quick --out runs/all",
        "implicitreg run width --backend ray --ray-address 10.0.0.5:6379 --threads 2",
        note="implicitreg config STUDY lists every key --set takes. `all` runs the built-in studies; a study "
             "from an installed package (a plugin, see implicitreg list) runs by its name."))
def run(
    study: str = typer.Argument(..., help="study name (see `implicitreg list`), or `all` (every built-in study)"),
    quick: bool = typer.Option(False, "--quick", help="fewer seeds and steps: a smoke test of the same code"),
    set_: list[str] = typer.Option([], "--set", help="override a config key: --set train.lr=0.01 (repeatable)"),
    seeds: Optional[int] = typer.Option(None, "--seeds", help="seeds per arm"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    engine: str = typer.Option("population", "--engine", help="population (vectorized) | sequential (reference)"),
    out: Optional[Path] = typer.Option(None, "--out", help="output directory (default runs/<study>-<time>)"),
    resume: bool = typer.Option(False, "--resume", help="continue the runs in --out that did not finish"),
    threads: Optional[int] = typer.Option(None, "--threads", help=THREADS_HELP),
    as_json: bool = typer.Option(False, "--json", help="print summary.json to stdout"),
    data: Optional[Path] = typer.Option(None, "--data", help="your own problem as FILE.npz (theory studies)"),
    strict: bool = typer.Option(False, "--strict",
                                help="exit 1 if the verdict is fail, 3 if inconclusive (for scripts and CI)"),
    backend: str = typer.Option("local", "--backend", help=BACKEND_HELP),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help=RAY_ADDRESS_HELP),
    retries: int = typer.Option(2, "--retries", help=RETRIES_HELP),
) -> None:
    """Run a study (or `all` built-in ones): train, store, analyze, report."""
    try:
        options = RunOptions(study, quick, parse_sets(set_), seeds, device, engine, out, resume, threads, data,
                             backend, ray_address, retries)
        prepared_runs = prepare_study(options)
    except SettingError as err:
        fail(f"{err} {settings_hint(study)}")
    except ConfigError as err:
        fail(str(err))
    results = []
    try:
        if backend == "local":
            for prepared in prepared_runs:
                results.append(_execute_with_progress(prepared))
        else:  # every study's tasks on the cluster at once
            results = _execute_all_with_progress(prepared_runs, study)
    except ConfigError as err:
        fail(str(err))
    except StorageFault as err:
        fail(str(err), code=1)
    if study == ALL:
        try:
            index = write_index(prepared_runs[0].out.parent,
                                [(p.study.name, r.summary) for p, r in zip(prepared_runs, results)])
        except OSError as err:
            fail(f"cannot write the index in {prepared_runs[0].out.parent} ({describe_write_error(err)}); "
                 "every study's results are stored", code=1)
        summaries = {p.study.name: r.summary for p, r in zip(prepared_runs, results)}
        if as_json:
            print(json.dumps(summaries, indent=2))
        else:
            for name, summary in summaries.items():
                out_console.print(f"{plain(name)}: {verdict_markup(summary['verdict'])}")
            out_console.print(f"index: {plain(index)}")
    elif as_json:
        print(json.dumps(results[0].summary, indent=2))
    else:
        print_summary(out_console, results[0].summary, str(prepared_runs[0].out))
    failed = [(p, r) for p, r in zip(prepared_runs, results) if r.failures]
    if failed:
        prepared, result = failed[0]
        err_console.print(f"[bold red]{len(result.failures)} population(s) failed[/]; first error:\n"
                          f"{plain(result.failures[0])}\nrerun with --resume --out {plain(prepared.out)} to retry them",
                          highlight=False)
        raise typer.Exit(1)
    if strict:
        codes = [STRICT_EXIT.get(r.verdict, 3) for r in results]
        raise typer.Exit(1 if 1 in codes else max(codes))


def settings_hint(study: str) -> str:
    """Where a mistake in the settings of ``study`` can be looked up."""
    named = study if study != ALL and study in all_studies() else "STUDY"
    return f"(see implicitreg config {named} for every key, its type and allowed values)"


def expected_duration(prepared) -> str:
    """How long the study took on 2 CPU cores at its default size (its ``minutes``), if it says."""
    minutes = getattr(prepared.study, "minutes", None)
    if not minutes:
        return ""
    quick = prepared.options.quick
    value = minutes[0] if quick else minutes[1]
    shown = f"{value * 60:.0f} s" if value < 1 else f"{value:.1f} min"
    changed = " (at its default size; your settings change it)" if (prepared.options.overrides or
                                                                    prepared.options.seeds) else ""
    return f"{prepared.study.name}: expected about {shown} on 2 CPU cores{' for --quick' if quick else ''}{changed}"


def start_line(prepared) -> str:
    """What ``run`` says as work starts: the expected duration and, where the default took fewer
    threads than cores for the populations (other processes are running), why."""
    note = prepared.threads_note if prepared.study.plan(prepared.config) else ""
    return "; ".join(part for part in (expected_duration(prepared), note) if part)


def announced(hooks: dict, line: str) -> dict:
    """``hooks`` that print ``line`` once, when the first population or solve starts: after every
    check of the output directory, so that a refused run still prints its one error line alone."""
    if not line:
        return hooks
    said = []

    def say() -> None:
        if not said:
            said.append(True)
            err_console.print(plain(line), highlight=False, soft_wrap=True)

    def progress(task):
        say()
        return hooks["progress"](task)

    def solve_progress(label: str, total: int):
        say()
        return hooks["solve_progress"](label, total)

    return {**hooks, "progress": progress, "solve_progress": solve_progress}


def _execute_with_progress(prepared):
    """Execute one prepared study with its progress on stderr; Ctrl-C says how to resume."""
    try:
        with execution_progress(err_console, prepared.study.name) as hooks:
            return execute(prepared, **announced(hooks, start_line(prepared)))
    except KeyboardInterrupt:
        err_console.print(plain(f"interrupted: finished populations are stored in {prepared.out}; "
                                f"continue with --resume --out {prepared.out}"), highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None


def _execute_all_with_progress(prepared_runs, study: str):
    """Execute prepared studies together on one backend (a Ray cluster), one progress display for all."""
    out = prepared_runs[0].out.parent if study == ALL else prepared_runs[0].out
    try:
        with studies_progress(err_console) as hooks_for:
            return execute_all(prepared_runs, hooks=[hooks_for(p.study.name) for p in prepared_runs])
    except KeyboardInterrupt:
        err_console.print(plain(f"interrupted: finished populations are stored in {out}; "
                                f"continue with --resume --out {out}"), highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None


@app.command("sweep", epilog=examples(
        "implicitreg sweep examples/sweep-tiny.toml --quick --out runs/tiny",
        "implicitreg sweep examples/width-and-lr.toml --out runs/wl --threads 2",
        "implicitreg sweep examples/width-and-lr.toml --resume --out runs/wl",
        "implicitreg sweep examples/width-and-lr.toml --backend ray --ray-address auto --out runs/wl",
        note="A sweep file is TOML: name, description, seeds, the base data, model, train and member tables, and "
             "a grid table of dotted config paths, each a list of values; every combination x seed is a run. "
             "implicitreg config sweep lists every key."))
def sweep_command(
    file: Path = typer.Argument(..., help="the sweep file (TOML)"),
    out: Optional[Path] = typer.Option(None, "--out", help="output directory (default runs/<name>-<time>)"),
    resume: bool = typer.Option(False, "--resume", help="continue the runs in --out that did not finish"),
    quick: bool = typer.Option(False, "--quick", help="a tenth of the steps and one seed: a smoke test of the file"),
    threads: Optional[int] = typer.Option(None, "--threads", help=THREADS_HELP),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    engine: str = typer.Option("population", "--engine", help="population (vectorized) | sequential (reference)"),
    as_json: bool = typer.Option(False, "--json", help="print summary.json to stdout"),
    strict: bool = typer.Option(False, "--strict", help="as for run; a sweep makes no claim, so it exits 0 once "
                                                        "every run finished"),
    backend: str = typer.Option("local", "--backend", help=BACKEND_HELP),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help=RAY_ADDRESS_HELP),
    retries: int = typer.Option(2, "--retries", help=RETRIES_HELP),
) -> None:
    """Run your own grid from a sweep file: every grid point x seed, stored, summarized and reported."""
    from implicitreg.sweep import SweepOptions, prepare_sweep

    try:
        prepared, notices = prepare_sweep(SweepOptions(file, out, resume, quick, threads, device, engine, backend,
                                                       ray_address, retries))
    except SettingError as err:
        fail(f"{err} (see implicitreg config sweep for every key, its type and allowed values)")
    except ConfigError as err:
        fail(str(err))
    try:
        with execution_progress(err_console, prepared.study.name) as hooks:
            result = execute(prepared, **announced(hooks, "\n".join(notices)))
    except KeyboardInterrupt:
        err_console.print(plain(f"interrupted: finished populations are stored in {prepared.out}; continue with "
                                f"implicitreg sweep {file} --resume --out {prepared.out}"), highlight=False,
                          soft_wrap=True)
        raise typer.Exit(130) from None
    except ConfigError as err:
        fail(str(err))
    except StorageFault as err:
        fail(str(err), code=1)
    if as_json:
        print(json.dumps(result.summary, indent=2))
    else:
        print_summary(out_console, result.summary, str(prepared.out))
    if result.failures:
        err_console.print(f"[bold red]{len(result.failures)} population(s) failed[/]; first error:\n"
                          f"{plain(result.failures[0])}\nrerun with implicitreg sweep {plain(file)} --resume --out "
                          f"{plain(prepared.out)} to retry them", highlight=False)
        raise typer.Exit(1)
    if strict:
        raise typer.Exit(STRICT_EXIT.get(result.verdict, 3))


def _stored(action, directory: Path):
    """``action(directory)`` on a directory's stored results; what is wrong with them as one line."""
    try:
        return action(directory)
    except (FileNotFoundError, NotADirectoryError) as err:
        fail(str(err))
    except ConfigError as err:  # an unknown study named by the metadata, or an unwritable directory
        fail(f"{directory}: {err}")
    except ValidationError as err:
        fail(f"{directory}: the stored configuration is not valid ({format_validation_error(err)})")
    except KeyError as err:
        fail(f"{directory}: the stored metadata has no {err} entry; not a complete results store")
    except (sqlite3.Error, OSError) as err:
        kind = classify_write_error(err)
        if kind == "full":
            fail(f"{directory}: writing failed ({describe_write_error(err)}); the stored results are kept", code=1)
        fail(f"{directory}: cannot use the stored results ({describe_write_error(err)})")


@app.command(epilog=examples("implicitreg show runs/evi", "implicitreg show runs/evi --json"))
def show(directory: Path = typer.Argument(..., help="the --out directory of a run"),
         as_json: bool = typer.Option(False, "--json", help="print the summary as JSON")) -> None:
    """Tables, checks and verdict of a finished (or interrupted) run, from its stored results."""
    summary = _stored(lambda d: summarize(d)[0], directory)
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(out_console, summary, str(directory))


@app.command(epilog=examples("implicitreg report runs/evi",
                             note="Rewrites figures/, summary.json and report.html (e.g. after an upgrade), "
                                  "without training anything."))
def report(directory: Path = typer.Argument(..., help="the --out directory of a run")) -> None:
    """Rebuild figures, summary.json and report.html from the stored results."""
    result = _stored(write_outputs, directory)
    out_console.print(f"verdict: {verdict_markup(result.verdict)}; report: {plain(directory / 'report.html')}")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
