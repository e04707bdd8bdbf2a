"""The backend interface: run tasks (population chunks and solves), yield their outcomes as they finish.

A backend never writes the store: the driver (:mod:`implicitreg.runner.executing`) stores each
outcome as it arrives, one transaction per outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence

from implicitreg.plan import Group
from implicitreg.studies.base import ProgressBar, Solved
from implicitreg.train import MemberResult


@dataclass(frozen=True, eq=False)
class Task:
    """One population chunk to train with an engine ("population" or "sequential") on a device.

    ``device`` is ``"cpu"`` or ``"cuda"`` (a CUDA device of the process that runs it). ``eq=False``:
    tasks are compared and hashed by identity, so that a backend's outcome names the very task it
    was given (progress displays key their bars by it).
    """

    group: Group
    engine: str
    device: str
    threads: int


@dataclass(frozen=True, eq=False)
class SolveTask:
    """A solved study's dynamics: ``study.solve(config, problem, progress)`` with ``threads`` threads
    for torch and BLAS. The problem travels with the task (it is a small float64 problem, possibly a
    user's ``--data`` file that only the driver's disk holds)."""

    study: Any
    config: Any
    problem: Any
    threads: int


@dataclass
class TaskOutcome:
    """A task's results, or the error that stopped it (then ``results`` is None).

    ``worker``: where it ran, for a backend that runs tasks elsewhere (host, node, device, versions).
    """

    task: Task
    results: list[MemberResult] | None
    error: str | None = None
    worker: dict[str, Any] | None = None


@dataclass
class SolveOutcome:
    """A solve's :class:`~implicitreg.studies.base.Solved`, or why it could not run (a worker that
    died every time it was tried; an exception raised by the study's ``solve`` itself propagates)."""

    task: SolveTask
    solved: Solved | None
    error: str | None = None
    worker: dict[str, Any] | None = None


Outcome = TaskOutcome | SolveOutcome
ProgressFactory = Callable[[Task], Callable[[int, int], None]]
"""``advance = progress(task)`` when a population task starts; ``advance(step, max_steps)`` once per step."""
SolveProgressFactory = Callable[[SolveTask], ProgressBar]
"""``bars = solve_progress(task)`` when a solve starts: the study's ``solve`` draws its bars with it."""


class Backend(Protocol):
    def run(self, tasks: Sequence[Task | SolveTask], progress: ProgressFactory | None = None,
            solve_progress: SolveProgressFactory | None = None) -> Iterator[Outcome]: ...
