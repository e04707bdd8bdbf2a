"""Flatness measures against closed forms and brute force: PAC-Bayes σ (Gaussian weight noise on
a linear classifier has an exact expected accuracy), the bound terms by hand, ε-sharpness by
enumerating the vertices of the box."""

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import brentq
from scipy.stats import norm
from torch import nn

from implicitreg.config import MLPConfig
from implicitreg.measures.core import REGISTRY
from implicitreg.measures.flatness import (
    FlatnessResult,
    pac_bayes_bound_terms,
    pac_bayes_flatness,
    pac_bayes_init,
    pac_bayes_mag_init,
    pac_bayes_sigma,
    pac_bayes_sigma_result,
)
from implicitreg.measures.sharpness import epsilon_sharpness
from implicitreg.models import build_model
from implicitreg.population import Population
from implicitreg.seeding import generator

D = torch.float64


def linear_problem(n=60, seed=0, scale=1.0):
    """A binary linear classifier sign(w·x + b) (one output) and the labels it fits exactly."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=D)
    w, b = torch.tensor([1.0, -2.0], dtype=D), 0.3
    y = (x @ w + b > 0).long()
    model = nn.Linear(2, 1).double()
    with torch.no_grad():
        model.weight.copy_(scale * w[None])
        model.bias.fill_(scale * b)
    return model, x, y


def closed_form(model, x, y):
    """E acc(σ) = mean_i Φ(margin_i / (σ ‖(x_i, 1)‖)) for noise N(0, σ²I) on (w, b); its per-draw variance."""
    w = torch.cat([model.weight.detach().flatten(), model.bias.detach()]).numpy()
    xt = np.hstack([x.numpy(), np.ones((len(x), 1))])
    sign = 2 * y.numpy() - 1
    margin, radius = sign * (xt @ w), np.linalg.norm(xt, axis=1)

    def acc(sigma):
        return norm.cdf(margin / (sigma * radius)).mean()

    def draw_sd(sigma, draws=20000):  # sd of one draw's accuracy (points share the noise), by simulation
        u = np.random.default_rng(123).standard_normal((draws, 3)) * sigma
        return ((sign * ((w + u) @ xt.T)) > 0).mean(1).std()

    return acc, draw_sd


def test_sigma_matches_closed_form_root():
    model, x, y = linear_problem()
    n, tol, target = 2000, 1e-3, 0.1
    result = pac_bayes_sigma_result(model, (x, y), target_drop=target, n_samples=n, tol=tol, max_iter=60)
    assert isinstance(result, FlatnessResult) and bool(result.converged)
    acc, draw_sd = closed_form(model, x, y)
    assert float(result.base_accuracy) == 1.0
    root = brentq(lambda s: 1.0 - acc(s) - target, 1e-4, 1e3, xtol=1e-12)
    # Monte-Carlo error of the mean accuracy over n draws, turned into a σ error by the slope of
    # the exact curve; plus the final bracket width (σ is its lower end).
    slope = abs(acc(root * 1.001) - acc(root * 0.999)) / (0.002 * root)
    allowed = 4 * draw_sd(root) / math.sqrt(n) / slope + 2 * tol * root
    assert abs(float(result.sigma) - root) <= allowed, (float(result.sigma), root, allowed)
    assert allowed < 0.1 * root  # the check is meaningful: the tolerance is tight
    assert float(result.accuracy_drop) <= target
    assert float(result.upper) / float(result.sigma) - 1 <= tol


def test_sigma_scalar_api_and_registry():
    model, x, y = linear_problem()
    sigma = pac_bayes_sigma(model, (x, y), n_samples=32)
    assert sigma.shape == () and sigma.dtype == D and float(sigma) > 0
    for name in ["pac_bayes_sigma", "pac_bayes_flatness", "pac_bayes_init", "pac_bayes_orig",
                 "pac_bayes_mag_flatness", "pac_bayes_mag_init", "pac_bayes_mag_orig", "epsilon_sharpness"]:
        assert name in REGISTRY
    assert REGISTRY["pac_bayes_sigma"].lower_is_simpler is False
    assert REGISTRY["pac_bayes_init"].needs == ("params", "init", "data")
    assert REGISTRY["epsilon_sharpness"].needs == ("params", "loss", "data")
    flat = pac_bayes_flatness(model, (x, y), n_samples=32)
    torch.testing.assert_close(flat, 1 / sigma**2)


def test_larger_margin_gives_larger_sigma():
    # scaling (w, b) by 3 scales every margin by 3: the exact σ scales by 3 as well
    small, x, y = linear_problem(scale=1.0)
    large, _, _ = linear_problem(scale=3.0)
    s_small = float(pac_bayes_sigma(small, (x, y), n_samples=64))
    s_large = float(pac_bayes_sigma(large, (x, y), n_samples=64))
    assert s_large > s_small
    assert 2.7 < s_large / s_small < 3.3


def test_deterministic_given_seed():
    model, x, y = linear_problem()
    a = pac_bayes_sigma_result(model, (x, y), n_samples=16, seed=5)
    b = pac_bayes_sigma_result(model, (x, y), n_samples=16, seed=5)
    c = pac_bayes_sigma_result(model, (x, y), n_samples=16, seed=6)
    assert torch.equal(a.sigma, b.sigma) and torch.equal(a.n_iter, b.n_iter)
    assert not torch.equal(a.sigma, c.sigma)


def mlp_population(p=3):
    mods = [build_model("mlp", MLPConfig(hidden=[8]), 5, 3, generator(seed, "init")) for seed in range(p)]
    x = torch.randn(40, 5, generator=torch.Generator().manual_seed(1), dtype=D)
    # each member's own predictions as its labels: base accuracy 1, per-member labels [P, N]
    y = torch.stack([m(x).argmax(-1) for m in mods]).detach()
    return Population(mods, dtype=D), mods, x, y


@pytest.mark.parametrize("magnitude_aware", [False, True])
def test_population_equals_loop_over_members(magnitude_aware):
    pop, mods, x, y = mlp_population()
    res = pac_bayes_sigma_result(pop, (x, y), n_samples=16, magnitude_aware=magnitude_aware)
    assert res.sigma.shape == (3,) and bool(res.converged.all())
    for i in range(3):
        one = pac_bayes_sigma_result(pop.member(i), (x, y[i]), n_samples=16, magnitude_aware=magnitude_aware)
        torch.testing.assert_close(res.sigma[i], one.sigma)
        assert int(res.n_iter[i]) == int(one.n_iter)
    sharp = epsilon_sharpness(pop, F.cross_entropy, (x, y), epsilon=0.05, steps=5)
    loop = torch.stack([epsilon_sharpness(m, F.cross_entropy, (x, y[i]), epsilon=0.05, steps=5)
                        for i, m in enumerate(mods)])
    torch.testing.assert_close(sharp, loop)
    assert bool((sharp >= 0).all())


def test_non_convergence_is_reported():
    model, x, y = linear_problem()
    result = pac_bayes_sigma_result(model, (x, y), n_samples=8, max_iter=2)
    assert not bool(result.converged) and int(result.n_iter) == 2
    with pytest.warns(RuntimeWarning, match="did not converge"):
        pac_bayes_sigma(model, (x, y), n_samples=8, max_iter=2)


def test_bad_arguments_raise():
    model, x, y = linear_problem()
    with pytest.raises(ValueError, match="target_drop"):
        pac_bayes_sigma(model, (x, y), target_drop=0.0)
    with pytest.raises(ValueError, match="labels"):
        pac_bayes_sigma(model, (x, y[:-1]))
    with pytest.raises(TypeError, match="data"):
        pac_bayes_sigma(model, x)
    with pytest.raises(ValueError, match="sigma"):
        pac_bayes_bound_terms(model, None, (x, y), 0.0)


def test_bound_terms_by_hand():
    model, x, y = linear_problem()
    init = nn.Linear(2, 1).double()
    with torch.no_grad():
        init.weight.copy_(torch.tensor([[0.2, 0.5]]))
        init.bias.fill_(-0.1)
    w = [1.0, -2.0, 0.3]
    w0 = [0.2, 0.5, -0.1]
    m, sigma, eps = len(x), 0.4, 1e-3
    dist2 = sum((a - b) ** 2 for a, b in zip(w, w0))
    norm2 = sum(a**2 for a in w)
    terms = pac_bayes_bound_terms(model, init, (x, y), sigma)
    assert float(terms["pacbayes.init"]) == pytest.approx(dist2 / (4 * sigma**2) + math.log(m / sigma) + 10)
    assert float(terms["pacbayes.orig"]) == pytest.approx(norm2 / (4 * sigma**2) + math.log(m / sigma) + 10)
    assert float(terms["pacbayes.flatness"]) == pytest.approx(1 / sigma**2)
    mag = pac_bayes_bound_terms(model, init, (x, y), sigma, magnitude_aware=True)
    for key, ref in [("pacbayes.mag.init", dist2), ("pacbayes.mag.orig", norm2)]:
        hand = 0.25 * sum(math.log((eps**2 + (sigma**2 + 1) * ref / 3) / (eps**2 + sigma**2 * (a - b) ** 2))
                          for a, b in zip(w, w0)) + math.log(m / sigma) + 10
        assert float(mag[key]) == pytest.approx(hand)
    assert "pacbayes.init" not in pac_bayes_bound_terms(model, None, (x, y), sigma)


def test_bound_terms_population_and_registered_init():
    pop, _, x, y = mlp_population()
    sig = torch.tensor([0.1, 0.2, 0.3], dtype=D)
    init_pop = Population([build_model("mlp", MLPConfig(hidden=[8]), 5, 3, generator(10 + i, "init"))
                           for i in range(3)], dtype=D)
    terms = pac_bayes_bound_terms(pop, init_pop, (x, y), sig)
    for i in range(3):
        one = pac_bayes_bound_terms(pop.member(i), init_pop.member(i), (x, y[i]), sig[i])
        for k, v in one.items():
            torch.testing.assert_close(terms[k][i], v)
    value = pac_bayes_init(pop, init_pop, (x, y), n_samples=8)
    assert value.shape == (3,) and bool(torch.isfinite(value).all())
    mag = pac_bayes_mag_init(pop.member(0), init_pop.member(0), (x, y[0]), n_samples=8)
    assert mag.shape == () and math.isfinite(float(mag))


def vertex_sharpness(model, loss_fn, x, y, epsilon):
    """Sharpness at every vertex of the box (the max of a convex loss over a box is at one of them)."""
    params = dict(model.named_parameters())
    theta = torch.cat([p.detach().flatten() for p in params.values()])
    radius = epsilon * (theta.abs() + 1)
    base = loss_fn(model(x), y).item()
    values_at = []
    for signs in itertools.product([-1.0, 1.0], repeat=theta.numel()):
        vec = theta + torch.tensor(signs, dtype=D) * radius
        values, start = {}, 0
        for k, p in params.items():
            values[k] = vec[start : start + p.numel()].view_as(p)
            start += p.numel()
        out = torch.func.functional_call(model, values, (x,))
        values_at.append(100 * (loss_fn(out, y).item() - base) / (1 + base))
    return np.array(values_at)


@pytest.mark.parametrize("epsilon", [1e-3, 0.05, 0.3])
def test_sharpness_cross_entropy_linear_vs_vertices(epsilon):
    # cross-entropy of a linear model is convex in its 6 parameters
    g = torch.Generator().manual_seed(3)
    x = torch.randn(30, 2, generator=g, dtype=D)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    model = nn.Linear(2, 2).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-1.0, -0.3], [1.2, 0.4]]))
        model.bias.copy_(torch.tensor([0.1, -0.1]))
    value = float(epsilon_sharpness(model, F.cross_entropy, (x, y), epsilon=epsilon, steps=30))
    assert value == pytest.approx(vertex_sharpness(model, F.cross_entropy, x, y, epsilon).max(), rel=1e-9)
    assert value > 0


def test_sharpness_at_exact_minimum_vs_vertices():
    # least squares fitted exactly: L(θ) = 0 and ∇L(θ) = 0, the loss around θ a convex quadratic
    g = torch.Generator().manual_seed(4)
    x = torch.randn(20, 2, generator=g, dtype=D)
    y = x @ torch.tensor([0.7, -1.5], dtype=D) + 0.2
    model = nn.Linear(2, 1).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.7, -1.5]]))
        model.bias.fill_(0.2)
    mse = lambda out, t: F.mse_loss(out.squeeze(-1), t)
    vertices = vertex_sharpness(model, mse, x, y, 0.1)
    # one start ends at a vertex that is a local maximum, not necessarily the global one
    one = float(epsilon_sharpness(model, mse, (x, y), epsilon=0.1, steps=30))
    assert np.isclose(vertices, one, rtol=1e-9).any() and one <= vertices.max() * (1 + 1e-9)
    # restarts find the global one
    value = float(epsilon_sharpness(model, mse, (x, y), epsilon=0.1, steps=30, restarts=8))
    assert value == pytest.approx(vertices.max(), rel=1e-9)
    assert value > 0
    # with no steps only the random start is seen: a lower bound, still ≥ 0
    start_only = float(epsilon_sharpness(model, mse, (x, y), epsilon=0.1, steps=0))
    assert 0 <= start_only <= one


def test_model_at_chance_has_unbounded_sigma():
    """Labels no better than chance: no perturbation drops accuracy by 0.1, so σ = inf, exactly."""
    import math as _math

    from implicitreg.measures.flatness import pac_bayes_sigma_result

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 10).double()
    x = torch.randn(200, 3, dtype=torch.float64)
    y = torch.randint(0, 10, (200,))
    result = pac_bayes_sigma_result(model, (x, y), n_samples=8)
    assert float(result.base_accuracy) < 0.2
    assert _math.isinf(float(result.sigma)) and bool(result.converged)


def test_sigma_search_is_shared_until_the_weights_change(monkeypatch):
    """The PAC-Bayes measures computed one after another reuse one σ search; an in-place change of
    the weights (as an optimizer step makes) starts a new one, which finds a different σ."""
    import implicitreg.measures.flatness as flatness

    model, x, y = linear_problem()
    calls = []
    original = flatness._search
    monkeypatch.setattr(flatness, "_search", lambda *a: calls.append(1) or original(*a))
    monkeypatch.setattr(flatness, "_LAST_SEARCH", {})
    first = pac_bayes_sigma(model, (x, y))
    assert pac_bayes_flatness(model, (x, y)) == pytest.approx(1 / first**2)
    pac_bayes_init(model, model, (x, y))
    assert len(calls) == 1
    pac_bayes_sigma(model, (x, y), n_samples=32)  # other arguments: a new search
    assert len(calls) == 2
    with torch.no_grad():
        model.weight.mul_(3.0)  # larger margins: more noise is tolerated
    assert pac_bayes_sigma(model, (x, y)) > first
    assert len(calls) == 3
