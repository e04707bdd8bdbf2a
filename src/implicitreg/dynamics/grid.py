"""Log-spaced grids of steps, where the solvers and the studies record their trajectories."""

from __future__ import annotations

import numpy as np


def log_steps(last: int, count: int, *, floor: bool = False) -> np.ndarray:
    """About ``count`` distinct integer steps from 1 to ``last`` (both included), evenly spaced in log.

    Args:
        last: the last step; below 1 the grid is empty.
        count: points of the geometric sequence before duplicates merge (at least 2 are used).
        floor: round the geometric sequence down instead of to the nearest integer (the grid some
            studies were first recorded on; both keep 1 and ``last``).

    Returns:
        An increasing int64 array; short when ``last < count`` (every step is then kept).
    """
    if last < 1:
        return np.zeros(0, dtype=np.int64)
    points = np.geomspace(1, last, max(count, 2))
    return np.unique((np.floor(points) if floor else np.round(points)).astype(np.int64))


def recording_steps(last: int, count: int, *, floor: bool = False) -> set[int]:
    """:func:`log_steps` as a set of Python ints, with step 0 (the start) and ``last``."""
    return {0, *([last] if last >= 1 else []), *log_steps(last, count, floor=floor).tolist()}
