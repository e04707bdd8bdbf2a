"""matrix-factorization: deeper linear factorizations complete low-rank matrices better; norms cannot explain it.

Gunasekar, Woodworth, Bhojanapalli, Neyshabur & Srebro (2017), "Implicit regularization in matrix
factorization"; Arora, Cohen, Hu & Luo (2019), "Implicit regularization in deep matrix
factorization"; Razin & Cohen (2020), "Implicit regularization in deep learning may not be
explainable by norms".

Claim checked: gradient descent from small initialization on the observed entries of a low-rank
matrix, through a depth-N product W = W_N ⋯ W_1 of square factors:

- depth 1 (W itself) fills nothing: an unobserved entry's gradient is zero, so it stays at its
  initial value ≈ 0, and its test error is the truth's energy on the unobserved entries,
  ≈ 1 − m/(n₁n₂) for a truth of unit mean square;
- depth ≥ 2 recovers the low-rank truth, more sharply with depth (depth 3 ≫ depth 2); the
  minimum-nuclear-norm completion (cvxpy) is reported beside them;
- in Razin & Cohen's 2×2 problem (observed w₁₂ = 1, w₂₁ = 1, w₂₂ = 0; w₁₁ unobserved) a depth-3
  factorization with det W(0) > 0 drives |w₁₁| — hence every norm — to infinity as the loss goes
  to zero, while σ₂/σ₁ (the effective rank) falls.

Dynamics. L(W) = (1/2m) Σ_{(i,j)∈Ω} (W_ij − M_ij)², closed-form gradients ∂L/∂W_j =
(W_N⋯W_{j+1})ᵀ ∇_W L (W_{j−1}⋯W_1)ᵀ in float64 numpy (on these 50×50 problems numpy's per-call
overhead is below torch's: measured 0.54 ms against 0.94 ms per depth-3 step on the shared test
machine). Initialization: each factor is ``init_scale`` × a random orthogonal matrix (rows or
columns orthonormal when rectangular), so the factors are balanced (W_{j+1}ᵀW_{j+1} = W_jW_jᵀ) and
every singular value of the product is init_scale^N; init_scale = 1e-2 equals the spectral size of
a Gaussian 50×50 factor with entry standard deviation 1.4e-3. Step: the smaller of
``stability_step`` / (N‖W‖_F^{2−2/N}/m) (the curvature of L in the factors for balanced factors:
‖W_j‖₂ = ‖W‖₂^{1/N} ≤ ‖W‖_F^{1/N}) and, for N ≥ 2, the step that changes any factor by at most
``growth_step`` of its norm (so the super-exponential escape from the small initialization is
followed, not jumped). A run stops at ‖P_Ω(W − M)‖²/‖P_Ω(M)‖² ≤ ``loss_tol`` or at ``max_steps``.
The data are divided by the root mean square of the observed entries before training (and the
solutions multiplied back), so the initialization scale and steps mean the same for any user file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator

from implicitreg.config import Strict
from implicitreg.data.npz import read_matrix_completion
from implicitreg.dynamics.factorization import factorized_gd
from implicitreg.dynamics.grid import recording_steps
from implicitreg.measures.rank import effective_rank_from_svals
from implicitreg.references.matrix_completion import min_nuclear_completion
from implicitreg.report import kinds
from implicitreg.studies.base import Analysis, Check, ProgressBar, Solved, SolvedRun, final_values

DEEP_TOL = 1e-3  # depth-3 test MSE (issue text)
RATIO_MIN = 100.0  # depth-2 / depth-3 test MSE
SHALLOW_TOL = 0.05  # |depth-1 test MSE − (1 − m/(n₁n₂))|
RANK_MARGIN = 0.5  # depth-3 effective rank < r + 0.5
RC_LOSS = 1e-3  # Razin–Cohen relations are checked once L ≤ this
RC_BAND = (0.95, 1.05)  # |w₁₁|·√(6L)
RC_RATIO = 1e-6  # σ₂/σ₁
RC_RUN = "razin_cohen"
TRACE_POINTS = 60


class Config(Strict):
    """Configuration of ``matrix-factorization``; every field can be set with ``--set``."""

    data_file: str | None = Field(None, description="a user's observed, mask (and truth) .npz, not the generator")
    seed: int = Field(0, ge=0, description="seed of the generated problem and of the random orthogonal initialization")
    size: int = Field(50, ge=2, description="generated matrix is size×size")
    rank: int = Field(3, ge=1, description="rank of the generated truth")
    observed: int = Field(600, ge=1, description="observed entries of the generated problem")
    depths: list[int] = Field(default_factory=lambda: [1, 2, 3], min_length=1)
    init_scale: float = Field(1e-2, gt=0.0, le=1.0, description="every singular value of every factor at init")
    loss_tol: float = Field(1e-10, gt=0.0, description="stop at ‖P_Ω(W − M)‖²/‖P_Ω(M)‖² ≤ loss_tol")
    max_steps: int = Field(60_000, ge=1)
    growth_step: float = Field(0.02, gt=0.0, le=0.5, description="largest relative change of a factor per step")
    stability_step: float = Field(1.0, gt=0.0, lt=2.0, description="η × curvature bound")
    razin_depth: int = Field(3, ge=2, description="depth of the Razin–Cohen 2×2 run")
    razin_init: float = Field(1e-3, gt=0.0, le=1.0, description="W_j(0) = razin_init·I in the 2×2 run")
    razin_target_loss: float = Field(5e-4, gt=0.0, description="the 2×2 run stops once L reaches this")
    razin_max_steps: int = Field(200_000, ge=1)

    @model_validator(mode="after")
    def _check(self) -> "Config":
        if sorted(set(self.depths)) != self.depths or self.depths[0] < 1 or self.depths[-1] > 6:
            raise ValueError(f"depths must be increasing integers in 1..6, got {self.depths}")
        if self.rank > self.size:
            raise ValueError(f"rank must be <= size, got rank={self.rank}, size={self.size}")
        if self.observed >= self.size * self.size:
            raise ValueError(f"observed must be < size² = {self.size * self.size} (something left to complete), "
                             f"got {self.observed}")
        return self


@dataclass(frozen=True)
class Problem:
    """observed [n1, n2] (zeros off the mask), mask [n1, n2] bool, truth [n1, n2] or None, and the true rank."""

    observed: np.ndarray
    mask: np.ndarray
    truth: np.ndarray | None
    rank: int | None
    source: str


def generate(config: Config) -> Problem:
    """Truth U Vᵀ (U, V Gaussian size×rank) scaled to unit mean square; ``observed`` entries uniformly
    at random without replacement."""
    rng = np.random.default_rng(config.seed)
    n, r = config.size, config.rank
    truth = rng.standard_normal((n, r)) @ rng.standard_normal((n, r)).T
    truth /= np.sqrt(np.mean(truth ** 2))
    mask = np.zeros(n * n, dtype=bool)
    mask[rng.choice(n * n, config.observed, replace=False)] = True
    mask = mask.reshape(n, n)
    return Problem(np.where(mask, truth, 0.0), mask, truth, r, f"generated (seed {config.seed})")


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


def orthogonal_factors(shape: tuple[int, int], depth: int, scale: float, rng: np.random.Generator) -> list[np.ndarray]:
    """Balanced factors for an n1×n2 product: W_1 [h, n2], W_2…W_{N−1} [h, h], W_N [n1, h], h = min(n1, n2)
    (depth 1: a single [n1, n2]); each ``scale`` × orthonormal rows or columns."""
    n1, n2 = shape
    h = min(n1, n2)
    shapes = [(n1, n2)] if depth == 1 else [(h, n2)] + [(h, h)] * (depth - 2) + [(n1, h)]
    factors = []
    for rows, cols in shapes:
        q, _ = np.linalg.qr(rng.standard_normal((max(rows, cols), max(rows, cols))))
        factors.append(scale * q[:rows, :cols])
    return factors


def _test_mse(matrix: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """‖P_Ωᶜ(W − W*)‖²_F / ‖W*‖²_F: with a unit-mean-square truth, the squared error on the unobserved
    entries averaged over all n1·n2 entries."""
    return float(np.sum(((matrix - truth) * ~mask) ** 2) / np.sum(truth ** 2))


def _effective_rank(matrix: np.ndarray) -> float:
    return float(effective_rank_from_svals(torch.linalg.svdvals(torch.from_numpy(matrix))))


def _matrix_metrics(matrix: np.ndarray, problem: Problem) -> dict[str, float]:
    residual = (matrix - problem.observed) * problem.mask
    svals = np.linalg.svd(matrix, compute_uv=False)
    values = {"relative_train_loss": float(np.sum(residual ** 2) / np.sum(problem.observed[problem.mask] ** 2)),
              "effective_rank": _effective_rank(matrix), "nuclear_norm": float(svals.sum()),
              "frobenius_norm": float(np.sqrt(np.sum(svals ** 2)))}
    if problem.truth is not None:
        values["test_mse"] = _test_mse(matrix, problem.truth, problem.mask)
    return values


def _razin_metrics(matrix: np.ndarray) -> dict[str, float]:
    """The 2×2 run: L (mean over the 3 observed entries), w₁₁, |w₁₁|√(6L), σ₂/σ₁, norms, det."""
    observed, mask = RAZIN_OBSERVED, RAZIN_MASK
    loss = float(np.sum(((matrix - observed) * mask) ** 2)) / (2 * mask.sum())
    svals = np.linalg.svd(matrix, compute_uv=False)
    return {"loss": loss, "relative_train_loss": 3.0 * loss, "effective_rank": _effective_rank(matrix),
            "w11": float(matrix[0, 0]), "w11_sqrt_6l": abs(float(matrix[0, 0])) * np.sqrt(6 * loss),
            "sigma_ratio": float(svals[1] / svals[0]), "frobenius_norm": float(np.sqrt(np.sum(svals ** 2))),
            "nuclear_norm": float(svals.sum()), "det": float(np.linalg.det(matrix))}


RAZIN_OBSERVED = np.array([[0.0, 1.0], [1.0, 0.0]])  # w₁₂ = w₂₁ = 1, w₂₂ = 0; w₁₁ (the 0 here) unobserved
RAZIN_MASK = np.array([[False, True], [True, True]])


class MatrixFactorization:
    name = "matrix-factorization"
    claim = ("Gradient descent on a depth-N factorization W = W_N⋯W_1 from small initialization completes a "
             "low-rank matrix: depth 1 fills nothing, depth ≥ 2 recovers the low rank, sharper with depth; in "
             "Razin & Cohen's 2×2 problem every norm diverges while the rank falls.")
    paper = "Gunasekar et al. 2017; Arora, Cohen, Hu & Luo 2019; Razin & Cohen 2020"
    Config = Config
    minutes = (0.2, 0.8)  # quick, full: on 2 CPU cores, --threads 1

    def defaults(self, quick: bool) -> dict[str, Any]:
        if not quick:
            return {}
        return {"loss_tol": 1e-8, "max_steps": 25_000, "razin_target_loss": 8e-4}

    def plan(self, config: Config) -> list:
        return []

    def problem(self, config: Config) -> Problem:
        return load(config.data_file) if config.data_file is not None else generate(config)

    def solve(self, config: Config, problem: Problem, progress: ProgressBar) -> Solved:
        scale = float(np.sqrt(np.mean(problem.observed[problem.mask] ** 2)))
        observed = problem.observed / scale
        rng = np.random.default_rng(config.seed + 1)  # initialization, independent of the data draw
        runs, arrays = [], {}
        for depth in config.depths:
            bar = progress(f"depth {depth}", config.max_steps)
            factors = orthogonal_factors(observed.shape, depth, config.init_scale, rng)
            result = factorized_gd(observed, problem.mask, factors, config.loss_tol, config.max_steps,
                                   config.growth_step, config.stability_step,
                                   recording_steps(config.max_steps, TRACE_POINTS), bar)
            bar(config.max_steps)
            rows = [(step, name, value) for step, matrix in result.trace
                    for name, value in _matrix_metrics(matrix * scale, problem).items()]
            rows.append((result.steps, "converged", float(result.converged)))
            label = f"depth_{depth}"
            runs.append(SolvedRun(label, label, {"depth": depth, "init_scale": config.init_scale,
                                                 "loss_tol": config.loss_tol, "source": problem.source,
                                                 "observed_fraction": float(problem.mask.mean()),
                                                 "true_rank": problem.rank},
                                  rows, result.steps, seed=config.seed))
            arrays[label] = result.matrix * scale
        bar = progress("Razin–Cohen 2×2", config.razin_max_steps)
        start = [config.razin_init * np.eye(2) for _ in range(config.razin_depth)]
        # the 2×2 run stops on its loss L = (1/6)Σ_Ω(...)², i.e. relative loss 2·3·L/‖P_Ω M‖² = 3L
        razin = factorized_gd(RAZIN_OBSERVED, RAZIN_MASK, start, 3.0 * config.razin_target_loss,
                              config.razin_max_steps, config.growth_step, config.stability_step,
                              recording_steps(config.razin_max_steps, 4 * TRACE_POINTS), bar)
        bar(config.razin_max_steps)
        rows = [(step, name, value) for step, matrix in razin.trace for name, value in _razin_metrics(matrix).items()]
        rows.append((razin.steps, "converged", float(razin.converged)))
        runs.append(SolvedRun(RC_RUN, RC_RUN, {"depth": config.razin_depth, "init": config.razin_init,
                                               "target_loss": config.razin_target_loss}, rows, razin.steps,
                              seed=config.seed))
        arrays[RC_RUN] = razin.matrix
        reference = min_nuclear_completion(problem.observed, problem.mask)
        arrays["ref_min_nuclear"] = reference.matrix
        arrays["status_min_nuclear"] = np.array(reference.status)
        arrays["observed"], arrays["mask"] = problem.observed, problem.mask
        if problem.truth is not None:
            arrays["truth"] = problem.truth
        return Solved(runs, arrays)

    def analyze(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame,
                solutions: dict[str, np.ndarray] | None = None) -> Analysis:
        solutions = solutions or {}
        table = _table(runs, metrics, solutions)
        mask = solutions.get("mask")
        notes = [
            "test_mse = ‖P_Ωᶜ(W − W*)‖²_F / ‖W*‖²_F, the squared error on the unobserved entries relative to the "
            "truth's energy; for the generated truth (unit mean square) it is the squared error on the unobserved "
            "entries averaged over all n1·n2 entries, so predicting 0 there scores the unobserved energy "
            "≈ 1 − m/(n1·n2).",
            "effective_rank = exp(H(σ/Σσ)) (Roy & Vetterli 2007), H the Shannon entropy; k equal nonzero singular "
            "values give k. relative_train_loss = ‖P_Ω(W − M)‖²/‖P_Ω(M)‖²; distance_to_min_nuclear = ‖W − W_nuc‖_F / "
            "‖W_nuc‖_F.",
            f"init: every factor init_scale = {config.init_scale:g} × a random orthogonal matrix (balanced); loss "
            f"(1/2m)‖P_Ω(W − M)‖²; stop at ‖P_Ω(W − M)‖²/‖P_Ω M‖² ≤ {config.loss_tol:g} or {config.max_steps} steps; "
            f"steps capped by stability_step = {config.stability_step:g} / curvature bound and growth_step = "
            f"{config.growth_step:g} relative change per factor.",
            "Razin–Cohen 2×2: observed w12 = w21 = 1, w22 = 0, w11 unobserved; W_j(0) = "
            f"{config.razin_init:g}·I (depth {config.razin_depth}, so det W(0) > 0); L = (1/6)Σ_Ω(W_ij − M_ij)². "
            "Gradient flow keeps det W > 0 (Razin & Cohen 2020), so w11·w22 > w12·w21 → 1 while w22² ≤ 6L: "
            "|w11| ≥ w12·w21/√(6L) → ∞ and every norm diverges. The flow also sends det W → 0⁺ (σ₂ → 0, the rank "
            "falls) with w12, w21 fitted faster than w22, so the bound is tight: |w11|·√(6L) → 1.",
        ]
        if mask is not None and "ref_min_nuclear" in solutions:
            status = str(solutions.get("status_min_nuclear", "unknown"))
            line = f"min-nuclear-norm completion (cvxpy, SCS; status {status})"
            if "truth" in solutions:
                line += f": test_mse {_test_mse(solutions['ref_min_nuclear'], solutions['truth'], mask):.3e}"
            nuclear = np.linalg.svd(solutions["ref_min_nuclear"], compute_uv=False).sum()
            notes.append(line + f", nuclear norm {nuclear:.4g}.")
        if not table.empty and "converged" in table:
            slow = table.loc[~table["converged"], "run"].tolist()
            if slow:
                notes.append(f"did not reach its stopping loss within its step budget: {', '.join(slow)} (the last "
                             "iterate is used).")
        if config.data_file is not None and (table.empty or "test_mse" not in table):
            notes.append(f"{config.data_file} holds no truth: the test-error and effective-rank checks are "
                         "inconclusive.")
        shown = [c for c in ("run", "depth", "steps", "converged", "relative_train_loss", "test_mse", "effective_rank",
                             "nuclear_norm", "distance_to_min_nuclear") if c in table]
        return Analysis(table[shown] if not table.empty else table, _checks(config, table, metrics, runs, solutions),
                        notes)

    def figures(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame,
                solutions: dict[str, np.ndarray] | None, directory: Path) -> list[Path]:
        solutions = solutions or {}
        paths = []
        depth_runs = [r for r in runs["run_id"] if r.startswith("depth_")]
        if solutions and depth_runs:
            paths.append(_completion_figure(config, depth_runs, solutions, directory / "completion_by_depth.png"))
        curves = metrics[metrics["run_id"].isin(depth_runs)]
        if not curves.empty:
            paths.append(_curves_figure(curves, directory / "training_curves.png"))
        razin = metrics[metrics["run_id"] == RC_RUN]
        if not razin.empty:
            paths.append(_razin_figure(razin, directory / "razin_cohen.png"))
        return paths


def _table(runs: pd.DataFrame, metrics: pd.DataFrame, solutions: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per run: depth, steps, convergence and the final metrics."""
    if runs.empty or metrics.empty:
        return pd.DataFrame()
    final = final_values(runs, metrics)
    columns = ["relative_train_loss", "test_mse", "effective_rank", "nuclear_norm", "frobenius_norm", "loss", "w11",
               "w11_sqrt_6l", "sigma_ratio"]
    recorded = metrics.groupby("run_id")["name"].agg(set).to_dict()
    rows = []
    for _, run in final.iterrows():
        config = runs.loc[runs["run_id"] == run["run_id"], "config"].iloc[0]
        row = {"run": run["run_id"], "depth": int(config["depth"]), "steps": int(run["final_step"]),
               "converged": bool(run.get("converged", 0.0) == 1.0)}
        # a metric the run recorded keeps its final value, NaN included (a NaN must reach the checks)
        row.update({c: float(run[c]) for c in columns if c in run and c in recorded.get(run["run_id"], set())})
        matrix, reference = solutions.get(run["run_id"]), solutions.get("ref_min_nuclear")
        if matrix is not None and reference is not None and matrix.shape == reference.shape:
            row["distance_to_min_nuclear"] = float(np.linalg.norm(matrix - reference) / np.linalg.norm(reference))
        rows.append(row)
    return pd.DataFrame(rows)


def _row(table: pd.DataFrame, run: str) -> pd.Series | None:
    match = table[table["run"] == run] if not table.empty else table
    return None if match.empty else match.iloc[0]


def _checks(config: Config, table: pd.DataFrame, metrics: pd.DataFrame, runs: pd.DataFrame,
            solutions: dict[str, np.ndarray]) -> list[Check]:
    """Every check from the stored metrics and run settings (test_mse is recorded only when a truth
    exists); ``solutions`` only adds detail. A missing run, metric or setting, or a NaN, leaves the
    check that needs it inconclusive, naming what is missing."""
    rows = {d: _row(table, f"depth_{d}") for d in (1, 2, 3)}

    def value(depth: int, column: str) -> float | None:
        row = rows[depth]
        return None if row is None or column not in row.index else float(row[column])

    def missing(depth: int, column: str = "test_mse") -> str:
        """Why a depth's value is absent ('' if it is there; a NaN value is the base's to report)."""
        if rows[depth] is None:
            return f"depth {depth} did not run"
        if column not in rows[depth].index:
            return "no truth: test errors cannot be computed" if column == "test_mse" else f"no {column} recorded"
        return ""

    checks = []
    deep, shallow2, one = value(3, "test_mse"), value(2, "test_mse"), value(1, "test_mse")
    checks.append(Check.at_most("depth-3 test MSE", deep, DEEP_TOL, detail=missing(3)))

    # depth 3 exactly 0 would make the ratio infinite (the claim holds); the smallest positive float keeps it finite
    ratio = None if deep is None or shallow2 is None else shallow2 / max(deep, np.finfo(float).tiny)
    checks.append(Check.at_least("depth-2 / depth-3 test MSE", ratio, RATIO_MIN,
                                 detail=missing(2) or missing(3) or f"depth 2: {shallow2:.3e}, depth 3: {deep:.3e}"))

    fraction = _run_config(runs, "depth_1").get("observed_fraction")
    expected = None if fraction is None else 1.0 - float(fraction)
    detail = missing(1) or ("the observed fraction of depth 1's run is not recorded" if expected is None else "")
    if "truth" in solutions and "mask" in solutions:
        truth, mask = solutions["truth"], solutions["mask"]
        detail = "; ".join(filter(None, [detail, f"the truth's unobserved energy fraction (the exact value for a zero "
                                                 f"fill) = {np.sum((truth * ~mask) ** 2) / np.sum(truth ** 2):.4f}"]))
    shown = f"depth 1: {one:.4f}; 1 − m/(n1·n2) = {expected:.4f}" if one is not None and expected is not None else ""
    checks.append(Check.at_most("|depth-1 test MSE − (1 − m/(n1·n2))|",
                                None if one is None or expected is None else abs(one - expected), SHALLOW_TOL,
                                detail="; ".join(filter(None, [shown, detail]))))

    rank = _run_config(runs, "depth_3").get("true_rank")
    effective = value(3, "effective_rank")
    if rank is None:
        checks.append(Check.at_most("depth-3 effective rank", effective, RANK_MARGIN, strict=True,
                                    of="effective rank − r",
                                    unreliable=missing(3, "effective_rank") or "the true rank is unknown (no truth)"))
    else:
        checks.append(Check.at_most("depth-3 effective rank", effective, rank + RANK_MARGIN, strict=True,
                                    detail=missing(3, "effective_rank") or f"true rank r = {rank}: r + {RANK_MARGIN:g}"))
    checks.extend(_razin_checks(metrics))
    return checks


def _run_config(runs: pd.DataFrame, run_id: str) -> dict[str, Any]:
    match = runs.loc[runs["run_id"] == run_id, "config"] if "config" in runs else []
    return dict(match.iloc[0]) if len(match) and isinstance(match.iloc[0], dict) else {}


def _razin_checks(metrics: pd.DataFrame) -> list[Check]:
    """|w11|·√(6L) and σ₂/σ₁ at every recorded step with L ≤ RC_LOSS; a NaN among them (or among the
    losses that choose the steps) makes the checks inconclusive rather than dropping out of max/min."""
    names = (f"Razin–Cohen: |w11|·√(6L) once L ≤ {RC_LOSS:g} (farthest from 1)",
             f"Razin–Cohen: σ₂/σ₁ once L ≤ {RC_LOSS:g} (largest)")
    part = metrics[metrics["run_id"] == RC_RUN].sort_values("step", kind="stable")
    wide = part.drop_duplicates(["step", "name"], keep="last").pivot(index="step", columns="name", values="value")

    def undecided(reason: str) -> list[Check]:
        return [Check.within(names[0], None, *RC_BAND, unreliable=reason),
                Check.at_most(names[1], None, RC_RATIO, unreliable=reason)]

    needed = ("loss", "w11_sqrt_6l", "sigma_ratio")
    if wide.empty or any(c not in wide for c in needed):
        return undecided("the 2×2 run did not run" if wide.empty else
                         f"the 2×2 run did not record {', '.join(c for c in needed if c not in wide)}")
    if wide["loss"].isna().any():
        return undecided(f"{int(wide['loss'].isna().sum())} recorded loss(es) of the 2×2 run are NaN")
    late = wide[wide["loss"] <= RC_LOSS]
    if late.empty:
        return undecided(f"the loss never reached {RC_LOSS:g} (lowest {wide['loss'].min():.3e})")
    products, ratios = late["w11_sqrt_6l"].to_numpy(), late["sigma_ratio"].to_numpy()
    # NaN propagates through these (numpy), so a NaN step makes the value NaN: inconclusive
    farthest = float(products[np.argmax(np.abs(products - 1.0))]) if np.all(np.isfinite(products)) else math.nan
    largest = float(np.max(ratios))
    last = late.iloc[-1]
    detail = (f"{len(late)} recorded steps with L ≤ {RC_LOSS:g} (steps {int(late.index[0])}–{int(late.index[-1])}); "
              f"|w11|·√(6L) from {np.min(products):.4f} to {np.max(products):.4f}; at the last step "
              f"L = {last['loss']:.3e}, w11 = {last.get('w11', math.nan):.3f}, "
              f"‖W‖_F = {last.get('frobenius_norm', math.nan):.3f}")
    return [Check.within(names[0], farthest, *RC_BAND, detail=detail),
            Check.at_most(names[1], largest, RC_RATIO,
                          detail=f"σ₂/σ₁ at the last step {last['sigma_ratio']:.2e}; det W = "
                                 f"{last.get('det', math.nan):.2e}")]


def _completion_figure(config: Config, depth_runs: list[str], solutions: dict[str, np.ndarray], path: Path) -> Path:
    """Test MSE by depth (log) beside the singular value spectra of every solution, the reference and the truth."""
    truth, mask = solutions.get("truth"), solutions["mask"]
    panels = []
    if truth is not None:
        depths = [int(r.split("_")[1]) for r in depth_runs]
        errors = [_test_mse(solutions[r], truth, mask) for r in depth_runs]
        panels.append(kinds.Panel(
            [kinds.Curve(depths, errors, "gradient descent", {"marker": "o"})],
            [kinds.Line(_test_mse(solutions["ref_min_nuclear"], truth, mask), "min nuclear norm", {"linewidth": 1.5}),
             kinds.Line(1 - mask.sum() / mask.size, "1 − m/(n1·n2)", {"linestyle": ":", "linewidth": 1.5})],
            xlabel="depth N", ylabel="test MSE (unobserved entries)", yscale="log", xticks=depths))
    styles = {"ref_min_nuclear": dict(color="grey", linestyle="--"), "truth": dict(color="black", linestyle=":")}
    spectra = [kinds.Curve(np.arange(1, len(svals) + 1), svals, name.replace("_", " ").replace("ref ", ""),
                           {"marker": ".", "markersize": 3, **styles.get(name, {})}, 1e-16)
               for name in [*depth_runs, "ref_min_nuclear", "truth"] if name in solutions
               for svals in [np.linalg.svd(solutions[name], compute_uv=False)]]
    panels.append(kinds.Panel(spectra, xlabel="index i", ylabel="singular value σ_i", yscale="log"))
    return kinds.draw(panels, path, size=(5.25, 3.8) if truth is not None else (5.5, 3.8))


def _curves_figure(curves: pd.DataFrame, path: Path) -> Path:
    """Test MSE (if a truth is known), train loss and effective rank along training, one line per depth."""
    names = [n for n in ("test_mse", "relative_train_loss", "effective_rank") if n in set(curves["name"])]
    runs = [(r, r.replace("_", " "), {}) for r in sorted(set(curves["run_id"]))]
    panels = kinds.series_vs_step(curves, names, runs, floor=1e-16, ylabels=[n.replace("_", " ") for n in names])
    for name, panel in zip(names, panels):
        for curve in panel.curves:
            curve.style = {"marker": "o"} if len(curve.x) < 3 else {}
        if name == "effective_rank":
            panel.yscale = "linear"
            for curve in panel.curves:
                curve.floor = None
    return kinds.draw(panels, path, size=(4.6, 3.6))


def _razin_figure(razin: pd.DataFrame, path: Path) -> Path:
    """Razin–Cohen 2×2 along training: |w11| and the norms grow like 1/√(6L) while σ₂/σ₁ and L fall."""
    wide = razin.pivot_table(index="step", columns="name", values="value").sort_index()
    wide = wide[wide.index > 0]
    norms = [kinds.Curve(wide.index, wide[name].abs(), label)
             for name, label in (("w11", "|w11|"), ("frobenius_norm", "‖W‖_F"), ("nuclear_norm", "‖W‖_*"))]
    norms.append(kinds.Curve(wide.index, 1 / np.sqrt(6 * wide["loss"]), "1/√(6L)", {"color": "grey", "linestyle": "--"}))
    rank = [kinds.Curve(wide.index, wide["sigma_ratio"], "σ₂/σ₁", {"color": "C3"}),
            kinds.Curve(wide.index, wide["loss"], "loss L", {"color": "C4"})]
    return kinds.draw([kinds.Panel(norms, xlabel="step", ylabel="norm", xscale="log", yscale="log",
                                   title="Razin–Cohen 2×2, depth 3: norms"),
                       kinds.Panel(rank, [kinds.Line(RC_LOSS, f"L = {RC_LOSS:g}", {"linestyle": ":"})], xlabel="step",
                                   xscale="log", yscale="log", title="rank (σ₂/σ₁) and loss")], path, size=(5.25, 3.8))


STUDY = MatrixFactorization()
