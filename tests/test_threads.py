"""The default thread count: the cores other processes leave free (runner.threads)."""

import subprocess
import sys
import time

import pytest

from implicitreg.runner import RunOptions, prepare, threads
from implicitreg.runner.threads import ThreadChoice, busy_cores, polite_threads


@pytest.mark.parametrize("cores, busy, expected", [(2, 0.0, 2), (2, 0.4, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 3.0, 1),
                                                   (16, 5.6, 10), (16, 0.0, 16), (1, 0.0, 1), (4, 2.5, 1)])
def test_the_default_leaves_other_processes_their_cores(cores, busy, expected):
    # the rule stated in the docstring: cores − busy rounded half up, at least 1 (2.5 rounds to 3)
    choice = polite_threads(cores, busy)
    assert choice.threads == expected == max(1, min(cores, cores - int(busy + 0.5)))
    assert ("busy with other processes" in choice.reason) == (expected < cores)


def test_busy_cores_reads_the_runnable_count_without_this_process(tmp_path, monkeypatch):
    loadavg = tmp_path / "loadavg"
    loadavg.write_text("0.52 0.41 0.30 3/215 12345\n")
    monkeypatch.setattr(threads, "LOADAVG", loadavg)
    assert busy_cores(samples=3, interval=0.0) == 2.0
    loadavg.write_text("0.00 0.00 0.00 1/215 12345\n")
    assert busy_cores(samples=1) == 0.0
    monkeypatch.setattr(threads, "LOADAVG", tmp_path / "missing")  # no /proc: the one-minute load average
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (1.5, 1.0, 0.5))
    assert busy_cores() == 1.5


@pytest.mark.skipif(not threads.LOADAVG.exists(), reason="needs /proc/loadavg (Linux)")
def test_a_spinning_competitor_is_counted_at_once():
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # started and running: the load average would take a minute to show it
        assert busy_cores() >= 1.0
    finally:
        competitor.kill()
        competitor.wait()


def test_prepare_takes_the_policy_unless_threads_are_given(tmp_path, monkeypatch):
    monkeypatch.setattr("implicitreg.runner.preparing.polite_threads", lambda: ThreadChoice(1, 2, 1.0))
    polite = prepare(RunOptions("width", True, out=tmp_path / "a"))
    assert polite.threads == 1 and "1 of 2 threads" in polite.threads_note
    given = prepare(RunOptions("width", True, out=tmp_path / "b", threads=2))
    assert given.threads == 2 and given.threads_note == ""
    monkeypatch.setattr("implicitreg.runner.preparing.polite_threads", lambda: ThreadChoice(2, 2, 0.0))
    quiet = prepare(RunOptions("width", True, out=tmp_path / "c"))
    assert quiet.threads == 2 and quiet.threads_note == ""
