"""implicitreg.dynamics.network against closed forms and independent references: the MLP builder, the
Lanczos sharpness against dense Hessians, and the full-batch loop against GD's closed form on a linear
model, against torch.optim.SGD (plain and heavy-ball) on an MLP, and at the divergence stop."""

import math

import numpy as np
import pytest
import torch

from implicitreg.dynamics.descent import gd_update
from implicitreg.dynamics.network import (build_mlp, half_mse, lanczos_rows, sharpness, train_full_batch)


def teacher(n, d, seed):
    """Points x ~ N(0, I) [n, d] and smooth targets y [n, 1] (float64 tensors)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    return torch.tensor(x), torch.tensor(np.tanh(x @ rng.standard_normal(d))[:, None])


def dense_top_eigenvalue(model, x, y) -> float:
    """λ_max of the full Hessian of half_mse, built densely with autograd and eigvalsh (float64)."""
    names, params = zip(*model.named_parameters())
    shapes = [p.shape for p in params]

    def loss(theta):
        chunks = torch.split(theta, [s.numel() for s in shapes])
        out = torch.func.functional_call(model, {n: c.view(s) for n, c, s in zip(names, chunks, shapes)}, (x,))
        return half_mse(out, y)

    flat = torch.nn.utils.parameters_to_vector(params).detach()
    return float(torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss, flat))[-1])


def linear_closed_form(x, y):
    """For the linear model f(x) = Wx + b under half_mse: Z = [X, 1], H = ZᵀZ/n (the Hessian of every output
    column), and the least-squares minimizer θ* [(d+1), k]."""
    z = np.hstack([x.numpy(), np.ones((x.shape[0], 1))])
    return z, z.T @ z / x.shape[0], np.linalg.lstsq(z, y.numpy(), rcond=None)[0]


def theta_of(model):
    """A linear Sequential's (W [k, d], b [k]) as θ = [W, b]ᵀ [(d+1), k]."""
    linear = model[0]
    return np.vstack([linear.weight.detach().numpy().T, linear.bias.detach().numpy()[None, :]])


def no_measure(step, model):
    return []


def test_build_mlp_is_seeded_default_scaled_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = build_mlp(5, [7, 3], 2, 0), build_mlp(5, [7, 3], 2, 0), build_mlp(5, [7, 3], 2, 1)
    assert torch.rand(1) == before  # building drew nothing from the global generator
    vector = torch.nn.utils.parameters_to_vector
    assert torch.equal(vector(a.parameters()), vector(b.parameters()))
    assert not torch.equal(vector(a.parameters()), vector(c.parameters()))
    linears = [m for m in a if isinstance(m, torch.nn.Linear)]
    assert [type(m).__name__ for m in a] == ["Linear", "Tanh", "Linear", "Tanh", "Linear"]
    for m in linears:  # PyTorch's default bound 1/√fan_in
        bound = 1 / math.sqrt(m.in_features)
        assert m.weight.dtype == torch.float64 and m.weight.abs().max() <= bound and m.bias.abs().max() <= bound
    assert [type(m).__name__ for m in build_mlp(4, [], 1, 0)] == ["Linear"]


@pytest.mark.parametrize("seed,n,d,hidden", [(1, 30, 4, [6, 5]), (2, 50, 6, [8]), (3, 40, 3, [5, 5, 4])])
def test_sharpness_matches_the_dense_hessian_before_and_after_training(seed, n, d, hidden):
    # Lanczos stops when the Ritz residual is below tol·|θ|, which bounds |θ − λ| by tol·|θ|: tol = 1e-3 must
    # land within 1e-3 (relative) of the dense top eigenvalue, at init and after 50 GD steps
    x, y = teacher(n, d, seed)
    model = build_mlp(d, hidden, 1, seed)
    for _ in range(2):
        eig = sharpness(model, x, y, tol=1e-3, max_hvp=100)
        assert bool(eig.converged[0])
        assert float(eig.values[0]) == pytest.approx(dense_top_eigenvalue(model, x, y), rel=1e-3)
        rows = dict(lanczos_rows(eig))
        assert rows["lanczos_converged"] == 1.0 and rows["lanczos_residual"] <= 1e-3 and rows["lanczos_hvp"] >= 1
        train_full_batch(model, x, y, gd_update(0.2), 50, measure_every=1000, measure=no_measure)


def test_gd_on_a_linear_model_follows_the_closed_form_and_measures_at_the_cadence():
    # half_mse of a linear model is a quadratic with Hessian H = ZᵀZ/n: θ_t = θ* + (I − ηH)^t (θ₀ − θ*), and the
    # loss at every recorded step is that of θ_t; the sharpness is λ_max(H) at every step
    x, y = teacher(30, 4, 0)
    model = build_mlp(4, [], 1, 0)
    z, h, theta_star = linear_closed_form(x, y)
    theta0, lr, steps = theta_of(model), 0.5, 45
    measured = []

    def measure(step, model):
        measured.append(step)
        eig = sharpness(model, x, y, tol=1e-8, max_hvp=20)
        return [("sharpness", float(eig.values[0]))]

    result = train_full_batch(model, x, y, gd_update(lr), steps, measure_every=10, measure=measure)
    assert result.step == steps and not result.diverged and measured == [0, 10, 20, 30, 40, 45]
    contraction = np.eye(5) - lr * h
    for step, name, value in result.rows:
        if name == "loss":
            theta = theta_star + np.linalg.matrix_power(contraction, step) @ (theta0 - theta_star)
            assert value == pytest.approx(0.5 * np.mean(np.sum((z @ theta - y.numpy()) ** 2, axis=1)), rel=1e-10)
        if name == "sharpness":  # Lanczos' relative residual bound 1e-8 (tol) bounds the eigenvalue's error
            assert value == pytest.approx(np.linalg.eigvalsh(h)[-1], rel=1e-8)
    np.testing.assert_allclose(theta_of(model), theta_star + np.linalg.matrix_power(contraction, steps)
                               @ (theta0 - theta_star), rtol=1e-10, atol=1e-12)
    loss_steps = [s for s, name, _ in result.rows if name == "loss"]
    assert {0, 1, 10, 20, 30, 40, 45} <= set(loss_steps) and len(loss_steps) == len(set(loss_steps))
    tail = {name: value for s, name, value in result.rows if s == steps}
    assert tail["loss_increases"] == 0.0 and tail["diverged"] == 0.0  # η < 2/λ_max: GD descends monotonically


def test_a_step_above_two_over_lambda_diverges_where_the_closed_form_exceeds_the_factor():
    x, y = teacher(30, 4, 1)
    model = build_mlp(4, [], 1, 1)
    z, h, theta_star = linear_closed_form(x, y)
    theta0 = theta_of(model)
    lr = 2.5 / np.linalg.eigvalsh(h)[-1]  # |1 − ηλ_max| = 1.5: the error along the top direction grows 1.5× a step
    contraction = np.eye(5) - lr * h

    def loss(t):
        theta = theta_star + np.linalg.matrix_power(contraction, t) @ (theta0 - theta_star)
        return 0.5 * np.mean(np.sum((z @ theta - y.numpy()) ** 2, axis=1))

    expected = next(t for t in range(1, 200) if loss(t) > 1e3 * loss(0))
    result = train_full_batch(model, x, y, gd_update(lr), 1000, measure_every=1000, measure=no_measure, diverge=1e3)
    assert result.diverged and result.step == expected
    rows = [(name, value) for s, name, value in result.rows if s == expected]
    assert ("diverged", 1.0) in rows and dict(rows)["loss"] == pytest.approx(loss(expected), rel=1e-9)
    # every step after the first grows the loss once the top direction dominates; at least the late ones do
    assert dict(rows)["loss_increases"] >= 1


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_the_loop_is_torch_optim_sgd_with_the_same_update(momentum):
    # plain GD (gd_update) and a heavy-ball closure (buf ← β·buf + g, θ ← θ − η·buf, torch's convention)
    # against torch.optim.SGD on a copy of the same MLP: equal to rounding after 30 steps
    x, y = teacher(40, 5, 0)
    ours, theirs = build_mlp(5, [7, 7], 1, 0), build_mlp(5, [7, 7], 1, 0)
    buffers = {}

    def heavy_ball(step, params, grads, aux):
        with torch.no_grad():
            for i, (p, g) in enumerate(zip(params, grads)):
                buffers[i] = g.clone() if i not in buffers else momentum * buffers[i] + g
                p -= 0.1 * buffers[i]

    update = gd_update(0.1) if momentum == 0 else heavy_ball
    result = train_full_batch(ours, x, y, update, 30, measure_every=10, measure=no_measure)
    optimizer = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=momentum)
    for _ in range(30):
        optimizer.zero_grad()
        half_mse(theirs(x), y).backward()
        optimizer.step()
    vector = torch.nn.utils.parameters_to_vector
    torch.testing.assert_close(vector(ours.parameters()), vector(theirs.parameters()), rtol=1e-12, atol=1e-12)
    assert result.step == 30 and not result.diverged
