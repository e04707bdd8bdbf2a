"""edge-of-stability: full-batch GD drives the sharpness up to 2/η and keeps it there.

Cohen, Kaur, Li, Kolter & Talwalkar (2021), "Gradient descent on neural networks typically occurs
at the edge of stability".

Claim checked: full-batch gradient descent with step size η on a small tanh MLP with the squared
loss sharpens progressively — the sharpness (top eigenvalue of the training-loss Hessian) rises —
until it reaches the stability threshold 2/η of a quadratic model, and then hovers there while the
loss keeps falling, non-monotonically over long stretches. Checks, from the tracked sharpness:

- for the two largest step sizes, sharpness·η/2 ∈ [0.9, 1.1] at every measurement after sharpening
  ("after sharpening": from the first measurement with sharpness ≥ 0.9·2/η on), and the training
  loss falls at least 100× from initialization to the last step;
- for the smallest step size, sharpness·η/2 < 1 at every measurement (GD stays stable).

The sharpness is measured every ``measure_every`` steps with the library's Lanczos
(:func:`implicitreg.measures.curvature.hessian_eigenvalues` on the model itself, float64); every
measurement records its convergence flag, relative residual and HVP count, and measurements that
did not converge are counted in the table and the checks' details.
"""

from __future__ import annotations

import itertools
import math
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
from implicitreg.measures.curvature import hessian_eigenvalues
from implicitreg.report import kinds
from implicitreg.studies.base import Analysis, Check, ProgressBar, Solved, SolvedRun

BAND = (0.9, 1.1)  # sharpness·η/2 after sharpening (the band)
SHARPENED = 0.9  # "after sharpening": from the first measurement with sharpness·η/2 ≥ this on
LOSS_DROP = 100.0  # initial / final training loss, for the large step sizes
DIVERGED = 1e6  # a loss above this multiple of the initial loss counts as divergence: the run stops


class Config(Strict):
    """Configuration of ``edge-of-stability``; every field can be set with ``--set``."""

    data_file: str | None = Field(None, description="a user's regression data (.npz with X n×d, y n)")
    seed: int = Field(0, ge=0, description="seed of the generated data and of the network's initialization")
    n_points: int = Field(200, ge=2, description="points of the generated teacher data set")
    dim: int = Field(20, ge=1, description="input dimension of the generated data set")
    teacher_width: int = Field(16, ge=1, description="hidden width of the tanh teacher that makes the targets")
    hidden: list[int] = Field(default_factory=lambda: [32, 32], min_length=1,
                              description="hidden widths of the tanh student MLP")
    lrs: list[float] = Field(default_factory=lambda: [0.28, 0.25, 0.15], min_length=3,
                             description="step sizes: the two largest are checked at the edge of stability, "
                                         "the smallest for staying below it")
    steps: int = Field(3000, ge=1, description="full-batch GD steps per step size")
    measure_every: int = Field(20, ge=1, description="steps between sharpness measurements")
    lanczos_tol: float = Field(1e-3, gt=0.0, description="relative residual at which Lanczos stops")
    max_hvp: int = Field(100, ge=2, description="most Hessian-vector products per measurement")

    @model_validator(mode="after")
    def _step_sizes(self) -> Config:
        if any(lr <= 0 for lr in self.lrs) or len(set(self.lrs)) != len(self.lrs):
            raise ValueError(f"lrs must be distinct positive step sizes (two large, one small at least), got {self.lrs}")
        if any(w < 1 for w in self.hidden):
            raise ValueError(f"hidden widths must be positive, got {self.hidden}")
        return self


@dataclass(frozen=True)
class Problem:
    """A full-batch regression problem: inputs x [n, d] and targets y [n, 1] (float64)."""

    x: np.ndarray
    y: np.ndarray
    source: str


def teacher_data(n: int, dim: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """x ~ N(0, I) [n, dim]; y [n, 1] = a random one-hidden-layer tanh teacher, standardized.

    The teacher (weights N(0, 1/dim), output weights N(0, 1/width)) is smooth, so a student MLP
    can fit the points; standardized targets make the initial loss about ½.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim))
    w1 = rng.normal(size=(dim, width)) / math.sqrt(dim)
    w2 = rng.normal(size=width) / math.sqrt(width)
    y = np.tanh(x @ w1) @ w2
    y = (y - y.mean()) / y.std()
    return x, y[:, None]


def build_mlp(d: int, hidden: list[int], out: int, seed: int) -> torch.nn.Sequential:
    """A float64 tanh MLP d → hidden… → out, every weight and bias U(−1/√fan_in, 1/√fan_in)
    (PyTorch's default scale) drawn from its own generator, so the global RNG is untouched."""
    generator = torch.Generator().manual_seed(seed)
    layers: list[torch.nn.Module] = []
    sizes = [d, *hidden, out]
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        linear = torch.nn.Linear(fan_in, fan_out, dtype=torch.float64)
        bound = 1.0 / math.sqrt(fan_in)
        with torch.no_grad():
            linear.weight.copy_(torch.rand(fan_out, fan_in, generator=generator, dtype=torch.float64) * 2 * bound - bound)
            linear.bias.copy_(torch.rand(fan_out, generator=generator, dtype=torch.float64) * 2 * bound - bound)
        layers.append(linear)
        if i < len(hidden):
            layers.append(torch.nn.Tanh())
    return torch.nn.Sequential(*layers)


def squared_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """½ · mean over points of ‖f(x) − y‖² (outputs, targets [n, k]) — Cohen et al.'s MSE convention."""
    return 0.5 * ((outputs - targets) ** 2).sum(dim=1).mean()


def sharpness(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, tol: float, max_hvp: int):
    """Top Hessian eigenvalue of the full-batch squared loss by Lanczos (an EigResult, k = 1)."""
    return hessian_eigenvalues(model, squared_loss, (x, y), k=1, method="lanczos", tol=tol, max_hvp=max_hvp)


def run_gd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int, measure_every: int,
           tol: float, max_hvp: int, bar=lambda done: None) -> tuple[list[tuple[int, str, float]], int]:
    """Full-batch GD θ ← θ − η∇L(θ) on ``model`` in place; returns (metrics rows, last step).

    Rows: ``loss`` on a log grid and at every measurement; at every ``measure_every``-th step
    ``sharpness``, ``sharpness_x_lr_over_2``, ``lanczos_converged`` (1/0), ``lanczos_residual``,
    ``lanczos_hvp``; at the last step ``loss_increases`` (steps whose loss exceeded the previous
    step's) and ``diverged`` (1/0). A loss that is not finite or exceeds 10⁶× the initial one stops
    the run there.
    """
    rows: list[tuple[int, str, float]] = []
    grid = recording_steps(steps, 60, floor=True)
    params = list(model.parameters())
    previous, increases = math.inf, 0

    def loss_and_grad(params: list[torch.Tensor]) -> tuple[float, tuple[torch.Tensor, ...]]:
        loss = squared_loss(model(x), y)
        return loss.detach().item(), torch.autograd.grad(loss, params)

    def observe(step: int, params: list[torch.Tensor], value: float, aux: None) -> None:
        nonlocal previous, increases
        increases += value > previous
        previous = value
        measure = step % measure_every == 0 or step == steps
        if measure or step in grid:
            rows.append((step, "loss", value))
        if measure:
            eig = sharpness(model, x, y, tol, max_hvp)
            top = float(eig.values[0])
            rows.extend([(step, "sharpness", top), (step, "sharpness_x_lr_over_2", top * lr / 2),
                         (step, "lanczos_converged", float(bool(eig.converged[0]))),
                         (step, "lanczos_residual", float(eig.residuals[0])), (step, "lanczos_hvp", float(eig.n_hvp))])
            bar(step)

    result = descend(loss_and_grad, params, steps, gd_update(lr), diverge=DIVERGED, observe=observe,
                     snapshot=lambda params, aux: None)
    step = result.step
    if result.diverged:
        rows.append((step, "loss", result.loss if math.isfinite(result.loss) else math.inf))
    rows += [(step, "loss_increases", float(increases)), (step, "diverged", float(result.diverged))]
    return rows, step


def run_label(lr: float) -> str:
    return f"gd_lr_{lr:g}"


class EdgeOfStability:
    name = "edge-of-stability"
    claim = ("Full-batch GD on a tanh MLP with squared loss sharpens until the top Hessian eigenvalue reaches "
             "2/η, then hovers there while the loss keeps falling non-monotonically.")
    paper = "Cohen, Kaur, Li, Kolter & Talwalkar 2021"
    Config = Config
    minutes = (0.2, 1.2)  # quick, full: on 2 CPU cores, --threads 1

    def defaults(self, quick: bool) -> dict[str, Any]:
        # quick: the same three step sizes and checks, half the steps, sparser measurements
        return {"steps": 1500, "measure_every": 50} if quick else {}

    def plan(self, config: Config) -> list:
        return []

    def problem(self, config: Config) -> Problem:
        """The user's ``X`` [n, d], ``y`` [n] (``--data``) or the generated teacher data."""
        if config.data_file is None:
            x, y = teacher_data(config.n_points, config.dim, config.teacher_width, config.seed)
            return Problem(x, y, f"tanh teacher: {config.n_points} points, dim {config.dim}, seed {config.seed}")
        x, y = read_regression(config.data_file)
        if x.shape[0] < 2:
            raise ValueError(f"--data {config.data_file}: X must hold at least 2 points (rows), got {x.shape[0]}")
        if not np.std(y) > 0:
            raise ValueError(f"--data {config.data_file}: y is constant ({y[0]:g} everywhere); a network with an "
                             "output bias fits it at once, so there is no sharpening to observe — expected "
                             "varying targets")
        return Problem(x, y[:, None], f"{config.data_file}: {x.shape[0]} points, dim {x.shape[1]}")

    def solve(self, config: Config, problem: Problem, progress: ProgressBar) -> Solved:
        x, y = torch.as_tensor(problem.x, dtype=torch.float64), torch.as_tensor(problem.y, dtype=torch.float64)
        runs, arrays = [], {}
        for lr in sorted(config.lrs, reverse=True):
            model = build_mlp(x.shape[1], config.hidden, y.shape[1], config.seed)
            bar = progress(f"GD η={lr:g}", config.steps)
            rows, last = run_gd(model, x, y, lr, config.steps, config.measure_every, config.lanczos_tol,
                                config.max_hvp, bar)
            label = run_label(lr)
            runs.append(SolvedRun(label, "gd", {"lr": lr, "two_over_lr": 2 / lr, "steps": config.steps,
                                                "hidden": config.hidden, "data": problem.source},
                                  rows, last, seed=config.seed, target_step=config.steps))
            arrays[label] = torch.nn.utils.parameters_to_vector(model.parameters()).detach().numpy()
        lrs = np.array(sorted(config.lrs, reverse=True))
        arrays["ref_stability_threshold"] = 2.0 / lrs  # 2/η per step size, largest η first
        return Solved(runs, arrays)

    def analyze(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame,
                solutions: dict[str, np.ndarray] | None = None) -> Analysis:
        rows = [_summary(lr, metrics[metrics["run_id"] == run_label(lr)]) for lr in sorted(config.lrs, reverse=True)]
        table = pd.DataFrame(rows)
        return Analysis(table, _checks(config, metrics), [
            ("sharpness: the largest eigenvalue of the Hessian of L(θ) = ½·mean‖f(x) − y‖² over all parameters, "
             f"by Lanczos (tol {config.lanczos_tol:g}, at most {config.max_hvp} HVPs) every {config.measure_every} "
             "steps; shown as sharpness·η/2 (1 = the stability threshold 2/η)."),
            f"after sharpening: from the first measurement with sharpness·η/2 ≥ {SHARPENED} on, to the last step.",
            "loss_increases: GD steps whose full-batch loss exceeded the previous step's (non-monotone descent).",
            ("lanczos_nonconverged: measurements whose Ritz residual stayed above tol (their value is a lower bound "
             "of the top eigenvalue); they are counted, not dropped."),
        ])

    def figures(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame,
                solutions: dict[str, np.ndarray] | None, directory: Path) -> list[Path]:
        lrs = sorted(config.lrs, reverse=True)
        runs = [(run_label(lr), f"η = {lr:g}", {"color": f"C{i}"}) for i, lr in enumerate(lrs)]
        sharp, loss = kinds.series_vs_step(metrics, ["sharpness", "loss"], runs, log=(False, False), min_step=0,
                                           ylabels=("sharpness (top Hessian eigenvalue)", "training loss"),
                                           titles=("sharpness; dashed: 2/η", "full-batch training loss"))
        sharp.lines = [kinds.Line(2 / lr, style={"color": f"C{i}"}) for i, lr in enumerate(lrs)]
        loss.yscale = "log"
        return [kinds.draw([sharp, loss], directory / "sharpness_and_loss.png")]


def _series(part: pd.DataFrame, name: str) -> pd.Series:
    values = part[part["name"] == name].sort_values("step")
    return pd.Series(values["value"].to_numpy(), index=values["step"].to_numpy(), dtype=float)


def _summary(lr: float, part: pd.DataFrame) -> dict[str, Any]:
    """One table row: the step size's sharpness and loss statistics (NaN where nothing was measured;
    a NaN measurement makes the maxima and minima NaN rather than dropping out of them)."""
    ratio, loss, converged = (_series(part, n) for n in ("sharpness_x_lr_over_2", "loss", "lanczos_converged"))
    sharp = _series(part, "sharpness")
    after = _after_sharpening(ratio)
    nonconverged_after = int((converged.reindex(after.index) != 1.0).sum()) if len(after) else 0
    final = lambda name: float(_series(part, name).iloc[-1]) if len(_series(part, name)) else math.nan  # noqa: E731
    return {
        "lr": lr, "two_over_lr": 2 / lr,
        "initial_sharpness": float(sharp.iloc[0]) if len(sharp) else math.nan,
        "max_sharpness_x_lr_over_2": float(ratio.max(skipna=False)) if len(ratio) else math.nan,
        "sharpened_at_step": int(after.index[0]) if len(after) else None,
        "min_after_sharpening": float(after.min(skipna=False)) if len(after) else math.nan,
        "max_after_sharpening": float(after.max(skipna=False)) if len(after) else math.nan,
        "measurements_after_sharpening": len(after),
        "final_sharpness_x_lr_over_2": float(ratio.iloc[-1]) if len(ratio) else math.nan,
        "initial_loss": float(loss.iloc[0]) if len(loss) else math.nan,
        "final_loss": float(loss.iloc[-1]) if len(loss) else math.nan,
        "loss_drop": _loss_drop(loss),
        "loss_increases": final("loss_increases"), "diverged": final("diverged"),
        "measurements": len(ratio), "lanczos_nonconverged": int((converged.reindex(ratio.index) != 1.0).sum()),
        "lanczos_nonconverged_after_sharpening": nonconverged_after,
    }


def _after_sharpening(ratio: pd.Series) -> pd.Series:
    """The measurements from the first with sharpness·η/2 ≥ SHARPENED on (empty if none crossed)."""
    crossed = ratio[ratio >= SHARPENED]
    return ratio[ratio.index >= crossed.index[0]] if len(crossed) else ratio.iloc[0:0]


def _loss_drop(loss: pd.Series) -> float:
    """Initial / final training loss (0 if the run diverged to an infinite loss; NaN if unknown)."""
    if not len(loss) or not loss.iloc[-1] > 0:
        return math.nan
    return float(loss.iloc[0] / loss.iloc[-1])


def _uncertain(values: pd.Series, converged: pd.Series) -> pd.Series:
    """Which measurements do not pin the top eigenvalue: NaN, or Lanczos did not converge (then the value
    is only a lower bound of it)."""
    return values.isna() | (converged.reindex(values.index) != 1.0)


def _checks(config: Config, metrics: pd.DataFrame) -> list[Check]:
    """The edge-of-stability band and loss drop for the two largest η; stability for the smallest.

    A measurement that is NaN or whose Lanczos did not converge (a lower bound) leaves a check
    inconclusive unless the check already fails on measurements that are certain; so does a run that
    stopped short of its last step without diverging.
    """
    checks = []
    lrs = sorted(config.lrs, reverse=True)
    for i, lr in enumerate(lrs):
        part = metrics[metrics["run_id"] == run_label(lr)]
        ratio, loss, converged = (_series(part, n) for n in ("sharpness_x_lr_over_2", "loss", "lanczos_converged"))
        diverged = bool(len(_series(part, "diverged")) and _series(part, "diverged").iloc[-1] == 1.0)
        short = ""
        if not len(ratio):
            short = "no sharpness was measured"
        elif not diverged and int(ratio.index[-1]) != config.steps:
            short = f"the last measurement is at step {int(ratio.index[-1])}, not {config.steps} (an unfinished run?)"
        if i < 2:
            checks += [_band_check(config, lr, ratio, converged, short), _loss_check(config, lr, part, loss, diverged)]
        if i == len(lrs) - 1:  # lrs has at least 3 step sizes
            checks.append(_stable_check(lr, ratio, converged, loss, short))
    return checks


def _band_check(config: Config, lr: float, ratio: pd.Series, converged: pd.Series, short: str) -> Check:
    name = f"η={lr:g}: sharpness·η/2 in [{BAND[0]}, {BAND[1]}] after sharpening"
    after = _after_sharpening(ratio)
    if not len(after):
        # never sharpened: the peak lies below the band, so the claim fails (or is unknown if a measurement
        # is NaN or a lower bound)
        uncertain = _uncertain(ratio, converged)
        peak = float(ratio.max(skipna=False)) if len(ratio) else None
        return Check.within(name, peak, *BAND, of="every measurement",
                            detail=(f"never sharpened: sharpness·η/2 peaked at {peak:.3f} < {SHARPENED} in "
                                    f"{config.steps} steps" if peak is not None and math.isfinite(peak) else ""),
                            unreliable=short or (f"{int(uncertain.sum())} measurement(s) NaN or not converged"
                                                 if uncertain.any() else ""))
    uncertain = _uncertain(after, converged)
    certain = after[~uncertain]
    # a lower bound above the band is out of it whatever the true value
    outside = ((certain < BAND[0]) | (certain > BAND[1])).any() or (after[uncertain] > BAND[1]).any()
    finite = after.dropna()
    worst = float(finite.iloc[int(np.argmax(np.abs(finite.to_numpy() - 1.0)))]) if len(finite) else None
    doubt = short or (f"{int(uncertain.sum())} of the {len(after)} measurements after sharpening are NaN or did not "
                      "converge (a lower bound of the top eigenvalue)" if uncertain.any() else "")
    return Check.within(name, worst, *BAND, of="every measurement",
                        detail=(f"sharpened at step {int(after.index[0])}; {len(after)} measurements after, range "
                                f"[{finite.min():.3f}, {finite.max():.3f}]; final {after.iloc[-1]:.3f}"
                                if len(finite) else f"sharpened at step {int(after.index[0])}"),
                        unreliable="" if outside else doubt)


def _loss_check(config: Config, lr: float, part: pd.DataFrame, loss: pd.Series, diverged: bool) -> Check:
    drop = _loss_drop(loss)
    doubt = ""
    if len(loss) and int(loss.index[0]) != 0:
        doubt = f"the first recorded loss is at step {int(loss.index[0])}, not at initialization"
    elif len(loss) and not diverged and int(loss.index[-1]) != config.steps:
        doubt = f"the last recorded loss is at step {int(loss.index[-1])}, not {config.steps} (an unfinished run?)"
    increases = _series(part, "loss_increases")
    return Check.at_least(
        f"η={lr:g}: loss drop (initial/final)", drop, LOSS_DROP, unreliable=doubt,
        detail=(f"loss {loss.iloc[0]:.3g} → {loss.iloc[-1]:.3g}" if len(loss) else "no loss recorded")
        + (f"; {int(increases.iloc[-1])} steps increased the loss" if len(increases) and increases.notna().all() else "")
        + ("; the run diverged" if diverged else ""))


def _stable_check(lr: float, ratio: pd.Series, converged: pd.Series, loss: pd.Series, short: str) -> Check:
    uncertain = _uncertain(ratio, converged)
    finite = ratio.dropna()
    peak = float(finite.max()) if len(finite) else None
    crossed = peak is not None and peak >= 1.0  # a lower bound at or above 1 crosses whatever the true value
    doubt = short or (f"{int(uncertain.sum())} of {len(ratio)} measurements are NaN or did not converge (a lower "
                      "bound of the top eigenvalue)" if uncertain.any() else "")
    detail = f"2/η = {2 / lr:.3g}"
    if peak is not None:
        detail += f"; sharpness {ratio.iloc[0] * 2 / lr:.3g} at init, at most {peak * 2 / lr:.3g}"
    if len(loss):
        detail += f"; loss {loss.iloc[0]:.3g} → {loss.iloc[-1]:.3g}"
    return Check.at_most(f"η={lr:g} (small): sharpness stays below 2/η", peak, 1.0, strict=True,
                         of="max sharpness·η/2", detail=detail, unreliable="" if crossed else doubt)


STUDY = EdgeOfStability()
