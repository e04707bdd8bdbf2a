"""Gradient descent with fresh label noise on the squared loss, for a batch of small float64 models at once.

Blanc, Gupta, Valiant & Valiant (2020), "Implicit regularization for deep neural networks driven by an
Ornstein–Uhlenbeck like process"; HaoChen, Wei, Lee & Ma (2021), "Shape matters: understanding the implicit
bias of the noise covariance"; Damian, Ma & Lee (2021), "Label noise SGD provably prefers flat global
minimizers". Each step draws fresh targets ỹ = y + δ·ε (ε ~ N(0, I), on the step's minibatch) and takes

    θ ← θ − η · J_Bᵀ (f_B(θ) − y_B − δ·ε_B) / b,

the gradient of ½ b⁻¹ Σ_{i∈B} (f_i(θ) − ỹ_i)². Its mean over ε (and over a uniform minibatch) is the GD
step on the clean loss L(θ) = ½ n⁻¹ Σ_i (f_i(θ) − y_i)²; near the interpolating manifold the noise drives
θ along it toward smaller tr ∇²L (the papers' implicit regularizer). With δ = 0 and b = n the step is
plain GD, operation for operation (r − 0·ε = r exactly).

Pieces:

- :class:`Model`: f as a function of a flat parameter vector θ [M, p] for M members at once, with its
  vector–Jacobian product Jᵀr, its Jacobian and the exact trace of the clean loss's Hessian;
- :func:`diagonal_net` (f(x) = ⟨u⊙u − v⊙v, x⟩) and :func:`relu_net` (f(x) = Σ_k a_k relu(w_k·x));
- :func:`label_noise_descent`: the loop, with the noise switched off after ``noise_steps`` (the
  annealed final phase), losses and Hessian traces on a recording grid.

Hessian trace. For L = ½ n⁻¹ Σ_i (f_i − y_i)², ∇²L = n⁻¹ JᵀJ + n⁻¹ Σ_i r_i ∇²f_i, so tr ∇²L =
n⁻¹ Σ_i ‖∇f_i‖² + n⁻¹ Σ_i r_i tr ∇²f_i. Both models have tr ∇²f_i = 0: the diagonal net's ∇²f_i is
diag(2x_i, −2x_i), and the ReLU net's only nonzero second derivatives (where no pre-activation is 0)
are the off-diagonal ∂²f/∂a_k∂w_k. Hence tr ∇²L = n⁻¹ ‖J‖_F² at every point (a.e. for ReLU), in closed form:

- diagonal net: ∂f_i/∂u_j = 2u_j x_ij, ∂f_i/∂v_j = −2v_j x_ij, so tr ∇²L = (4/n) Σ_ij x_ij² (u_j² + v_j²);
- ReLU net: ∂f_i/∂a_k = relu(z_ik), ∂f_i/∂w_k = a_k 1[z_ik > 0] x_i (z_ik = w_k·x_i), so
  tr ∇²L = n⁻¹ Σ_ik (relu(z_ik)² + a_k² 1[z_ik > 0] ‖x_i‖²).

For the diagonal net with E x_ij² = 1 this is ≈ 4 Σ_j (u_j² + v_j²) ≥ 4‖u⊙u − v⊙v‖₁: minimizing it on the
interpolating manifold is ℓ1 minimization, hence the sparse recovery that label noise finds (HaoChen et al.).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Model:
    """A regression model on a flat parameter vector, for M members at once (numpy float64).

    predict(θ [M, p], x [M, n, d]) → f [M, n];
    pullback(θ, x, r [M, n]) → Σ_i r_i ∇_θ f_i [M, p] (the vector–Jacobian product Jᵀr);
    jacobian(θ, x) → J [M, n, p];
    hessian_trace(θ, x) → tr ∇²L [M] of L = ½ n⁻¹ Σ_i (f_i − y_i)² (independent of y: module docstring).
    """

    name: str
    parameters: int
    predict: Callable[[np.ndarray, np.ndarray], np.ndarray]
    pullback: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
    jacobian: Callable[[np.ndarray, np.ndarray], np.ndarray]
    hessian_trace: Callable[[np.ndarray, np.ndarray], np.ndarray]


def diagonal_net(d: int) -> Model:
    """f(x) = ⟨u⊙u − v⊙v, x⟩ with θ = (u [d], v [d]) (p = 2d)."""

    def split(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return theta[:, :d], theta[:, d:]

    def predict(theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        u, v = split(theta)
        return np.matmul(x, (u * u - v * v)[:, :, None])[:, :, 0]

    def pullback(theta: np.ndarray, x: np.ndarray, r: np.ndarray) -> np.ndarray:
        u, v = split(theta)
        g = np.matmul(r[:, None, :], x)[:, 0, :]  # Σ_i r_i x_i [M, d]
        return np.concatenate([2.0 * u * g, -2.0 * v * g], axis=1)

    def jacobian(theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        u, v = split(theta)
        return np.concatenate([2.0 * u[:, None, :] * x, -2.0 * v[:, None, :] * x], axis=2)

    def hessian_trace(theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        u, v = split(theta)
        return 4.0 * np.einsum("mnd,md->m", x * x, u * u + v * v) / x.shape[1]

    return Model("diagonal_net", 2 * d, predict, pullback, jacobian, hessian_trace)


def relu_net(d: int, width: int) -> Model:
    """f(x) = Σ_k a_k relu(w_k·x) with θ = (W [width, d] row-major, a [width]) (p = width·(d + 1)).
    No bias: append a constant feature to x for one."""
    k = width

    def split(theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return theta[:, :k * d].reshape(-1, k, d), theta[:, k * d:]

    def hidden(theta: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        w, a = split(theta)
        z = np.matmul(x, np.swapaxes(w, 1, 2))  # [M, n, k]
        return np.maximum(z, 0.0), z > 0.0, a

    def predict(theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        h, _, a = hidden(theta, x)
        return np.matmul(h, a[:, :, None])[:, :, 0]

    def pullback(theta: np.ndarray, x: np.ndarray, r: np.ndarray) -> np.ndarray:
        h, on, a = hidden(theta, x)
        grad_a = np.matmul(r[:, None, :], h)[:, 0, :]  # Σ_i r_i relu(z_ik)
        gate = on * r[:, :, None]  # r_i 1[z_ik > 0]  [M, n, k]
        grad_w = a[:, :, None] * np.matmul(np.swapaxes(gate, 1, 2), x)  # a_k Σ_i r_i 1[z_ik > 0] x_i
        return np.concatenate([grad_w.reshape(len(theta), -1), grad_a], axis=1)

    def jacobian(theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        h, on, a = hidden(theta, x)
        jw = (on * a[:, None, :])[:, :, :, None] * x[:, :, None, :]  # [M, n, k, d]
        return np.concatenate([jw.reshape(*x.shape[:2], -1), h], axis=2)

    def hessian_trace(theta: np.ndarray, x: np.ndarray) -> np.ndarray:
        h, on, a = hidden(theta, x)
        norms = np.einsum("mnd,mnd->mn", x, x)
        return (np.einsum("mnk,mnk->m", h, h) + np.einsum("mnk,mk,mn->m", on, a * a, norms)) / x.shape[1]

    return Model("relu_net", k * (d + 1), predict, pullback, jacobian, hessian_trace)


@dataclass
class LabelNoiseRun:
    """The end of :func:`label_noise_descent`: theta [M, p] after ``steps`` updates; at each recorded step
    (sorted ``steps_recorded`` [T]) the clean loss ½ n⁻¹ Σ(f − y)² [T, M], the Hessian trace of the clean
    loss [T, M] and θ [T, M, p]; ``diverged`` [M]: θ stopped being finite (its later values are NaN/inf)."""

    theta: np.ndarray
    steps_recorded: np.ndarray
    loss: np.ndarray
    trace: np.ndarray
    thetas: np.ndarray
    diverged: np.ndarray


def _per_member(value: float | np.ndarray, count: int, name: str) -> np.ndarray:
    array = np.broadcast_to(np.asarray(value, dtype=np.float64), (count,)).copy()
    if not np.all(np.isfinite(array)) or np.any(array < 0):
        raise ValueError(f"{name}: expected finite non-negative values, one per member or one for all, got {value}")
    return array


def label_noise_descent(model: Model, theta0: np.ndarray, x: np.ndarray, y: np.ndarray,
                        lr: float | np.ndarray, noise: float | np.ndarray, steps: int, *,
                        noise_steps: int | None = None, batch: int | None = None, seed: int | Sequence[int] = 0,
                        record: Collection[int] = (), progress: Callable[[int], None] | None = None,
                        every: int = 10_000) -> LabelNoiseRun:
    """``steps`` updates θ ← θ − η J_Bᵀ(f_B − y_B − δ ε_B)/b for M members at once (module docstring).

    Args:
        model: a :class:`Model`; theta0 [M, p] (copied); x [M, n, d]; y [M, n] (clean targets).
        lr: η, one for all or one per member [M].
        noise: δ, one for all or per member [M]; δ = 0 is (minibatch) gradient descent.
        noise_steps: the noise acts on updates 0 … noise_steps − 1 only (None: on all); the rest is the
            annealed phase, plain (minibatch) GD on the clean targets.
        batch: b points per step, drawn uniformly without replacement for each member independently
            (None or n: the full batch, no sampling).
        seed: seeds the numpy generator of the noise and the minibatches: one int, one generator for all
            members; a sequence of M ints, one generator per member, so that a member's path does not depend
            on which other members run beside it (a study's seed 0 is the same in a 3- and a 5-seed run).
        record: steps (points after that many updates) at which loss, trace and θ are kept; the last
            step always is.
        progress: called with the step every ``every`` updates.

    Returns:
        :class:`LabelNoiseRun`.
    """
    theta = np.array(theta0, dtype=np.float64)
    members, n = y.shape
    if theta.shape != (members, model.parameters):
        raise ValueError(f"theta0: expected shape ({members}, {model.parameters}), got {theta.shape}")
    if x.shape[:2] != (members, n):
        raise ValueError(f"x: expected shape ({members}, {n}, d) to match y {y.shape}, got {x.shape}")
    if batch is not None and not 1 <= batch <= n:
        raise ValueError(f"batch: expected 1 … n = {n} points per step, got {batch}")
    eta = _per_member(lr, members, "lr")[:, None]
    delta = _per_member(noise, members, "noise")[:, None]
    noise_steps = steps if noise_steps is None else noise_steps
    full = batch is None or batch == n
    b = n if full else batch
    if isinstance(seed, (int, np.integer)):
        rng = np.random.default_rng(seed)
        uniform = lambda: rng.random((members, n))  # noqa: E731
        gaussian = lambda: rng.standard_normal((members, b))  # noqa: E731
    else:
        if len(seed) != members:
            raise ValueError(f"seed: expected one int or {members} ints (one per member), got {len(seed)}")
        rngs = [np.random.default_rng(s) for s in seed]
        uniform = lambda: np.stack([g.random(n) for g in rngs])  # noqa: E731
        gaussian = lambda: np.stack([g.standard_normal(b) for g in rngs])  # noqa: E731
    rows = np.arange(members)[:, None]
    wanted = set(record) | {steps}
    recorded, losses, traces, thetas = [], [], [], []
    with np.errstate(over="ignore", invalid="ignore"):  # a diverging member is reported, not warned about
        for step in range(steps + 1):
            if step in wanted:
                residual = model.predict(theta, x) - y
                recorded.append(step)
                losses.append(0.5 * np.einsum("mn,mn->m", residual, residual) / n)
                traces.append(model.hessian_trace(theta, x))
                thetas.append(theta.copy())
            if step == steps:
                break
            if full:
                xb, yb = x, y
            else:
                pick = np.argsort(uniform(), axis=1)[:, :b]
                xb, yb = x[rows, pick], y[rows, pick]
            r = model.predict(theta, xb) - yb
            if step < noise_steps:
                r = r - delta * gaussian()
            theta -= (eta / b) * model.pullback(theta, xb, r)
            if progress is not None and step % every == 0:
                progress(step)
    return LabelNoiseRun(theta, np.array(recorded), np.array(losses), np.array(traces), np.array(thetas),
                         ~np.isfinite(theta).all(axis=1))
