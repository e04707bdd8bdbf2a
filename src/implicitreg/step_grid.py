"""Log-spaced grids of steps, where the solved studies record their trajectories."""

from __future__ import annotations

import numpy as np


def log_steps(last: int, count: int) -> np.ndarray:
    """About ``count`` distinct integer steps from 1 to ``last`` (both included), evenly spaced in log.

    Returns an increasing int64 array; short when ``last < count`` (every step is then kept).
    """
    if last < 1:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.round(np.geomspace(1, last, max(count, 2))).astype(np.int64))
