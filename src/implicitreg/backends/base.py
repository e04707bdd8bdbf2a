"""The backend interface: run tasks (population chunks), yield their outcomes as they finish."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

from implicitreg.plan import Group
from implicitreg.train import MemberResult


@dataclass(frozen=True)
class Task:
    """One population chunk to train with an engine ("population" or "sequential") on a device."""

    group: Group
    engine: str
    device: str
    threads: int


@dataclass
class TaskOutcome:
    """A task's results, or the error that stopped it (then ``results`` is None)."""

    task: Task
    results: list[MemberResult] | None
    error: str | None = None


ProgressFactory = Callable[[Task], Callable[[int, int], None]]


class Backend(Protocol):
    def run(self, tasks: list[Task], progress: ProgressFactory | None = None) -> Iterator[TaskOutcome]: ...
