"""Wide two-layer networks in the NTK parametrization, many trained at once by full-batch GD.

The model of Lewkowycz, Bahri, Dyer, Sohl-Dickstein & Gur-Ari (2020), "The large learning rate phase
of deep learning: the catapult mechanism":

    f(x) = v · φ(u x / √d) / √n,    u [n, d], v [n] with N(0, 1) entries,

φ the identity (their "uv model", Section 2) or ReLU, trained on the squared loss
L = ½ · mean over the m points of (f(x) − y)² (:func:`half_mse`). Its neural tangent kernel on the
training set is Θ = J Jᵀ / m (J [m, P]: the Jacobian of the m outputs in all P = n(d + 1)
parameters), whose nonzero eigenvalues are those of the Gauss–Newton part JᵀJ/m of the loss Hessian;
GD on a model that stays linear in its parameters is stable for η < 2/λ_max(Θ). For the uv model on
one point, λ = (‖u‖² + ‖v‖²)·x²/(dn) (d = 1 in the paper).

A population of B members is held as stacked tensors (u [B, n, d], v [B, n]); every member has its
own step size, all share the data x [m, d], y [m]. Gradients and Θ are computed in closed form
(no autograd), so that a step is a few batched products:

- :func:`init_two_layer`: N(0, 1) weights, one generator per seed (the global RNG is left alone);
- :func:`outputs`, :func:`half_mse`, :func:`loss_and_gradients`: f [B, m], L [B], ∇_u L, ∇_v L;
- :func:`ntk`, :func:`ntk_top`: Θ [B, m, m] and λ_max(Θ) [B] (``torch.linalg.eigvalsh``);
- :func:`train`: full-batch GD θ ← θ − η_b ∇L for every member, the loss at every step and λ_max(Θ)
  at given steps, a member stopping where its loss stops being finite or exceeds ``diverge`` × its
  initial loss;
- :func:`stable`, :func:`max_stable_rate`: per member, bisection on η·λ₀ for the largest rate at which GD
  neither diverges nor (optionally) stops short of fitting the data within a step budget;
- :class:`TwoLayerModule`: one member as a ``torch.nn.Module`` (for torch.optim, autograd Jacobians
  and the Lanczos sharpness of :mod:`implicitreg.dynamics.network`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np
import torch

ACTIVATIONS = ("linear", "relu")


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {', '.join(ACTIVATIONS)}, got {activation!r}")


def _phi(h: torch.Tensor, activation: str) -> torch.Tensor:
    return h if activation == "linear" else torch.relu(h)


def _dphi(h: torch.Tensor, activation: str) -> torch.Tensor:
    # ReLU's derivative at 0 is taken as 0, as torch's autograd does
    return torch.ones_like(h) if activation == "linear" else (h > 0).to(h.dtype)


@dataclass
class TwoLayer:
    """B two-layer networks f_b(x) = v_b · φ(u_b x/√d)/√n: ``u`` [B, n, d], ``v`` [B, n] (float64),
    ``activation`` "linear" or "relu"."""

    u: torch.Tensor
    v: torch.Tensor
    activation: str

    @property
    def members(self) -> int:
        return self.u.shape[0]

    @property
    def width(self) -> int:
        return self.u.shape[1]

    @property
    def dim(self) -> int:
        return self.u.shape[2]

    def clone(self) -> TwoLayer:
        return TwoLayer(self.u.clone(), self.v.clone(), self.activation)

    def select(self, index: Sequence[int] | torch.Tensor) -> TwoLayer:
        """The members at ``index`` (copies), in that order."""
        index = torch.as_tensor(index, dtype=torch.long)
        return TwoLayer(self.u[index].clone(), self.v[index].clone(), self.activation)


def init_two_layer(seeds: Sequence[int], width: int, dim: int, activation: str) -> TwoLayer:
    """One member per seed: u [n, d] and v [n] with i.i.d. N(0, 1) entries (the NTK parametrization puts the
    1/√d and 1/√n in the forward pass), drawn in that order from ``torch.Generator().manual_seed(seed)``, so
    equal seeds give equal members whatever else is in the population."""
    _check_activation(activation)
    if width < 1 or dim < 1 or not len(seeds):
        raise ValueError(f"expected width >= 1, dim >= 1 and at least one seed, got width={width}, dim={dim}, "
                         f"seeds={list(seeds)}")
    us, vs = [], []
    for seed in seeds:
        generator = torch.Generator().manual_seed(int(seed))
        us.append(torch.randn(width, dim, generator=generator, dtype=torch.float64))
        vs.append(torch.randn(width, generator=generator, dtype=torch.float64))
    return TwoLayer(torch.stack(us), torch.stack(vs), activation)


def _hidden(net: TwoLayer, x: torch.Tensor) -> torch.Tensor:
    """Pre-activations h = u x/√d of every member at every point: [B, n, m] (batched matrix products)."""
    return torch.matmul(net.u, x.T) / math.sqrt(net.dim)


def outputs(net: TwoLayer, x: torch.Tensor) -> torch.Tensor:
    """f_b(x_i) [B, m] for x [m, d]."""
    a = _phi(_hidden(net, x), net.activation)
    return torch.matmul(net.v[:, None, :], a)[:, 0, :] / math.sqrt(net.width)


def half_mse(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """½ · mean over points of (f − y)²: f [B, m], y [m] → [B] (``dynamics.network.half_mse`` per member)."""
    return 0.5 * ((f - y) ** 2).mean(dim=-1)


def loss_and_gradients(net: TwoLayer, x: torch.Tensor, y: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """L [B] (:func:`half_mse`), ∇_u L [B, n, d] and ∇_v L [B, n], in closed form:
    with r = (f − y)/m, ∇_v L = φ(h) r/√n and ∇_u L = (v ⊙ (φ'(h) r)) xᵀ/√(nd)."""
    n, d = net.width, net.dim
    h = _hidden(net, x)
    a = _phi(h, net.activation)
    f = torch.matmul(net.v[:, None, :], a)[:, 0, :] / math.sqrt(n)
    r = (f - y) / x.shape[0]
    grad_v = torch.matmul(a, r[:, :, None])[:, :, 0] / math.sqrt(n)
    if net.activation == "linear":  # φ' = 1: every row of ∇_u L is v_k · (r x), a rank-one product
        back = torch.matmul(r, x)[:, None, :]  # [B, 1, d]
    else:
        back = torch.matmul(_dphi(h, net.activation) * r[:, None, :], x)  # [B, n, d]
    grad_u = back * (net.v[:, :, None] / math.sqrt(n * d))
    return half_mse(f, y), grad_u, grad_v


def ntk(net: TwoLayer, x: torch.Tensor) -> torch.Tensor:
    """The empirical NTK on the training set, Θ = J Jᵀ/m [B, m, m]:
    Θ_ij = [φ(h_i)·φ(h_j)/n + (x_i·x_j/d) · Σ_k v_k² φ'(h_ik) φ'(h_jk)/n] / m."""
    n, m = net.width, x.shape[0]
    h = _hidden(net, x)
    a, g = _phi(h, net.activation), _dphi(h, net.activation)
    readout = torch.matmul(a.transpose(1, 2), a)
    hidden = torch.matmul(g.transpose(1, 2), g * net.v[:, :, None] ** 2) * (x @ x.T / net.dim)
    return (readout + hidden) / (n * m)


def ntk_top(net: TwoLayer, x: torch.Tensor) -> torch.Tensor:
    """λ_max(Θ) [B]: the top eigenvalue of :func:`ntk`, by ``eigvalsh`` (dense, m × m per member)."""
    return torch.linalg.eigvalsh(ntk(net, x))[:, -1]


@dataclass
class Trajectory:
    """What :func:`train` recorded, per member b of B.

    Attributes:
        loss: [B, steps + 1] the loss at every step up to the member's stop (at a divergence the loss that
            stopped it, ``inf`` if not finite), NaN after.
        ntk_steps: [K] the steps at which λ_max(Θ) was measured.
        ntk: [B, K] λ_max(Θ) there, NaN at steps after the member stopped (and at the diverging step).
        stopped: [B] the step at which the member stopped: its divergence, else ``steps``.
        diverged: [B] whether it diverged.
        lr: [B] the step sizes.
    """

    loss: np.ndarray
    ntk_steps: np.ndarray
    ntk: np.ndarray
    stopped: np.ndarray
    diverged: np.ndarray
    lr: np.ndarray


def train(net: TwoLayer, x: torch.Tensor, y: torch.Tensor, lr: torch.Tensor | Sequence[float], steps: int, *,
          measure: Collection[int] = (), diverge: float = 1e8,
          progress: Callable[[int], None] = lambda step: None, every: int = 100) -> Trajectory:
    """Full-batch GD θ ← θ − η_b ∇L_b(θ) on every member of ``net`` in place, for ``steps`` updates.

    Args:
        net: the population (changed in place); x [m, d], y [m]: the data every member fits.
        lr: [B] step sizes, one per member.
        steps: most updates.
        measure: steps at which λ_max(Θ) is measured (before that step's update); step 0 and ``steps``
            always are.
        diverge: a member stops, diverged, at the first step whose loss is not finite or exceeds
            ``diverge`` × its initial loss; its parameters stay as they were there.
        progress: called with the step every ``every`` steps.

    Returns:
        :class:`Trajectory`.
    """
    lr = torch.as_tensor(lr, dtype=torch.float64).reshape(-1)
    if lr.shape[0] != net.members:
        raise ValueError(f"lr: expected one step size per member ({net.members}), got {lr.shape[0]}")
    if steps < 0:
        raise ValueError(f"steps: expected >= 0, got {steps}")
    members = net.members
    grid = sorted({0, steps, *(int(s) for s in measure if 0 <= int(s) <= steps)})
    column = {s: k for k, s in enumerate(grid)}
    losses = np.full((members, steps + 1), np.nan)
    lambdas = np.full((members, len(grid)), np.nan)
    stopped = np.full(members, steps, dtype=np.int64)
    diverged = np.zeros(members, dtype=bool)
    # the members still descending, as a compact population of their own: a member that stops is written
    # back to ``net`` and leaves it, so that the work per step falls with the members left
    active = np.arange(members)
    work, rates = net.select(active), lr.clone()
    first = None
    for step in range(steps + 1):
        loss, grad_u, grad_v = loss_and_gradients(work, x, y)
        first = loss.clone() if first is None else first
        values = loss.numpy().copy()
        values[~np.isfinite(values)] = np.inf
        losses[active, step] = values
        bad = ~(values <= diverge * first.numpy())  # not finite, or past the factor
        if bad.any():
            stopped[active[bad]], diverged[active[bad]] = step, True
            keep = torch.as_tensor(np.flatnonzero(~bad))
            net.u[active[bad]], net.v[active[bad]] = work.u[torch.as_tensor(np.flatnonzero(bad))], \
                work.v[torch.as_tensor(np.flatnonzero(bad))]
            active, first, rates = active[~bad], first[keep], rates[keep]
            work, grad_u, grad_v = work.select(keep), grad_u[keep], grad_v[keep]
        if step in column and len(active):
            lambdas[active, column[step]] = ntk_top(work, x).numpy()
        if step == steps or not len(active):
            break
        work.u.sub_(rates[:, None, None] * grad_u)
        work.v.sub_(rates[:, None] * grad_v)
        if step % every == 0:
            progress(step)
    if len(active):
        net.u[active], net.v[active] = work.u, work.v
    return Trajectory(losses, np.array(grid, dtype=np.int64), lambdas, stopped, diverged, lr.numpy().copy())


def stable(trajectory: Trajectory, fit: float | None = None) -> np.ndarray:
    """[B] whether each member of a :func:`train` run is stable: it did not diverge and, where ``fit`` is
    given, its last loss is at most ``fit`` × its initial loss (it fits the data: a network that stopped
    learning without diverging — ReLU units that all switched off — is no stable descent)."""
    ok = ~trajectory.diverged
    if fit is not None:
        last = trajectory.loss[np.arange(len(ok)), trajectory.stopped]
        ok &= last <= fit * trajectory.loss[:, 0]
    return ok


@dataclass
class Bisection:
    """The result of :func:`max_stable_rate`, per member (arrays [B], rates c = η·λ₀).

    Attributes:
        low: the largest rate found stable (η_max·λ₀ ≥ low where the bracket held).
        high: the smallest rate found unstable (η_max·λ₀ < high), ``inf`` where the initial upper rate
            was stable.
        low_ok: the initial lower rate was stable (False: the bracket failed from below).
        high_ok: the initial upper rate was unstable (False: the bracket failed from above).
        lambda0: λ_max(Θ) at initialization.
        runs: GD runs of the population (iterations + 2).
    """

    low: np.ndarray
    high: np.ndarray
    low_ok: np.ndarray
    high_ok: np.ndarray
    lambda0: np.ndarray
    runs: int

    @property
    def bracketed(self) -> np.ndarray:
        return self.low_ok & self.high_ok


def max_stable_rate(make: Callable[[], TwoLayer], x: torch.Tensor, y: torch.Tensor, steps: int, *,
                    low: float, high: float, iterations: int, diverge: float = 1e8, fit: float | None = None,
                    progress: Callable[[int], None] = lambda done: None) -> Bisection:
    """Bisection, for every member, on the rate c = η·λ₀ for the largest one at which GD is :func:`stable`
    within ``steps`` updates (no divergence by :func:`train`'s criterion and, with ``fit``, a last loss at
    most ``fit`` × the initial one), λ₀ = λ_max(Θ) of that member at initialization.

    ``make()`` builds the population afresh from the same initialization each time (every run starts from
    it). Both ends are run first: ``low`` must be stable and ``high`` not; then ``iterations`` halvings of
    [low, high], all members at once (each at its own midpoint), leave the boundary within
    (high − low)/2^iterations. Stability need not be monotone in c: the result is a boundary between a
    stable rate and an unstable one, the largest stable rate only where stability is monotone in c.
    A member whose bracket failed keeps its initial ends.
    """
    if not 0 < low < high:
        raise ValueError(f"expected 0 < low < high, got low={low}, high={high}")
    if iterations < 0:
        raise ValueError(f"iterations: expected >= 0, got {iterations}")
    lambda0 = ntk_top(make(), x)
    members = lambda0.shape[0]

    def stable_at(rates: np.ndarray) -> np.ndarray:
        run = train(make(), x, y, torch.as_tensor(rates) / lambda0, steps, diverge=diverge)
        return stable(run, fit)

    low_ok = stable_at(np.full(members, float(low)))
    progress(1)
    high_ok = ~stable_at(np.full(members, float(high)))
    progress(2)
    bracketed = low_ok & high_ok
    lo, hi = np.full(members, float(low)), np.where(high_ok, float(high), np.inf)
    for i in range(iterations):
        mid = np.where(bracketed, (lo + np.where(bracketed, hi, high)) / 2, low)
        ok = stable_at(mid)
        lo, hi = np.where(bracketed & ok, mid, lo), np.where(bracketed & ~ok, mid, hi)
        progress(3 + i)
    return Bisection(lo, hi, low_ok, high_ok, lambda0.numpy().copy(), iterations + 2)


class TwoLayerModule(torch.nn.Module):
    """Member ``index`` of a :class:`TwoLayer` as a module (parameters ``u`` [n, d], ``v`` [n], copies):
    ``forward(x)`` [m, d] → [m, 1], the same f, for torch.optim and autograd."""

    def __init__(self, net: TwoLayer, index: int = 0) -> None:
        super().__init__()
        self.u = torch.nn.Parameter(net.u[index].detach().clone())
        self.v = torch.nn.Parameter(net.v[index].detach().clone())
        self.activation = net.activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x @ self.u.T / math.sqrt(self.u.shape[1])
        return (_phi(h, self.activation) @ self.v / math.sqrt(self.u.shape[0]))[:, None]
