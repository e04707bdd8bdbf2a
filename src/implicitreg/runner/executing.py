"""Executing a prepared run: solve (a solved study), train the unfinished population chunks on a
backend, store each outcome as it arrives, then write the outputs."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any, Callable

import torch
from threadpoolctl import threadpool_limits

from implicitreg import provenance
from implicitreg.backends import Backend, LocalBackend, Task
from implicitreg.config import ConfigError
from implicitreg.plan import Group
from implicitreg.runner.chunks import engine_for, max_members
from implicitreg.runner.faults import make_directories, remove_created, write_fault
from implicitreg.runner.outputs import StudyResult, write_outputs
from implicitreg.runner.paths import store_state
from implicitreg.runner.preparing import Prepared
from implicitreg.runner.solutions import write_solutions
from implicitreg.store import LOCK_FILENAME, DirectoryBusy, DirectoryLock, Store, bookkeeping_files
from implicitreg.store import now as store_now
from implicitreg.studies.base import ProgressBar, Solved, Study, is_solved, no_progress


def run_record(study: Study, group: Group, member) -> dict[str, Any]:
    """The store's record of one planned run (``member`` a :class:`~implicitreg.plan.Member` of ``group``)."""
    return {"run_id": member.run_id, "study": study.name, "arm": member.arm, "seed": member.seed,
            "config": group.run_config(member)}


def solve(prepared: Prepared, store: Store, prov: dict[str, Any], progress: ProgressBar) -> None:
    """Run a solved study's dynamics and store its runs and ``solutions.npz`` (skipped on resume
    once done: solving is deterministic)."""
    study, config = prepared.study, prepared.config
    if store.meta().get("solved"):
        return
    # One thread unless --threads says otherwise: these are small float64 problems, where a second
    # thread only adds synchronization (measured 6–13× slower on a busy 2-core machine). numpy's
    # BLAS (SVDs, lstsq, cvxpy) gets the same count: BLAS threads that outnumber the free cores spin.
    threads = prepared.options.threads or 1
    torch.set_num_threads(threads)
    with threadpool_limits(limits=threads, user_api="blas"):
        solved: Solved = study.solve(config, prepared.problem, progress)
    store.start([{"run_id": r.run_id, "study": study.name, "arm": r.arm, "seed": r.seed, "config": r.config}
                 for r in solved.runs], prov)
    store.finish(solved.runs)
    write_solutions(prepared.out, solved.arrays)
    store.set_meta(solved=True)


def execute(prepared: Prepared, backend: Backend | None = None,
            progress: Callable[[Task], Callable[[int, int], None]] | None = None,
            on_outcome: Callable[[Any], None] | None = None,
            solve_progress: ProgressBar = no_progress) -> "StudyResult":
    """Solve and train what is not yet finished, store it, analyze and write the report.

    One process at a time writes a directory (an advisory lock, held throughout: a second one gets
    :class:`ConfigError`). The store is created whole or not at all; a failure before it exists
    removes what this call created. A full disk later raises :class:`StorageFault`, keeping every
    population committed before (``--resume`` continues).
    """
    study, config, out = prepared.study, prepared.config, prepared.out
    started = time.perf_counter()
    created: list[Path] = []
    lock = DirectoryLock(out)
    try:
        created = make_directories(out)
        lock.acquire()
        # checked again under the lock: another process may have written here since prepare()
        resuming = store_state(out, study, config, prepared.options.resume)
        for stale in bookkeeping_files(out):
            if stale.name != LOCK_FILENAME:
                stale.unlink(missing_ok=True)  # a killed creation's temporary store
        store = (Store(out / Store.FILENAME) if resuming else
                 Store.create(out / Store.FILENAME, study=study.name, config=json.loads(config.model_dump_json()),
                              quick=prepared.options.quick, engine=prepared.options.engine, wall_seconds=0.0))
    except BaseException as err:
        locked = lock.held
        if not (out / Store.FILENAME).exists():
            remove_created(out, created, locked)
        lock.release()
        if isinstance(err, DirectoryBusy):
            raise ConfigError(f"--out: {err}") from None
        fault = write_fault(err, out, stored=False)
        if fault is None:
            raise
        raise fault from None
    try:
        with store:
            meta = store.meta()
            # a resumed session adds its time to the earlier sessions'; the first session's engine
            # and quick flag stay the directory's (each run's provenance names its own engine)
            before = float(meta.get("wall_seconds") or 0.0)
            sessions = list(meta.get("sessions") or [])
            sessions.append({"started_at": store_now(), "engine": prepared.options.engine,
                             "device": str(prepared.device), "threads": prepared.threads, "wall_seconds": 0.0})

            def clock() -> None:
                sessions[-1]["wall_seconds"] = round(time.perf_counter() - started, 2)
                store.set_meta(wall_seconds=round(before + sessions[-1]["wall_seconds"], 2), sessions=sessions)

            clock()
            prov = {**provenance.collect(prepared.device, prepared.threads), "engine": prepared.options.engine}
            if is_solved(study):
                solve(prepared, store, prov, solve_progress)
                clock()
            finished = store.finished_ids()
            tasks = []
            records: dict[tuple[str, str], list[dict[str, Any]]] = {}  # (engine, why not the one asked) → runs
            for group in study.plan(config):
                engine, reason = engine_for(group, prepared.options.engine)
                size = len(group.members) if engine == "sequential" else max_members(group, prepared.device)
                for chunk in group.chunks(size):
                    if all(m.run_id in finished for m in chunk.members):
                        continue  # chunks are fixed by the plan, so a resumed chunk reruns exactly as before
                    tasks.append(Task(chunk, engine, str(prepared.device), prepared.threads))
                    records.setdefault((engine, reason), []).extend(run_record(study, chunk, m) for m in chunk.members)
            for (engine, reason), started_runs in (records or {(prepared.options.engine, ""): []}).items():
                store.start(started_runs, {**prov, "engine": engine, **({"engine_reason": reason} if reason else {})})
            failures = []
            for outcome in (backend or LocalBackend()).run(tasks, progress):
                ids = [m.run_id for m in outcome.task.group.members]
                if outcome.error is not None:
                    store.fail(ids, outcome.error)
                    failures.append(outcome.error)
                else:
                    store.finish(outcome.results)
                clock()
                if on_outcome is not None:
                    on_outcome(outcome)
        result = write_outputs(out)
    except (OSError, sqlite3.Error) as err:
        fault = write_fault(err, out, stored=True)
        if fault is None:
            raise
        raise fault from None
    finally:
        lock.release()
    result.failures = failures
    return result
