"""igr: gradient descent follows the flow of L + (h/4)‖∇L‖² to second order, the flow of L only to first.

Barrett & Dherin (2021), "Implicit gradient regularization"; the SGD term from Smith, Dherin,
Barrett & De (2021), "On the origin of implicit regularization in stochastic gradient descent".

Claim checked: gradient descent with step h, run to a fixed time T = k·h, ends O(h²) away from the
flow of the modified loss L̃ = L + (h/4)‖∇L‖² (implicit gradient regularization) and O(h) away from
the plain gradient flow of L. On two models — a two-parameter model ŷ = a·b·x (x: one column of
the inputs) and a small tanh MLP — with float64 and accurately integrated flows (DOP853,
rtol = atol = 1e-12), the distance in parameter space at T is measured for h, h/2, h/4, h/8 …:
per halving of h it must shrink by a factor in [3.5, 4.5] to the modified flow and in [1.7, 2.3]
to the plain flow (every consecutive halving, both models).

SGD (the MLP, m equal batches, random reshuffling): one epoch of SGD averaged over all m! batch
orders is checked to end closer to the flow of L̃_SGD = L + (h/4)‖∇L‖² + (h/4m)·Σ_k‖∇L_k − ∇L‖²
than to the flow of L̃ without the last term, at every h (the expectation over orders is exact,
so the comparison has no sampling noise).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator

from implicitreg.config import Strict
from implicitreg.data.npz import read_regression
from implicitreg.dynamics.descent import descend, gd_update
from implicitreg.dynamics.grid import recording_steps
from implicitreg.references.modified_flows import (
    gradient,
    gradient_flow,
    igr_flow,
    sgd_flow,
)
from implicitreg.report import kinds
from implicitreg.studies.base import Analysis, Check, ProgressBar, Solved, SolvedRun

MODIFIED_BAND = (3.5, 4.5)  # distance to the flow of L̃ shrinks by this factor per halving of h
PLAIN_BAND = (1.7, 2.3)  # distance to the flow of L shrinks by this factor per halving of h
MODELS = ("two_param", "mlp")


class Config(Strict):
    """Configuration of ``igr``; every field can be set with ``--set``."""

    data_file: str | None = Field(None, description="a user's regression data (.npz with X n×d, y n)")
    seed: int = Field(0, ge=0, description="seed of the generated data, the MLP's init and the batch partition")
    n_points: int = Field(12, ge=1, description="points of the generated data set")
    dim: int = Field(3, ge=1, description="input dimension of the generated data set")
    feature: int = Field(0, ge=0, description="column of X that is the two-parameter model's scalar input x")
    two_param_init: list[float] = Field(default_factory=lambda: [1.5, 0.3], min_length=2, max_length=2,
                                        description="(a, b) at the start of the two-parameter model")
    mlp_width: int = Field(6, ge=1, description="hidden width of the one-hidden-layer tanh MLP")
    h: float = Field(0.1, gt=0.0, description="the largest step size")
    steps: int = Field(20, ge=1, description="GD steps at the largest h; T = steps·h for every h")
    halvings: int = Field(3, ge=2, le=6, description="step sizes h, h/2, …, h/2^halvings")
    batches: int = Field(4, ge=2, le=6, description="SGD batches per epoch m (all m! orders are averaged)")
    tol: float = Field(1e-12, gt=0.0, le=1e-8, description="rtol = atol of the flows' integrator")

    @property
    def step_sizes(self) -> list[float]:
        return [self.h / 2**j for j in range(self.halvings + 1)]

    @property
    def end_time(self) -> float:
        return self.steps * self.h

    @model_validator(mode="after")
    def _sizes(self) -> Config:
        if self.data_file is None:
            if self.feature >= self.dim:
                raise ValueError(f"feature must be a column of the generated X (< dim = {self.dim}), got {self.feature}")
            if self.n_points % self.batches:
                raise ValueError(f"n_points must be a multiple of batches = {self.batches} (equal batches), "
                                 f"got {self.n_points}")
        return self


@dataclass(frozen=True)
class Problem:
    """Full-batch regression data: x [n, d], y [n] (float64), and where it came from."""

    x: np.ndarray
    y: np.ndarray
    source: str


@dataclass(frozen=True)
class Model:
    """A model as a flat float64 parameter vector: ``predict(theta, x)`` → [n], and ``theta0``."""

    name: str
    predict: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    theta0: np.ndarray


def generated_data(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """x ~ N(0, I) [n, dim]; y [n] = a random tanh teacher (4 units) / 2 + 0.1·N(0, 1) noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim))
    w, v = rng.normal(size=(dim, 4)), rng.normal(size=4)
    return x, np.tanh(x @ w) @ v / 2 + 0.1 * rng.normal(size=n)


def two_param_model(feature: int, init: list[float]) -> Model:
    """ŷ = a·b·x[:, feature], θ = (a, b) — Barrett & Dherin's two-parameter example on several points."""
    return Model("two_param", lambda theta, x: theta[0] * theta[1] * x[:, feature], np.asarray(init, dtype=np.float64))


def mlp_model(d: int, width: int, seed: int) -> Model:
    """ŷ = tanh(x W + b)·v + c, θ = (W [d, width], b, v, c) flat: d·width + 2·width + 1 parameters.
    Init: W ~ N(0, 1/d), v ~ N(0, 1/width), biases 0 (from ``seed``)."""
    rng = np.random.default_rng(seed + 1)
    theta0 = np.concatenate([rng.normal(size=d * width) / math.sqrt(d), np.zeros(width),
                             rng.normal(size=width) / math.sqrt(width), np.zeros(1)])
    sizes = [d * width, width, width, 1]

    def predict(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        w, b, v, c = theta.split(sizes)
        return torch.tanh(x @ w.view(d, width) + b) @ v + c

    return Model("mlp", predict, theta0)


def squared_loss(model: Model, x: torch.Tensor, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """θ ↦ L(θ) = (1/2n)·Σ_i (ŷ_i − y_i)² on (x [n, d], y [n])."""
    return lambda theta: 0.5 * ((model.predict(theta, x) - y) ** 2).mean()


def partition(n: int, m: int, seed: int) -> list[np.ndarray]:
    """m disjoint equal batches of indices (a seeded permutation split in m): L = mean of batch losses."""
    perm = np.random.default_rng(seed + 2).permutation(n)
    return [np.sort(perm[k::m]) for k in range(m)]


def gd(loss: Callable[[torch.Tensor], torch.Tensor], theta0: np.ndarray, h: float, steps: int,
       record: set[int] | None = None) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """GD θ_{k+1} = θ_k − h∇L(θ_k) for ``steps`` steps: (θ_steps [p], {k: θ_k for k in record})."""

    def loss_and_grad(params: list[torch.Tensor]) -> tuple[float, list[torch.Tensor]]:
        theta = params[0].detach().requires_grad_(True)  # as modified_flows.gradient does
        value = loss(theta)
        return value.item(), list(torch.autograd.grad(value, theta))

    result = descend(loss_and_grad, [torch.as_tensor(theta0, dtype=torch.float64).clone()], steps, gd_update(h),
                     record=record or set(), snapshot=lambda params, aux: params[0].numpy().copy())
    return result.params[0].numpy().copy(), {k: theta for k, theta in result.trace if record and k in record}


def sgd_epoch_mean(batch_losses: list[Callable], theta0: np.ndarray, h: float) -> tuple[np.ndarray, float, int]:
    """One epoch of SGD (one step per batch) for every order of the batches: (mean end point [p],
    mean distance of an order's end point from the mean, number of orders)."""
    ends = []
    for order in itertools.permutations(range(len(batch_losses))):
        theta = torch.as_tensor(theta0, dtype=torch.float64).clone()
        for k in order:
            theta = theta - h * gradient(batch_losses[k], theta)
        ends.append(theta.numpy())
    ends_ = np.stack(ends)
    mean = ends_.mean(axis=0)
    return mean, float(np.linalg.norm(ends_ - mean, axis=1).mean()), len(ends)


def h_label(h: float) -> str:
    return f"h_{h:g}"


class IGR:
    name = "igr"
    claim = ("Gradient descent with step h stays O(h²) close to the gradient flow of L + (h/4)‖∇L‖² but only "
             "O(h) close to the flow of L.")
    paper = "Barrett & Dherin 2021; Smith, Dherin, Barrett & De 2021"
    Config = Config
    minutes = (0.1, 0.3)  # quick, full: on 2 CPU cores, --threads 1

    def defaults(self, quick: bool) -> dict[str, Any]:
        # quick: h, h/2, h/4 (two halvings, every one still checked) instead of down to h/8
        return {"halvings": 2} if quick else {}

    def plan(self, config: Config) -> list:
        return []

    def problem(self, config: Config) -> Problem:
        """The user's ``X`` [n, d], ``y`` [n] (``--data``) or the generated data."""
        if config.data_file is None:
            x, y = generated_data(config.n_points, config.dim, config.seed)
            return Problem(x, y, f"tanh teacher: {config.n_points} points, dim {config.dim}, seed {config.seed}")
        x, y = read_regression(config.data_file)
        where = f"--data {config.data_file}"
        if config.feature >= x.shape[1]:
            raise ValueError(f"{where}: the two-parameter model reads column feature={config.feature} of X, but X "
                             f"has {x.shape[1]} column(s); set --set feature=<0..{x.shape[1] - 1}>")
        if x.shape[0] < config.batches or x.shape[0] % config.batches:
            raise ValueError(f"{where}: SGD splits the points into batches={config.batches} equal batches, so the "
                             f"number of points must be a positive multiple of {config.batches}; X has {x.shape[0]} "
                             "rows (drop some, or --set batches=…)")
        return Problem(x, y, f"{config.data_file}: {x.shape[0]} points, dim {x.shape[1]}")

    def solve(self, config: Config, problem: Problem, progress: ProgressBar) -> Solved:
        x, y = torch.as_tensor(problem.x, dtype=torch.float64), torch.as_tensor(problem.y, dtype=torch.float64)
        models = [two_param_model(config.feature, config.two_param_init),
                  mlp_model(x.shape[1], config.mlp_width, config.seed)]
        runs: list[SolvedRun] = []
        arrays: dict[str, np.ndarray] = {}
        hs, end = config.step_sizes, config.end_time
        for model in models:
            loss = squared_loss(model, x, y)
            bar = progress(f"{model.name}: flows and GD", 2 * len(hs))
            grids = {h: recording_steps(round(end / h), 25, floor=True) for h in hs}
            times = sorted({k * h for h in hs for k in grids[h]})
            plain = gradient_flow(loss, model.theta0, end, times, config.tol, config.tol)
            plain_at = dict(zip(np.round(plain.t, 12), plain.theta))
            arrays[f"ref_{model.name}_flow"] = plain.end
            for i, h in enumerate(hs):
                steps = round(end / h)
                grid = sorted(grids[h])
                modified = igr_flow(loss, model.theta0, end, h, [k * h for k in grid], config.tol, config.tol)
                bar(2 * i + 1)
                final, seen = gd(loss, model.theta0, h, steps, set(grid))
                rows: list[tuple[int, str, float]] = []
                for k, theta_mod in zip(grid, modified.theta):
                    theta = seen[k]
                    rows += [(k, "loss", float(loss(torch.from_numpy(theta)))),
                             (k, "dist_plain", float(np.linalg.norm(theta - plain_at[round(k * h, 12)]))),
                             (k, "dist_modified", float(np.linalg.norm(theta - theta_mod)))]
                rows += [(steps, "flow_evals_plain", float(plain.n_evals)),
                         (steps, "flow_evals_modified", float(modified.n_evals))]
                label = f"{model.name}_gd_{h_label(h)}"
                runs.append(SolvedRun(f"{model.name}/gd_{h_label(h)}", f"{model.name}/gd",
                                      {"model": model.name, "h": h, "steps": steps, "T": end,
                                       "parameters": int(model.theta0.size), "data": problem.source},
                                      rows, steps, seed=config.seed, target_step=steps))
                arrays[label] = final
                arrays[f"ref_{model.name}_modified_{h_label(h)}"] = modified.end
                bar(2 * i + 2)
        runs_sgd, arrays_sgd = self._sgd(config, problem, models[1], x, y, progress)
        return Solved(runs + runs_sgd, {**arrays, **arrays_sgd})

    def _sgd(self, config: Config, problem: Problem, model: Model, x: torch.Tensor, y: torch.Tensor,
             progress: ProgressBar) -> tuple[list[SolvedRun], dict[str, np.ndarray]]:
        """One epoch of RR-SGD on the MLP, averaged over all batch orders, against the flows of L̃_SGD
        and L̃_IGR run for the epoch's time m·h."""
        batches = partition(x.shape[0], config.batches, config.seed)
        batch_losses = [squared_loss(model, x[idx], y[idx]) for idx in batches]
        loss = squared_loss(model, x, y)
        runs, arrays = [], {}
        bar = progress(f"{model.name}: SGD epoch vs modified flows", len(config.step_sizes))
        m = config.batches
        for i, h in enumerate(config.step_sizes):
            mean, spread, orders = sgd_epoch_mean(batch_losses, model.theta0, h)
            flow_sgd = sgd_flow(batch_losses, model.theta0, m * h, h, None, config.tol, config.tol)
            flow_igr = igr_flow(loss, model.theta0, m * h, h, None, config.tol, config.tol)
            rows = [(m, "dist_sgd_flow", float(np.linalg.norm(mean - flow_sgd.end))),
                    (m, "dist_igr_flow", float(np.linalg.norm(mean - flow_igr.end))),
                    (m, "order_spread", spread), (m, "orders", float(orders))]
            runs.append(SolvedRun(f"{model.name}/sgd_{h_label(h)}", f"{model.name}/sgd",
                                  {"model": model.name, "h": h, "batches": m, "orders": orders, "T": m * h,
                                   "batch_indices": [b.tolist() for b in batches], "data": problem.source},
                                  rows, m, seed=config.seed, target_step=m))
            arrays[f"{model.name}_sgd_mean_{h_label(h)}"] = mean
            arrays[f"ref_{model.name}_sgd_flow_{h_label(h)}"] = flow_sgd.end
            arrays[f"ref_{model.name}_igr_epoch_{h_label(h)}"] = flow_igr.end
            bar(i + 1)
        return runs, arrays

    def analyze(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame,
                solutions: dict[str, np.ndarray] | None = None) -> Analysis:
        table = _table(config, solutions or {})
        return Analysis(table, _checks(config, table), _notes(config, table))

    def figures(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame,
                solutions: dict[str, np.ndarray] | None, directory: Path) -> list[Path]:
        table = _table(config, solutions or {})
        if table.empty:
            return []
        panels = []
        for model in MODELS:
            part = table[(table["model"] == model) & (table["kind"] == "gd")]
            panels.append(kinds.value_vs_parameter(
                part, "h", [("dist_plain", "GD ↔ flow of L", {"color": "C0"}),
                            ("dist_modified", "GD ↔ flow of L + (h/4)‖∇L‖²", {"color": "C1"})],
                xlabel="step size h", ylabel=f"‖θ_GD(T) − θ_flow(T)‖, T = {config.end_time:g}",
                title=f"{model}: distance at T vs h"))
            _slope_guides(panels[-1], part["h"].to_numpy(), {1: part["dist_plain"].iloc[0],
                                                             2: part["dist_modified"].iloc[0]})
        sgd = table[table["kind"] == "sgd"]
        panels.append(kinds.value_vs_parameter(
            sgd, "h", [("dist_igr_flow", "mean SGD ↔ flow of L + (h/4)‖∇L‖²", {"color": "C1"}),
                       ("dist_sgd_flow", "mean SGD ↔ flow of L̃_SGD", {"color": "C2"})],
            xlabel="step size h", ylabel=f"distance after one epoch (T = {config.batches}h)",
            title=f"mlp: SGD, {config.batches} batches, mean over all orders"))
        _slope_guides(panels[-1], sgd["h"].to_numpy(), {2: sgd["dist_igr_flow"].iloc[0],
                                                        3: sgd["dist_sgd_flow"].iloc[0]})
        for panel in panels:  # the minor labels of a short log axis overlap
            panel.grid, panel.legend_size, panel.minor_labels = "both", 7, False
        return [kinds.draw(panels, directory / "distance_vs_h.png", size=(5.0, 4.2))]


def _slope_guides(panel: kinds.Panel, hs: np.ndarray, anchors: dict[int, float]) -> None:
    """Dashed lines ∝ h^slope through each anchor value at the largest h."""
    for slope, value in anchors.items():
        panel.curves.append(kinds.Curve(hs, value * (hs / hs[0]) ** slope, None,
                                        {"color": "grey", "linestyle": "--", "linewidth": 0.8}))
        panel.notes.append((f"slope {slope}", hs[-1], value * (hs[-1] / hs[0]) ** slope))


def _table(config: Config, solutions: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per run, every distance computed from ``solutions.npz`` (empty if it is missing)."""
    rows = []
    hs = config.step_sizes
    for model in MODELS:
        flow = solutions.get(f"ref_{model}_flow")
        previous: dict[str, float] = {}  # the distances at the previous step size (empty if it is missing)
        for h in hs:
            learned = solutions.get(f"{model}_gd_{h_label(h)}")
            modified = solutions.get(f"ref_{model}_modified_{h_label(h)}")
            if learned is None or flow is None or modified is None:
                previous = {}  # a shrink factor spans one halving only, never a gap
                continue
            row = {"run_id": f"{model}/gd_{h_label(h)}", "model": model, "kind": "gd", "h": h,
                   "steps": round(config.end_time / h), "dist_plain": float(np.linalg.norm(learned - flow)),
                   "dist_modified": float(np.linalg.norm(learned - modified))}
            for column in ("dist_plain", "dist_modified"):
                row[f"{column}_shrink"] = previous[column] / row[column] if column in previous else math.nan
                previous[column] = row[column]
            rows.append(row)
    previous = {}
    for h in hs:
        mean = solutions.get(f"mlp_sgd_mean_{h_label(h)}")
        flow_sgd, flow_igr = (solutions.get(f"ref_mlp_{k}_{h_label(h)}") for k in ("sgd_flow", "igr_epoch"))
        if mean is None or flow_sgd is None or flow_igr is None:
            previous = {}
            continue
        row = {"run_id": f"mlp/sgd_{h_label(h)}", "model": "mlp", "kind": "sgd", "h": h, "steps": config.batches,
               "dist_sgd_flow": float(np.linalg.norm(mean - flow_sgd)),
               "dist_igr_flow": float(np.linalg.norm(mean - flow_igr))}
        row["sgd_over_igr"] = row["dist_sgd_flow"] / row["dist_igr_flow"]
        for column in ("dist_sgd_flow", "dist_igr_flow"):
            row[f"{column}_shrink"] = previous[column] / row[column] if column in previous else math.nan
            previous[column] = row[column]
        rows.append(row)
    return pd.DataFrame(rows)


def _band_check(name: str, part: pd.DataFrame, column: str, band: tuple[float, float], planned: int) -> Check:
    """Every per-halving shrink factor in ``band``. The value is the factor farthest outside the band
    (in log; inside it, the one nearest an edge), so the value is in the band exactly when all are.
    Inconclusive unless every one of the ``planned`` halvings has a finite factor."""
    shrinks = part[f"{column}_shrink"].to_numpy()[1:] if len(part) else np.array([])
    finite = shrinks[np.isfinite(shrinks) & (shrinks > 0)] if len(shrinks) else shrinks
    if len(finite):
        excess = np.maximum(np.log(band[0] / finite), np.log(finite / band[1]))
        worst = float(finite[np.argmax(excess)])
    else:
        worst = None
    complete = len(part) == planned + 1 and len(finite) == planned
    outside = worst is not None and not band[0] <= worst <= band[1]  # fails whatever the missing ones are
    return Check.within(name, worst, *band, of="every halving",
                        detail=(f"shrink factors per halving: {', '.join(f'{v:.3f}' for v in shrinks)}"
                                if len(shrinks) else ""),
                        unreliable="" if complete or outside else
                        f"{len(finite)} of {planned} halvings have a finite shrink factor (no solutions.npz, or a "
                        "distance missing or not finite)")


def _checks(config: Config, table: pd.DataFrame) -> list[Check]:
    halvings = len(config.step_sizes) - 1
    checks = []
    for model in MODELS:
        part = table[(table["model"] == model) & (table["kind"] == "gd")] if not table.empty else table
        for column, band, target, flow in (("dist_modified", MODIFIED_BAND, 4.0, "L + (h/4)‖∇L‖²"),
                                           ("dist_plain", PLAIN_BAND, 2.0, "L")):
            checks.append(_band_check(f"{model}: GD distance to the flow of {flow} shrinks ×{target:g} per halving",
                                      part, column, band, halvings))
    sgd = table[table["kind"] == "sgd"] if not table.empty else table
    ratio = sgd["sgd_over_igr"].to_numpy() if len(sgd) else np.array([])
    finite = ratio[np.isfinite(ratio)]
    largest = float(finite.max()) if len(finite) else None
    complete = len(finite) == len(config.step_sizes)
    checks.append(Check.at_most(
        "mlp: mean one-epoch SGD is closer to the flow of L̃_SGD than of L + (h/4)‖∇L‖²", largest, 1.0, strict=True,
        of="dist(L̃_SGD flow) / dist(L̃_IGR flow) at every h",
        detail="ratio per h: " + ", ".join(f"h={h:g}: {r:.3f}" for h, r in zip(sgd["h"], ratio)) if len(ratio) else "",
        # a ratio ≥ 1 already fails the claim; otherwise every step size must have a finite ratio
        unreliable="" if complete or (largest is not None and largest >= 1.0) else
        f"{len(finite)} of {len(config.step_sizes)} step sizes have a finite SGD distance ratio"))
    return checks


def _notes(config: Config, table: pd.DataFrame) -> list[str]:
    notes = [
        (f"L(θ) = (1/2n)·Σ(ŷ_i − y_i)²; GD runs T/h steps to T = {config.end_time:g} for h = "
         + ", ".join(f"{h:g}" for h in config.step_sizes) + "; distances are Euclidean in parameter space at T, "
         "computed from solutions.npz."),
        f"flows: scipy solve_ivp DOP853, rtol = atol = {config.tol:g}; H∇L = ∇(½‖∇L‖²) by autograd double backward.",
        "shrink factor: distance at h divided by distance at h/2 (4 for an O(h²) error, 2 for O(h)).",
        (f"SGD: the MLP's points split into m = {config.batches} fixed equal batches; one epoch (one step per batch) "
         f"for every one of the {math.factorial(config.batches)} orders, averaged, against the flows of "
         "L̃_SGD = L + (h/4)‖∇L‖² + (h/4m)·Σ_k‖∇L_k − ∇L‖² and L̃_IGR = L + (h/4)‖∇L‖² over T = m·h."),
    ]
    sgd = table[table["kind"] == "sgd"] if not table.empty else table
    if len(sgd) > 1:
        slope = lambda col: np.log2(sgd[f"{col}_shrink"].to_numpy()[1:])
        notes.append("SGD orders of convergence per halving (log2 of the shrink factor): to L̃_SGD "
                     + ", ".join(f"{s:.2f}" for s in slope("dist_sgd_flow")) + " (3 expected: O(h³)); to L̃_IGR "
                     + ", ".join(f"{s:.2f}" for s in slope("dist_igr_flow")) + " (2 expected: the dropped term is O(h²)).")
    return notes


STUDY = IGR()
