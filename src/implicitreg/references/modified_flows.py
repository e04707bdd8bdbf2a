"""Gradient flows and the modified flows that gradient descent and SGD follow more closely.

Backward error analysis of gradient descent θ_{k+1} = θ_k − h∇L(θ_k) (Barrett & Dherin 2021,
"Implicit gradient regularization"): GD stays O(h²) close to the flow of the modified loss

    L̃_IGR(θ) = L(θ) + (h/4)·‖∇L(θ)‖²,   so   θ' = −∇L − (h/2)·H∇L,

but only O(h) close to the plain gradient flow θ' = −∇L. For SGD with random reshuffling over m
equal batches, L = (1/m)·Σ_k L_k, the iterate after one epoch, averaged over the batch orders,
follows the flow of (Smith, Dherin, Barrett & De 2021, "On the origin of implicit regularization
in stochastic gradient descent")

    L̃_SGD(θ) = L + (h/4m)·Σ_k ‖∇L_k‖² = L + (h/4)‖∇L‖² + (h/4m)·Σ_k ‖∇L_k − ∇L‖².

The flows are integrated with ``scipy.integrate.solve_ivp`` (DOP853, adaptive, rtol = atol = 1e-12
by default); gradients and ∇(½‖∇L‖²) = H∇L come from PyTorch autograd (double backward) in
float64. A loss is a function θ [p] → 0-d tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

LossFn = Callable[[torch.Tensor], torch.Tensor]
Field = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class FlowSolution:
    """An accurately integrated flow.

    Attributes:
        t: [m] the times asked for (increasing; the last is the end time T).
        theta: [m, p] the solution at those times (float64); ``theta[-1]`` is the end point.
        n_evals: evaluations of the vector field the solver spent.
    """

    t: np.ndarray
    theta: np.ndarray
    n_evals: int

    @property
    def end(self) -> np.ndarray:
        return self.theta[-1]


def gradient(loss: LossFn, theta: torch.Tensor) -> torch.Tensor:
    """∇L(θ): θ [p] → [p] (float64, detached)."""
    theta = theta.detach().requires_grad_(True)
    return torch.autograd.grad(loss(theta), theta)[0]


def gradient_and_hg(loss: LossFn, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(∇L(θ), H(θ)∇L(θ)), both [p]: H∇L = ∇(½‖∇L‖²) by double backward (one extra backward pass)."""
    theta = theta.detach().requires_grad_(True)
    g = torch.autograd.grad(loss(theta), theta, create_graph=True)[0]
    hg = torch.autograd.grad(0.5 * (g * g).sum(), theta)[0]
    return g.detach(), hg


def integrate(field: Field, theta0: np.ndarray, end: float, t_eval: Sequence[float] | None = None,
              rtol: float = 1e-12, atol: float = 1e-12) -> FlowSolution:
    """Solve θ' = field(θ), θ(0) = θ0 on [0, end] with DOP853.

    Args:
        field: θ [p] tensor → θ' [p] tensor (autonomous).
        theta0: [p] start; end: T > 0; t_eval: times in [0, T] to report (T is always added).
        rtol, atol: the solver's tolerances.

    Raises:
        RuntimeError: if the solver fails, the field is not finite, or the solution is not finite
            (never a silent result).
    """
    if not end > 0:
        raise ValueError(f"end: expected a positive time, got {end}")
    times = np.unique(np.clip(np.append(np.asarray(t_eval if t_eval is not None else [], dtype=float), end), 0, end))
    theta0 = np.asarray(theta0, dtype=np.float64)

    def rhs(t: float, y: np.ndarray) -> np.ndarray:
        value = field(torch.from_numpy(y)).detach().numpy()
        if not np.all(np.isfinite(value)):  # solve_ivp would shrink its step forever on NaN
            raise RuntimeError(f"the vector field is not finite at t={t:g} (the flow diverged or the loss is undefined)")
        return value

    from scipy import integrate  # lazy: scipy.optimize, stats and integrate cost `import implicitreg` 0.8 s
    result = integrate.solve_ivp(rhs, (0.0, end), theta0, method="DOP853", t_eval=times, rtol=rtol, atol=atol)
    if result.status != 0 or not np.all(np.isfinite(result.y)):
        raise RuntimeError(f"solve_ivp (DOP853, rtol={rtol:g}) failed to integrate to T={end:g}: {result.message}")
    return FlowSolution(result.t, result.y.T.copy(), int(result.nfev))


def gradient_flow(loss: LossFn, theta0: np.ndarray, end: float, t_eval: Sequence[float] | None = None,
                  rtol: float = 1e-12, atol: float = 1e-12) -> FlowSolution:
    """The plain gradient flow θ' = −∇L(θ)."""
    return integrate(lambda th: -gradient(loss, th), theta0, end, t_eval, rtol, atol)


def igr_flow(loss: LossFn, theta0: np.ndarray, end: float, h: float, t_eval: Sequence[float] | None = None,
             rtol: float = 1e-12, atol: float = 1e-12) -> FlowSolution:
    """The flow of L̃ = L + (h/4)‖∇L‖²: θ' = −∇L − (h/2)·H∇L (Barrett & Dherin 2021)."""
    def field(theta: torch.Tensor) -> torch.Tensor:
        g, hg = gradient_and_hg(loss, theta)
        return -(g + 0.5 * h * hg)

    return integrate(field, theta0, end, t_eval, rtol, atol)


def sgd_flow(batch_losses: Sequence[LossFn], theta0: np.ndarray, end: float, h: float,
             t_eval: Sequence[float] | None = None, rtol: float = 1e-12, atol: float = 1e-12) -> FlowSolution:
    """The flow of L̃_SGD = L + (h/4m)·Σ_k ‖∇L_k‖², L = (1/m)·Σ_k L_k (m = len(batch_losses)):
    θ' = −(1/m)·Σ_k (∇L_k + (h/2)·H_k∇L_k) (Smith, Dherin, Barrett & De 2021)."""
    m = len(batch_losses)
    if m < 1:
        raise ValueError("batch_losses: expected at least one batch loss")

    def field(theta: torch.Tensor) -> torch.Tensor:
        total = torch.zeros_like(theta)
        for batch_loss in batch_losses:
            g, hg = gradient_and_hg(batch_loss, theta)
            total += g + 0.5 * h * hg
        return -total / m

    return integrate(field, theta0, end, t_eval, rtol, atol)


__all__ = ["FlowSolution", "gradient", "gradient_and_hg", "gradient_flow", "igr_flow", "integrate", "sgd_flow"]
