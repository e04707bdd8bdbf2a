"""implicitreg.dynamics.two_layer against independent references: its closed-form outputs, gradients and
NTK against autograd on the same network as a torch module (dense Jacobian, eigvalsh), its GD against
torch.optim.SGD member by member, the uv model against the recursion of Lewkowycz et al. (2020, Section 2),
the NTK against the Lanczos sharpness at an interpolating point, and the bisection's bracket."""

import math

import numpy as np
import pytest
import torch

from implicitreg.dynamics.network import half_mse as module_half_mse
from implicitreg.dynamics.network import sharpness
from implicitreg.dynamics.two_layer import (TwoLayerModule, init_two_layer, loss_and_gradients, max_stable_rate,
                                            ntk, ntk_top, outputs, stable, train)


def data(m, d, seed):
    """x [m, d] ~ N(0, I) and y [m] ~ N(0, 1) (float64 tensors)."""
    rng = np.random.default_rng(seed)
    return torch.tensor(rng.standard_normal((m, d))), torch.tensor(rng.standard_normal(m))


def dense_ntk(module, x):
    """J Jᵀ/m from the dense Jacobian of the module's m outputs in all its parameters (autograd, float64)."""
    params = dict(module.named_parameters())

    def f(p):
        return torch.func.functional_call(module, p, (x,))[:, 0]

    jac = torch.func.jacrev(f)(params)
    j = torch.cat([jac[name].reshape(x.shape[0], -1) for name in params], dim=1).detach()
    return j @ j.T / x.shape[0]


def test_init_is_seeded_per_member_and_leaves_the_global_rng_alone():
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    a, b = init_two_layer([3, 1, 4], 16, 5, "relu"), init_two_layer([4, 3], 16, 5, "relu")
    assert torch.rand(1) == before
    # a member is a function of its seed alone, wherever it sits in the population
    assert torch.equal(a.u[0], b.u[1]) and torch.equal(a.v[2], b.v[0]) and not torch.equal(a.u[0], a.u[1])
    assert a.u.shape == (3, 16, 5) and a.v.shape == (3, 16) and a.u.dtype == torch.float64
    with pytest.raises(ValueError, match="activation: expected one of linear, relu, got 'tanh'"):
        init_two_layer([0], 4, 2, "tanh")


@pytest.mark.parametrize("activation", ["linear", "relu"])
def test_outputs_gradients_and_ntk_equal_autograd_on_the_same_network(activation):
    # the closed forms against autograd on TwoLayerModule (the same f): products of a few float64 terms, so
    # they agree to rounding (1e-12 relative); the NTK's top eigenvalue against eigvalsh of the dense J Jᵀ/m
    x, y = data(5, 3, 0)
    net = init_two_layer([0, 1, 2], 7, 3, activation)
    loss, grad_u, grad_v = loss_and_gradients(net, x, y)
    theta = ntk(net, x)
    for b in range(3):
        module = TwoLayerModule(net, b)
        value = module_half_mse(module(x), y[:, None])
        gu, gv = torch.autograd.grad(value, [module.u, module.v])
        torch.testing.assert_close(outputs(net, x)[b], module(x)[:, 0], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(loss[b], value.detach(), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(grad_u[b], gu, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(grad_v[b], gv, rtol=1e-12, atol=1e-14)
        dense = dense_ntk(module, x)
        torch.testing.assert_close(theta[b], dense, rtol=1e-12, atol=1e-14)
        assert float(ntk_top(net, x)[b]) == pytest.approx(float(torch.linalg.eigvalsh(dense.detach())[-1]), rel=1e-10)


@pytest.mark.parametrize("activation", ["linear", "relu"])
def test_gd_equals_torch_optim_sgd_member_by_member(activation):
    # every member its own step size: 40 steps of train() against a torch.optim.SGD loop on each member's
    # module; the loss train() records at every step is the loop's, and λ_max(Θ) where measured is the dense one
    x, y = data(6, 4, 1)
    lrs = [0.05, 0.2, 0.4]
    net = init_two_layer([7, 8, 9], 12, 4, activation)
    modules = [TwoLayerModule(net, b) for b in range(3)]
    run = train(net, x, y, lrs, 40, measure=[0, 10, 25])
    assert list(run.ntk_steps) == [0, 10, 25, 40] and not run.diverged.any() and list(run.stopped) == [40] * 3
    for b, (module, lr) in enumerate(zip(modules, lrs)):
        optimizer = torch.optim.SGD(module.parameters(), lr=lr)
        for step in range(41):
            value = module_half_mse(module(x), y[:, None])
            assert run.loss[b, step] == pytest.approx(value.item(), rel=1e-12, abs=1e-15)
            if step in (0, 10, 25, 40):
                top = float(torch.linalg.eigvalsh(dense_ntk(module, x))[-1])
                assert run.ntk[b, list(run.ntk_steps).index(step)] == pytest.approx(top, rel=1e-10)
            if step < 40:
                optimizer.zero_grad()
                value.backward()
                optimizer.step()
        torch.testing.assert_close(net.u[b], module.u.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(net.v[b], module.v.detach(), rtol=1e-12, atol=1e-12)


def test_a_diverging_member_stops_alone_and_the_others_run_as_if_alone():
    x, y = data(6, 4, 2)
    net = init_two_layer([0, 1, 2], 16, 4, "relu")
    lam0 = ntk_top(net, x)
    lr = torch.tensor([1.0, 30.0, 1.5]) / lam0  # the middle one far past any stable rate
    run = train(net.clone(), x, y, lr, 60, diverge=1e3)
    assert list(run.diverged) == [False, True, False]
    k = run.stopped[1]
    assert 0 < k < 60 and run.loss[1, k] > 1e3 * run.loss[1, 0] and np.isnan(run.loss[1, k + 1:]).all()
    assert (run.loss[1, :k] <= 1e3 * run.loss[1, 0]).all() and np.isnan(run.ntk[1, -1])
    for b in (0, 2):  # the same trajectory run on its own, to the bit: members never mix
        alone = train(net.select([b]), x, y, lr[b:b + 1], 60, diverge=1e3)
        np.testing.assert_array_equal(alone.loss[0], run.loss[b])
    assert list(stable(run)) == [True, False, True]
    assert list(stable(run, fit=0.0)) == [False, False, False]  # no loss is below 0 × the initial one


def uv_recursion(f0, lam0, eta, n, steps):
    """Lewkowycz et al. (2020), Section 2, one point x = 1, y = 0, L = f²/2:
    f_{t+1} = (1 − ηλ_t + η² f_t²/n) f_t,  λ_{t+1} = λ_t + (η f_t²/n)(ηλ_t − 4)."""
    f, lam, out = f0, lam0, []
    for _ in range(steps + 1):
        out.append((f, lam))
        f, lam = (1 - eta * lam + eta ** 2 * f ** 2 / n) * f, lam + eta * f ** 2 / n * (eta * lam - 4)
    return np.array(out)


@pytest.mark.parametrize("rate,steps", [(1.5, 60), (3.0, 40), (4.5, 10)])
def test_the_uv_model_follows_the_papers_recursion(rate, steps):
    # f = v·u x/√n on x = 1, y = 0 is our two-layer net with d = 1, m = 1, linear activation, and its NTK is
    # λ = (‖u‖² + ‖v‖²)/n. The recursion and the network are two float64 evaluations of the same map; their
    # relative difference stays at rounding times the steps taken (no cancellation in 1 − ηλ + η²f²/n at these
    # rates), far below 1e-9. Where f has shrunk, v·u/√n is a sum of n terms of size O(1/√n) that cancel: its
    # absolute rounding is ~eps·√n ≈ 5e-15, so the loss f²/2 is compared to 1e-13 absolute as well
    n = 512
    x, y = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    net = init_two_layer([3], n, 1, "linear")
    f0 = float(outputs(net, x)[0, 0])
    lam0 = float((net.u ** 2).sum() + (net.v ** 2).sum()) / n
    assert float(ntk_top(net, x)[0]) == pytest.approx(lam0, rel=1e-13)
    eta = rate / lam0
    run = train(net, x, y, [eta], steps, measure=range(steps + 1), diverge=1e300)
    closed = uv_recursion(f0, lam0, eta, n, steps)
    np.testing.assert_allclose(run.loss[0], closed[:, 0] ** 2 / 2, rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(run.ntk[0], closed[:, 1], rtol=1e-9)


def test_the_ntk_equals_the_hessian_sharpness_at_an_interpolating_point():
    # at a point that fits the data (r = 0) the Hessian of ½·mean (f − y)² is the Gauss–Newton JᵀJ/m, whose top
    # eigenvalue is Θ's: after GD fits 4 points (loss ~1e-25, so the residual term is ~1e-12), the Lanczos
    # sharpness of dynamics.network (tol 1e-9: it bounds the error) equals λ_max(Θ)
    x, y = data(4, 6, 3)
    net = init_two_layer([0], 32, 6, "relu")
    lam0 = float(ntk_top(net, x)[0])
    run = train(net, x, y, [1.0 / lam0], 3000)
    assert run.loss[0, -1] < 1e-20
    eig = sharpness(TwoLayerModule(net), x, y[:, None], tol=1e-9, max_hvp=200)
    assert bool(eig.converged[0])
    assert float(eig.values[0]) == pytest.approx(float(ntk_top(net, x)[0]), rel=1e-8)


def test_bisection_brackets_the_boundary_between_a_stable_and_an_unstable_rate():
    x, y = data(4, 8, 4)  # fewer points than dimensions: the linear network can fit them (fit=1e-2 is reachable)
    make = lambda: init_two_layer([0, 1], 64, 8, "linear")  # noqa: E731
    result = max_stable_rate(make, x, y, 300, low=1.0, high=20.0, iterations=6, fit=1e-2)
    assert result.bracketed.all() and result.runs == 8
    np.testing.assert_allclose(result.high - result.low, 19.0 / 2 ** 6)
    lam0 = result.lambda0
    # the ends, run again: low is stable (fits, no divergence), high is not
    assert stable(train(make(), x, y, torch.as_tensor(result.low / lam0), 300), 1e-2).all()
    assert not stable(train(make(), x, y, torch.as_tensor(result.high / lam0), 300), 1e-2).any()
    with pytest.raises(ValueError, match="expected 0 < low < high"):
        max_stable_rate(make, x, y, 10, low=3.0, high=2.0, iterations=1)


def test_a_failed_bracket_keeps_its_ends():
    x, y = data(8, 4, 5)
    make = lambda: init_two_layer([0], 64, 4, "linear")  # noqa: E731
    result = max_stable_rate(make, x, y, 200, low=0.5, high=1.0, iterations=3)  # both ends stable
    assert result.low_ok.all() and not result.high_ok.any() and not result.bracketed.any()
    assert result.low[0] == 0.5 and math.isinf(result.high[0])
