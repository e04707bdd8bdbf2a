"""The driver: study → plan → population chunks → backend → store → analysis → report.

One concept per module; this package re-exports what other code uses:

- :mod:`~implicitreg.runner.preparing` — :class:`RunOptions` → :func:`prepare` → :class:`Prepared`;
  everything a user can get wrong is checked there, before any file is written, with
  :mod:`~implicitreg.runner.paths` (``--out`` and the store already there) and
  :mod:`~implicitreg.runner.plan_size` (at most :data:`MAX_RUNS` runs).
- :mod:`~implicitreg.runner.executing` — :func:`execute` (one study), :func:`execute_all` (several on
  one backend at once): solve, train the unfinished chunks (:mod:`~implicitreg.runner.chunks`) on a
  backend (:func:`make_backend`: local or Ray), store each outcome; storage failures through
  :mod:`~implicitreg.runner.faults`.
- :mod:`~implicitreg.runner.summary` — :func:`summarize`, :func:`run_counts`, :func:`judge`;
  :mod:`~implicitreg.runner.outputs` — :func:`write_outputs` and :class:`StudyResult`;
  :mod:`~implicitreg.runner.solutions` — a solved study's ``solutions.npz``;
  :mod:`~implicitreg.runner.threads` — the default thread count: the cores other processes leave free.
"""

from __future__ import annotations

from implicitreg.runner.chunks import chunk_size, max_members, member_bytes
from implicitreg.runner.executing import execute, execute_all, run_record, solve
from implicitreg.runner.outputs import StudyResult, write_outputs
from implicitreg.runner.paths import check_out_path, default_out
from implicitreg.runner.plan_size import MAX_RUNS, check_plan_size
from implicitreg.runner.preparing import (
    ALL,
    DEVICES,
    ENGINES,
    Prepared,
    RunOptions,
    make_backend,
    prepare,
    prepare_all,
    prepare_study,
    resolve_device,
)
from implicitreg.runner.solutions import SOLUTIONS, read_solutions, write_solutions
from implicitreg.runner.summary import QUICK_NOTE, judge, run_counts, summarize
from implicitreg.runner.threads import ThreadChoice, available_threads, polite_threads

__all__ = ["ALL", "DEVICES", "ENGINES", "MAX_RUNS", "Prepared", "QUICK_NOTE", "RunOptions", "SOLUTIONS",
           "StudyResult", "ThreadChoice", "available_threads", "check_out_path", "check_plan_size",
           "chunk_size", "default_out", "execute", "execute_all", "judge", "make_backend", "max_members",
           "member_bytes", "polite_threads", "prepare", "prepare_all", "prepare_study", "read_solutions",
           "resolve_device", "run_counts", "run_record", "solve", "summarize", "write_outputs",
           "write_solutions"]
