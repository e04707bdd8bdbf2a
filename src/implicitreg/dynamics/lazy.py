"""The α-scaled, centred model and its linearization at initialization (lazy-vs-rich).

Chizat, Oyallon & Bach (2019), "On lazy training in differentiable programming": for a model h(θ, x)
and a scale α, train

    f_α(θ, x) = α·(h(θ, x) − h(θ₀, x))        (centred: f_α(θ₀, ·) = 0)

by gradient descent on a loss of f_α with step η₀/α². As α → ∞ the trajectory approaches that of the
linearized model

    f_lin(θ, x) = α·J_h(θ₀, x)(θ − θ₀),

i.e. kernel gradient descent with the fixed initial tangent kernel K = J_h J_hᵀ, and the kernel moves by
O(1/α) (their Theorem 2.3); at small α the features (and the kernel) move.

With the squared loss L = ½·mean_i ‖f(x_i) − y_i‖² and step η = η₀/α², the linearized model's outputs on
the training points u_t [n·C] follow u_{t+1} = u_t − (η₀/n)·K_h(u_t − y) — independent of α — so every α
has the same linearized predictor, and for a model h that is linear in θ, f_α = f_lin for every α.

- :class:`Scaled`: the module f_α around a given h (its parameters are h's; θ₀ is kept as buffers);
- :class:`Linearized`: the module f_lin (forward-mode ``torch.func.jvp`` at θ₀; its parameters are θ);
- :func:`train_scaled`: full-batch GD with step η₀/α² on either, through
  :func:`~implicitreg.dynamics.network.train_full_batch` (measurement callback every k steps);
- :func:`kernel_gd`: the closed form of ``steps`` GD steps of a model linear in its parameters, in function
  space, from a dense kernel (eigendecomposition) — the reference the modules are tested against;
- :func:`relative_difference`: ‖a − b‖_F / ‖b‖_F.
"""

from __future__ import annotations

import copy
import functools
import math

import torch
from torch.func import functional_call, jvp

from implicitreg.dynamics.descent import gd_update
from implicitreg.dynamics.network import FullBatch, Measure, half_mse, train_full_batch


def _check_alpha(alpha: float) -> float:
    alpha = float(alpha)
    if not (math.isfinite(alpha) and alpha > 0):
        raise ValueError(f"alpha: expected a positive finite output scale, got {alpha!r}")
    return alpha


class _AtInit(torch.nn.Module):
    """A module holding a network ``net`` (trainable θ) and a frozen copy of its parameters θ₀ as buffers."""

    def __init__(self, net: torch.nn.Module, alpha: float) -> None:
        super().__init__()
        self.alpha = _check_alpha(alpha)
        self.net = net
        self._names = [name for name, _ in net.named_parameters()]
        # buffers, not parameters: θ₀ follows .to(device) but is neither trained nor part of the NTK
        for i, (_, p) in enumerate(net.named_parameters()):
            self.register_buffer(f"theta0_{i}", p.detach().clone())

    def initial(self) -> dict[str, torch.Tensor]:
        """θ₀ by ``net``'s parameter names."""
        return {name: getattr(self, f"theta0_{i}") for i, name in enumerate(self._names)}


class Scaled(_AtInit):
    """f_α(θ, x) = α·(h(θ, x) − h(θ₀, x)) with h = ``net`` (trained in place) and θ₀ its parameters now.

    Args:
        net: the model h; x [N, ...] → [N, C]. Its parameters are this module's (``net.*``).
        alpha: the output scale α > 0.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # h(θ₀, x) does not depend on θ
            start = functional_call(self.net, self.initial(), (x,))
        return self.alpha * (self.net(x) - start)


class Linearized(_AtInit):
    """f_lin(θ, x) = α·J_h(θ₀, x)(θ − θ₀): the first-order Taylor model of :class:`Scaled` at θ₀.

    Computed with one forward-mode product (``torch.func.jvp`` of h at θ₀ along θ − θ₀), differentiable in
    θ by reverse mode. ``net`` is copied: its parameters start at θ₀ and are this module's (``net.*``).
    """

    def __init__(self, net: torch.nn.Module, alpha: float) -> None:
        super().__init__(copy.deepcopy(net), alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta0 = self.initial()
        # read as attributes, so that inside functional_call (e.g. the NTK measure) this sees the substituted
        # θ, not the module's own tensors
        delta = {name: functools.reduce(getattr, name.split("."), self.net) - start for name, start in theta0.items()}
        _, tangent = jvp(lambda params: functional_call(self.net, params, (x,)), (theta0,), (delta,))
        return self.alpha * tangent


def train_scaled(model: _AtInit, x: torch.Tensor, y: torch.Tensor, eta0: float, steps: int, *,
                 measure_every: int, measure: Measure, diverge: float = 1e6,
                 progress=lambda step: None) -> FullBatch:
    """Full-batch GD θ ← θ − (η₀/α²)∇L(θ) on L = ½·mean‖f(x) − y‖² for a :class:`Scaled` or
    :class:`Linearized` ``model`` (its α), in place, for ``steps`` steps.

    Args:
        x [n, d], y [n, C]: the full batch (float64).
        eta0: the α-free step η₀ (the step is η₀/α²: Chizat et al.'s scaling, under which the linearized
            dynamics in function space do not depend on α).
        measure_every, measure, diverge, progress: as :func:`~implicitreg.dynamics.network.train_full_batch`.

    Returns:
        :class:`~implicitreg.dynamics.network.FullBatch` (rows ``loss``, the measurements, ``loss_increases``,
        ``diverged``).
    """
    if not (math.isfinite(eta0) and eta0 > 0):
        raise ValueError(f"eta0: expected a positive finite step, got {eta0!r}")
    return train_full_batch(model, x, y, gd_update(eta0 / model.alpha ** 2), steps, measure_every=measure_every,
                            measure=measure, loss=half_mse, diverge=diverge, progress=progress)


def kernel_gd(k_train: torch.Tensor, k_cross: torch.Tensor, y: torch.Tensor, lr: float,
              steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``steps`` steps of GD (step ``lr``) on ½·mean_i‖f(x_i) − y_i‖² of a model linear in its parameters
    with f = 0 at the start, in closed form from its kernel K = J Jᵀ (sample-major rows, as
    :func:`~implicitreg.measures.ntk.empirical_ntk`).

    On the training points u_{t+1} = u_t − (lr/n)·K(u_t − y), so with K = V Λ Vᵀ

        u_T = K V diag(g(λ)) Vᵀ y,   g(λ) = (1 − (1 − lr·λ/n)^T)/λ   (→ T·lr/n at λ = 0),

    and any other point x follows its cross-kernel row: f_T(x) = K(x, X) V diag(g) Vᵀ y. As T → ∞ (lr
    stable) this is kernel regression K(x, X) K⁻¹ y on the range of K.

    Args:
        k_train: K(X, X) [n·C, n·C]; k_cross: K(X', X) [m·C, n·C]; y: targets [n, C].
        lr: the step on this kernel's model (for f_α: η₀/α² with K = α²K_h).
        steps: T.

    Returns:
        (predictions on X' [m, C], predictions on X [n, C]).
    """
    n, c = y.shape
    if k_train.shape != (n * c, n * c) or k_cross.dim() != 2 or k_cross.shape[1] != n * c or k_cross.shape[0] % c:
        raise ValueError(f"kernel_gd: expected k_train [{n * c}, {n * c}] and k_cross [m·{c}, {n * c}] for y "
                         f"[{n}, {c}], got {tuple(k_train.shape)} and {tuple(k_cross.shape)}")
    lam, vec = torch.linalg.eigh(k_train)
    a = lr * lam / n
    # (1 − a)^T − 1: for small a as expm1(T·log1p(−a)), without cancellation; elsewhere (|1 − a| can exceed 1
    # for an unstable step) directly
    power = torch.where(a < 0.5, torch.expm1(steps * torch.log1p(-a.clamp(max=0.5))), (1 - a) ** steps - 1)
    gain = torch.where(lam == 0, torch.full_like(lam, steps * lr / n), -power / torch.where(lam == 0, 1.0, lam))
    coef = vec @ (gain * (vec.T @ y.reshape(-1)))
    return (k_cross @ coef).reshape(-1, c), (k_train @ coef).reshape(n, c)


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖_F / ‖b‖_F (NaN when b = 0)."""
    norm = float(torch.linalg.vector_norm(b))
    return float(torch.linalg.vector_norm(a - b)) / norm if norm > 0 else math.nan


__all__ = ["Linearized", "Scaled", "kernel_gd", "relative_difference", "train_scaled"]
