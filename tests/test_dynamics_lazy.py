"""implicitreg.dynamics.lazy against independent references: the α-scaled GD loop against torch.optim.SGD on
the wrapped module, the linearized model against f₀ + J(θ − θ₀) with a dense autograd Jacobian, both against
the closed form of GD on a linear model (kernel_gd, itself against an explicit step-by-step recursion), and
the NTKs of both modules against α² K_h."""

import math

import numpy as np
import pytest
import torch

from implicitreg.dynamics.lazy import Linearized, Scaled, kernel_gd, relative_difference, train_scaled
from implicitreg.dynamics.network import build_mlp, half_mse
from implicitreg.measures.ntk import empirical_ntk


def data(n, d, c, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    return x, torch.randn(n, c, generator=gen, dtype=torch.float64)


def no_measure(step, model):
    return []


def dense_jacobian(net, x):
    """∂h(θ, x)/∂θ [N·C, p] by torch.autograd.functional.jacobian over the flat θ (float64)."""
    names, params = zip(*net.named_parameters())
    shapes = [p.shape for p in params]
    flat = torch.nn.utils.parameters_to_vector(params).detach()

    def h(theta):
        chunks = torch.split(theta, [math.prod(s) for s in shapes])
        return torch.func.functional_call(net, {n: c.view(s) for n, c, s in zip(names, chunks, shapes)},
                                          (x,)).reshape(-1)

    return torch.autograd.functional.jacobian(h, flat), flat


def vector(module):
    return torch.nn.utils.parameters_to_vector(module.parameters()).detach()


@pytest.mark.parametrize("alpha", [0.3, 1.0, 20.0])
def test_scaled_gd_is_torch_optim_sgd_on_the_wrapped_module(alpha):
    # the same update θ ← θ − (η₀/α²)∇L through the library loop and through torch.optim.SGD: only the
    # summation order of identical float64 operations can differ, so 1e-12 after 25 steps
    x, y = data(12, 5, 3, 0)
    ours, theirs = Scaled(build_mlp(5, [8, 6], 3, 1), alpha), Scaled(build_mlp(5, [8, 6], 3, 1), alpha)
    eta0 = 0.2
    train_scaled(ours, x, y, eta0, 25, measure_every=25, measure=no_measure)
    optimizer = torch.optim.SGD(theirs.parameters(), lr=eta0 / alpha ** 2)
    for _ in range(25):
        optimizer.zero_grad()
        half_mse(theirs(x), y).backward()
        optimizer.step()
    assert torch.allclose(vector(ours), vector(theirs), rtol=0, atol=1e-12)
    assert not torch.equal(vector(ours), vector(Scaled(build_mlp(5, [8, 6], 3, 1), alpha)))  # it moved


def test_scaled_model_is_centred_and_alpha_times_the_difference():
    x, _ = data(7, 4, 2, 1)
    net = build_mlp(4, [5], 2, 3)
    start = net(x).detach()
    model = Scaled(net, 3.0)
    assert torch.equal(model(x), torch.zeros(7, 2, dtype=torch.float64))  # f_α(θ₀) = 0 exactly
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1)
    assert torch.allclose(model(x), 3.0 * (net(x) - start), rtol=0, atol=1e-14)


@pytest.mark.parametrize("alpha", [0.5, 7.0])
def test_linearized_predictions_equal_f0_plus_dense_jacobian_times_displacement(alpha):
    # jvp against the materialized Jacobian: the same sums in another order, 1e-10 absolute on O(1) outputs
    x, _ = data(9, 6, 4, 2)
    net = build_mlp(6, [10, 7], 4, 5)
    jac, theta0 = dense_jacobian(net, x)
    model = Linearized(net, alpha)
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    expected = (alpha * jac @ (vector(model) - theta0)).reshape(9, 4)  # f₀ = 0: the model is centred
    assert torch.allclose(model(x), expected, rtol=0, atol=1e-10)
    assert expected.abs().max() > 0.1  # a real displacement, not a trivially zero one
    # the network itself was copied, not moved
    assert torch.equal(vector(net), theta0)


def test_the_ntk_of_both_modules_is_alpha_squared_the_ntk_of_h():
    x, _ = data(5, 3, 2, 4)
    net = build_mlp(3, [6], 2, 0)
    k_h = empirical_ntk(net.eval(), x)
    for alpha in (0.2, 4.0):
        assert torch.allclose(empirical_ntk(Scaled(net, alpha).eval(), x), alpha ** 2 * k_h, rtol=1e-12, atol=1e-12)
        linear = Linearized(net, alpha).eval()
        with torch.no_grad():
            for p in linear.parameters():
                p.add_(0.5)  # the linearized model's kernel does not move
        assert torch.allclose(empirical_ntk(linear, x), alpha ** 2 * k_h, rtol=1e-12, atol=1e-12)


def explicit_kernel_gd(k_train, k_cross, y, lr, steps):
    """The recursion u ← u − (lr/n)·K(u − y), step by step, on the training and the other points."""
    n, c = y.shape
    u, v = torch.zeros(n * c, dtype=torch.float64), torch.zeros(k_cross.shape[0], dtype=torch.float64)
    for _ in range(steps):
        r = u - y.reshape(-1)
        u, v = u - lr / n * k_train @ r, v - lr / n * k_cross @ r
    return v.reshape(-1, c), u.reshape(n, c)


def test_kernel_gd_closed_form_equals_the_recursion_and_tends_to_kernel_regression():
    x, y = data(6, 3, 2, 7)
    jac, _ = dense_jacobian(build_mlp(3, [5], 2, 1), torch.cat([x, x[:2] + 0.1]))
    k = jac @ jac.T
    k_train, k_cross = k[:12, :12], k[12:, :12]
    lr = 0.5 * 6 / float(torch.linalg.eigvalsh(k_train)[-1])
    for steps in (1, 7, 200):
        ours, theirs = kernel_gd(k_train, k_cross, y, lr, steps), explicit_kernel_gd(k_train, k_cross, y, lr, steps)
        for a, b in zip(ours, theirs):
            assert torch.allclose(a, b, rtol=0, atol=1e-10)
    # converged (K invertible here: 12 rows, 26 parameters): kernel regression K(x, X) K⁻¹ y
    far = kernel_gd(k_train, k_cross, y, lr, 10 ** 7)
    solve = torch.linalg.solve(k_train, y.reshape(-1))
    assert torch.allclose(far[0].reshape(-1), k_cross @ solve, rtol=0, atol=1e-6)
    assert torch.allclose(far[1], y, rtol=0, atol=1e-6)


def test_kernel_gd_refuses_mismatched_shapes():
    y = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="k_train"):
        kernel_gd(torch.eye(5, dtype=torch.float64), torch.zeros(2, 6, dtype=torch.float64), y, 0.1, 3)


@pytest.mark.parametrize("alpha", [0.1, 1.0, 30.0])
def test_for_h_linear_in_theta_network_linearization_and_closed_form_agree_for_every_alpha(alpha):
    # h(θ, x) = W x + b is linear in θ: f_α = f_lin exactly, and GD with step η₀/α² gives, in function space,
    # the α-free closed form of kernel GD with K_h and step η₀ (the α² of the kernel cancels the 1/α² of the step)
    x, y = data(10, 4, 3, 11)
    x_test, _ = data(5, 4, 3, 12)
    net = build_mlp(4, [], 3, 2)
    jac, _ = dense_jacobian(net, torch.cat([x, x_test]))
    k = jac @ jac.T
    eta0 = 0.5 * 10 / float(torch.linalg.eigvalsh(k[:30, :30])[-1])
    steps = 60
    expected_test, expected_train = kernel_gd(k[:30, :30], k[30:, :30], y, eta0, steps)
    scaled, linear = Scaled(net, alpha), Linearized(net, alpha)
    for model in (scaled, linear):
        train_scaled(model, x, y, eta0, steps, measure_every=steps, measure=no_measure)
        with torch.no_grad():
            # a float64 sum of 60 steps of O(1) terms; 1/α² on the step and α on the output cancel only to rounding
            assert torch.allclose(model(x_test), expected_test, rtol=0, atol=1e-10)
            assert torch.allclose(model(x), expected_train, rtol=0, atol=1e-10)
    assert torch.allclose(vector(scaled), vector(linear), rtol=0, atol=1e-10)


def test_linearized_trajectory_is_alpha_free_in_function_space():
    # for a nonlinear h too: the linearized outputs after T steps of step η₀/α² do not depend on α
    x, y = data(8, 3, 2, 13)
    outputs = []
    for alpha in (0.5, 50.0):
        model = Linearized(build_mlp(3, [6], 2, 4), alpha)
        train_scaled(model, x, y, 0.3, 40, measure_every=40, measure=no_measure)
        outputs.append(model(x).detach())
    assert torch.allclose(outputs[0], outputs[1], rtol=0, atol=1e-10)
    assert outputs[0].abs().max() > 0.1


def test_relative_difference_and_input_errors():
    a, b = torch.tensor([3.0, 4.0], dtype=torch.float64), torch.tensor([0.0, 4.0], dtype=torch.float64)
    assert relative_difference(a, b) == pytest.approx(3.0 / 4.0, rel=1e-15)
    assert np.isnan(relative_difference(a, torch.zeros(2, dtype=torch.float64)))
    with pytest.raises(ValueError, match="alpha"):
        Scaled(build_mlp(2, [], 1, 0), 0.0)
    with pytest.raises(ValueError, match="eta0"):
        train_scaled(Scaled(build_mlp(2, [], 1, 0), 1.0), *data(3, 2, 1, 0), -1.0, 3, measure_every=1,
                     measure=no_measure)
