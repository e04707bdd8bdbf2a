"""One writer per results directory: an advisory lock held for the whole of ``execute()``.

Before, two processes resuming one directory both trained and both wrote the store.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import TINY, assert_user_error, invoke_cli, read_store, run_cli, start_cli
from implicitreg.config import ConfigError
from implicitreg.runner import RunOptions, execute, prepare
from implicitreg.store import LOCK_FILENAME, DirectoryBusy, DirectoryLock, Store


def test_a_second_lock_on_a_directory_is_refused_until_the_first_is_released(tmp_path):
    first = DirectoryLock(tmp_path).acquire()
    assert DirectoryLock.is_held(tmp_path)
    with pytest.raises(DirectoryBusy, match="another implicitreg process"):
        DirectoryLock(tmp_path).acquire()
    first.release()
    assert not DirectoryLock.is_held(tmp_path)
    with DirectoryLock(tmp_path):
        assert DirectoryLock.is_held(tmp_path)
    assert not DirectoryLock.is_held(tmp_path)


def test_is_held_creates_nothing(tmp_path):
    assert not DirectoryLock.is_held(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_run_into_a_directory_another_process_writes_is_refused_in_one_line(tmp_path):
    """The lock held (as by a process still training there): a resume and a fresh run are refused,
    and the stored results are untouched."""
    out = tmp_path / "busy"
    first = invoke_cli([*TINY, "--out", out])
    assert first.returncode == 0, first
    runs_before, metrics_before = read_store(out)
    summary_before = (out / "summary.json").read_bytes()
    with DirectoryLock(out):
        for args in ([*TINY, "--resume", "--out", out], [*TINY, "--out", out]):
            result = invoke_cli(args)
            assert_user_error(result, ["another implicitreg process", str(out)])
    runs_after, metrics_after = read_store(out)
    assert runs_after.equals(runs_before) and metrics_after.equals(metrics_before)
    assert (out / "summary.json").read_bytes() == summary_before


def test_execute_takes_the_lock_itself_and_releases_it(tmp_path):
    """prepare() saw a free directory; a writer that arrives before execute() is caught there."""
    out = tmp_path / "race"
    prepared = prepare(RunOptions("igr", quick=True, threads=1, out=out))
    out.mkdir()
    with DirectoryLock(out):
        with pytest.raises(ConfigError, match="another implicitreg process"):
            execute(prepared)
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILENAME]  # nothing of the refused run
    result = execute(prepared)
    assert result.verdict == "pass"
    assert not DirectoryLock.is_held(out)


def test_results_written_after_prepare_are_not_overwritten(tmp_path):
    """Two fresh runs prepared for one new directory: the second, executed after the first
    finished, finds its results under the lock and refuses (instead of replacing the store)."""
    out = tmp_path / "twice"
    options = RunOptions("igr", quick=True, threads=1, out=out)
    first, second = prepare(options), prepare(options)
    execute(first)
    stored = (out / Store.FILENAME).read_bytes()
    with pytest.raises(ConfigError, match="already holds results"):
        execute(second)
    assert (out / Store.FILENAME).read_bytes() == stored


def test_lock_is_released_when_execute_fails(tmp_path, monkeypatch):
    from implicitreg.studies.igr import STUDY

    out = tmp_path / "fails"
    prepared = prepare(RunOptions("igr", quick=True, threads=1, out=out))
    monkeypatch.setattr(type(STUDY), "solve", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        execute(prepared)
    assert not DirectoryLock.is_held(out)


def test_two_real_processes_resuming_one_directory_one_trains(tmp_path):
    """A sweep running in one process; the same command with --resume in a second is refused at
    once, and the first finishes as if alone."""
    sets = ["models=[mlp,cnn]", "mlp.hidden=[16]", "cnn.channels=16", "data.n_train=200", "data.n_test=100",
            "train.max_steps=300", "train.eval_every=100", "train.target_train_acc=null"]
    sweep = ["run", "explicit-vs-implicit", "--seeds", "1", "--threads", "1", *[a for s in sets for a in ("--set", s)]]
    out = tmp_path / "shared"
    log = tmp_path / "first.log"
    proc = start_cli([*sweep, "--out", str(out)], log)
    try:
        deadline = time.monotonic() + 120
        while not (out / Store.FILENAME).exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if proc.poll() is not None:
            pytest.skip("the first sweep finished before the second started (machine too slow to poll?)")
        second = run_cli([*sweep, "--resume", "--out", str(out)])
        first_code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if first_code == 0 and second.returncode == 0:
        pytest.skip("the first sweep finished before the second checked the lock")
    assert_user_error(second, ["another implicitreg process", str(out)])
    assert first_code == 0, Path(log).read_text()[-3000:]
    runs, _ = read_store(out)
    assert len(runs) == 10 and set(runs["status"]) == {"done"}
