"""Hostile input and broken files: every user mistake is one line and exit code 2, a fault of the
machine (a full disk) one line and exit code 1, never a traceback, never a partial output
directory, never a loss of what was stored before; paths are text, not rich markup.

Most cases run in-process (typer's CliRunner); a few as real processes, where typer's own error
handling and the terminal detection are the real ones.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, CliResult, assert_user_error, cli_command, cli_env, invoke_cli, read_store, run_cli
from implicitreg.store import Store

IGR = ["run", "igr", "--quick", "--threads", "1"]
TWO_POPULATIONS = [*TINY, "--set", "models=[mlp,cnn]", "--set", "cnn.channels=4"]


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (path → bytes): what a failed command must leave as it was
    (but SQLite's own -wal/-shm index files, which any reader of a WAL database may create)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file() and not p.name.endswith(("-wal", "-shm"))}


def error_lines(result: CliResult) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def igr_run(tmp_path_factory) -> Path:
    """A finished `igr --quick` directory (a solved study: ~2 s), copied by the tests that damage it."""
    out = tmp_path_factory.mktemp("hostile") / "igr"
    result = invoke_cli([*IGR, "--out", out])
    assert result.returncode == 0, result
    return out


def copy_of(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


# -- 3. user mistakes: one line, exit 2, nothing written --------------------------------------------

@pytest.mark.parametrize("args, expected", [
    (["--seeds", "1000000000"], ["--seeds", "1000000000", "10,000 runs"]),
    (["--set", "seeds=1000000000"], ["seeds", "1000000000", "10,000 runs"]),
    (["--seeds", "3000"], ["30,000 runs", "10,000"]),  # each seed count allowed, their product not
], ids=["seeds-option", "seeds-set", "plan-too-big"])
def test_a_plan_too_big_is_refused_before_it_is_built(tmp_path, args, expected):
    """Before: a MemoryError after 70 s of building a billion runs."""
    out = tmp_path / "o"
    result = invoke_cli(["run", "explicit-vs-implicit", "--quick", *args, "--out", out])
    assert_user_error(result, expected, out)


def test_an_out_name_over_255_bytes_is_refused(tmp_path):
    out = tmp_path / ("x" * 300) / "o"
    assert_user_error(invoke_cli([*IGR, "--out", out]), ["--out", "300 bytes", "255"])
    out = tmp_path / ("y" * 256)
    assert_user_error(invoke_cli([*IGR, "--out", out]), ["--out", "256 bytes"])
    assert list(tmp_path.iterdir()) == []


def test_names_too_long_elsewhere_are_one_line(tmp_path):
    long_name = "x" * 300
    assert_user_error(invoke_cli(["run", "min-norm", "--data", tmp_path / f"{long_name}.npz", "--out", tmp_path / "o"]),
                      ["--data", "File name too long"], tmp_path / "o")
    for command in ("show", "report"):
        assert_user_error(invoke_cli([command, tmp_path / long_name]), ["File name too long"])


def test_an_out_path_over_4095_bytes_is_refused(tmp_path):
    out = tmp_path.joinpath(*["z" * 200] * 21)
    assert_user_error(invoke_cli([*IGR, "--out", out]), ["--out", "bytes long"])


def test_out_a_dangling_symlink_is_refused(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere")
    assert_user_error(invoke_cli([*IGR, "--out", link]), ["--out", "symbolic link", "does not exist"])
    assert link.is_symlink() and not (tmp_path / "nowhere").exists()


def test_out_under_a_file_is_refused(tmp_path):
    (tmp_path / "a-file").write_text("x")
    result = invoke_cli([*IGR, "--out", tmp_path / "a-file" / "o"])
    assert_user_error(result, ["--out", "a-file", "not a directory"])
    assert (tmp_path / "a-file").read_text() == "x"


def test_out_not_writable_is_refused_in_prepare(tmp_path, monkeypatch):
    """os.access as a read-only file system answers it (tests run as root, for whom chmod does
    not block writes)."""
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == tmp_path else real_access(p, mode))
    out = tmp_path / "o"
    assert_user_error(invoke_cli([*IGR, "--out", out]), ["--out", str(tmp_path), "not writable"], out)


@pytest.mark.parametrize("error", [sqlite3.OperationalError("unable to open database file"),
                                   sqlite3.OperationalError("attempt to write a readonly database"),
                                   OSError(30, "Read-only file system")])
def test_a_store_that_cannot_be_created_is_one_line_and_leaves_no_directory(tmp_path, monkeypatch, error):
    def refuse(*args, **kwargs):
        raise error
    monkeypatch.setattr(Store, "create", refuse)
    out = tmp_path / "parent" / "o"
    (tmp_path / "parent").mkdir()
    result = invoke_cli([*IGR, "--out", out])
    assert_user_error(result, ["--out", "cannot write", str(out)], out)
    assert list((tmp_path / "parent").iterdir()) == []


def test_out_where_the_system_refuses_a_directory(tmp_path):
    """/proc and /sys take no new directories, even from root: the mkdir fails in execute."""
    for place in ("/proc", "/sys"):
        out = Path(place) / "implicitreg-test-out"
        if not Path(place).is_dir():
            continue
        assert_user_error(invoke_cli([*IGR, "--out", out]), ["--out", str(out)], out)


@pytest.mark.parametrize("resume", [True, False], ids=["resume", "plain"])
def test_a_results_sqlite_that_is_not_a_database_is_refused_and_kept(tmp_path, resume):
    out = tmp_path / "o"
    out.mkdir()
    (out / Store.FILENAME).write_bytes(b"my notes, not a database\n" * 100)
    before = snapshot(out)
    result = invoke_cli([*IGR, *(["--resume"] if resume else []), "--out", out])
    assert_user_error(result, ["--out", "results.sqlite", "cannot be read"])
    assert snapshot(out) == before


def damage(directory: Path, how: str) -> None:
    path = directory / Store.FILENAME
    if how == "not-a-database":
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        path.write_bytes(b"\x00garbage" * 1000)
        return
    conn = sqlite3.connect(path)
    with conn:
        if how == "unknown-study":
            conn.execute("UPDATE meta SET value = '\"no-such-study\"' WHERE key = 'study'")
        elif how == "invalid-config":
            conn.execute("UPDATE meta SET value = '{\"h\": \"not a list\"}' WHERE key = 'config'")
        elif how == "meta-not-json":
            conn.execute("UPDATE meta SET value = '{oops' WHERE key = 'config'")
        elif how == "no-metrics-table":
            conn.execute("DROP TABLE metrics")
        elif how == "no-config":
            conn.execute("DELETE FROM meta WHERE key = 'config'")
    conn.close()


DAMAGE = {"unknown-study": ["unknown study", "no-such-study"], "invalid-config": ["configuration is not valid", "h"],
          "meta-not-json": ["metadata is unreadable"], "no-metrics-table": ["metrics"],
          "no-config": ["config"], "not-a-database": ["cannot be read"]}


@pytest.mark.parametrize("command", ["show", "report"])
@pytest.mark.parametrize("how", list(DAMAGE))
def test_show_and_report_on_a_damaged_store_are_one_line_and_write_nothing(tmp_path, igr_run, command, how):
    directory = copy_of(igr_run, tmp_path / how)
    damage(directory, how)
    before = snapshot(directory)
    result = invoke_cli([command, directory])
    assert_user_error(result, [str(directory), *DAMAGE[how]])
    assert snapshot(directory) == before


def test_report_into_a_read_only_directory_is_one_line(tmp_path, igr_run, monkeypatch):
    directory = copy_of(igr_run, tmp_path / "ro")
    before = snapshot(directory)
    real_access = os.access
    monkeypatch.setattr(os, "access",
                        lambda p, mode, **kw: False if Path(p) == directory and mode & os.W_OK else real_access(p, mode))
    assert_user_error(invoke_cli(["report", directory]), [str(directory), "not writable"])
    assert snapshot(directory) == before
    assert invoke_cli(["show", directory]).returncode == 0  # reading needs no write access


def test_report_with_figures_replaced_by_a_file_is_one_line_and_keeps_the_file(tmp_path, igr_run):
    directory = copy_of(igr_run, tmp_path / "fig")
    shutil.rmtree(directory / "figures")
    (directory / "figures").write_text("my figures are elsewhere")
    before = snapshot(directory)
    assert_user_error(invoke_cli(["report", directory]), ["figures", "not a directory"])
    assert snapshot(directory) == before


def test_run_all_into_an_unrelated_non_empty_directory_is_refused(tmp_path):
    """Single studies refuse it; `run all` accepted it and would have overwritten its index."""
    for name, files in {"notes": {"notes.txt": "x"}, "website": {"index.html": "<p>mine</p>"}}.items():
        base = tmp_path / name
        base.mkdir()
        for filename, text in files.items():
            (base / filename).write_text(text)
        before = snapshot(base)
        result = invoke_cli(["run", "all", "--quick", "--out", base])
        assert_user_error(result, ["--out", str(base), "not empty"])
        assert snapshot(base) == before


@pytest.mark.parametrize("args, expected", [
    ([*IGR, "--threads", "two"], ["--threads", "integer"]),
    (["run", "explicit-vs-implicit", "--seeds", "abc"], ["--seeds", "integer"]),
    ([*IGR, "--no-such-option"], ["--no-such-option"]),
    (["no-such-command"], ["no-such-command"]),
    (["run"], ["Missing argument", "study"]),
    (["show"], ["Missing argument"]),
], ids=["threads-not-int", "seeds-not-int", "unknown-option", "unknown-command", "no-study", "show-no-dir"])
def test_usage_errors_are_one_line_not_a_usage_box(tmp_path, args, expected):
    result = invoke_cli(args)
    assert_user_error(result, expected)
    assert "╭" not in result.stderr and "Usage:" not in result.stderr


def test_usage_error_in_a_real_process_is_one_line():
    result = run_cli([*IGR, "--seeds", "many"])
    assert_user_error(result, ["--seeds"])
    assert result.stdout == ""


def test_help_still_works():
    for args in ([], ["--help"], ["run", "--help"]):
        result = invoke_cli(args)
        assert result.returncode == (2 if args == [] else 0), result  # a bare `implicitreg` is not a command
        assert "run" in result.stdout and result.stderr == ""


# -- a full disk: one line, exit 1, what was stored is kept -----------------------------------------

def test_a_full_disk_after_the_first_population_keeps_it_and_resume_completes(tmp_path, monkeypatch):
    out = tmp_path / "full"
    real_finish, calls = Store.finish, []

    def finish(self, results):
        calls.append(1)
        if len(calls) == 2:
            raise sqlite3.OperationalError("database or disk is full")
        return real_finish(self, results)
    monkeypatch.setattr(Store, "finish", finish)
    result = invoke_cli([*TWO_POPULATIONS, "--out", out])
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert len(error_lines(result)) == 1, result
    line = error_lines(result)[0]
    assert "disk is full" in line and "kept" in line and f"--resume --out {out}" in line
    runs, _ = read_store(out)
    status = dict(zip(runs["run_id"], runs["status"]))
    assert {s for r, s in status.items() if r.startswith("mlp/")} == {"done"}  # the first population, kept
    assert {s for r, s in status.items() if r.startswith("cnn/")} == {"running"}
    monkeypatch.setattr(Store, "finish", real_finish)
    resumed = invoke_cli([*TWO_POPULATIONS, "--resume", "--out", out])
    assert resumed.returncode == 0, resumed
    assert set(read_store(out)[0]["status"]) == {"done"}


def test_a_full_disk_while_creating_the_store_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(Store, "create", full)
    out = tmp_path / "o"
    result = invoke_cli([*IGR, "--out", out])
    assert result.returncode == 1 and "Traceback" not in result.stderr, result
    assert len(result.stderr.strip().splitlines()) == 1 and "No space left" in result.stderr, result
    assert not out.exists()


@pytest.mark.parametrize("limit_kib", [32, 100])
def test_a_file_size_limit_in_a_real_process_is_one_line_and_the_run_continues(tmp_path, limit_kib):
    """``ulimit -f``: writes past the limit fail (EFBIG) at different steps — creating the store,
    storing the runs, writing the figures — and each is one line, exit 1; the directory then
    either reruns (nothing stored) or resumes to the end."""
    out = tmp_path / "limited"
    limit = limit_kib * 1024
    proc = subprocess.run(cli_command([*IGR, "--out", str(out)]), capture_output=True, text=True, env=cli_env(),
                          timeout=180,
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)))
    result = CliResult([*IGR, "--out", str(out)], proc.returncode, proc.stdout, proc.stderr)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result
    assert len(error_lines(result)) == 1, result
    stored = (out / Store.FILENAME).exists()
    assert ("--resume" in error_lines(result)[0]) == stored, result
    assert not out.exists() or stored, "a partial directory without a store was left"
    finished = run_cli([*IGR, *(["--resume"] if stored else []), "--out", str(out)])
    assert finished.returncode == 0, finished
    assert set(read_store(out)[0]["status"]) == {"done"}


# -- 2. paths are text, not markup -------------------------------------------------------------------

def test_brackets_in_out_survive_run_show_and_report(tmp_path):
    """Before: `--out 'o[/b]'` crashed with a MarkupError after all the work was done."""
    (tmp_path / "o[").mkdir()
    out = tmp_path / "o[" / "b]"
    result = invoke_cli([*IGR, "--out", out])
    assert result.returncode == 0, result
    assert f"results: {out}/results.sqlite" in result.stdout
    for command in (["show", out], ["report", out]):
        again = invoke_cli(command)
        assert again.returncode == 0 and "Traceback" not in again.stderr, again
        assert str(out) in again.stdout


def test_markup_in_out_is_printed_as_written(tmp_path):
    out = tmp_path / "p[bold red]x"
    result = invoke_cli([*IGR, "--out", out])
    assert result.returncode == 0, result
    assert f"{out}/summary.json" in result.stdout  # not "…/px/summary.json"


def test_brackets_in_a_data_path(tmp_path):
    folder = tmp_path / "data["
    folder.mkdir()
    data = folder / "b]mine.npz"  # the path holds the closing tag "[/b]"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 60))
    np.savez(data, X=x, y=x[:, 0])
    out = tmp_path / "mine[1]"
    result = invoke_cli(["run", "min-norm", "--quick", "--threads", "1", "--data", data, "--out", out])
    assert result.returncode == 0, result
    shown = invoke_cli(["show", out])
    assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown
    missing = invoke_cli(["run", "min-norm", "--data", folder / "b]none.npz", "--out", tmp_path / "m2"])
    assert_user_error(missing, [str(folder / "b]none.npz")], tmp_path / "m2")


def test_a_failed_populations_message_is_printed_as_written(tmp_path, monkeypatch):
    """Before: rich swallowed `[self.name]` in `compute([self.name], population, ...)`."""
    import implicitreg.backends.local as local

    def broken(*args, **kwargs):
        raise RuntimeError("compute([self.name], population, data) failed [/red]")
    monkeypatch.setattr(local, "train_population", broken)
    out = tmp_path / "broken"
    result = invoke_cli([*TINY, "--out", out])
    assert result.returncode == 1 and "Traceback (in-process)" not in result.stderr, result
    assert "compute([self.name], population, data) failed [/red]" in result.stderr
    assert f"--resume --out {out}" in result.stderr


# -- progress where stderr is not a terminal ----------------------------------------------------------

def test_progress_is_one_plain_line_per_population_when_not_a_terminal(tmp_path):
    result = invoke_cli([*TWO_POPULATIONS, "--out", tmp_path / "o"])
    assert result.returncode == 0, result
    lines = result.stderr.strip().splitlines()
    assert [line.split(": ")[-1] for line in lines if line.endswith("started")] == ["started", "started"]
    assert len([line for line in lines if " done in " in line]) == 2
    assert "━" not in result.stderr and "\r" not in result.stderr


def test_python_api_shows_progress_unless_told_not_to(tmp_path, capsys):
    import implicitreg

    implicitreg.run("igr", quick=True, threads=1, out=tmp_path / "quiet", progress=False)
    assert capsys.readouterr().err == ""
    implicitreg.run("igr", quick=True, threads=1, out=tmp_path / "told")
    err = capsys.readouterr().err
    assert "igr:" in err and "started" in err and "done in" in err


# -- 4. output a user can act on ---------------------------------------------------------------------

def test_show_on_an_interrupted_run_lists_only_what_exists(tmp_path, igr_run):
    directory = copy_of(igr_run, tmp_path / "interrupted")
    (directory / "summary.json").unlink()
    (directory / "report.html").unlink()
    conn = sqlite3.connect(directory / Store.FILENAME)
    with conn:
        conn.execute("UPDATE runs SET status = 'running' WHERE run_id LIKE 'mlp/%'")
        conn.execute("DELETE FROM meta WHERE key = 'wall_seconds'")
    conn.close()
    result = invoke_cli(["show", directory])
    assert result.returncode == 0, result
    text = " ".join(result.stdout.split())
    assert "summary.json" not in text and "report.html" not in text
    assert f"results: {directory}/results.sqlite" in text
    assert "None" not in text and "wall time: not recorded" in text
    assert f"--resume --out {directory}" in text


def test_measures_lists_families_and_the_functions_returning_several_values():
    result = invoke_cli(["measures"])
    assert result.returncode == 0, result
    text = result.stdout
    assert "``" not in text and ":func:" not in text and ":class:" not in text
    assert "family" in text and "norm-product" in text
    for name in ("spectral_norms", "frobenius_norms", "hessian_eigenvalues"):
        assert f"measures.{name}" in text
    assert "Margin divided by spectral complexity: margin / spectral_complexity" in " ".join(text.split())


# -- --strict: the verdict as the exit code -----------------------------------------------------------

def test_exit_code_is_0_whatever_the_verdict_and_strict_maps_it(tmp_path, igr_run, monkeypatch):
    tiny = tmp_path / "tiny"
    plain = invoke_cli([*TINY, "--json", "--out", tiny])  # 40 steps cannot interpolate: fail
    assert plain.returncode == 0 and json.loads(plain.stdout)["verdict"] == "fail", plain
    strict = invoke_cli([*TINY, "--strict", "--out", tmp_path / "tiny-strict"])
    assert strict.returncode == 1, strict

    directory = copy_of(igr_run, tmp_path / "igr")
    passed = invoke_cli([*IGR, "--strict", "--resume", "--out", directory])  # solved already: analysis only
    assert passed.returncode == 0 and "PASS" in passed.stdout, passed

    from implicitreg.studies.base import Analysis, Check
    from implicitreg.studies.igr import STUDY

    real_analyze = type(STUDY).analyze

    def undecided(self, *args, **kwargs):
        analysis = real_analyze(self, *args, **kwargs)
        checks = [Check(c.name, None, c.threshold, None, "not computed") for c in analysis.checks]
        return Analysis(analysis.table, checks, analysis.notes)
    monkeypatch.setattr(type(STUDY), "analyze", undecided)
    inconclusive = invoke_cli([*IGR, "--strict", "--resume", "--out", directory])
    assert inconclusive.returncode == 3 and "INCONCLUSIVE" in inconclusive.stdout, inconclusive
    assert invoke_cli([*IGR, "--resume", "--out", directory]).returncode == 0


def test_a_boolean_is_not_a_number(tmp_path):
    out = tmp_path / "o"
    assert_user_error(invoke_cli([*IGR, "--set", "h=true", "--out", out]), ["h", "not a boolean"], out)


def test_data_given_twice_is_refused(tmp_path):
    data = tmp_path / "mine.npz"
    x = np.random.default_rng(0).normal(size=(30, 200))
    np.savez(data, X=x, y=x[:, 0])
    out = tmp_path / "o"
    assert_user_error(invoke_cli(["run", "min-norm", "--quick", "--data", data, "--set", f"data_file={data}",
                                  "--out", out]), ["data_file", "--data"], out)
