"""Minimum-nuclear-norm matrix completion: argmin ‖W‖_* s.t. W_ij = M_ij on the observed entries.

The convex relaxation of rank minimization (Fazel 2002; Candès & Recht 2009) and the conjectured
limit of gradient descent on a depth-2 factorization from infinitesimal initialization
(Gunasekar, Woodworth, Bhojanapalli, Neyshabur & Srebro 2017, "Implicit regularization in matrix
factorization"), which Arora, Cohen, Hu & Luo (2019) found deeper factorizations to beat when few
entries are observed.

Solved with cvxpy (``normNuc``, an SDP). The solver depends on the size (measured while building
this module, on a shared 2-core machine): the interior-point CLARABEL is exact and takes a fraction
of a second up to a few hundred entries but minutes at 50×50, where the first-order SCS takes
seconds and agrees with CLARABEL to about 1e-7; SCS at tolerances tighter than 1e-7 sometimes
crawled for minutes on small problems, so it runs at 1e-7 with a time limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class NuclearResult:
    """The completion, its largest violation of an observed entry and the solver's status."""

    matrix: np.ndarray
    max_violation: float
    status: str

    @property
    def converged(self) -> bool:
        return self.status == "optimal"


INTERIOR_POINT_MAX_ENTRIES = 400  # CLARABEL up to 20×20, SCS above


def min_nuclear_completion(observed: np.ndarray, mask: np.ndarray, eps: float = 1e-7,
                           time_limit: float = 120.0) -> NuclearResult:
    """argmin ‖W‖_* s.t. W[mask] = observed[mask]: observed [n1, n2] float, mask [n1, n2] bool → W [n1, n2].

    CLARABEL for at most :data:`INTERIOR_POINT_MAX_ENTRIES` entries, else (or when CLARABEL does not
    report ``optimal``) SCS with absolute and relative tolerance ``eps`` and ``time_limit`` seconds.
    The returned ``status`` is cvxpy's (``optimal``, ``optimal_inaccurate``, …); nothing is raised
    for an inaccurate solve, so the caller decides what to report.
    """
    import warnings

    import cvxpy as cp  # imported here: it takes a second, and only this reference needs it

    rows, cols = np.nonzero(mask)
    variable = cp.Variable(observed.shape)
    problem = cp.Problem(cp.Minimize(cp.normNuc(variable)), [variable[rows, cols] == observed[rows, cols]])
    with warnings.catch_warnings():  # an inaccurate solve is reported through the status instead
        warnings.simplefilter("ignore", UserWarning)
        if observed.size <= INTERIOR_POINT_MAX_ENTRIES:
            problem.solve(solver="CLARABEL")
        if observed.size > INTERIOR_POINT_MAX_ENTRIES or problem.status != "optimal":
            # CLARABEL sometimes stalls short of full accuracy at the degenerate (low-rank) optimum
            problem.solve(solver="SCS", eps_abs=eps, eps_rel=eps, time_limit_secs=time_limit)
    if variable.value is None:
        return NuclearResult(np.full(observed.shape, np.nan), float("inf"), str(problem.status))
    matrix = np.asarray(variable.value, dtype=np.float64)
    violation = float(np.max(np.abs(matrix[rows, cols] - observed[rows, cols])))
    return NuclearResult(matrix, violation, str(problem.status))
