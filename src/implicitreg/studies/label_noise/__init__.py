"""label-noise: SGD with fresh label noise finds flatter (and, on a diagonal net, sparser) interpolants than GD.

Blanc, Gupta, Valiant & Valiant (2020), "Implicit regularization for deep neural networks driven by an
Ornstein–Uhlenbeck like process"; HaoChen, Wei, Lee & Ma (2021), "Shape matters: understanding the implicit
bias of the noise covariance"; Damian, Ma & Lee (2021), "Label noise SGD provably prefers flat global
minimizers".

Claim checked: gradient descent whose targets get fresh Gaussian noise δ·ε at every step (Blanc et al.'s
"label noise"; full batch here, a minibatch with ``batch``) moves along the manifold of interpolating
solutions toward smaller tr ∇²L (Blanc et al.; Damian et al.: the implicit regularizer is proportional
to η δ² tr ∇²L), while plain GD from the same initialization stops at the interpolant nearest to it.
On the diagonal net f(x) = ⟨u⊙u − v⊙v, x⟩, tr ∇²L ≈ 4 Σ_j (u_j² + v_j²) ≥ 4‖β‖₁, so label noise recovers the
sparse β* from a large (kernel-regime) initialization u = v = α·1 where GD returns a dense interpolant near
the min-ℓ2 one (HaoChen et al.'s main result, for SGD with label noise). Two problems, ``seeds`` seeds each, two arms
from the same initialization with the same step size and number of steps:

- ``label_noise``: δ > 0 for ``noise_steps`` steps, then δ = 0 (the noise annealed) for the rest, so that
  both arms end at interpolating points of equal (tiny) training loss;
- ``gd``: δ = 0 throughout.

Checks (thresholds fixed from the papers' claims before running, never tuned):

- each problem: tr ∇²L(label noise) / tr ∇²L(GD) ≤ :data:`~.analysis.TRACE_RATIO` = 0.5 in every judged
  seed (the worst seed is the value) — "well below GD's": at most half;
- sparse regression: test error ratio ‖β_LN − β*‖² / ‖β_GD − β*‖² ≤ :data:`~.analysis.ERROR_RATIO` = 0.1 in
  every judged seed (x ~ N(0, I): the test error is ‖β − β*‖² exactly) — recovery where GD does not, an
  order of magnitude apart.

A seed is judged when both arms finished with relative training loss Σ(f − y)²/Σy² ≤ ``loss_tol`` (the
"equal train loss" condition); a check resting on fewer than half of the seeds is inconclusive.

Step size and noise: η = ``lr_scale``/λ₀ with λ₀ the top eigenvalue of J Jᵀ/n at initialization (GD on the
linearized model is stable for η < 2/λ₀; ``lr_scale`` = 1 sits at half that edge), the same η for both arms
of a seed. Targets have mean square 1 (‖β*‖ = 1, x ~ N(0, I); the ReLU teacher is scaled so), and δ = 1 is
noise of the targets' own size (the papers' results hold for a fixed δ with η small enough; the rate of the
regularization grows as η²δ², so δ sets how many steps the effect needs — this choice is ours). The sizes (n = 40, d = 100, k = 5) are Woodworth et al.'s and the diagonal-net study's;
α = 1 puts the start in the kernel regime there (GD ends within a few percent of min-ℓ2's error).

Pieces: the dynamics :mod:`implicitreg.dynamics.label_noise` (tested against autograd, plain GD and the Monte
Carlo mean step), the problems :mod:`.problem`, the table and checks :mod:`.analysis`, the figures
:mod:`.figures`; min-ℓ1 / min-ℓ2 interpolants :mod:`implicitreg.references.sparse_regression`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from implicitreg.config import Strict
from implicitreg.dynamics.label_noise import Model, diagonal_net, label_noise_descent, relu_net
from implicitreg.references.sparse_regression import min_l1_interpolant, min_l2_interpolant
from implicitreg.studies.base import Analysis, ProgressBar, Solved, SolvedRun
from implicitreg.studies.label_noise import analysis, figures
from implicitreg.studies.label_noise.problem import relu_problem, sparse_problem

__all__ = ["Config", "LabelNoise", "STUDY", "run_id"]

ARMS = ("label_noise", "gd")
NOISE_SEED = 20_000  # seed s's label noise comes from numpy's generator seeded 20 000 + s, apart from its data's
RECORD_POINTS = 60  # evenly spaced recording steps (the regularization acts at a steady rate, not on a log scale)


class Config(Strict):
    """Configuration of ``label-noise``; every field can be set with ``--set``."""

    seeds: int = Field(5, ge=1, description="problems and initializations (seeds 0, 1, …) per problem")
    problems: list[Literal["sparse", "relu"]] = Field(default_factory=lambda: ["sparse", "relu"], min_length=1,
                                                      description="sparse (diagonal net) and/or relu (two-layer)")
    noise: float = Field(1.0, gt=0.0, description="label-noise standard deviation δ (targets have mean square 1)")
    lr_scale: float = Field(1.0, gt=0.0, lt=2.0, description="η·λ₀, λ₀ = λ_max(J Jᵀ/n) at initialization")
    batch: int | None = Field(None, ge=1, description="points per step (None: the full batch)")
    loss_tol: float = Field(1e-5, gt=0.0, description="both arms must end with Σ(f − y)²/Σy² below this")
    n: int = Field(40, ge=1, description="sparse: samples")
    d: int = Field(100, ge=2, description="sparse: dimension")
    k: int = Field(5, ge=1, description="sparse: nonzeros of β*")
    alpha: float = Field(1.0, gt=0.0, description="sparse: initialization u = v = α·1")
    sparse_steps: int = Field(400_000, ge=1, description="sparse: steps of each arm")
    sparse_noise_steps: int = Field(350_000, ge=0, description="sparse: steps with label noise (then annealed)")
    relu_n: int = Field(20, ge=1, description="relu: training points")
    relu_d: int = Field(5, ge=1, description="relu: input dimension (a constant feature is appended)")
    width: int = Field(20, ge=1, description="relu: hidden units of the student")
    teacher_units: int = Field(2, ge=1, description="relu: hidden units of the teacher")
    init: float = Field(1.0, gt=0.0, description="relu: initialization scale (1: fan-in scale)")
    relu_steps: int = Field(60_000, ge=1, description="relu: steps of each arm")
    relu_noise_steps: int = Field(50_000, ge=0, description="relu: steps with label noise (then annealed)")
    test_points: int = Field(2000, ge=1, description="relu: fresh points for the test error")

    @model_validator(mode="after")
    def _check(self) -> "Config":
        if len(set(self.problems)) != len(self.problems):
            raise ValueError(f"problems must be distinct, got {self.problems}")
        if self.k > self.d or self.n >= self.d:
            raise ValueError(f"sparse: expected k <= d and n < d (an underdetermined problem with a k-sparse β*), "
                             f"got n={self.n}, d={self.d}, k={self.k}")
        for name in ("sparse", "relu"):
            steps, noisy = getattr(self, f"{name}_steps"), getattr(self, f"{name}_noise_steps")
            if noisy >= steps:
                raise ValueError(f"{name}_noise_steps must be below {name}_steps (an annealed final phase), got "
                                 f"{noisy} and {steps}")
        if self.batch is not None and self.batch > min(self.n, self.relu_n):
            raise ValueError(f"batch: expected at most min(n, relu_n) = {min(self.n, self.relu_n)}, got {self.batch}")
        return self


def run_id(problem: str, arm: str, seed: int) -> str:
    return f"{problem}/{arm}/seed{seed}"


def _top_ntk(model: Model, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
    """λ_max(J Jᵀ/n) per member [M] (dense: n is small)."""
    jac = model.jacobian(theta, x)
    return np.linalg.eigvalsh(np.matmul(jac, np.swapaxes(jac, 1, 2)) / x.shape[1])[:, -1]


def _grid(steps: int, noise_steps: int) -> set[int]:
    return {0, steps, noise_steps, *np.linspace(0, steps, RECORD_POINTS).round().astype(int).tolist()}


def _descend(config: Config, model: Model, theta0: np.ndarray, x: np.ndarray, y: np.ndarray, steps: int,
             noise_steps: int, bar):
    """Both arms of every seed as one batch of 2S members: label noise (seeds 0 … S−1), then GD."""
    theta = np.concatenate([theta0, theta0])
    xs, ys = np.concatenate([x, x]), np.concatenate([y, y])
    lam = _top_ntk(model, theta, xs)
    noise = np.repeat([config.noise, 0.0], len(theta0))
    run = label_noise_descent(model, theta, xs, ys, config.lr_scale / lam, noise, steps, noise_steps=noise_steps,
                              batch=config.batch, seed=[NOISE_SEED + s for s in range(len(theta0))] * 2,
                              record=_grid(steps, noise_steps),
                              progress=bar, every=max(1, steps // 100))
    return run, lam, xs, ys


def _at(run, member: int, step: int) -> float:
    """The Hessian trace of ``member`` recorded at ``step`` (the last step with noise: the anneal starts there)."""
    return float(run.trace[int(np.flatnonzero(run.steps_recorded == step)[0]), member])


def _settings(config: Config, problem: str, arm: str, lam: float, steps: int, noise_steps: int) -> dict[str, Any]:
    return {"problem": problem, "arm": arm, "noise": config.noise if arm == "label_noise" else 0.0,
            "noise_steps": noise_steps if arm == "label_noise" else 0, "steps": steps, "lambda0": lam,
            "lr": config.lr_scale / lam, "lr_scale": config.lr_scale, "batch": config.batch}


def solve_sparse(config: Config, bar) -> Solved:
    seeds = range(config.seeds)
    problems = [sparse_problem(s, config.n, config.d, config.k, config.alpha) for s in seeds]
    model = diagonal_net(config.d)
    run, lam, xs, ys = _descend(config, model, np.stack([p.theta0 for p in problems]),
                                np.stack([p.x for p in problems]), np.stack([p.y for p in problems]),
                                config.sparse_steps, config.sparse_noise_steps, bar)
    d, runs, arrays = config.d, [], {}
    for s, p in enumerate(problems):
        l1, l2 = min_l1_interpolant(p.x, p.y), min_l2_interpolant(p.x, p.y)
        arrays[f"truth_seed{s}"], arrays[f"ref_min_l1_seed{s}"], arrays[f"ref_min_l2_seed{s}"] = p.beta_star, l1, l2
        support = np.abs(p.beta_star) > 0
        for a, arm in enumerate(ARMS):
            m = a * config.seeds + s
            rows = []
            for t, step in enumerate(run.steps_recorded):
                u, v = run.thetas[t, m, :d], run.thetas[t, m, d:]
                beta = u * u - v * v
                rows += [(int(step), "train_loss", float(run.loss[t, m])),
                         (int(step), "relative_loss", float(2 * run.loss[t, m] * config.n / (p.y @ p.y))),
                         (int(step), "hessian_trace", float(run.trace[t, m])),
                         (int(step), "test_error", float(np.sum((beta - p.beta_star) ** 2))),
                         (int(step), "l1_norm", float(np.abs(beta).sum()))]
            beta = run.theta[m, :d] ** 2 - run.theta[m, d:] ** 2
            rows.append((config.sparse_steps, "hessian_trace_anneal_start", _at(run, m, config.sparse_noise_steps)))
            found = np.abs(beta) >= analysis.SUPPORT_FRACTION * np.abs(p.beta_star[support]).min()
            rows += [(config.sparse_steps, "support_size", float(found.sum())),
                     (config.sparse_steps, "support_match", float(np.array_equal(found, support))),
                     (config.sparse_steps, "ref_min_l1_test_error", float(np.sum((l1 - p.beta_star) ** 2))),
                     (config.sparse_steps, "ref_min_l2_test_error", float(np.sum((l2 - p.beta_star) ** 2)))]
            label = run_id("sparse", arm, s)
            runs.append(SolvedRun(label, arm, _settings(config, "sparse", arm, float(lam[m]), config.sparse_steps,
                                                        config.sparse_noise_steps), rows, config.sparse_steps,
                                  seed=s, status="diverged" if run.diverged[m] else "done",
                                  target_step=config.sparse_steps))
            arrays[label.replace("/", "_")] = beta
    return Solved(runs, arrays)


def solve_relu(config: Config, bar) -> Solved:
    seeds = range(config.seeds)
    problems = [relu_problem(s, config.relu_n, config.relu_d, config.width, config.teacher_units, config.init,
                             config.test_points) for s in seeds]
    model = relu_net(config.relu_d + 1, config.width)
    run, lam, xs, ys = _descend(config, model, np.stack([p.theta0 for p in problems]),
                                np.stack([p.x for p in problems]), np.stack([p.y for p in problems]),
                                config.relu_steps, config.relu_noise_steps, bar)
    x_test = np.concatenate([np.stack([p.x_test for p in problems])] * 2)
    y_test = np.concatenate([np.stack([p.y_test for p in problems])] * 2)
    runs, arrays = [], {}
    test_error = [np.mean((model.predict(theta, x_test) - y_test) ** 2, axis=1) for theta in run.thetas]
    for s, p in enumerate(problems):
        for a, arm in enumerate(ARMS):
            m = a * config.seeds + s
            rows = []
            for t, step in enumerate(run.steps_recorded):
                rows += [(int(step), "train_loss", float(run.loss[t, m])),
                         (int(step), "relative_loss", float(2 * run.loss[t, m] * config.relu_n / (p.y @ p.y))),
                         (int(step), "hessian_trace", float(run.trace[t, m])),
                         (int(step), "test_error", float(test_error[t][m]))]
            theta = run.theta[m]
            w = theta[:config.width * (config.relu_d + 1)].reshape(config.width, -1)
            active = (p.x @ w.T > 0).any(axis=0)
            rows += [(config.relu_steps, "hessian_trace_anneal_start", _at(run, m, config.relu_noise_steps)),
                     (config.relu_steps, "active_units", float(active.mean())),
                     (config.relu_steps, "param_norm", float(np.linalg.norm(theta)))]
            label = run_id("relu", arm, s)
            runs.append(SolvedRun(label, arm, _settings(config, "relu", arm, float(lam[m]), config.relu_steps,
                                                        config.relu_noise_steps), rows, config.relu_steps,
                                  seed=s, status="diverged" if run.diverged[m] else "done",
                                  target_step=config.relu_steps))
            arrays[label.replace("/", "_")] = theta
    return Solved(runs, arrays)


class LabelNoise:
    name = "label-noise"
    claim = ("SGD with fresh label noise, annealed at the end, reaches interpolating solutions with a much smaller "
             "Hessian trace than GD from the same initialization; on a diagonal linear network started in the kernel "
             "regime it recovers the sparse truth where GD returns a dense interpolant.")
    paper = "Blanc, Gupta, Valiant & Valiant 2020; HaoChen, Wei, Lee & Ma 2021; Damian, Ma & Lee 2021"
    Config = Config
    minutes = (0.8, 1.1)  # quick, full: measured with --threads 1 on 2 cores shared with other jobs

    def defaults(self, quick: bool) -> dict[str, Any]:
        # quick: the same problems, settings and checks on 3 seeds and shorter noise phases; the annealed phases
        # (30k sparse, 10k relu steps) stay long enough for both arms to reach loss_tol
        return {"seeds": 3, "sparse_steps": 300_000, "sparse_noise_steps": 270_000, "relu_steps": 35_000,
                "relu_noise_steps": 25_000} if quick else {}

    def plan(self, config: Config) -> list:
        return []

    def problem(self, config: Config) -> None:
        return None  # generated per seed inside solve

    def solve(self, config: Config, problem: None, progress: ProgressBar) -> Solved:
        runs, arrays = [], {}
        for name, solver, steps in (("sparse", solve_sparse, config.sparse_steps),
                                    ("relu", solve_relu, config.relu_steps)):
            if name in config.problems:
                solved = solver(config, progress(f"{name}: label noise and GD", steps))
                runs += solved.runs
                arrays.update(solved.arrays)
        return Solved(runs, arrays)

    def analyze(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame,
                solutions: dict[str, np.ndarray] | None = None) -> Analysis:
        return Analysis(analysis.table(config, runs, metrics), analysis.checks(config, runs, metrics),
                        analysis.notes(config, runs, metrics))

    def figures(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame,
                solutions: dict[str, np.ndarray] | None, directory: Path) -> list[Path]:
        return figures.draw_all(config, runs, metrics, solutions or {}, directory)


STUDY = LabelNoise()
