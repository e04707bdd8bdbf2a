"""Full-batch heavy-ball momentum and Adam as update rules, their stability thresholds, and the
preconditioned sharpness λ_max(P⁻¹H) that Adam's threshold bounds.

The update rules plug into :func:`~implicitreg.dynamics.network.train_full_batch` (and any
:func:`~implicitreg.dynamics.descent.descend`): ``update(step, params, grads, aux)`` changes the
parameters in place and keeps the optimizer's state on the object, so that a measurement can read it.

- :class:`HeavyBall`: buf ← β·buf + g (buf = g at the first step), θ ← θ − η·buf, which is
  ``torch.optim.SGD(lr=η, momentum=β, dampening=0)`` and Polyak's v ← βv − η∇L, θ ← θ + v
  (v = −η·buf). On a quadratic with curvature λ it is stable iff λ < (2 + 2β)/η (Cohen et al. 2021,
  appendix on momentum; :func:`heavy_ball_threshold`).
- :class:`Adam`: ``torch.optim.Adam`` (no weight decay, no amsgrad). Written as Cohen et al. (2022), §2:
  m ← β₁m + (1 − β₁)g, v ← β₂v + (1 − β₂)g², and with t the number of this step (1, 2, …)

      θ ← θ − η · P⁻¹ m,   P = (1 − β₁ᵗ) · diag(√(v / (1 − β₂ᵗ)) + ε),

  both bias corrections and ε folded into the diagonal preconditioner P. With P frozen this is
  EMA-momentum gradient descent on P^{-1/2} H P^{-1/2}, stable on a quadratic iff
  λ_max(P⁻¹H) < (2 + 2β₁)/((1 − β₁)η) (38/η for β₁ = 0.9; :func:`adam_threshold`).
  :meth:`Adam.preconditioner` gives the P of the step about to be taken from the current point (its
  gradient included in v, its t = steps taken + 1): the P that multiplies that point's Hessian.
- :func:`preconditioned_sharpness`: λ_max(P⁻¹H) by Lanczos on the symmetric P^{-1/2} H P^{-1/2}
  (similar to P⁻¹H, so the same eigenvalues), with the Hessian-vector products of
  :func:`~implicitreg.measures.hessian.hessian_operator`.

References:
    Cohen, Kaur, Li, Kolter & Talwalkar (2021), "Gradient descent on neural networks typically occurs
    at the edge of stability" (momentum: appendix). Cohen, Ghorbani, Krishnan, Agarwal, Medapati,
    Badura, Suo, Cardoze, Nado, Dahl & Gilmer (2022), "Adaptive gradient methods at the edge of
    stability". Kingma & Ba (2015), "Adam".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from implicitreg.dynamics.network import half_mse
from implicitreg.measures.curvature import EigResult, hessian_operator
from implicitreg.measures.lanczos import lanczos, start_vector


def heavy_ball_threshold(lr: float, momentum: float) -> float:
    """(2 + 2β)/η: the largest curvature on which heavy-ball momentum (:class:`HeavyBall`) is stable."""
    return (2 + 2 * momentum) / lr


def adam_threshold(lr: float, beta1: float) -> float:
    """(2 + 2β₁)/((1 − β₁)η): the largest preconditioned curvature λ(P⁻¹H) on which Adam with a frozen
    preconditioner (EMA momentum β₁) is stable; 38/η for β₁ = 0.9."""
    return (2 + 2 * beta1) / ((1 - beta1) * lr)


def _check_hyperparameters(lr: float, **betas: float) -> None:
    if not lr > 0:
        raise ValueError(f"lr: expected a positive step size, got {lr}")
    for name, beta in betas.items():
        if not 0 <= beta < 1:
            raise ValueError(f"{name}: expected a number in [0, 1), got {beta}")


class HeavyBall:
    """Heavy-ball momentum: buf ← β·buf + g (buf = g at the first step), θ ← θ − η·buf, in place.

    ``torch.optim.SGD(params, lr=η, momentum=β, dampening=0, nesterov=False)`` step for step.
    ``buffers`` holds buf per parameter (empty before the first step).
    """

    def __init__(self, lr: float, momentum: float):
        _check_hyperparameters(lr, momentum=momentum)
        self.lr, self.momentum = lr, momentum
        self.buffers: list[torch.Tensor] = []

    @property
    def threshold(self) -> float:
        """(2 + 2β)/η (:func:`heavy_ball_threshold`)."""
        return heavy_ball_threshold(self.lr, self.momentum)

    def __call__(self, step: int, params: list, grads: Sequence[torch.Tensor], aux: Any) -> None:
        with torch.no_grad():
            if not self.buffers:
                self.buffers = [g.detach().clone() for g in grads]
            else:
                for buf, g in zip(self.buffers, grads):
                    buf.mul_(self.momentum).add_(g)
            for p, buf in zip(params, self.buffers):
                p.sub_(self.lr * buf)


class Adam:
    """Adam (Kingma & Ba 2015) as ``torch.optim.Adam(params, lr, betas, eps)`` updates, in place.

    State: ``m`` and ``v`` (first and second moments per parameter, empty before the first step) and
    ``t`` (steps taken). The step is θ ← θ − η·P⁻¹m with P of :meth:`preconditioner` (module docstring).
    """

    def __init__(self, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        _check_hyperparameters(lr, beta1=betas[0], beta2=betas[1])
        if not eps >= 0:
            raise ValueError(f"eps: expected a number ≥ 0, got {eps}")
        self.lr, self.beta1, self.beta2, self.eps = lr, betas[0], betas[1], eps
        self.m: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.t = 0

    @property
    def threshold(self) -> float:
        """(2 + 2β₁)/((1 − β₁)η) (:func:`adam_threshold`)."""
        return adam_threshold(self.lr, self.beta1)

    def _diagonal(self, v: torch.Tensor, t: int) -> torch.Tensor:
        # torch.optim.Adam's arithmetic: denom = √v / √(1 − β₂ᵗ) + ε, step size η / (1 − β₁ᵗ)
        return (1 - self.beta1 ** t) * (v.sqrt() / (1 - self.beta2 ** t) ** 0.5 + self.eps)

    def preconditioner(self, grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The diagonal of P [per parameter, its shape] for the step from the point whose gradient is
        ``grads``: v' = β₂v + (1 − β₂)g² and t' = t + 1, as the next call would compute them (the state
        is left unchanged)."""
        t = self.t + 1
        with torch.no_grad():
            if self.v:
                moments = [self.beta2 * v + (1 - self.beta2) * g * g for v, g in zip(self.v, grads)]
            else:
                moments = [(1 - self.beta2) * g * g for g in grads]
            return [self._diagonal(v, t) for v in moments]

    def __call__(self, step: int, params: list, grads: Sequence[torch.Tensor], aux: Any) -> None:
        with torch.no_grad():
            if not self.m:
                self.m = [torch.zeros_like(p) for p in params]
                self.v = [torch.zeros_like(p) for p in params]
            self.t += 1
            for p, g, m, v in zip(params, grads, self.m, self.v):
                m.mul_(self.beta1).add_(g, alpha=1 - self.beta1)
                v.mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
                p.sub_(self.lr * m / self._diagonal(v, self.t))


def preconditioned_sharpness(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                             diagonal: Sequence[torch.Tensor], *, tol: float, max_hvp: int,
                             loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = half_mse,
                             seed: int = 0) -> EigResult:
    """λ_max(P⁻¹H): the top eigenvalue of the full-batch ``loss``'s Hessian H preconditioned by the
    positive diagonal P, by Lanczos on the symmetric D H D, D = P^{-1/2} (similar to P⁻¹H).

    Args:
        model: a plain float64 module; x [n, d], y [n, k]: the full batch.
        diagonal: P's diagonal, one positive tensor per parameter in ``model.parameters()`` order and
            shape (e.g. :meth:`Adam.preconditioner`).
        tol, max_hvp: Lanczos' relative residual at which it stops and its budget of products (each
            product is one Hessian-vector product); seed: of the start vector.

    Returns:
        :class:`~implicitreg.measures.curvature.EigResult`: values, converged, residuals [1], n_hvp an
        int. The residual is that of D H D, whose eigenvalues are those of P⁻¹H; a value that did not
        converge is a lower bound.

    Raises:
        ValueError: ``diagonal`` does not match the parameters (count or shapes) or is not positive.
    """
    params = list(model.parameters())
    if len(diagonal) != len(params) or any(d.shape != p.shape for d, p in zip(diagonal, params)):
        raise ValueError(f"diagonal: expected one tensor per parameter with shapes {[tuple(p.shape) for p in params]}, "
                         f"got {[tuple(d.shape) for d in diagonal]}")
    if not all(bool((d > 0).all()) for d in diagonal):
        raise ValueError("diagonal: expected a positive preconditioner (P's entries > 0; Adam's need eps > 0 or "
                         "nonzero second moments), got a zero or negative entry")
    op = hessian_operator(model, loss, (x, y))
    # the operator flattens the parameters in named_parameters() order, the order of model.parameters()
    scale = torch.cat([d.detach().reshape(-1) for d in diagonal]).to(op.flat).rsqrt().unsqueeze(0)
    generator = torch.Generator().manual_seed(seed)
    v0 = start_vector(generator, op.dim, op.flat).expand(op.size, -1)
    # check_ratio 0: a convergence check (an m × m eigh) after every product costs far less than an HVP
    result = lanczos(lambda v: scale * op.matvec(scale * v), v0, k=1, tol=tol, max_iter=max_hvp, generator=generator)
    return EigResult(result.values[0], result.converged[0], int(result.n_matvec[0]), result.residuals[0])
