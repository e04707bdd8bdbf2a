"""How many CPU threads a run takes by default: the cores no other process is using.

PyTorch's default is one thread per core. On a machine where other CPU-bound processes run, that
oversubscribes the cores: its threads spin at synchronization points waiting for a thread the
scheduler has parked, and a run beside two or three other processes was measured 6–12× slower than
on a quiet machine, where its fair share alone would make it 2.5–3×. So the default counts the
processes running right now besides this one and leaves them their cores: ``cores − busy``, at
least one. ``--threads N`` overrides it (``benchmarks/contention.py`` measures both).

"Running right now" is the kernel's count of runnable threads (the fourth field of
``/proc/loadavg``), sampled a few times and taken at its median, minus this process: an instant
count, where the load average would take a minute to notice a competitor. Elsewhere (no
``/proc``) it is the one-minute load average.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

LOADAVG = Path("/proc/loadavg")


def available_threads() -> int:
    """The cores this process may run on (its CPU affinity where the system has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def busy_cores(samples: int = 5, interval: float = 0.02) -> float:
    """Threads that other processes are running right now (a median over ``samples`` readings
    ``interval`` seconds apart); the one-minute load average where ``/proc/loadavg`` is missing."""
    try:
        counts = []
        for i in range(samples):
            if i:
                time.sleep(interval)
            running = LOADAVG.read_text().split()[3].split("/")[0]
            counts.append(int(running) - 1)  # the reading process is itself running
        return float(max(0.0, statistics.median(counts)))
    except (OSError, IndexError, ValueError):
        try:
            return os.getloadavg()[0]
        except (OSError, AttributeError):
            return 0.0


@dataclass(frozen=True)
class ThreadChoice:
    """The default thread count and why: ``threads`` of ``cores``, ``busy`` of them in use elsewhere."""

    threads: int
    cores: int
    busy: float

    @property
    def reason(self) -> str:
        if self.threads == self.cores:
            return f"{self.threads} threads: all {self.cores} cores are free"
        return (f"{self.threads} of {self.cores} threads: about {self.busy:.0f} core(s) busy with other processes "
                "(--threads N overrides)")


def polite_threads(cores: int | None = None, busy: float | None = None) -> ThreadChoice:
    """``cores − round(busy)`` threads, at least 1 and at most ``cores``.

    Args:
        cores: the cores this process may use (default :func:`available_threads`).
        busy: threads other processes are running (default :func:`busy_cores`, measured now).
    """
    cores = available_threads() if cores is None else cores
    busy = busy_cores() if busy is None else busy
    return ThreadChoice(max(1, min(cores, cores - int(busy + 0.5))), cores, busy)
