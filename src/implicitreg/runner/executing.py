"""Executing prepared runs: solve (a solved study), train the unfinished population chunks on a
backend, store each outcome as it arrives, then write the outputs.

:func:`execute` runs one study; :func:`execute_all` runs several on one backend at once (``run all``
on a cluster: every study's tasks are submitted together), each into its own directory, under its
own lock. Only this driver writes the stores: a backend returns outcomes.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from implicitreg import provenance
from implicitreg.backends import Backend, SolveOutcome, SolveTask, Task, TaskOutcome
from implicitreg.backends.local import run_solve
from implicitreg.config import ConfigError
from implicitreg.plan import Group
from implicitreg.runner.chunks import chunk_size, engine_for
from implicitreg.runner.faults import make_directories, remove_created, write_fault
from implicitreg.runner.outputs import StudyResult, write_outputs
from implicitreg.runner.paths import store_state
from implicitreg.runner.preparing import Prepared, make_backend
from implicitreg.runner.solutions import write_solutions
from implicitreg.store import LOCK_FILENAME, DirectoryBusy, DirectoryLock, Store, bookkeeping_files
from implicitreg.store import now as store_now
from implicitreg.studies.base import ProgressBar, Solved, Study, is_solved, no_progress

Hooks = dict[str, Any]
"""A study's progress reporting: ``progress`` (a population task starts → ``advance(step, max_steps)``),
``on_outcome`` (a population task's outcome was stored), ``solve_progress`` (a ProgressBar for its
solve); each optional (:func:`implicitreg.display.execution_progress` makes them)."""


def run_record(study: Study, group: Group, member) -> dict[str, Any]:
    """The store's record of one planned run (``member`` a :class:`~implicitreg.plan.Member` of ``group``)."""
    return {"run_id": member.run_id, "study": study.name, "arm": member.arm, "seed": member.seed,
            "config": group.run_config(member)}


def store_solved(prepared: Prepared, store: Store, prov: dict[str, Any], solved: Solved) -> None:
    """Store a solved study's runs and ``solutions.npz``, and mark it solved (a resumed run skips
    solving: it is deterministic)."""
    study = prepared.study
    store.start([{"run_id": r.run_id, "study": study.name, "arm": r.arm, "seed": r.seed, "config": r.config}
                 for r in solved.runs], prov)
    store.finish(solved.runs)
    write_solutions(prepared.out, solved.arrays)
    store.set_meta(solved=True)


def solve(prepared: Prepared, store: Store, prov: dict[str, Any], progress: ProgressBar) -> None:
    """Run a solved study's dynamics in this process and store them (skipped once solved)."""
    if store.meta().get("solved"):
        return
    task = SolveTask(prepared.study, prepared.config, prepared.problem, prepared.options.threads or 1)
    store_solved(prepared, store, prov, run_solve(task, progress).solved)


class _Session:
    """One study's directory while it runs: its lock and store, this session's clock and provenance,
    what is left to store."""

    def __init__(self, prepared: Prepared, hooks: Hooks, lock: DirectoryLock, store: Store, started: float):
        self.prepared, self.hooks, self.lock, self.store, self.started = prepared, hooks, lock, store, started
        self.failures: list[str] = []
        self.remaining = 0
        self.result: StudyResult | None = None
        self.prov: dict[str, Any] = {}
        self.before = 0.0
        self.sessions: list[dict[str, Any]] = []
        self.workers: dict[str, dict[str, Any]] = {}
        self.solved = False  # the store says the study's solve is stored (read by begin)

    @contextmanager
    def storing(self) -> Iterator[None]:
        """A storage failure after the store exists: the machine's (full disk) or the directory's."""
        try:
            yield
        except (OSError, sqlite3.Error) as err:
            fault = write_fault(err, self.prepared.out, stored=True)
            if fault is None:
                raise
            raise fault from None

    def begin(self, device: str, backend_info: dict[str, Any]) -> None:
        """Record this session in the store's metadata; collect the runs' provenance."""
        prepared = self.prepared
        with self.storing():
            meta = self.store.meta()
            # a resumed session adds its time to the earlier sessions'; the first session's engine
            # and quick flag stay the directory's (each run's provenance names its own engine)
            self.before = float(meta.get("wall_seconds") or 0.0)
            self.sessions = list(meta.get("sessions") or [])
            self.sessions.append({"started_at": store_now(), "engine": prepared.options.engine, "device": device,
                                  "threads": prepared.threads, "wall_seconds": 0.0,
                                  **({"backend": backend_info["backend"]} if backend_info else {})})
            self.clock()
            if backend_info:  # tasks run elsewhere: the driver's environment, the device asked for
                self.prov = {**provenance.collect(torch.device("cpu"), prepared.threads), "device": device,
                             "device_name": None, **backend_info}
            else:
                self.prov = provenance.collect(prepared.device, prepared.threads)
            self.prov["engine"] = prepared.options.engine
            self.solved = bool(meta.get("solved"))

    def clock(self) -> None:
        self.sessions[-1]["wall_seconds"] = round(time.perf_counter() - self.started, 2)
        self.store.set_meta(wall_seconds=round(self.before + self.sessions[-1]["wall_seconds"], 2),
                            sessions=self.sessions)

    def note_worker(self, worker: dict[str, Any] | None) -> None:
        """Where a remote task ran, in this session's metadata: each distinct worker environment
        (host, node, device, threads, versions) with its number of tasks."""
        if not worker:
            return
        described = {k: v for k, v in worker.items() if k not in ("pid", "split")}
        key = json.dumps(described, sort_keys=True)
        entry = self.workers.setdefault(key, {**described, "tasks": 0, "split_tasks": 0})
        entry["tasks"] += 1
        entry["split_tasks"] += int(worker.get("split", 1) > 1)
        self.sessions[-1]["workers"] = list(self.workers.values())

    def solve_task(self) -> SolveTask | None:
        prepared = self.prepared
        if not is_solved(prepared.study) or self.solved:
            return None
        # One thread unless --threads says otherwise: these are small float64 problems (run_solve)
        return SolveTask(prepared.study, prepared.config, prepared.problem, prepared.options.threads or 1)

    def take_solved(self, outcome: SolveOutcome) -> None:
        with self.storing():
            self.note_worker(outcome.worker)
            if outcome.error is not None:
                self.failures.append(outcome.error)
            else:
                store_solved(self.prepared, self.store, self.prov, outcome.solved)
            self.clock()

    def tasks(self, device: str, chunk_device: torch.device | None) -> list[Task]:
        """The unfinished population chunks, their runs marked ``running`` in the store."""
        prepared = self.prepared
        study, config = prepared.study, prepared.config
        tasks = []
        with self.storing():
            finished = self.store.finished_ids()
            records: dict[tuple[str, str], list[dict[str, Any]]] = {}  # (engine, why not the one asked) → runs
            for group in study.plan(config):
                engine, reason = engine_for(group, prepared.options.engine)
                # chunks are fixed here, on the driver, by the plan (see backends.ray._train for why
                # not on the worker), so a resumed chunk reruns exactly as before
                for chunk in group.chunks(chunk_size(group, engine, chunk_device)):
                    if all(m.run_id in finished for m in chunk.members):
                        continue
                    tasks.append(Task(chunk, engine, device, prepared.threads))
                    records.setdefault((engine, reason), []).extend(run_record(study, chunk, m) for m in chunk.members)
            for (engine, reason), started_runs in (records or {(prepared.options.engine, ""): []}).items():
                self.store.start(started_runs, {**self.prov, "engine": engine,
                                                **({"engine_reason": reason} if reason else {})})
        self.remaining = len(tasks)
        return tasks

    def take(self, outcome: TaskOutcome) -> None:
        with self.storing():
            ids = [m.run_id for m in outcome.task.group.members]
            self.note_worker(outcome.worker)
            if outcome.error is not None:
                self.store.fail(ids, outcome.error)
                self.failures.append(outcome.error)
            else:
                self.store.finish(outcome.results)
            self.clock()
        self.remaining -= 1
        if self.hooks.get("on_outcome") is not None:
            self.hooks["on_outcome"](outcome)

    def finish(self) -> StudyResult:
        """Close the store, write the outputs from it, release the directory."""
        try:
            with self.storing():
                self.store.close()
                self.result = write_outputs(self.prepared.out)
        finally:
            self.lock.release()
        self.result.failures = self.failures
        return self.result

    def abandon(self) -> None:
        self.store.close()
        self.lock.release()


def open_session(prepared: Prepared, hooks: Hooks) -> _Session:
    """Take the directory's lock and open (or create) its store.

    One process at a time writes a directory (an advisory lock, held until the session ends: a
    second one gets :class:`ConfigError`). The store is created whole or not at all; a failure
    before it exists removes what this call created.
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
    return _Session(prepared, hooks, lock, store, started)


def execute(prepared: Prepared, backend: Backend | None = None,
            progress: Callable[[Task], Callable[[int, int], None]] | None = None,
            on_outcome: Callable[[Any], None] | None = None,
            solve_progress: ProgressBar = no_progress) -> StudyResult:
    """Solve and train what is not yet finished, store it, analyze and write the report.

    ``backend``: where tasks run (None: the one ``prepared.options`` names, started and closed
    here). A full disk raises :class:`StorageFault`, keeping every population committed before
    (``--resume`` continues).
    """
    hooks = {"progress": progress, "on_outcome": on_outcome, "solve_progress": solve_progress}
    return execute_all([prepared], backend, [hooks])[0]


def _outcomes(backend: Backend, tasks: Sequence[Task | SolveTask], owner: dict[Any, _Session]) -> Iterator[Any]:
    """The backend's outcomes of ``tasks``, each study's progress hooks fed; the backend's iterator is
    closed on the way out (on Ray, an interrupted driver cancels what still runs)."""
    if not tasks:
        return

    def progress(task: Task):
        factory = owner[task].hooks.get("progress")
        return factory(task) if factory is not None else None

    def solve_progress(task: SolveTask) -> ProgressBar:
        return owner[task].hooks.get("solve_progress") or no_progress

    outcomes = backend.run(tasks, progress, solve_progress)
    try:
        yield from outcomes
    finally:
        close = getattr(outcomes, "close", None)
        if close is not None:
            close()


def execute_all(prepared_runs: Sequence[Prepared], backend: Backend | None = None,
                hooks: Sequence[Hooks] | None = None) -> list[StudyResult]:
    """Execute several prepared studies on one backend, each into its own directory.

    Solves first (on Ray, every study's solve at once), then every population chunk of every study
    (at once on Ray); each study's outputs are written as soon as its last outcome is stored. The
    runs of a study are stored in the same order as by :func:`execute` alone.
    """
    own = backend is None
    if backend is None:
        backend = make_backend(prepared_runs[0].options)
    hooks = list(hooks) if hooks is not None else [{} for _ in prepared_runs]
    sessions: list[_Session] = []
    try:
        start = getattr(backend, "start", None)
        if start is not None:
            start()  # connect to a cluster before anything is written: a wrong address writes nothing
        remote = getattr(backend, "device", None) is not None
        devices, chunk_devices = [], []
        for prepared in prepared_runs:
            if remote:  # the cluster's devices decide; chunk memory is the driver's on CPU, the worker's on GPU
                device = backend.device(prepared.options.device, prepared.threads)
                chunk_device = torch.device("cpu") if device == "cpu" else None
            else:
                device, chunk_device = str(prepared.device), prepared.device
            devices.append(device)
            chunk_devices.append(chunk_device)
        info = backend.describe() if remote and hasattr(backend, "describe") else {}
        for prepared, study_hooks, device in zip(prepared_runs, hooks, devices):
            session = open_session(prepared, study_hooks)
            sessions.append(session)
            session.begin(device, info)
        owner: dict[Any, _Session] = {}
        for session in sessions:
            task = session.solve_task()
            if task is not None:
                owner[task] = session
        for outcome in _outcomes(backend, list(owner), owner):
            owner[outcome.task].take_solved(outcome)
        owner = {}
        for session, device, chunk_device in zip(sessions, devices, chunk_devices):
            for task in session.tasks(device, chunk_device):
                owner[task] = session
            if session.remaining == 0:
                session.finish()
        for outcome in _outcomes(backend, list(owner), owner):
            session = owner[outcome.task]
            session.take(outcome)
            if session.remaining == 0:
                session.finish()
        return [session.result for session in sessions]
    finally:
        for session in sessions:
            if session.result is None:
                session.abandon()
        if own:
            close = getattr(backend, "close", None)
            if close is not None:
                close()
