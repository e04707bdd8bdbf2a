"""matrix-factorization's problems and what is measured on a completion.

The completion problem (generated low-rank truth or a user's ``.npz``), Razin & Cohen's 2×2 problem,
and the metrics recorded along training: test MSE on the unobserved entries, effective rank, norms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from implicitreg.data.npz import read_matrix_completion
from implicitreg.measures.rank import effective_rank_from_svals

RAZIN_OBSERVED = np.array([[0.0, 1.0], [1.0, 0.0]])  # w₁₂ = w₂₁ = 1, w₂₂ = 0; w₁₁ (the 0 here) unobserved
RAZIN_MASK = np.array([[False, True], [True, True]])


@dataclass(frozen=True)
class Problem:
    """observed [n1, n2] (zeros off the mask), mask [n1, n2] bool, truth [n1, n2] or None, and the true rank."""

    observed: np.ndarray
    mask: np.ndarray
    truth: np.ndarray | None
    rank: int | None
    source: str


def generate(size: int, rank: int, observed: int, seed: int) -> Problem:
    """Truth U Vᵀ (U, V Gaussian size×rank) scaled to unit mean square; ``observed`` entries uniformly
    at random without replacement."""
    rng = np.random.default_rng(seed)
    n, r = size, rank
    truth = rng.standard_normal((n, r)) @ rng.standard_normal((n, r)).T
    truth /= np.sqrt(np.mean(truth ** 2))
    mask = np.zeros(n * n, dtype=bool)
    mask[rng.choice(n * n, observed, replace=False)] = True
    mask = mask.reshape(n, n)
    return Problem(np.where(mask, truth, 0.0), mask, truth, r, f"generated (seed {seed})")


def load(path: str) -> Problem:
    """A user's completion problem, with the checks a completion needs (ValueError naming the problem)."""
    observed, mask, truth = read_matrix_completion(path)
    n1, n2 = observed.shape
    if min(n1, n2) < 2:
        raise ValueError(f"--data {path}: observed must be at least 2×2 to complete, got {observed.shape}")
    m = int(mask.sum())
    if m == mask.size:
        raise ValueError(f"--data {path}: mask observes all {m} entries; expected some unobserved entries to complete")
    if m < n1 + n2 - 1:
        raise ValueError(f"--data {path}: too few observed entries: {m} < n1 + n2 − 1 = {n1 + n2 - 1}, the degrees "
                         f"of freedom of a rank-1 {n1}×{n2} matrix")
    empty_rows, empty_cols = np.nonzero(~mask.any(1))[0], np.nonzero(~mask.any(0))[0]
    if len(empty_rows) or len(empty_cols):
        raise ValueError(f"--data {path}: every row and column needs an observed entry (nothing can be inferred "
                         f"about the others); unobserved rows {empty_rows[:5].tolist()}, columns "
                         f"{empty_cols[:5].tolist()}")
    if not np.any(observed[mask]):
        raise ValueError(f"--data {path}: every observed entry is zero, so W = 0 completes it at any depth")
    rank = None
    if truth is not None:
        if not np.any(truth):
            raise ValueError(f"--data {path}: truth is all zeros; the test error is relative to its energy")
        svals = np.linalg.svd(truth, compute_uv=False)
        rank = int(np.sum(svals > 1e-10 * svals[0]))
    return Problem(observed, mask, truth, rank, str(path))


def unobserved_error(matrix: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """‖P_Ωᶜ(W − W*)‖²_F / ‖W*‖²_F: with a unit-mean-square truth, the squared error on the unobserved
    entries averaged over all n1·n2 entries."""
    return float(np.sum(((matrix - truth) * ~mask) ** 2) / np.sum(truth ** 2))


def effective_rank(matrix: np.ndarray) -> float:
    return float(effective_rank_from_svals(torch.linalg.svdvals(torch.from_numpy(matrix))))


def matrix_metrics(matrix: np.ndarray, problem: Problem) -> dict[str, float]:
    """What a depth's run records at a step: relative train loss, effective rank, norms (and test MSE
    when the truth is known)."""
    residual = (matrix - problem.observed) * problem.mask
    svals = np.linalg.svd(matrix, compute_uv=False)
    values = {"relative_train_loss": float(np.sum(residual ** 2) / np.sum(problem.observed[problem.mask] ** 2)),
              "effective_rank": effective_rank(matrix), "nuclear_norm": float(svals.sum()),
              "frobenius_norm": float(np.sqrt(np.sum(svals ** 2)))}
    if problem.truth is not None:
        values["test_mse"] = unobserved_error(matrix, problem.truth, problem.mask)
    return values


def razin_metrics(matrix: np.ndarray) -> dict[str, float]:
    """The 2×2 run: L (mean over the 3 observed entries), w₁₁, |w₁₁|√(6L), σ₂/σ₁, norms, det."""
    observed, mask = RAZIN_OBSERVED, RAZIN_MASK
    loss = float(np.sum(((matrix - observed) * mask) ** 2)) / (2 * mask.sum())
    svals = np.linalg.svd(matrix, compute_uv=False)
    return {"loss": loss, "relative_train_loss": 3.0 * loss, "effective_rank": effective_rank(matrix),
            "w11": float(matrix[0, 0]), "w11_sqrt_6l": abs(float(matrix[0, 0])) * np.sqrt(6 * loss),
            "sigma_ratio": float(svals[1] / svals[0]), "frobenius_norm": float(np.sqrt(np.sum(svals ** 2))),
            "nuclear_norm": float(svals.sum()), "det": float(np.linalg.det(matrix))}
