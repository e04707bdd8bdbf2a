"""Reproducibility and crash recovery of a sweep, through the real CLI.

(a) The same command twice gives bitwise-identical stored metrics.
(b) A sweep killed with SIGKILL between its populations and resumed with ``--resume`` ends with
    every planned run stored once, ``done``, with exactly the metrics of an uninterrupted sweep.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import read_store, run_cli, start_cli
from implicitreg.config import build_config, parse_sets
from implicitreg.studies.explicit_vs_implicit import STUDY

# Two populations: 5 MLP runs (~0.3 s) then 5 CNN runs (~2 s, several times slower), so a kill
# issued as soon as the MLP population is committed lands while the CNN population trains.
# No train-accuracy target, so every run trains the full 100 steps. --threads 1 fixes the
# intra-op thread count (results are bitwise reproducible for a given thread count) and lets two
# sweeps share the two cores.
SETS = ["models=[mlp,cnn]", "mlp.hidden=[16]", "cnn.channels=16", "data.n_train=200", "data.n_test=100",
        "train.max_steps=100", "train.eval_every=50", "train.target_train_acc=null"]
SWEEP = ["run", "explicit-vs-implicit", "--seeds", "1", "--threads", "1",
         *[arg for s in SETS for arg in ("--set", s)]]
RUN_COLUMNS = ["run_id", "study", "arm", "seed", "config", "status", "final_step", "target_step"]


def planned_run_ids() -> set[str]:
    config = build_config(STUDY.Config, STUDY.defaults(False), {**parse_sets(SETS), "seeds": 1})
    return {m.run_id for group in STUDY.plan(config) for m in group.members}


def statuses(out: Path) -> dict[str, str] | None:
    """run_id -> status, read without creating anything; None while the store is not readable yet."""
    path = out / "results.sqlite"
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
        try:
            return dict(conn.execute("SELECT run_id, status FROM runs").fetchall())
        finally:
            conn.close()
    except sqlite3.Error:  # not initialized yet, or locked for a moment
        return None


def kill_after_first_population(out: Path, timeout: float = 150.0) -> dict[str, str] | None:
    """Start the sweep, SIGKILL it once some run is ``done``; the statuses at the kill (None: too late)."""
    log = out.with_suffix(".log")
    proc = start_cli([*SWEEP, "--out", str(out)], log)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                if proc.returncode != 0:
                    pytest.fail(f"the sweep to be killed exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
                return None  # it finished before we saw a finished population
            seen = statuses(out)
            if seen and "done" in seen.values():
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return statuses(out)
            time.sleep(0.05)
        pytest.fail(f"no run finished within {timeout} s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """Two uninterrupted sweeps (run concurrently), and a killed-then-resumed one."""
    root = tmp_path_factory.mktemp("resume")
    reference = [start_cli([*SWEEP, "--out", str(root / name)], root / f"{name}.log") for name in ("a", "b")]
    try:
        killed, at_kill = None, None
        for attempt in range(2):  # the kill can only land too late if the machine stalls; retry once
            killed = root / f"killed{attempt}"
            at_kill = kill_after_first_population(killed)
            if at_kill is not None and set(at_kill.values()) != {"done"}:
                break
        else:
            at_kill = None
        if at_kill is not None:
            runs_at_kill, _ = read_store(killed)
            resumed = run_cli([*SWEEP, "--resume", "--out", str(killed)], timeout=300)
        else:
            runs_at_kill, resumed = None, None
        codes = [proc.wait(timeout=300) for proc in reference]
    finally:
        for proc in reference:
            if proc.poll() is None:
                proc.kill()
    logs = [(root / f"{name}.log").read_text()[-3000:] for name in ("a", "b")]
    return {"a": root / "a", "b": root / "b", "codes": codes, "logs": logs, "killed": killed, "at_kill": at_kill,
            "runs_at_kill": runs_at_kill, "resumed": resumed}


def frames(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs, metrics = read_store(out)
    return runs[RUN_COLUMNS].reset_index(drop=True), metrics.reset_index(drop=True)


def test_same_command_twice_gives_bitwise_identical_metrics(sweeps):
    assert sweeps["codes"] == [0, 0], sweeps["logs"]
    runs_a, metrics_a = frames(sweeps["a"])
    runs_b, metrics_b = frames(sweeps["b"])
    assert set(runs_a["run_id"]) == planned_run_ids()
    assert sorted(metrics_a["step"].unique()) == [50, 100]  # eval_every=50, max_steps=100
    per_run = metrics_a.groupby("run_id").size()
    assert len(per_run) == 10 and per_run.nunique() == 1 and per_run.iloc[0] >= 2 * 7
    assert metrics_a["value"].notna().all()
    # exact equality: same seeds, same thread count, same code -> the same floating-point operations
    pd.testing.assert_frame_equal(metrics_a, metrics_b, check_exact=True)
    pd.testing.assert_frame_equal(runs_a, runs_b, check_exact=True)
    summary_a = json.loads((sweeps["a"] / "summary.json").read_text())
    summary_b = json.loads((sweeps["b"] / "summary.json").read_text())
    assert summary_a["table"] == summary_b["table"] and summary_a["checks"] == summary_b["checks"]


def test_provenance_records_the_thread_count(sweeps):
    runs, _ = read_store(sweeps["a"])
    provenance = [json.loads(p) for p in runs["provenance"]]
    assert {p["threads"] for p in provenance} == {1}  # --threads 1
    assert all(p["versions"]["torch"] and p["device"] == "cpu" for p in provenance)
    summary = json.loads((sweeps["a"] / "summary.json").read_text())
    assert summary["provenance"]["threads"] == 1


def test_resume_after_sigkill_matches_an_uninterrupted_sweep(sweeps):
    if sweeps["at_kill"] is None:
        pytest.skip("both attempts finished every run before the kill landed (machine too slow to poll?)")
    at_kill = sweeps["at_kill"]
    # the kill landed mid-sweep: the MLP population was committed, some CNN runs were not
    done_at_kill = {run_id for run_id, status in at_kill.items() if status == "done"}
    assert done_at_kill and set(at_kill.values()) - {"done"}, at_kill
    assert set(at_kill) == planned_run_ids()  # every planned run was registered before training began

    resumed = sweeps["resumed"]
    assert resumed.returncode == 0, resumed
    killed = sweeps["killed"]
    runs_k, metrics_k = frames(killed)
    runs_a, metrics_a = frames(sweeps["a"])
    assert sorted(runs_k["run_id"]) == sorted(planned_run_ids())  # each planned run exactly once
    assert set(runs_k["status"]) == {"done"}
    pd.testing.assert_frame_equal(metrics_k, metrics_a, check_exact=True)
    pd.testing.assert_frame_equal(runs_k, runs_a, check_exact=True)

    # runs finished before the kill were not trained again: their rows are untouched
    before = sweeps["runs_at_kill"].set_index("run_id").loc[sorted(done_at_kill)]
    after = read_store(killed)[0].set_index("run_id").loc[sorted(done_at_kill)]
    # (dtypes may differ: at the kill, NULL final_step of the unfinished runs made the column float)
    pd.testing.assert_frame_equal(after, before, check_exact=True, check_dtype=False)

    summary_k = json.loads((killed / "summary.json").read_text())
    summary_a = json.loads((sweeps["a"] / "summary.json").read_text())
    assert summary_k["verdict"] == summary_a["verdict"] and summary_k["table"] == summary_a["table"]
    counts = {k: v for k, v in summary_k["runs"].items() if v}  # (zero counts may be listed or not)
    assert counts.get("done") == 10 and counts.get("planned", counts.get("total")) == 10
    assert not set(counts) - {"planned", "total", "done"}, counts


def test_solved_study_resumes_without_solving_again(tmp_path, monkeypatch):
    """A finished solved study resumed with --resume keeps its runs and solutions.npz as they are
    (solving is deterministic and was stored); a rerun without --resume is refused."""
    from conftest import invoke_cli
    from implicitreg.studies.min_norm import STUDY as MIN_NORM

    out = tmp_path / "mn"
    first = invoke_cli(["run", "min-norm", "--quick", "--out", out])
    assert first.returncode == 0, first
    solutions, runs_before = (out / "solutions.npz").read_bytes(), read_store(out)[0]
    calls = []
    monkeypatch.setattr(type(MIN_NORM), "solve", lambda *a: calls.append(a) or pytest.fail("solved again"))
    resumed = invoke_cli(["run", "min-norm", "--quick", "--resume", "--out", out])
    assert resumed.returncode == 0, resumed
    assert calls == [] and (out / "solutions.npz").read_bytes() == solutions
    pd.testing.assert_frame_equal(read_store(out)[0].drop(columns=["provenance"]),
                                  runs_before.drop(columns=["provenance"]))
    again = invoke_cli(["run", "min-norm", "--quick", "--out", out])
    assert again.returncode == 2 and "--resume" in again.stderr


# -- a directory can always be continued: a kill at every step of the store's creation ------------

IGR = ["run", "igr", "--quick", "--threads", "1"]


def igr_options(out: Path, resume: bool = False):
    from implicitreg.runner import RunOptions

    return RunOptions("igr", quick=True, threads=1, out=out, resume=resume)


def run_until_killed(prepared, step: int) -> int:
    """Run ``execute(prepared)`` in a forked child that dies (``os._exit``, no clean-up: like
    ``kill -9``) at the ``step``-th line executed in the code that creates the directory, its lock
    and its store; exit status 9 if it died there, 0 if the store was complete first."""
    import sys

    from implicitreg import provenance, runner
    from implicitreg.runner import executing, faults, paths
    from implicitreg.store import DirectoryLock, Store

    creation = {runner.execute.__code__, executing.execute_all.__code__, executing.open_session.__code__,
                faults.make_directories.__code__, paths.store_state.__code__,
                Store.create.__func__.__code__, DirectoryLock.acquire.__code__, Store.inspect.__func__.__code__}
    pid = os.fork()
    if pid == 0:  # the child: no pytest, no clean-up, only os._exit
        count = 0

        def line(frame, event, arg):
            nonlocal count
            if event == "line":
                count += 1
                if count == step:
                    os._exit(9)
            return line

        def call(frame, event, arg):
            if frame.f_code is provenance.collect.__code__:
                os._exit(0)  # the store exists and holds its metadata: creation is over
            return line if frame.f_code in creation else None

        sys.settrace(call)
        try:
            runner.execute(prepared)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_kill_at_any_step_of_creating_the_store_leaves_a_directory_that_reruns_or_resumes(tmp_path):
    """Before, the tables were committed before the metadata: a kill in between left a directory
    that `--resume` refused ("a different study or configuration (None)") and a plain rerun refused
    too ("already holds results")."""
    from implicitreg.config import ConfigError
    from implicitreg.runner import execute, prepare
    from implicitreg.store import Store

    states = {}
    for step in range(1, 400):
        out = tmp_path / f"killed-at-{step}"
        code = run_until_killed(prepare(igr_options(out)), step)
        assert code in (0, 9), f"step {step}: the child failed ({code})"
        stored = out / Store.FILENAME
        if stored.exists():  # complete: the metadata is there, --resume continues, a plain run refuses
            meta, _ = Store.inspect(stored)
            assert meta["study"] == "igr" and meta["quick"] is True, (step, meta)
            prepare(igr_options(out, resume=True))
            with pytest.raises(ConfigError, match="already holds results"):
                prepare(igr_options(out))
            states.setdefault("complete", out)
        else:  # nothing stored: both a plain rerun and --resume start afresh
            prepare(igr_options(out))
            prepare(igr_options(out, resume=True))
            leftovers = sorted(p.name for p in out.iterdir()) if out.exists() else []
            states.setdefault("temporary store left" if any(".creating-" in n for n in leftovers) else
                              "directory made" if out.exists() else "nothing made", out)
        if code == 0:
            break
    else:
        pytest.fail("the store was never complete within 400 steps")
    assert {"nothing made", "directory made", "temporary store left", "complete"} <= set(states), states
    # and each kind of leftover really completes: a plain rerun where nothing was stored, --resume otherwise
    for kind, out in states.items():
        result = execute(prepare(igr_options(out, resume=kind == "complete")))
        assert result.verdict == "pass" and not result.failures, kind
        assert not [p for p in out.iterdir() if ".creating-" in p.name], kind
        runs, _ = read_store(out)
        assert len(runs) == result.summary["runs"].get("planned", result.summary["runs"].get("total"))
        assert set(runs["status"]) == {"done"}


def test_a_store_left_without_metadata_by_an_older_version_is_rerun_and_resumed(tmp_path):
    from implicitreg.runner import execute, prepare
    from implicitreg.store import Store

    for resume in (False, True):
        out = tmp_path / f"legacy-{resume}"
        out.mkdir()
        Store(out / Store.FILENAME).close()  # tables, no metadata, no runs
        result = execute(prepare(igr_options(out, resume=resume)))
        assert result.verdict == "pass"
        assert Store.inspect(out / Store.FILENAME)[0]["study"] == "igr"


def test_sigint_early_in_a_real_process_leaves_a_directory_that_completes(tmp_path):
    """Ctrl-C as soon as the directory appears (the store may or may not exist yet)."""
    out = tmp_path / "interrupted"
    log = tmp_path / "interrupted.log"
    proc = start_cli([*IGR, "--out", str(out)], log)
    try:
        deadline = time.monotonic() + 60
        while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "Traceback" not in text, text
    assert proc.returncode in (0, 130), text
    resume = ["--resume"] if (out / "results.sqlite").exists() else []
    finished = run_cli([*IGR, *resume, "--out", str(out)])
    assert finished.returncode == 0, finished
    assert set(read_store(out)[0]["status"]) == {"done"}


# -- resuming keeps what the first session recorded -------------------------------------------------

def test_resume_adds_wall_time_and_keeps_the_first_sessions_engine(tmp_path):
    from conftest import TINY, invoke_cli
    from implicitreg.store import Store

    out = tmp_path / "two-sessions"
    tiny = [*TINY, "--set", "models=[mlp,cnn]", "--set", "cnn.channels=4"]  # two populations
    first = invoke_cli([*tiny, "--out", out])
    assert first.returncode == 0, first
    with Store.open_existing(out) as store:
        meta_before, runs_before = store.meta(), store.runs().set_index("run_id")
    # a run that did not finish (killed), to be trained again by a session with the other engine
    conn = sqlite3.connect(out / "results.sqlite")
    with conn:
        conn.execute("UPDATE runs SET status = 'running' WHERE run_id LIKE 'cnn/%'")
    conn.close()
    resumed = invoke_cli([*tiny, "--engine", "sequential", "--resume", "--out", out])
    assert resumed.returncode == 0, resumed
    with Store.open_existing(out) as store:
        meta, runs = store.meta(), store.runs().set_index("run_id")
    assert meta["engine"] == "population" and meta_before["engine"] == "population"
    assert meta["wall_seconds"] > meta_before["wall_seconds"] > 0
    assert [s["engine"] for s in meta["sessions"]] == ["population", "sequential"]
    assert meta["wall_seconds"] == pytest.approx(sum(s["wall_seconds"] for s in meta["sessions"]), abs=0.02)
    engines = runs["provenance"].map(lambda p: p["engine"])
    cnn = runs.index.str.startswith("cnn/")
    assert set(engines[cnn]) == {"sequential"} and set(engines[~cnn]) == {"population"}
    unchanged = runs.index[~cnn]
    assert (runs.loc[unchanged, "started_at"] == runs_before.loc[unchanged, "started_at"]).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["provenance"]["engine"] == "population"
    assert summary["provenance"]["wall_seconds"] == meta["wall_seconds"]
