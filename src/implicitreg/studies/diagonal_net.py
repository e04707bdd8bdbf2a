"""diagonal-net: the initialization scale of a diagonal linear network moves its implicit bias from ℓ2 to ℓ1.

Woodworth, Gunasekar, Lee, Moroshko, Savarese, Golan, Soudry & Srebro (2020), "Kernel and rich
regimes in overparametrized models".

Claim checked: the predictor β = u⊙u − v⊙v trained by gradient flow on the squared loss of an
underdetermined regression X β = y from u = v = α·1 converges to

    argmin Q_α(β) s.t. Xβ = y,   Q_α(β) = α² Σᵢ q(βᵢ/α²),   q(z) = 2 − √(4 + z²) + z·asinh(z/2),

which tends to the minimum-ℓ1 interpolant as α → 0 (the "rich" regime: sparse recovery) and to the
minimum-ℓ2 interpolant as α → ∞ (the "kernel" regime). Gradient descent with small steps stands in
for the flow; one batched computation runs every α of a sweep over several decades, and each
solution is compared with the Q_α minimizer, the min-ℓ1 interpolant (linear program) and the
min-ℓ2 interpolant (pseudo-inverse) of :mod:`implicitreg.references.sparse_regression`.

How gradient descent follows the flow. With g = Xᵀ(Xβ − y)/n the flow is u̇ = −2u⊙g, v̇ = 2v⊙g.
One step of size η multiplies uᵢ by (1 − 2ηgᵢ), an Euler step of the exponential growth the flow
performs while β is small, so η is capped to keep 2η‖g‖_∞ ≤ ``growth_step``; its first-order error
is what separates GD from the flow (halving ``growth_step`` halves the distance to the Q_α
solution). η is also capped at ``stability_step`` / (4 λ_max(X diag(u² + v²) Xᵀ/n)), the inverse
curvature of the loss in (u, v) (its Gauss–Newton part): λ_max is recomputed whenever u² + v² may
have grown by half since the last eigendecomposition (the growth of every step is tracked, so the
cap is always a true bound). Each α thus gets its own step, adapted along its own trajectory; a
run stops once ‖Xβ − y‖²/‖y‖² ≤ ``loss_tol``, or at ``max_steps``. Small α needs many steps:
its last phase moves off-support coordinates whose speed is proportional to their own tiny size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field, model_validator

from implicitreg.config import Strict
from implicitreg.data.npz import read_regression
from implicitreg.dynamics.diagonal_net import diagonal_gd
from implicitreg.dynamics.grid import recording_steps
from implicitreg.references.sparse_regression import (min_l1_interpolant, min_l2_interpolant, q_alpha,
                                                      q_alpha_interpolant)
from implicitreg.report import kinds
from implicitreg.studies.base import Analysis, Check, ProgressBar, Solved, SolvedRun, Support, final_values

Q_TOL = 1e-2  # relative distance of GD to the Q_α solution, every α (issue text)
L1_TOL = 0.05  # relative distance to the min-ℓ1 interpolant at the smallest α
L2_TOL = 0.01  # relative distance to the min-ℓ2 interpolant at the largest α
TRACE_POINTS = 60  # log-spaced steps at which trajectories are recorded


class Config(Strict):
    """Configuration of ``diagonal-net``; every field can be set with ``--set``."""

    data_file: str | None = Field(None, description="a user's X (n×d), y (n) as .npz instead of the generator")
    seed: int = Field(0, ge=0, description="seed of the generated problem")
    n: int = Field(40, ge=1, description="generated samples (rows of X)")
    d: int = Field(100, ge=2, description="generated dimension (columns of X)")
    k: int = Field(5, ge=1, description="nonzeros of the generated β*")
    alphas: list[float] = Field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0, 1e1, 1e2], min_length=2,
                                description="initialization scales u = v = α·1, increasing")
    loss_tol: float = Field(1e-12, gt=0.0, description="stop once ‖Xβ − y‖²/‖y‖² reaches this")
    max_steps: int = Field(600_000, ge=1)
    growth_step: float = Field(0.01, gt=0.0, le=0.5, description="cap on 2η‖g‖_∞ (Euler step of the growth)")
    stability_step: float = Field(0.5, gt=0.0, lt=2.0, description="η × curvature bound")

    @model_validator(mode="after")
    def _check(self) -> "Config":
        if any(not 1e-6 <= a <= 1e6 for a in self.alphas) or sorted(set(self.alphas)) != self.alphas:
            raise ValueError(f"alphas must be increasing values in [1e-6, 1e6], got {self.alphas}")
        if self.k > self.d:
            raise ValueError(f"k must be <= d (nonzeros of β* in dimension d), got k={self.k}, d={self.d}")
        if self.n >= self.d:
            raise ValueError(f"n must be < d (an underdetermined system), got n={self.n}, d={self.d}")
        return self


@dataclass(frozen=True)
class Problem:
    """X [n, d], y [n] and, for the generated problem, the planted sparse β* [d]."""

    x: np.ndarray
    y: np.ndarray
    beta_star: np.ndarray | None
    source: str


def generate(config: Config) -> Problem:
    """Gaussian X [n, d]; β* with k nonzeros ±1/√k (‖β*‖₂ = 1) on a random support; y = Xβ*."""
    rng = np.random.default_rng(config.seed)
    x = rng.standard_normal((config.n, config.d))
    beta = np.zeros(config.d)
    support = rng.choice(config.d, config.k, replace=False)
    beta[support] = rng.choice([-1.0, 1.0], config.k) / np.sqrt(config.k)
    return Problem(x, x @ beta, beta, f"generated (seed {config.seed})")


def load(path: str) -> Problem:
    """A user's regression problem; it must be underdetermined and consistent (ValueError otherwise)."""
    x, y = read_regression(path)
    n, d = x.shape
    if not np.any(y):
        raise ValueError(f"--data {path}: y is all zeros, so β = 0 interpolates and every α gives it")
    rank = int(np.linalg.matrix_rank(x))
    if rank >= d:
        raise ValueError(f"--data {path}: X ({n}×{d}) has rank {rank} = d, so Xβ = y has at most one solution "
                         "and there is no implicit bias to observe; expected rank(X) < d (e.g. n < d)")
    residual = float(np.linalg.norm(x @ min_l2_interpolant(x, y) - y) / np.linalg.norm(y))
    if residual > 1e-8:
        raise ValueError(f"--data {path}: Xβ = y has no exact solution (least-squares relative residual "
                         f"{residual:.2e}); expected y in the column space of X, as interpolation needs")
    return Problem(x, y, None, str(path))


def run_label(alpha: float) -> str:
    return f"alpha_{alpha:g}"


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    norm = float(np.linalg.norm(b))
    return float(np.linalg.norm(a - b)) / norm if norm > 0 else float(np.linalg.norm(a))


class DiagonalNet:
    name = "diagonal-net"
    claim = ("Gradient descent on a diagonal linear network β = u⊙u − v⊙v from u = v = α·1 converges to the "
             "Q_α-minimal interpolant: the min-ℓ1 solution as α → 0, the min-ℓ2 solution as α → ∞.")
    paper = "Woodworth, Gunasekar, Lee, Moroshko, Savarese, Golan, Soudry & Srebro 2020"
    Config = Config
    minutes = (0.2, 1.4)  # quick, full: on 2 CPU cores, --threads 1

    def defaults(self, quick: bool) -> dict[str, Any]:
        if not quick:
            return {}
        return {"alphas": [1e-3, 1e-1, 1.0, 1e2], "max_steps": 20_000}

    def plan(self, config: Config) -> list:
        return []

    def problem(self, config: Config) -> Problem:
        return load(config.data_file) if config.data_file is not None else generate(config)

    def solve(self, config: Config, problem: Problem, progress: ProgressBar) -> Solved:
        x, y = problem.x, problem.y
        alphas = np.asarray(config.alphas, dtype=np.float64)
        l1, l2 = min_l1_interpolant(x, y), min_l2_interpolant(x, y)
        refs = {float(alpha): q_alpha_interpolant(x, y, alpha) for alpha in alphas}
        grid = recording_steps(config.max_steps, TRACE_POINTS)
        bar = progress("gradient descent (slowest α)", config.max_steps)
        result = diagonal_gd(x, y, alphas, config.loss_tol, config.max_steps, config.growth_step,
                             config.stability_step, record=grid, progress=bar)
        bar(config.max_steps)
        n = x.shape[0]
        rows: dict[int, list[tuple[int, str, float]]] = {i: [] for i in range(len(alphas))}
        for step, i, beta in result.trace:
            ref = refs[float(alphas[i])].beta
            squared = float(np.sum((x @ beta - y) ** 2))
            values = {"train_loss": squared / (2 * n), "relative_loss": squared / float(y @ y),
                      "l1_norm": float(np.abs(beta).sum()), "l2_norm": float(np.linalg.norm(beta)),
                      "error_q_alpha": _relative(beta, ref), "error_min_l1": _relative(beta, l1),
                      "error_min_l2": _relative(beta, l2)}
            if problem.beta_star is not None:
                values["recovery_error"] = float(np.linalg.norm(beta - problem.beta_star))
            rows[i].extend((int(step), name, value) for name, value in values.items())
        runs, arrays = [], {"ref_min_l1": l1, "ref_min_l2": l2}
        for i, alpha in enumerate(alphas):
            ref = refs[float(alpha)]
            label = run_label(alpha)
            last = int(result.steps[i])
            rows[i] += [(last, "converged", float(result.converged[i])),
                        (last, "ref_q_alpha_residual", ref.residual),
                        (last, "ref_q_alpha_converged", float(ref.converged)),
                        (last, "q_alpha_gd", float(q_alpha(result.beta[i], alpha))),
                        (last, "q_alpha_ref", float(q_alpha(ref.beta, alpha)))]
            runs.append(SolvedRun(label, label, {"alpha": float(alpha), "loss_tol": config.loss_tol,
                                                 "max_steps": config.max_steps, "source": problem.source},
                                  rows[i], last, seed=config.seed))
            arrays[label] = result.beta[i]
            arrays[f"ref_q_{label}"] = ref.beta
        if problem.beta_star is not None:
            arrays["truth"] = problem.beta_star
        return Solved(runs, arrays)

    def analyze(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame,
                solutions: dict[str, np.ndarray] | None = None) -> Analysis:
        solutions = solutions or {}
        table = _table(config, runs, metrics, solutions)
        notes = [
            "error_* = relative error ‖β − β_ref‖₂ / ‖β_ref‖₂; Q_α solution: argmin Q_α(β) s.t. Xβ = y from the "
            "dual (scipy trust-exact, polished by scipy root; its feasibility ‖Xβ − y‖/‖y‖ is the metric "
            "ref_q_alpha_residual); min-ℓ1: linprog (HiGHS); min-ℓ2: pinv; relative_loss = ‖Xβ − y‖²/‖y‖²; "
            "recovery_error = ‖β − β*‖₂.",
            f"gradient descent: u = v = α·1; step per α capped by growth_step = {config.growth_step} (Euler step of "
            f"the multiplicative growth, 2η‖g‖_∞) and by stability_step = {config.stability_step} / (4 λ_max(X "
            "diag(u²+v²) Xᵀ/n)); stops at ‖Xβ − y‖²/‖y‖² ≤ "
            f"{config.loss_tol:g} or after {config.max_steps} steps.",
        ]
        if not table.empty and "converged" in table and not table["converged"].fillna(False).astype(bool).all():
            slow = table.loc[~table["converged"].fillna(False).astype(bool), "alpha"].tolist()
            notes.append(f"α = {', '.join(f'{a:g}' for a in slow)} did not reach ‖Xβ − y‖²/‖y‖² ≤ {config.loss_tol:g} "
                         f"within {config.max_steps} steps (see relative_loss): small α converges slowly, its last "
                         "coordinates moving at a speed proportional to their own size; the comparisons use the last "
                         "iterate.")
        if config.data_file is None:
            notes.append(f"generated problem: X {config.n}×{config.d} standard Gaussian, β* with {config.k} nonzeros "
                         f"±1/√{config.k} (seed {config.seed}), y = Xβ*.")
        else:
            notes.append(f"problem from {config.data_file}: no planted β*, so no recovery error.")
        shown = [c for c in ("alpha", "steps", "converged", "relative_loss", "l1_norm", "recovery_error",
                             "error_q_alpha", "error_min_l1", "error_min_l2") if c in table]
        return Analysis(table[shown] if not table.empty else table, _checks(config, table, solutions), notes)

    def figures(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame,
                solutions: dict[str, np.ndarray] | None, directory: Path) -> list[Path]:
        solutions = solutions or {}
        table = _table(config, runs, metrics, solutions)
        paths = []
        if not table.empty and "l1_norm" in table:  # needs the solutions
            paths += [_sweep_figure(table, solutions, directory / "alpha_sweep.png"),
                      _distance_figure(table, directory / "distance_to_references.png")]
        losses = metrics[metrics["name"] == "train_loss"].merge(runs[["run_id"]], on="run_id")
        if not losses.empty:
            paths.append(_loss_figure(losses, config, directory / "train_loss.png"))
        return paths


def _table(config: Config, runs: pd.DataFrame, metrics: pd.DataFrame, solutions: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per α: steps, final relative loss, norms and relative distances to every reference."""
    if runs.empty or metrics.empty:
        return pd.DataFrame()
    final = final_values(runs, metrics)
    rows = []
    for _, run in final.iterrows():
        label = run["run_id"]
        alpha = float(runs.loc[runs["run_id"] == label, "config"].iloc[0]["alpha"])
        row: dict[str, Any] = {"alpha": alpha, "steps": int(run["final_step"]),
                               "converged": bool(run.get("converged", 0.0) == 1.0)}
        beta = solutions.get(label)
        if beta is not None:
            row["l1_norm"] = float(np.abs(beta).sum())
            row["l2_norm"] = float(np.linalg.norm(beta))
            for name, key in (("error_q_alpha", f"ref_q_{label}"), ("error_min_l1", "ref_min_l1"),
                              ("error_min_l2", "ref_min_l2")):
                row[name] = _relative(beta, solutions[key]) if key in solutions else np.nan
            row["recovery_error"] = float(np.linalg.norm(beta - solutions["truth"])) if "truth" in solutions else np.nan
        row["relative_loss"] = float(run.get("relative_loss", np.nan))
        row["ref_q_alpha_residual"] = float(run.get("ref_q_alpha_residual", np.nan))
        row["ref_q_alpha_converged"] = bool(run.get("ref_q_alpha_converged", 0.0) == 1.0)
        rows.append(row)
    return pd.DataFrame(rows).sort_values("alpha").reset_index(drop=True)


def _checks(config: Config, table: pd.DataFrame, solutions: dict[str, np.ndarray]) -> list[Check]:
    """Every planned α is judged: a missing run, a missing solution or a NaN error leaves the check
    that needs it inconclusive (never dropped from a max, never replaced by the next α)."""
    alphas = list(config.alphas)
    rows = ({float(a): r for a, r in zip(table["alpha"], table.to_dict("records"))}
            if not table.empty and "alpha" in table else {})

    def error(alpha: float, column: str) -> float | None:
        row = rows.get(float(alpha))
        return None if row is None or column not in row else float(row[column])

    if not rows:
        reason = "no runs stored"
    elif "error_q_alpha" not in table:
        reason = "no solutions stored (the run did not finish solving)"
    else:
        reason = ""
    errors = {a: error(a, "error_q_alpha") for a in alphas}
    lost = [a for a, e in errors.items() if e is None or not np.isfinite(e)]
    unsolved = [a for a in alphas if float(a) in rows and not rows[float(a)].get("ref_q_alpha_converged", False)]
    known = [errors[a] for a in alphas if a not in lost and a not in unsolved]
    finite = [errors[a] for a in alphas if a not in lost]
    # the largest error over every α is unknown while one α has no error (or no converged reference),
    # unless the others already exceed the limit
    decided = bool(known) and (len(known) == len(alphas) or max(known) > Q_TOL)
    listed = lambda values: ", ".join(f"{a:g}" for a in values)  # noqa: E731
    unknown = "; ".join(filter(None, [f"no error for α = {listed(lost)}" if lost else "",
                                      f"the Q_α reference did not converge for α = {listed(unsolved)}" if unsolved
                                      else ""]))
    checks = [Check.at_most(
        "GD vs Q_α solution, largest relative error over α",
        max(known) if decided else max(finite) if finite else None, Q_TOL,
        detail="; ".join(filter(None, [unknown if decided else "",
                                       ", ".join(f"α={a:g}: {_fmt(e)}" for a, e in errors.items()) if rows else ""])),
        support=Support(len(known), len(alphas), "α values") if decided else None,
        unreliable=reason or ("" if decided else unknown))]

    for name, alpha, column, tol, describe in (
            ("GD vs min-ℓ1 interpolant at the smallest α", alphas[0], "error_min_l1", L1_TOL, _l1_detail),
            ("GD vs min-ℓ2 interpolant at the largest α", alphas[-1], "error_min_l2", L2_TOL, _l2_detail)):
        row = rows.get(float(alpha))
        why = reason or ("" if row is not None else f"no run for α = {alpha:g}")
        checks.append(Check.at_most(name, error(alpha, column), tol, unreliable=why,
                                    detail=f"α = {alpha:g}" + (describe(row, solutions) if row is not None else "")))
    return checks


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2e}"


def _l1_detail(row: dict[str, Any], solutions: dict[str, np.ndarray]) -> str:
    if "l1_norm" not in row or "ref_min_l1" not in solutions:
        return ""
    return f"; ℓ1 norm {row['l1_norm']:.4f} vs min-ℓ1 {np.abs(solutions['ref_min_l1']).sum():.4f}"


def _l2_detail(row: dict[str, Any], solutions: dict[str, np.ndarray]) -> str:
    if "l2_norm" not in row or "ref_min_l2" not in solutions:
        return ""
    return f"; ℓ2 norm {row['l2_norm']:.4f} vs min-ℓ2 {np.linalg.norm(solutions['ref_min_l2']):.4f}"


def _sweep_figure(table: pd.DataFrame, solutions: dict[str, np.ndarray], path: Path) -> Path:
    """Recovery error ‖β − β*‖ (when β* is known) and ℓ1 norm against α, with the references' values."""
    shown = [("recovery_error", "‖β − β*‖₂")] if table["recovery_error"].notna().any() else []
    panels = []
    for column, label in [*shown, ("l1_norm", "‖β‖₁")]:
        lines = []
        for ref, style in (("ref_min_l1", "--"), ("ref_min_l2", ":")):
            if ref not in solutions:
                continue
            name = ref.removeprefix("ref_").replace("_", "-")
            value = (float(np.linalg.norm(solutions[ref] - solutions.get("truth"))) if column == "recovery_error"
                     else float(np.abs(solutions[ref]).sum()))
            exact = column == "recovery_error" and value < 1e-9  # a line at 1e-15 would squash the log axis
            lines.append(kinds.Line(None if exact else value, f"{name}: {value:.0e} (exact)" if exact else name,
                                    {"linestyle": style, "linewidth": 1.5}))
        panels.append(kinds.value_vs_parameter(table, "alpha", [(column, "gradient descent", {})], lines=lines,
                                               xlabel="initialization scale α", ylabel=label,
                                               log=(True, column == "recovery_error")))
    return kinds.draw(panels, path, size=(5.0, 3.6))


def _distance_figure(table: pd.DataFrame, path: Path) -> Path:
    """Relative distance of the GD solution to the Q_α, min-ℓ1 and min-ℓ2 solutions against α (log–log)."""
    columns = [("error_q_alpha", "Q_α solution", {}), ("error_min_l1", "min-ℓ1", {}), ("error_min_l2", "min-ℓ2", {})]
    return kinds.draw([kinds.value_vs_parameter(table, "alpha", columns, floor=1e-16, xlabel="initialization scale α",
                                                ylabel="relative distance of GD solution",
                                                lines=[kinds.Line(Q_TOL, f"{Q_TOL:g}")])], path)


def _loss_figure(losses: pd.DataFrame, config: Config, path: Path) -> Path:
    """Train loss along gradient descent for each α (log–log)."""
    runs = [(r, r.replace("alpha_", "α = "), {}) for r in dict.fromkeys(losses["run_id"])]
    return kinds.draw(kinds.series_vs_step(losses, ["train_loss"], runs, floor=1e-300,
                                           ylabels=("train loss ‖Xβ − y‖²/(2n)",)), path)


STUDY = DiagonalNet()
