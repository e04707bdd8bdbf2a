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

Pieces: the solver is :mod:`implicitreg.dynamics.factorization`, the min-nuclear-norm reference
:mod:`implicitreg.references.matrix_completion`; ``problem`` (the problems and recorded metrics),
``analysis`` (table, checks, notes) and ``figures`` are this study's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from implicitreg.config import Strict
from implicitreg.dynamics.factorization import factorized_gd, orthogonal_factors
from implicitreg.dynamics.grid import recording_steps
from implicitreg.references.matrix_completion import min_nuclear_completion
from implicitreg.studies.base import Analysis, ProgressBar, Solved, SolvedRun, run_config
from implicitreg.studies.matrix_factorization import analysis, figures
from implicitreg.studies.matrix_factorization.analysis import RC_RUN, depth_run
from implicitreg.studies.matrix_factorization.problem import (RAZIN_MASK, RAZIN_OBSERVED, Problem, generate, load,
                                                              matrix_metrics, razin_metrics)

__all__ = ["Config", "MatrixFactorization", "Problem", "RAZIN_MASK", "RAZIN_OBSERVED", "STUDY", "orthogonal_factors"]

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
        if config.data_file is not None:
            return load(config.data_file)
        return generate(config.size, config.rank, config.observed, config.seed)

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
                    for name, value in matrix_metrics(matrix * scale, problem).items()]
            rows.append((result.steps, "converged", float(result.converged)))
            label = depth_run(depth)
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
        rows = [(step, name, value) for step, matrix in razin.trace for name, value in razin_metrics(matrix).items()]
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
        table = analysis.run_table(runs, metrics, solutions)
        shown = [c for c in analysis.SHOWN if c in table]
        return Analysis(table[shown] if not table.empty else table,
                        analysis.checks(table, metrics, runs, solutions), analysis.notes(config, table, solutions))

    def figures(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame,
                solutions: dict[str, np.ndarray] | None, directory: Path) -> list[Path]:
        solutions = solutions or {}
        paths = []
        depth_runs = [r for r in runs["run_id"] if r != RC_RUN]
        if solutions and depth_runs:
            paths.append(figures.completion(runs, depth_runs, solutions, directory / "completion_by_depth.png"))
        curves = metrics[metrics["run_id"].isin(depth_runs)]
        if not curves.empty:
            paths.append(figures.curves(curves, directory / "training_curves.png"))
        razin = metrics[metrics["run_id"] == RC_RUN]
        if not razin.empty:
            depth = run_config(runs, RC_RUN).get("depth", config.razin_depth)
            paths.append(figures.razin_cohen(razin, int(depth), directory / "razin_cohen.png"))
        return paths


STUDY = MatrixFactorization()
