"""lazy-vs-rich: a large output scale α makes a network train as its linearization; a small one moves its features.

Chizat, Oyallon & Bach (2019), "On lazy training in differentiable programming"; Geiger, Spigler, Jacot &
Wyart (2020), "Disentangling feature and lazy training in deep neural networks"; Woodworth, Gunasekar, Lee,
Moroshko, Savarese, Golan, Soudry & Srebro (2020), "Kernel and rich regimes in overparametrized models".

Model: a tanh MLP h (40 → 100 → 100 → 10, MNIST-1D's MLP widths; PyTorch's default uniform init, float64), centred
and scaled, f_α(θ, x) = α·(h(θ, x) − h(θ₀, x)), trained by full-batch GD on L = ½·mean_i ‖f_α(x_i) − y_i‖² with
one-hot targets and step η₀/α² (Chizat et al.'s scaling: the linearized dynamics in function space are then the
same for every α). tanh rather than ReLU because the lazy-training theorem (their Thm 2.3) asks for a smooth h
(a Lipschitz Jacobian). η₀ = ``lr_scale``·n/λ_max(K_h(θ₀)), K_h = J_h J_hᵀ on the training set (λ_max by Lanczos
on the linearized model's loss, whose Hessian is K_h/n up to the output layout): ``lr_scale`` = 0.5 is a quarter
of the linearized model's stability edge (2), so that GD stays close to the gradient flow the theory describes.

The linearization f_lin(θ, x) = α·J_h(θ₀, x)(θ − θ₀) is trained by the same GD (same η₀, α², steps), i.e. kernel
gradient descent with the initial NTK for the same number of steps — not the converged kernel regression
K(x, X)K⁻¹y: the network is compared with its linearization along the same finite trajectory (the theorem's
statement, uniform on a time horizon), and at this size neither model has converged in the budget, so the limit
would compare the network with a point it was never near. Its function-space trajectory does not depend on α
(tested), so it is run once per seed (at α = 1).

Claim checked, on ``seeds`` initializations (thresholds fixed from the issue before running, never tuned):

- kernel movement ‖K_T − K_0‖_F/‖K_0‖_F (the empirical NTK on the first ``ntk_points`` training inputs, all 10
  outputs, :func:`implicitreg.measures.ntk.kernel_distance`) decreases in α: Spearman ρ(α, movement) ≤ −0.9 in
  every seed (the worst seed is the value; a run that diverged has no movement);
- at the largest α, the trained network agrees with its linearization: ‖f_α(X_test) − f_lin(X_test)‖_F /
  ‖f_lin(X_test)‖_F ≤ 1e-2 in every seed (the worst seed is the value).

Reported, not checked: test accuracy of every α and of the linearization (which regime generalizes better
here is an observation), train loss, parameter movement ‖θ_T − θ₀‖/‖θ₀‖, and the slope of log(relative
difference) against log α (Chizat et al.: O(1/α), a slope near −1).

Pieces: the scaled and linearized models and GD on them are :mod:`implicitreg.dynamics.lazy` (tested against
torch.optim.SGD, a dense Jacobian and the closed form of kernel GD); the data :mod:`.problem`; the table,
checks and notes :mod:`.analysis`; the figures :mod:`.figures`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator

from implicitreg.config import Strict
from implicitreg.dynamics.lazy import Linearized, Scaled, relative_difference, train_scaled
from implicitreg.dynamics.network import build_mlp, half_mse, sharpness
from implicitreg.measures.ntk import kernel_distance
from implicitreg.studies.base import Analysis, ProgressBar, Solved, SolvedRun
from implicitreg.studies.lazy_vs_rich import analysis, figures
from implicitreg.studies.lazy_vs_rich.problem import Problem, mnist1d_problem

__all__ = ["Config", "LazyVsRich", "Problem", "STUDY", "linearized_id", "network_id"]

DIVERGED = 1e6  # a loss above this multiple of the initial one stops the run (diverged)


class Config(Strict):
    """Configuration of ``lazy-vs-rich``; every field can be set with ``--set``."""

    alphas: list[float] = Field(default_factory=lambda: [round(10 ** (k / 2), 4) for k in range(-2, 5)],
                                min_length=3, description="output scales α (0.1 … 100, half decades)")
    seeds: int = Field(3, ge=1, description="initializations (seeds 0, 1, …)")
    n_train: int = Field(512, ge=2, le=4000, description="MNIST-1D training points (the first of the canonical set)")
    n_test: int = Field(1000, ge=1, le=1000, description="MNIST-1D test points")
    hidden: list[int] = Field(default_factory=lambda: [100, 100], min_length=1,
                              description="hidden widths of the tanh MLP h")
    lr_scale: float = Field(0.5, gt=0.0, lt=2.0, description="η₀·λ_max(K_h)/n; the step is η₀/α²")
    steps: int = Field(2000, ge=1, description="full-batch GD steps of every model")
    ntk_points: int = Field(64, ge=1, description="training inputs on which the NTK's movement is measured")
    lanczos_tol: float = Field(1e-6, gt=0.0, description="relative residual at which Lanczos stops (λ_max)")

    @model_validator(mode="after")
    def _check(self) -> "Config":
        if any(not a > 0 for a in self.alphas) or len(set(self.alphas)) != len(self.alphas):
            raise ValueError(f"alphas must be distinct positive scales, got {self.alphas}")
        if any(w < 1 for w in self.hidden):
            raise ValueError(f"hidden widths must be positive, got {self.hidden}")
        if self.ntk_points > self.n_train:
            raise ValueError(f"ntk_points: expected at most n_train = {self.n_train}, got {self.ntk_points}")
        return self


def network_id(alpha: float, seed: int) -> str:
    return f"network/alpha{alpha:g}/seed{seed}"


def linearized_id(seed: int) -> str:
    return f"linearized/seed{seed}"


def accuracy(outputs: torch.Tensor, labels: torch.Tensor) -> float:
    return float((outputs.argmax(dim=1) == labels).double().mean())


def _evaluation(model: torch.nn.Module, problem: Problem) -> tuple[list[tuple[str, float]], torch.Tensor]:
    """Accuracy and loss on both sets, and the test outputs [n_test, 10]."""
    with torch.no_grad():
        train, test = model(problem.x), model(problem.x_test)
    return [("train_acc", accuracy(train, problem.labels)), ("test_acc", accuracy(test, problem.labels_test)),
            ("test_loss", float(half_mse(test, problem.y_test)))], test


def solve_seed(config: Config, problem: Problem, seed: int,
               tick=lambda: None) -> tuple[list[SolvedRun], dict[str, np.ndarray]]:
    """The linearization, then the network at every α, from the seed's initialization; ``tick()`` after each
    model."""
    d, out = problem.x.shape[1], problem.y.shape[1]
    make = lambda: build_mlp(d, config.hidden, out, seed)  # noqa: E731  (equal seeds: equal networks)
    linear = Linearized(make(), 1.0)
    # the Hessian of ½·mean‖f_lin − y‖² is J_hᵀJ_h/n (f_lin is linear in θ): its top eigenvalue is λ_max(K_h)/n
    eig = sharpness(linear, problem.x, problem.y, tol=config.lanczos_tol, max_hvp=300)
    curvature = float(eig.values[0])
    eta0 = config.lr_scale / curvature
    common = {"seed": seed, "eta0": eta0, "lambda_max_over_n": curvature, "lanczos_converged": bool(eig.converged[0]),
              "lr_scale": config.lr_scale, "steps": config.steps, "hidden": config.hidden, "n_train": config.n_train,
              "n_test": config.n_test}
    def final_only(extra):
        def measure(step: int, model: torch.nn.Module) -> list[tuple[str, float]]:
            return extra(model) if step == config.steps else []
        return measure

    reference: dict[str, torch.Tensor] = {}

    def linear_rows(model: torch.nn.Module) -> list[tuple[str, float]]:
        rows, reference["test"] = _evaluation(model, problem)
        return rows

    result = train_scaled(linear, problem.x, problem.y, eta0, config.steps, measure_every=config.steps,
                          measure=final_only(linear_rows), diverge=DIVERGED)
    tick()
    runs = [SolvedRun(linearized_id(seed), "linearized", {**common, "model": "linearized", "alpha": None,
                                                          "lr": eta0}, result.rows, result.step, seed=seed,
                      target_step=config.steps if not result.diverged else None,
                      status="diverged" if result.diverged else "done")]
    arrays = {f"ref_linearized_test_outputs_seed{seed}": reference["test"].numpy()} if "test" in reference else {}
    x_ntk = problem.x[: config.ntk_points]
    for alpha in config.alphas:
        net = make()
        model, start = Scaled(net, alpha), Scaled(make(), alpha)
        theta0 = torch.nn.utils.parameters_to_vector(start.parameters()).detach()
        outputs: dict[str, torch.Tensor] = {}

        def network_rows(model: torch.nn.Module) -> list[tuple[str, float]]:
            rows, outputs["test"] = _evaluation(model, problem)
            theta = torch.nn.utils.parameters_to_vector(model.parameters()).detach()
            with torch.no_grad():
                train_gap = relative_difference(model(problem.x), linear(problem.x))
            rows += [("kernel_movement", float(kernel_distance(model.eval(), start.eval(), x_ntk))),
                     ("param_movement", float(torch.linalg.vector_norm(theta - theta0) / torch.linalg.vector_norm(theta0))),
                     ("relative_difference_test", relative_difference(outputs["test"], reference["test"])
                      if "test" in reference else float("nan")),
                     ("relative_difference_train", train_gap)]
            return rows

        result = train_scaled(model, problem.x, problem.y, eta0, config.steps, measure_every=config.steps,
                              measure=final_only(network_rows), diverge=DIVERGED)
        tick()
        label = network_id(alpha, seed)
        runs.append(SolvedRun(label, "network", {**common, "model": "network", "alpha": alpha,
                                                 "lr": eta0 / alpha ** 2}, result.rows, result.step, seed=seed,
                              target_step=config.steps if not result.diverged else None,
                              status="diverged" if result.diverged else "done"))
        if "test" in outputs:
            arrays[label.replace("/", "_")] = outputs["test"].numpy()
    return runs, arrays


class LazyVsRich:
    name = "lazy-vs-rich"
    claim = ("Scaling a centred network's output by α (step η₀/α²) makes its tangent kernel move less as α grows, "
             "and at large α the trained network agrees with its linearization (kernel GD with the initial NTK); "
             "at small α the features move.")
    paper = "Chizat, Oyallon & Bach 2019; Geiger, Spigler, Jacot & Wyart 2020; Woodworth et al. 2020"
    Config = Config
    minutes = (1.7, 7.2)  # quick, full: measured with --threads 1 on 2 cores shared with other jobs (load 5–9)

    def defaults(self, quick: bool) -> dict[str, Any]:
        # quick: the same model, step rule and checks on half the training points, four scales spanning the
        # same range (0.1 … 100, whole decades), two seeds and half the steps
        return {"alphas": [0.1, 1.0, 10.0, 100.0], "seeds": 2, "n_train": 256, "n_test": 500,
                "steps": 1000} if quick else {}

    def plan(self, config: Config) -> list:
        return []

    def problem(self, config: Config) -> Problem:
        return mnist1d_problem(config.n_train, config.n_test)

    def solve(self, config: Config, problem: Problem, progress: ProgressBar) -> Solved:
        runs, arrays = [], {}
        bar = progress("linearization and networks over α", config.seeds * (len(config.alphas) + 1))
        done = 0

        def tick() -> None:
            nonlocal done
            done += 1
            bar(done)

        for seed in range(config.seeds):
            seed_runs, seed_arrays = solve_seed(config, problem, seed, tick)
            runs += seed_runs
            arrays.update(seed_arrays)
        return Solved(runs, arrays)

    def analyze(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame,
                solutions: dict[str, np.ndarray] | None = None) -> Analysis:
        return Analysis(analysis.table(config, runs, metrics), analysis.checks(config, runs, metrics),
                        analysis.notes(config, runs, metrics))

    def figures(self, config: Config, runs: pd.DataFrame, metrics: pd.DataFrame,
                solutions: dict[str, np.ndarray] | None, directory: Path) -> list[Path]:
        return figures.draw_all(config, runs, metrics, directory)


STUDY = LazyVsRich()
