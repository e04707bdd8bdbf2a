"""gd-min-norm: gradient descent from zero on underdetermined least squares finds the minimum-norm solution.

Zhang, Bengio, Hardt, Recht & Vinyals (2017), "Understanding deep learning requires rethinking
generalization", Section 5: on a linear model with more parameters than points, (S)GD started at
zero converges to the minimum-ℓ2-norm interpolant, because every gradient ``Xᵀr/n`` lies in the
row space of ``X``.

Claim checked, on Gaussian problems ``X`` (n×d, d = ratio·n > n) and ``y = Xβ``, for every ratio
and seed:

- GD from ``w = 0`` converges to ``X⁺y`` (``numpy.linalg.pinv``): relative distance
  ‖w − X⁺y‖/‖X⁺y‖ ≤ 1e-6;
- GD from a random ``w₀`` converges to ``X⁺y + (I − P)w₀`` instead (``P = X⁺X``, the projector on
  the row space), same tolerance: the part of ``w₀`` outside the row space never moves;
- so every solution from ``w₀`` has a larger norm than ``X⁺y`` (‖w‖/‖X⁺y‖ > 1): among all
  interpolants, the one from zero is the smallest.

Dynamics: full-batch GD on ``‖Xw − y‖²/(2n)`` with step ``lr_scale·n/‖X‖₂²`` (``lr_scale`` over
the largest curvature), in float64, until the relative residual ‖Xw − y‖/‖y‖ ≤ ``tol`` or
``max_steps``. A run that stops at ``max_steps`` makes the checks inconclusive, never passed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field, field_validator

from implicitreg.config import Strict
from implicitreg.report import kinds
from implicitreg.studies.base import Analysis, Check, ProgressBar, Solved, SolvedRun, Support, final_values, mean_std

EXACT_TOL = 1e-6  # relative distance to the predicted limit: GD reaches a residual of tol = 1e-12
INITS = ("zero", "w0")
LABELS = {"zero": "GD from 0", "w0": "GD from w₀"}


class Config(Strict):
    """Configuration of ``gd-min-norm``; every field can be set with ``--set``."""

    n: int = Field(20, ge=2, description="points of each generated problem")
    ratios: list[float] = Field(default_factory=lambda: [1.5, 2.0, 4.0, 8.0], min_length=1,
                                description="d/n of the problems (each > 1: more parameters than points)")
    seeds: int = Field(3, ge=1, description="problems (and w₀) per ratio")
    init_scale: float = Field(1.0, gt=0.0, description="‖w₀‖ as a multiple of ‖X⁺y‖ (a random direction)")
    lr_scale: float = Field(1.0, gt=0.0, lt=2.0, description="GD step as a fraction of 1/(largest curvature)")
    tol: float = Field(1e-12, gt=0.0, description="GD stops at this relative residual ‖Xw − y‖/‖y‖")
    max_steps: int = Field(200_000, ge=1, description="GD step budget")

    @field_validator("ratios")
    @classmethod
    def _overparameterized(cls, ratios: list[float]) -> list[float]:
        if any(r <= 1 for r in ratios):
            raise ValueError(f"every ratio d/n must be > 1 (more parameters than points), got {ratios}")
        return ratios


def problem_of(n: int, ratio: float, seed: int, init_scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """X (n, d) with i.i.d. N(0, 1/d) entries, y = Xβ (n,) with β ~ N(0, I_d), and w₀ (d,) of norm
    ``init_scale·‖X⁺y‖`` in a uniformly random direction; d = round(ratio·n)."""
    d = int(round(ratio * n))
    rng = np.random.default_rng([seed, d])
    x = rng.standard_normal((n, d)) / np.sqrt(d)
    y = x @ rng.standard_normal(d)
    direction = rng.standard_normal(d)
    w0 = init_scale * np.linalg.norm(np.linalg.pinv(x) @ y) * direction / np.linalg.norm(direction)
    return x, y, w0


def gradient_descent(x: np.ndarray, y: np.ndarray, w0: np.ndarray, lr: float, tol: float, max_steps: int,
                     record: set[int]) -> tuple[np.ndarray, list[tuple[int, np.ndarray]], int, bool]:
    """GD ``w ← w − lr·Xᵀ(Xw − y)/n`` from ``w0``; returns the final w (d,), the iterates at the steps
    in ``record`` (and step 0), the steps taken, and whether the relative residual reached ``tol``."""
    n, w = x.shape[0], w0.astype(np.float64).copy()
    trace, scale = [(0, w.copy())], np.linalg.norm(y)
    for step in range(1, max_steps + 1):
        residual = x @ w - y
        if np.linalg.norm(residual) <= tol * scale:
            return w, _ending(trace, step - 1, w), step - 1, True
        w -= lr * (x.T @ residual) / n
        if step in record:
            trace.append((step, w.copy()))
    converged = bool(np.linalg.norm(x @ w - y) <= tol * scale)
    return w, _ending(trace, max_steps, w), max_steps, converged


def _ending(trace: list[tuple[int, np.ndarray]], step: int, w: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """``trace`` with the last iterate, unless that step is recorded already (one value per step)."""
    return trace if trace[-1][0] == step else trace + [(step, w.copy())]


def relative_distance(w: np.ndarray, target: np.ndarray) -> float:
    """``‖w − target‖ / ‖target‖``."""
    return float(np.linalg.norm(w - target) / np.linalg.norm(target))


class GDMinNorm:
    name = "gd-min-norm"  # must equal the entry point's name
    claim = ("Gradient descent from zero on underdetermined least squares converges to the minimum-norm "
             "interpolant X⁺y; from w₀ it converges to X⁺y + (I − P)w₀, a solution of larger norm.")
    paper = "Zhang, Bengio, Hardt, Recht & Vinyals 2017, Section 5"
    Config = Config
    minutes = (0.1, 0.1)  # quick, full, on 2 CPU cores: printed before the run starts

    def defaults(self, quick: bool) -> dict[str, Any]:
        # --quick judges the same claim with the same checks on fewer, smaller problems
        return {"ratios": [2.0, 4.0], "seeds": 1} if quick else {}

    def plan(self, config: Config) -> list:
        return []  # no populations to train: every run is computed in solve()

    def problem(self, config: Config) -> list[tuple[float, int, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
        """Every (ratio, seed, (X, y, w₀)), generated before anything is written."""
        return [(ratio, seed, problem_of(config.n, ratio, seed, config.init_scale))
                for ratio in config.ratios for seed in range(config.seeds)]

    def solve(self, config: Config, problem: list, progress: ProgressBar) -> Solved:
        record = set(np.unique(np.geomspace(1, config.max_steps, 60).astype(int)).tolist())
        bar = progress("gradient descent from 0 and from w₀", 2 * len(problem))
        runs, arrays = [], {}
        for ratio, seed, (x, y, w0) in problem:
            pinv = np.linalg.pinv(x)
            min_norm = pinv @ y  # the reference: numpy's pseudo-inverse, not the dynamics
            lr = config.lr_scale * x.shape[0] / np.linalg.norm(x, 2) ** 2
            for init in INITS:
                start = np.zeros_like(w0) if init == "zero" else w0
                predicted = min_norm + start - pinv @ (x @ start)  # X⁺y + (I − P)w_start
                w, trace, steps, converged = gradient_descent(x, y, start, lr, config.tol, config.max_steps, record)
                rows = []
                for step, iterate in trace:
                    rows += [(step, "dist_predicted", relative_distance(iterate, predicted)),
                             (step, "dist_min_norm", relative_distance(iterate, min_norm)),
                             (step, "residual", float(np.linalg.norm(x @ iterate - y) / np.linalg.norm(y)))]
                rows += [(steps, "norm_ratio", float(np.linalg.norm(w) / np.linalg.norm(min_norm))),
                         (steps, "converged", float(converged))]
                run_id = f"d{x.shape[1]}/{init}/seed{seed}"
                runs.append(SolvedRun(run_id, init, {"ratio": ratio, "n": x.shape[0], "d": x.shape[1], "init": init,
                                                     "lr": lr, "seed": seed}, rows, steps, seed=seed))
                arrays[run_id], arrays[f"predicted/{run_id}"] = w, predicted
                bar(len(runs))
        return Solved(runs, arrays)

    def analyze(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame,
                solutions: dict[str, np.ndarray]) -> Analysis:
        final = _final(runs, metrics)
        planned = len(config.ratios) * config.seeds  # runs per init
        rows = []
        ordered = final.assign(order=final["init"].map(INITS.index)).sort_values(["ratio", "order"], kind="stable")
        for (ratio, init), part in ordered.groupby(["ratio", "init"], sort=False):
            row = {"d/n": ratio, "d": int(part["d"].iloc[0]), "start": LABELS[init], "runs": len(part)}
            for name in ("dist_predicted", "dist_min_norm", "norm_ratio", "final_step"):
                row[f"{name}_mean"], row[f"{name}_std"] = mean_std(part[name])
            rows.append(row)
        table = pd.DataFrame(rows, columns=None if rows else ["d/n", "d", "start", "runs"])
        zero, from_w0 = final[final["init"] == "zero"], final[final["init"] == "w0"]
        # a value computed from fewer than half the planned runs, or from a run that stopped above the
        # tolerance, makes its check inconclusive: Support and unreliable say so
        checks = [
            Check.at_most("GD from 0: largest relative distance to X⁺y", _largest(zero["dist_predicted"]),
                          EXACT_TOL, support=Support.of(zero["dist_predicted"], planned),
                          unreliable=_not_converged(zero)),
            Check.at_most("GD from w₀: largest relative distance to X⁺y + (I − P)w₀",
                          _largest(from_w0["dist_predicted"]), EXACT_TOL,
                          support=Support.of(from_w0["dist_predicted"], planned),
                          unreliable=_not_converged(from_w0),
                          detail=f"distance to X⁺y: at least {_shown(_smallest(from_w0['dist_min_norm']))}"),
            Check.at_least("GD from w₀: smallest ‖w‖/‖X⁺y‖", _smallest(from_w0["norm_ratio"]), 1.0,
                           strict=True, support=Support.of(from_w0["norm_ratio"], planned),
                           unreliable=_not_converged(from_w0)),
        ]
        notes = [f"X: n = {config.n} Gaussian rows, d = ratio·n; ‖w₀‖ = {config.init_scale:g}·‖X⁺y‖; GD stops at "
                 f"relative residual ≤ {config.tol:g} (final_step = steps taken).",
                 "dist_predicted: relative distance to the predicted limit, X⁺y from 0 and X⁺y + (I − P)w₀ from w₀."]
        return Analysis(table, checks, notes)

    def figures(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame, solutions: dict[str, np.ndarray],
                directory: Path) -> list[Path]:
        final = _final(runs, metrics)
        first = final[final["seed"] == final["seed"].min()]
        first = first.assign(order=first["init"].map(INITS.index)).sort_values(["ratio", "order"])
        curves = [(run_id, f"d/n = {ratio:g}, {LABELS[init]}",
                   {"color": f"C{config.ratios.index(ratio) % 10}" if ratio in config.ratios else "grey",
                    "linestyle": "-" if init == "zero" else "--"})
                  for run_id, ratio, init in zip(first["run_id"], first["ratio"], first["init"])]
        distance, residual = kinds.series_vs_step(metrics, ["dist_predicted", "residual"], curves, floor=1e-17,
                                                  titles=("relative distance to the predicted limit",
                                                          "relative residual ‖Xw − y‖/‖y‖"))
        distance.lines = [kinds.Line(EXACT_TOL, f"check: {EXACT_TOL:g}")]
        norms = final.groupby(["ratio", "init"])["norm_ratio"].mean().unstack("init").reset_index()
        norm_panel = kinds.value_vs_parameter(
            norms, "ratio", [(init, LABELS[init], {"color": f"C{i}"}) for i, init in enumerate(INITS)],
            xlabel="d/n", ylabel="‖w‖ / ‖X⁺y‖ (mean over seeds)", title="norm of the solution GD finds",
            log=(False, False), lines=[kinds.Line(1.0, "X⁺y: the minimum norm")])
        return [kinds.draw([distance, residual, norm_panel], directory / "gd_min_norm.png")]


def _final(runs: pd.DataFrame, metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its final metrics (NaN for a run that did not finish) and its ratio, d and init."""
    settings = pd.DataFrame([{"run_id": run_id, **{k: config.get(k) for k in ("ratio", "d", "init")}}
                             for run_id, config in zip(runs["run_id"], runs["config"])],
                            columns=["run_id", "ratio", "d", "init"])
    final = final_values(runs, metrics).merge(settings, on="run_id", how="left")
    return final.reindex(columns=[*final.columns, *(c for c in ("dist_predicted", "dist_min_norm", "norm_ratio",
                                                                 "converged") if c not in final.columns)])


def _largest(values: pd.Series) -> float | None:
    finite = pd.to_numeric(values, errors="coerce").dropna()
    return float(finite.max()) if len(finite) else None


def _smallest(values: pd.Series) -> float | None:
    finite = pd.to_numeric(values, errors="coerce").dropna()
    return float(finite.min()) if len(finite) else None


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _not_converged(part: pd.DataFrame) -> str:
    """Why a check on these runs is unreliable: some stopped at max_steps above the tolerance."""
    stuck = part["run_id"][part["converged"] == 0.0].tolist()
    return f"{len(stuck)} run(s) stopped at max_steps above the tolerance: {', '.join(stuck)}" if stuck else ""


STUDY = GDMinNorm()
