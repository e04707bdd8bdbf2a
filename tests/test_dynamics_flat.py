"""dynamics.flat: GD and the all-orders SGD epoch against closed forms on quadratics (numpy matrices,
no autograd), the flat models against torch.nn modules with the same weights, and the batch partition."""

import itertools

import numpy as np
import pytest
import torch

from implicitreg.dynamics import flat


def quadratic(a: np.ndarray, b: np.ndarray):
    """L(θ) = ½θᵀAθ − bᵀθ as a torch loss; ∇L = Aθ − b."""
    at, bt = torch.tensor(a), torch.tensor(b)
    return lambda theta: 0.5 * theta @ at @ theta - bt @ theta


def spd(rng, p: int) -> np.ndarray:
    m = rng.standard_normal((p, p))
    return m @ m.T / p + 0.1 * np.eye(p)


@pytest.mark.parametrize("seed,p", [(0, 2), (1, 6)])
def test_gd_follows_the_closed_form_on_a_quadratic(seed, p):
    # θ_k = θ* + (I − hA)^k (θ0 − θ*), θ* = A⁻¹b; 30 steps of O(1) arithmetic in float64: 1e-12 is
    # a few hundred ulps, far below any error of the update rule (one wrong step is O(h))
    rng = np.random.default_rng(seed)
    a, b, theta0, h = spd(rng, p), rng.standard_normal(p), rng.standard_normal(p), 0.1
    star = np.linalg.solve(a, b)
    final, seen = flat.gd(quadratic(a, b), theta0, h, 30, {0, 7, 30})
    assert sorted(seen) == [0, 7, 30]
    for k, theta in seen.items():
        np.testing.assert_allclose(theta, star + np.linalg.matrix_power(np.eye(p) - h * a, k) @ (theta0 - star),
                                   rtol=0, atol=1e-12)
    np.testing.assert_array_equal(final, seen[30])
    assert flat.gd(quadratic(a, b), theta0, h, 3)[1] == {}  # nothing asked, nothing kept


@pytest.mark.parametrize("m", [2, 3])
def test_sgd_epoch_mean_is_the_mean_over_every_order_of_affine_steps(m):
    # on L_k = ½θᵀA_kθ − b_kᵀθ a step is θ ← (I − hA_k)θ + h·b_k: the end point of each order is a
    # product of affine maps, computed here with numpy matrices
    rng = np.random.default_rng(m)
    p, h = 4, 0.05
    batches = [(spd(rng, p), rng.standard_normal(p)) for _ in range(m)]
    theta0 = rng.standard_normal(p)
    ends = []
    for order in itertools.permutations(range(m)):
        theta = theta0.copy()
        for k in order:
            a, b = batches[k]
            theta = theta - h * (a @ theta - b)
        ends.append(theta)
    ends = np.array(ends)
    mean, spread, orders = flat.sgd_epoch_mean([quadratic(a, b) for a, b in batches], theta0, h)
    assert orders == len(ends) == [2, 6][m - 2]
    np.testing.assert_allclose(mean, ends.mean(0), rtol=0, atol=1e-13)
    assert spread == pytest.approx(np.linalg.norm(ends - ends.mean(0), axis=1).mean(), rel=1e-10)
    assert spread > 0  # the batches do not commute, so orders differ


def test_flat_models_match_torch_modules_and_the_squared_loss():
    rng = np.random.default_rng(0)
    d, width, n = 3, 5, 7
    x = torch.tensor(rng.standard_normal((n, d)))
    y = torch.tensor(rng.standard_normal(n))
    model = flat.mlp_model(d, width, seed=4)
    assert model.theta0.shape == (d * width + 2 * width + 1,) and model.theta0.dtype == np.float64
    theta = torch.tensor(rng.standard_normal(model.theta0.size))  # biases nonzero too
    w, b, v, c = theta.split([d * width, width, width, 1])
    net = torch.nn.Sequential(torch.nn.Linear(d, width, dtype=torch.float64), torch.nn.Tanh(),
                              torch.nn.Linear(width, 1, dtype=torch.float64))
    with torch.no_grad():
        net[0].weight.copy_(w.view(d, width).T), net[0].bias.copy_(b)
        net[2].weight.copy_(v.view(1, width)), net[2].bias.copy_(c)
        torch.testing.assert_close(model.predict(theta, x), net(x)[:, 0], rtol=1e-14, atol=1e-14)
        expected = 0.5 * torch.nn.functional.mse_loss(net(x)[:, 0], y)
        torch.testing.assert_close(flat.squared_loss(model, x, y)(theta), expected, rtol=1e-14, atol=1e-14)
    # W ~ N(0, 1/d), b = 0, v ~ N(0, 1/width), c = 0 at init
    start = model.theta0
    assert not np.any(start[d * width: d * width + width]) and start[-1] == 0.0
    np.testing.assert_array_equal(start, flat.mlp_model(d, width, seed=4).theta0)  # seeded
    two = flat.two_param_model(2, [1.5, -0.3])
    torch.testing.assert_close(two.predict(torch.tensor(two.theta0), x), 1.5 * -0.3 * x[:, 2])


def test_partition_splits_every_point_into_equal_disjoint_batches():
    batches = flat.partition(12, 4, seed=3)
    assert [len(b) for b in batches] == [3] * 4
    assert sorted(np.concatenate(batches).tolist()) == list(range(12))
    assert all(np.all(np.diff(b) > 0) for b in batches)
    assert all(np.array_equal(u, v) for u, v in zip(batches, flat.partition(12, 4, seed=3)))
