"""label-noise: the label-noise step and the models' derivatives against torch autograd in float64, the annealed
and noiseless paths against plain GD, the step's mean over the noise against the GD step (Monte Carlo), and the
study's analysis on fabricated runs (pass, fail, inconclusive, NaN and missing runs)."""

import math

import numpy as np
import pytest
import torch

from implicitreg.dynamics.descent import descend, gd_update
from implicitreg.dynamics.label_noise import diagonal_net, label_noise_descent, relu_net


def diag_point(members=2, n=6, d=4, seed=0):
    rng = np.random.default_rng(seed)
    return (diagonal_net(d), rng.standard_normal((members, 2 * d)), rng.standard_normal((members, n, d)),
            rng.standard_normal((members, n)))


def relu_point(members=2, n=7, d=3, width=5, seed=1):
    rng = np.random.default_rng(seed)
    return (relu_net(d, width), rng.standard_normal((members, width * (d + 1))), rng.standard_normal((members, n, d)),
            rng.standard_normal((members, n)))


def torch_predict(name, theta, x, d, width=None):
    """The two models written directly in torch, an independent reference for the numpy closed forms."""
    if name == "diagonal_net":
        u, v = theta[:d], theta[d:]
        return x @ (u * u - v * v)
    w, a = theta[:width * d].view(width, d), theta[width * d:]
    return torch.relu(x @ w.T) @ a


def torch_loss(name, theta, x, y, d, width=None):
    return 0.5 * ((torch_predict(name, theta, x, d, width) - y) ** 2).mean()


CASES = [("diagonal_net", diag_point, {}), ("relu_net", relu_point, {"width": 5})]


@pytest.mark.parametrize("name,point,extra", CASES)
def test_pullback_jacobian_and_hessian_trace_match_autograd(name, point, extra):
    model, theta, x, y = point()
    d = x.shape[2]
    r = model.predict(theta, x) - y
    for m in range(len(theta)):
        t, xm, ym = (torch.tensor(a[m], dtype=torch.float64) for a in (theta, x, y))
        f = lambda th: torch_predict(name, th, xm, d, extra.get("width"))  # noqa: E731
        np.testing.assert_allclose(model.predict(theta, x)[m], f(t).numpy(), rtol=0, atol=1e-12)
        jac = torch.autograd.functional.jacobian(f, t).numpy()
        np.testing.assert_allclose(model.jacobian(theta, x)[m], jac, rtol=0, atol=1e-12)
        np.testing.assert_allclose(model.pullback(theta, x, r)[m], jac.T @ r[m], rtol=0, atol=1e-12)
        # the dense Hessian of the clean loss, at a point that does not interpolate (r ≠ 0): the residual part
        # has zero trace (module docstring), so the closed form must hold here too
        hess = torch.autograd.functional.hessian(lambda th: torch_loss(name, th, xm, ym, d, extra.get("width")), t)
        assert model.hessian_trace(theta, x)[m] == pytest.approx(float(torch.trace(hess)), rel=1e-10, abs=1e-10)
        assert float(torch.trace(hess)) == pytest.approx(float((jac ** 2).sum()) / x.shape[1], rel=1e-10)


def test_hessian_trace_at_an_interpolating_point_is_the_gauss_newton_trace():
    """At a point with f = y the Hessian is JᵀJ/n exactly; the trace matches the dense one to 1e-10."""
    model, theta, x, _ = diag_point(members=1, n=5, d=8, seed=3)
    y = model.predict(theta, x)  # interpolating by construction
    t, xm, ym = (torch.tensor(a[0], dtype=torch.float64) for a in (theta, x, y))
    hess = torch.autograd.functional.hessian(lambda th: torch_loss("diagonal_net", th, xm, ym, 8), t).numpy()
    jac = model.jacobian(theta, x)[0]
    np.testing.assert_allclose(hess, jac.T @ jac / 5, rtol=0, atol=1e-12)
    assert model.hessian_trace(theta, x)[0] == pytest.approx(np.trace(hess), rel=1e-10)


@pytest.mark.parametrize("name,point,extra", CASES)
def test_no_noise_is_plain_gradient_descent(name, point, extra):
    model, theta, x, y = point()
    theta = 0.5 * theta
    d = x.shape[2]
    steps, lr = 200, 0.05
    zero = label_noise_descent(model, theta, x, y, lr, 0.0, steps, seed=1)
    annealed_at_start = label_noise_descent(model, theta, x, y, lr, 3.0, steps, noise_steps=0, seed=2)
    assert np.array_equal(zero.theta, annealed_at_start.theta)  # bitwise: r − 0·ε = r
    for m in range(len(theta)):  # an independent path: descend + gd_update on torch autograd's gradient
        xm, ym = torch.tensor(x[m]), torch.tensor(y[m])

        def loss_and_grad(params):
            th = params[0].detach().requires_grad_(True)
            value = torch_loss(name, th, xm, ym, d, extra.get("width"))
            return value.item(), list(torch.autograd.grad(value, th))

        ref = descend(loss_and_grad, [torch.tensor(theta[m]).clone()], steps, gd_update(lr)).params[0].numpy()
        np.testing.assert_allclose(zero.theta[m], ref, rtol=0, atol=1e-13 * max(1.0, np.abs(ref).max()))


@pytest.mark.parametrize("batch", [None, 2])
def test_mean_step_over_the_noise_is_the_gd_step(batch):
    """K members at the same point, one step each with its own noise (and minibatch): the mean update equals
    the full-batch GD update within 5 standard errors per coordinate (K = 40000; the noise term is linear in
    ε, so the mean is exact and the only error is Monte Carlo)."""
    model, theta, x, y = diag_point(members=1, n=5, d=3, seed=4)
    count, lr, delta = 40_000, 0.1, 0.7
    thetas, xs, ys = (np.repeat(a, count, axis=0) for a in (theta, x, y))
    run = label_noise_descent(model, thetas, xs, ys, lr, delta, 1, batch=batch, seed=5)
    steps = run.theta - thetas
    gd = -lr * model.pullback(theta, x, model.predict(theta, x) - y)[0] / x.shape[1]
    error = np.abs(steps.mean(axis=0) - gd)
    standard = steps.std(axis=0, ddof=1) / math.sqrt(count)
    assert np.all(error <= 5 * standard), (error, standard)
    assert np.all(standard > 0)  # the noise did act


def test_label_noise_shrinks_the_diagonal_net_toward_the_sparse_solution():
    """The mechanism (HaoChen et al. 2021): from u = v = 1, GD keeps the dense min-ℓ2-like interpolant while
    label noise lowers Σ(u² + v²) ∝ tr ∇²L and the error to β*; a short run on a small problem."""
    rng = np.random.default_rng(0)
    n, d = 10, 20
    x = rng.standard_normal((n, d))
    beta = np.zeros(d)
    beta[[3, 11]] = [1.0, -1.0]
    model = diagonal_net(d)
    xs, ys = np.stack([x, x]), np.stack([x @ beta, x @ beta])
    run = label_noise_descent(model, np.ones((2, 2 * d)), xs, ys, 0.02, np.array([1.0, 0.0]), 60_000,
                              noise_steps=50_000, seed=0)
    final = run.theta[:, :d] ** 2 - run.theta[:, d:] ** 2
    assert run.loss[-1].max() < 1e-5  # the annealed phase ends near the interpolating manifold
    assert run.trace[-1, 0] < 0.5 * run.trace[-1, 1]
    assert np.linalg.norm(final[0] - beta) < 0.5 * np.linalg.norm(final[1] - beta)


def test_bad_inputs_name_the_field():
    model, theta, x, y = diag_point()
    with pytest.raises(ValueError, match="theta0"):
        label_noise_descent(model, theta[:, :3], x, y, 0.1, 0.0, 1)
    with pytest.raises(ValueError, match="batch"):
        label_noise_descent(model, theta, x, y, 0.1, 0.0, 1, batch=7)
    with pytest.raises(ValueError, match="noise"):
        label_noise_descent(model, theta, x, y, 0.1, -1.0, 1)
