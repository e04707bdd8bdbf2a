"""Ray backend: each population chunk and each solve is a Ray task, on a cluster or a local Ray instance.

Only the driver writes the store: a task returns its results, the driver stores each outcome as it
arrives (``ray.wait``). A task whose worker dies (a killed process, a lost node) is retried by Ray
up to ``retries`` times, then comes back as a failed outcome naming the error; the other tasks go
on. Progress travels from the tasks to the driver's bars through a Ray queue, at most
:data:`REPORTS_PER_SECOND` messages a second per task.

What a task computes is what :mod:`.local` computes — the same :func:`~.local.run_task` and
:func:`~.local.run_solve` — so that the metrics of the same plan, threads and device equal the
local backend's bitwise. Data sets are built on the worker from their config, once per worker
process (:func:`~.local.cached_dataset`), never shipped from the driver.

This module imports ``ray``: nothing imports it unless the Ray backend is asked for
(:func:`implicitreg.backends.ray_backend`).

References:
    Moritz et al. (2018), "Ray: a distributed framework for emerging AI applications", OSDI.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import replace
from functools import lru_cache
from typing import Any, Callable, Iterator, Sequence

import ray
import torch
from ray.util.queue import Queue

from implicitreg import provenance
from implicitreg.backends.base import Outcome, ProgressFactory, SolveOutcome, SolveProgressFactory, SolveTask, Task, \
    TaskOutcome
from implicitreg.backends.local import run_solve, run_task
from implicitreg.config import ConfigError
from implicitreg.runner.chunks import max_members

REPORTS_PER_SECOND = 4
"""The most progress messages a task sends the driver in a second (its latest values; the last one always)."""
POLL_SECONDS = 0.25
"""How often the driver looks for finished tasks and progress while it waits."""
BARRIER_SECONDS = 10.0
"""The longest a finishing task waits for the progress queue to hold its last messages."""


def local_instance_options() -> dict[str, Any]:
    """``ray.init`` options of a local instance started for a run: its workers at the driver's
    priority. Ray starts workers at nice 15 (where it has the ``worker_niceness`` setting), so on a
    machine busy with other work a sweep on a local instance ran 3x slower than the local backend
    (measured with benchmarks/backends.py); the local backend trains at the user's priority."""
    from ray._private import ray_constants

    if not hasattr(ray_constants, "RAY_WORKER_NICENESS"):
        return {}  # an older Ray: no such setting, workers at the driver's priority
    return {"_system_config": {"worker_niceness": 0}}


# -- on the worker ---------------------------------------------------------------------------------

class _Reporter:
    """A task's progress, sent to the driver's queue: each channel's latest ``(done, total)`` (a
    population's steps on channel ""; a solve's bars by label), at most :data:`REPORTS_PER_SECOND`
    messages a second; what is held back goes with the next message or with :meth:`flush`."""

    def __init__(self, queue: Queue, key: tuple[int, int]):
        self.queue, self.key = queue, key
        self.pending: dict[str, tuple[int, int]] = {}
        self.sent_at = -float("inf")

    def __call__(self, channel: str, done: int, total: int) -> None:
        self.pending[channel] = (int(done), int(total))
        if time.monotonic() - self.sent_at >= 1.0 / REPORTS_PER_SECOND:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        message, self.pending = (self.key, self.pending), {}
        self.sent_at = time.monotonic()
        try:
            # fire and forget (calls of one caller reach the actor in order): Queue.put_nowait waits
            # for the queue's reply, which on a loaded machine made training up to 2x slower
            actor = getattr(self.queue, "actor", None)
            if actor is not None:
                actor.put_nowait.remote(message)
            else:
                self.queue.put_nowait(message)
        except Exception:  # progress is a courtesy: a lost message must not fail the task
            pass

    def finish(self) -> None:
        """Send what is held back and wait until the queue holds every message of this task, so that
        the driver, which drains the queue when it sees the task's result, finds them all (the
        messages are sent fire-and-forget; one caller's calls reach the actor in order, so a
        synchronous call after them is a barrier)."""
        self.flush()
        try:
            actor = getattr(self.queue, "actor", None)
            if actor is not None:
                ray.get(actor.qsize.remote(), timeout=BARRIER_SECONDS)
        except Exception:  # progress is a courtesy: a slow or gone queue must not fail the task
            pass


@lru_cache(maxsize=1)
def _versions() -> dict[str, str | None]:
    return provenance.versions()


@lru_cache(maxsize=4)
def _device_name(device: str) -> str:
    return provenance.device_name(torch.device(device))


def _worker(device: torch.device, threads: int, split: int = 1) -> dict[str, Any]:
    """Where a task ran: host, Ray node, process, device, threads, package versions."""
    return {"host": socket.gethostname(), "node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
            "device": str(device), "device_name": _device_name(str(device)), "threads": threads,
            "versions": _versions(), "split": split}


@lru_cache(maxsize=8)
def _tasks_per_node(threads: int) -> int:
    """How many tasks of ``threads`` CPUs this Ray node runs at once: they share its memory (asked
    of the cluster once per worker process)."""
    node = ray.get_runtime_context().get_node_id()
    for info in ray.nodes():
        if info.get("NodeID") == node:
            return max(1, int(info.get("Resources", {}).get("CPU", threads) // max(1, threads)))
    return 1


def _importable(paths: tuple[str, ...]) -> None:
    """Let this worker import from ``paths`` too (those it has: a user's module beside a sweep file)."""
    for path in paths:
        if path not in sys.path and os.path.isdir(path):
            sys.path.append(path)


def _train(task: Task, queue: Queue, key: tuple[int, int],
           import_paths: tuple[str, ...] = ()) -> tuple[list | None, str | None, dict[str, Any]]:
    """A population chunk on this worker: its results, or the error that stopped it, and where it ran.

    The driver fixed the chunk (:func:`implicitreg.runner.chunks.chunk_size`); it is split here only
    if it does not fit this worker's memory (its GPU's free memory; on CPU, its host's share for
    the tasks the node runs at once). Why not decide the chunk here always: how the members of a
    group are split into populations changes the last bits of the results as soon as torch runs
    more than one thread (batched matmuls partition their work by the batch size: measured on a
    width-1024 MLP in float32 with 2 threads, 1.9e-6 apart; with one thread, equal), and the Ray
    backend must give the local backend's metrics bitwise for the same plan, threads and device.
    """
    _importable(import_paths)
    device = torch.device(task.device)  # "cuda": the GPU Ray assigned to this task (CUDA_VISIBLE_DEVICES)
    report = _Reporter(queue, key)
    if device.type == "cuda" and not torch.cuda.is_available():
        return None, f"RuntimeError: the task asked for a GPU, but CUDA is not available on {socket.gethostname()}", \
            _worker(torch.device("cpu"), task.threads)
    group = task.group
    try:
        torch.set_num_threads(task.threads)
        size = len(group.members) if task.engine == "sequential" else max_members(
            group, device, 1 if device.type == "cuda" else _tasks_per_node(task.threads))
    except Exception as err:  # the data set or model cannot be built here: the task fails, the sweep goes on
        return None, f"{type(err).__name__}: {err}", _worker(device, task.threads)
    chunks = group.chunks(size) if size < len(group.members) else [group]
    total = group.train.max_steps * (len(group.members) if task.engine == "sequential" else 1)
    calls = 0

    def advance(step: int, max_steps: int) -> None:
        # the driver's bar counts max_steps per population (per member on the sequential engine);
        # a chunk split in k here takes k populations, each a k-th of the bar
        nonlocal calls
        calls += 1
        report("", calls // len(chunks), total)

    report("", 0, total)  # started
    results = []
    for chunk in chunks:
        outcome = run_task(replace(task, group=chunk, device=str(device)), advance)
        if outcome.error is not None:
            report.finish()
            return None, outcome.error, _worker(device, task.threads, len(chunks))
        results.extend(outcome.results)
    report.finish()
    return results, None, _worker(device, task.threads, len(chunks))


def _solve(task: SolveTask, queue: Queue, key: tuple[int, int], import_paths: tuple[str, ...] = ()) -> tuple[Any, dict[str, Any]]:
    """A solved study's dynamics on this worker: its ``Solved`` and where it ran. An exception of the
    study's ``solve`` reaches the driver, which raises it, as the local backend does."""
    _importable(import_paths)
    report = _Reporter(queue, key)

    def bars(label: str, total: int) -> Callable[[int], None]:
        report(label, 0, total)
        return lambda done: report(label, done, total)

    outcome = run_solve(task, bars)
    report.finish()
    return outcome.solved, _worker(torch.device("cpu"), task.threads)


_train_remote = ray.remote(_train)
_solve_remote = ray.remote(_solve)


# -- on the driver ---------------------------------------------------------------------------------

class _Views:
    """The driver's side of the tasks' progress: the display's callbacks, fed from the queue."""

    def __init__(self, tasks: Sequence[Task | SolveTask], progress: ProgressFactory | None,
                 solve_progress: SolveProgressFactory | None, generation: int):
        self.tasks, self.progress, self.solve_progress = tasks, progress, solve_progress
        self.generation = generation
        self.advance: dict[int, tuple[Callable[[int, int], None] | None, list[int]]] = {}
        self.factories: dict[int, Any] = {}  # a solve's ProgressBar: bars by label
        self.bars: dict[int, dict[str, Callable[[int], None]]] = {}

    def started(self, key: int) -> tuple[Callable[[int, int], None] | None, list[int]]:
        if key not in self.advance:
            task = self.tasks[key]
            self.advance[key] = (self.progress(task) if self.progress else None, [0])
        return self.advance[key]

    def update(self, key: int, channels: dict[str, tuple[int, int]]) -> None:
        task = self.tasks[key]
        if isinstance(task, SolveTask):
            if self.solve_progress is None:
                return
            if key not in self.bars:
                self.factories[key], self.bars[key] = self.solve_progress(task), {}
            bars = self.bars[key]
            for label, (done, total) in channels.items():
                if label not in bars:
                    bars[label] = self.factories[key](label, total)
                bars[label](done)
            return
        advance, shown = self.started(key)
        done, total = channels.get("", (shown[0], 0))
        # the display counts calls, one per step; a retried task starts again from 0 and its bar
        # waits until the new attempt passes the old one
        for _ in range(done - shown[0]):
            if advance is not None:
                advance(done, total)
        shown[0] = max(shown[0], done)

    def drain(self, queue: Queue) -> None:
        try:
            size = queue.qsize()
            messages = queue.get_nowait_batch(size) if size else []
        except Exception:  # the queue's actor is gone: the bars stop, the results still arrive
            return
        for (generation, index), channels in messages:
            if generation == self.generation:  # not a late message of an earlier run's task
                self.update(index, channels)


class RayBackend:
    """Runs tasks as Ray tasks: ``num_cpus = threads`` each, and ``num_gpus = 1`` where the task's
    device is CUDA; a task whose worker dies is retried up to ``retries`` times.

    Args:
        address: the cluster (``ray.init``'s address: ``HOST:PORT``, ``auto``, ``ray://HOST:10001``);
            None: the cluster of ``RAY_ADDRESS`` if set, else a new local Ray instance of ``cpus`` CPUs.
            A process where Ray is already initialized (a notebook that called ``ray.init``) uses that.
        retries: how many times a task whose worker died is tried again (Ray's ``max_retries``).
        cpus: the local instance's CPUs (None: Ray counts them).
        import_paths: directories the driver imports a user's modules from (a sweep file's own); a
            worker that sees them (a local instance, a shared file system) imports from them too.

    The constructor stores; :meth:`start` connects (the runner calls it before writing anything).
    """

    name = "ray"

    def __init__(self, address: str | None = None, retries: int = 2, cpus: int | None = None,
                 import_paths: tuple[str, ...] = ()):
        self.address, self.retries, self.cpus, self.import_paths = address, retries, cpus, tuple(import_paths)
        self._started_here = False
        self._queue: Queue | None = None  # the progress queue, one actor for every run of this backend
        self._generation = 0  # which run a progress message belongs to (a cancelled task may report late)

    # -- the cluster ---------------------------------------------------------------------------
    def start(self) -> None:
        """Connect to the cluster (or start the local instance); :class:`ConfigError` if it cannot."""
        if ray.is_initialized():
            return
        address = self.address if self.address is not None else os.environ.get("RAY_ADDRESS") or "local"
        options: dict[str, Any] = {"address": address, "include_dashboard": False, "log_to_driver": False,
                                   "logging_level": "ERROR"}
        if address == "local":
            if self.cpus is not None:
                options["num_cpus"] = self.cpus
            options.update(local_instance_options())
        try:
            ray.init(**options)
        except (ConnectionError, ValueError, RuntimeError, TimeoutError) as err:
            flag = "--ray-address" if self.address is not None else "RAY_ADDRESS" if address != "local" else "--backend ray"
            raise ConfigError(f"{flag}: cannot connect to the Ray cluster at {address} "
                              f"({' '.join(str(err).split())[:300]})") from None
        self._started_here = True

    def close(self) -> None:
        """Stop the progress queue; disconnect, and stop the local instance, if this backend started it."""
        if self._queue is not None and ray.is_initialized():
            try:
                self._queue.shutdown(force=True)
            except Exception:  # its actor is already gone
                pass
        self._queue = None
        if self._started_here and ray.is_initialized():
            ray.shutdown()
        self._started_here = False

    def describe(self) -> dict[str, Any]:
        """The backend's part of each run's provenance."""
        context = ray.get_runtime_context()
        # the cluster's GCS address, whichever way it was reached (--ray-address, RAY_ADDRESS, a local
        # instance, the caller's own ray.init)
        address = getattr(context, "gcs_address", None) or self.address or "local"
        return {"backend": "ray", "ray_version": ray.__version__, "ray_address": address,
                "ray_local_instance": self._started_here and (self.address or os.environ.get("RAY_ADDRESS")) is None,
                "ray_job_id": context.get_job_id(), "ray_retries": self.retries}

    def device(self, requested: str, threads: int) -> str:
        """The device the tasks ask for, checked against the cluster: ``cuda`` where ``requested`` is
        cuda (the cluster must have GPUs) or auto on a cluster with GPUs, else ``cpu``. Also checks
        that some node has ``threads`` CPUs (a task asks for as many). :class:`ConfigError` if not."""
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        cpus = max((n.get("Resources", {}).get("CPU", 0) for n in nodes), default=0)
        gpus = sum(n.get("Resources", {}).get("GPU", 0) for n in nodes)
        if threads > cpus:
            raise ConfigError(f"--threads: each task asks for {threads} CPUs, but the largest node of the Ray cluster "
                              f"has {cpus:g}; use --threads {max(1, int(cpus))} or fewer")
        if requested == "cuda" and gpus < 1:
            raise ConfigError("--device cuda: the Ray cluster has no GPU (start its nodes with GPUs, or use "
                              "--device cpu or auto)")
        return "cuda" if requested == "cuda" or (requested == "auto" and gpus >= 1) else "cpu"

    # -- the tasks -----------------------------------------------------------------------------
    def _submit(self, key: tuple[int, int], task: Task | SolveTask, queue: Queue) -> ray.ObjectRef:
        common = {"num_cpus": task.threads, "max_retries": self.retries, "retry_exceptions": False}
        if isinstance(task, SolveTask):
            return _solve_remote.options(**common, num_gpus=0, name=f"implicitreg solve {task.study.name}").remote(
                task, queue, key, self.import_paths)
        name = f"implicitreg {task.group.arch} {task.group.members[0].run_id} +{len(task.group.members) - 1}"
        return _train_remote.options(**common, num_gpus=1 if task.device == "cuda" else 0, name=name).remote(
            task, queue, key, self.import_paths)

    def _outcome(self, task: Task | SolveTask, ref: ray.ObjectRef) -> Outcome:
        try:
            value = ray.get(ref)
        except ray.exceptions.RayTaskError:
            # an exception raised by the task's own code: a study's solve raises it, as the local
            # backend does (run_task returns a population's exceptions as failed outcomes)
            raise
        except ray.exceptions.RayError as err:  # its worker died on each try (killed, lost node, out of memory)
            tries = 1 + self.retries
            error = (f"{type(err).__name__}: the worker running this task died on each of its {tries} "
                     f"tr{'y' if tries == 1 else 'ies'} (killed, out of memory, or its node was lost): "
                     f"{' '.join(str(err).split())[:500]}")
            return SolveOutcome(task, None, error) if isinstance(task, SolveTask) else TaskOutcome(task, None, error)
        if isinstance(task, SolveTask):
            solved, worker = value
            return SolveOutcome(task, solved, None, worker)
        results, error, worker = value
        return TaskOutcome(task, results, error, worker)

    def run(self, tasks: Sequence[Task | SolveTask], progress: ProgressFactory | None = None,
            solve_progress: SolveProgressFactory | None = None) -> Iterator[Outcome]:
        """Submit every task at once; yield outcomes as they arrive. Closing the iterator early (an
        exception or Ctrl-C on the driver) cancels the tasks still running."""
        if not tasks:
            return
        self.start()
        if self._queue is None:
            self._queue = Queue(actor_options={"num_cpus": 0})
        self._generation += 1
        views = _Views(tasks, progress, solve_progress, self._generation)
        pending: dict[ray.ObjectRef, int] = {}
        try:
            for index, task in enumerate(tasks):
                pending[self._submit((self._generation, index), task, self._queue)] = index
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=POLL_SECONDS)
                views.drain(self._queue)
                for ref in ready:
                    index = pending.pop(ref)
                    task = tasks[index]
                    outcome = self._outcome(task, ref)
                    if isinstance(task, Task):
                        views.started(index)  # a task that failed before it reported: its start, then its end
                    yield outcome
        finally:
            for ref in pending:
                try:
                    ray.cancel(ref, force=True)
                except Exception:  # already finished, or its worker already gone
                    pass
