"""implicitreg.dynamics.adaptive against independent references: heavy-ball momentum and Adam step by step
against torch.optim (float64), Adam's preconditioner against torch.optim.Adam's own state, the preconditioned
sharpness against dense eigenvalues of P⁻¹H, and the stability thresholds against the spectral radius of
the linear recurrences they come from."""

import numpy as np
import pytest
import scipy.linalg
import torch

from implicitreg.dynamics.adaptive import (Adam, HeavyBall, adam_threshold, heavy_ball_threshold,
                                           preconditioned_sharpness)
from implicitreg.dynamics.network import build_mlp, half_mse, sharpness, train_full_batch

from conftest import dense_hessian


def teacher(n, d, seed):
    """Points x ~ N(0, I) [n, d] and smooth targets y [n, 1] (float64 tensors)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    return torch.tensor(x), torch.tensor(np.tanh(x @ rng.standard_normal(d))[:, None])


def vector(model):
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach()


def gradients(model, x, y):
    params = list(model.parameters())
    return torch.autograd.grad(half_mse(model(x), y), params)


def lockstep(update, make_optimizer, steps=40, seed=0):
    """Apply ``update`` to one MLP and torch's optimizer to an identical copy, step by step; returns the
    largest relative parameter difference after each step."""
    x, y = teacher(40, 5, seed)
    ours, theirs = build_mlp(5, [7, 6], 1, seed), build_mlp(5, [7, 6], 1, seed)
    optimizer = make_optimizer(theirs.parameters())
    gaps = []
    for step in range(steps):
        update(step, list(ours.parameters()), gradients(ours, x, y), None)
        optimizer.zero_grad()
        half_mse(theirs(x), y).backward()
        optimizer.step()
        a, b = vector(ours), vector(theirs)
        gaps.append(float((a - b).abs().max() / b.abs().max()))
    return gaps


@pytest.mark.parametrize("lr,momentum", [(0.1, 0.9), (0.3, 0.5), (0.05, 0.0)])
def test_heavy_ball_is_torch_sgd_with_momentum_step_by_step(lr, momentum):
    # same recurrence, same float64 operations up to their order: equal to ~1e-15 after every step
    gaps = lockstep(HeavyBall(lr, momentum),
                    lambda p: torch.optim.SGD(p, lr=lr, momentum=momentum, dampening=0, nesterov=False))
    assert max(gaps) < 1e-12


@pytest.mark.parametrize("lr,betas,eps", [(1e-2, (0.9, 0.999), 1e-8), (3e-2, (0.8, 0.99), 1e-3),
                                          (1e-3, (0.0, 0.9), 1e-8)])
def test_adam_is_torch_adam_step_by_step(lr, betas, eps):
    # eps = 1e-3 makes ε matter in the denominator; β₁ = 0 is RMSProp with bias correction
    for foreach in (False, True):  # torch's two implementations round differently, both within 1e-12
        gaps = lockstep(Adam(lr, betas, eps), lambda p: torch.optim.Adam(p, lr=lr, betas=betas, eps=eps,
                                                                          foreach=foreach))
        assert max(gaps) < 1e-12


def test_adam_preconditioner_is_the_one_torch_adam_divides_by():
    # P computed before a step from the point's gradient equals (1 − β₁ᵗ)(√(v/(1 − β₂ᵗ)) + ε) read from torch's
    # state after that step, and torch's step is exactly η·P⁻¹m with its own m
    x, y = teacher(30, 4, 1)
    ours, theirs = build_mlp(4, [6], 1, 1), build_mlp(4, [6], 1, 1)
    lr, (b1, b2), eps = 0.02, (0.9, 0.999), 1e-6
    adam = Adam(lr, (b1, b2), eps)
    optimizer = torch.optim.Adam(theirs.parameters(), lr=lr, betas=(b1, b2), eps=eps, foreach=False)
    for t in range(1, 8):
        grads = gradients(ours, x, y)
        predicted = adam.preconditioner(grads)
        assert adam.t == t - 1  # asking for P leaves the state alone
        before = vector(theirs)
        adam(t - 1, list(ours.parameters()), grads, None)
        optimizer.zero_grad()
        half_mse(theirs(x), y).backward()
        optimizer.step()
        state = [optimizer.state[p] for p in theirs.parameters()]
        torch_p = torch.cat([((1 - b1 ** t) * ((s["exp_avg_sq"] / (1 - b2 ** t)).sqrt() + eps)).reshape(-1)
                             for s in state])
        torch_m = torch.cat([s["exp_avg"].reshape(-1) for s in state])
        ours_p = torch.cat([p.reshape(-1) for p in predicted])
        torch.testing.assert_close(ours_p, torch_p, rtol=1e-12, atol=0)
        torch.testing.assert_close(before - vector(theirs), lr * torch_m / ours_p, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_preconditioned_sharpness_is_the_top_eigenvalue_of_dense_p_inverse_h(seed):
    # after 30 Adam steps (so P is Adam's own, far from a multiple of I), against the largest real eigenvalue of
    # the non-symmetric P⁻¹H (scipy.linalg.eigvals) and of the symmetric P^{-1/2}HP^{-1/2} (eigh). Lanczos runs
    # until its relative residual bound is below 1e-10, which bounds the eigenvalue's relative error by it;
    # the dense references agree with each other to rounding of a matrix with entries up to ~1/min P
    x, y = teacher(25, 3, seed)
    model = build_mlp(3, [5, 4], 1, seed)
    adam = Adam(0.01)
    train_full_batch(model, x, y, adam, 30, measure_every=100, measure=lambda step, m: [])
    diagonal = adam.preconditioner(gradients(model, x, y))
    p = torch.cat([d.reshape(-1) for d in diagonal]).numpy()
    h = dense_hessian(model, x, y, half_mse).numpy()
    nonsymmetric = scipy.linalg.eigvals(h / p[:, None])
    assert np.abs(nonsymmetric.imag).max() < 1e-8 * np.abs(nonsymmetric).max()  # similar to a symmetric matrix
    top = nonsymmetric.real.max()
    d = 1 / np.sqrt(p)
    assert scipy.linalg.eigh(d[:, None] * h * d[None, :], eigvals_only=True)[-1] == pytest.approx(top, rel=1e-9)
    eig = preconditioned_sharpness(model, x, y, diagonal, tol=1e-10, max_hvp=h.shape[0])
    assert bool(eig.converged[0]) and float(eig.residuals[0]) < 1e-10
    assert float(eig.values[0]) == pytest.approx(top, rel=1e-9)
    # P far from I: the preconditioned sharpness is not the sharpness rescaled by one number
    assert p.max() / p.min() > 10


def test_with_the_identity_the_preconditioned_sharpness_is_the_sharpness_and_p_is_validated():
    x, y = teacher(30, 4, 3)
    model = build_mlp(4, [6, 5], 1, 3)
    ones = [torch.ones_like(p) for p in model.parameters()]
    scaled = preconditioned_sharpness(model, x, y, [4 * o for o in ones], tol=1e-8, max_hvp=60)
    plain = sharpness(model, x, y, tol=1e-8, max_hvp=60)
    assert float(scaled.values[0]) == pytest.approx(float(plain.values[0]) / 4, rel=1e-7)
    with pytest.raises(ValueError, match="one tensor per parameter"):
        preconditioned_sharpness(model, x, y, ones[:-1], tol=1e-6, max_hvp=10)
    with pytest.raises(ValueError, match="positive preconditioner"):
        preconditioned_sharpness(model, x, y, [0 * o for o in ones], tol=1e-6, max_hvp=10)


def spectral_radius(matrix) -> float:
    return float(np.abs(np.linalg.eigvals(np.asarray(matrix, dtype=float))).max())


@pytest.mark.parametrize("lr,beta", [(0.1, 0.9), (0.01, 0.5), (1.0, 0.0)])
def test_heavy_ball_threshold_is_where_the_quadratic_recurrence_turns_unstable(lr, beta):
    # on L = ½λθ², (θ, buf) ↦ (θ − η(β·buf + λθ), β·buf + λθ): linear, stable iff its spectral radius < 1
    def radius(curvature):
        return spectral_radius([[1 - lr * curvature, -lr * beta], [curvature, beta]])

    threshold = heavy_ball_threshold(lr, beta)
    assert HeavyBall(lr, beta).threshold == threshold
    assert radius(0.999 * threshold) < 1 < radius(1.001 * threshold)


@pytest.mark.parametrize("lr,beta1", [(1e-3, 0.9), (0.1, 0.5)])
def test_adam_threshold_is_where_frozen_preconditioner_ema_momentum_turns_unstable(lr, beta1):
    # Adam with P frozen at p on L = ½λθ²: m ← β₁m + (1 − β₁)λθ, θ ← θ − (η/p)m; stable iff λ/p is below the
    # threshold (whatever p); 38/η for β₁ = 0.9
    p = 0.37

    def radius(curvature):
        a = (1 - beta1) * curvature
        return spectral_radius([[1 - lr / p * a, -lr / p * beta1], [a, beta1]])

    threshold = adam_threshold(lr, beta1)
    assert Adam(lr, (beta1, 0.999)).threshold == threshold
    assert radius(0.999 * threshold * p) < 1 < radius(1.001 * threshold * p)
    assert adam_threshold(2.0, 0.9) == pytest.approx(19.0)


def test_bad_hyperparameters_name_the_field():
    with pytest.raises(ValueError, match="lr: expected a positive"):
        HeavyBall(0.0, 0.9)
    with pytest.raises(ValueError, match=r"momentum: expected a number in \[0, 1\)"):
        HeavyBall(0.1, 1.0)
    with pytest.raises(ValueError, match="beta2"):
        Adam(0.1, (0.9, 1.5))
    with pytest.raises(ValueError, match="eps"):
        Adam(0.1, eps=-1.0)
