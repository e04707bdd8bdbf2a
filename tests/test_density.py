"""Reference tests of the Hessian spectral density by stochastic Lanczos quadrature
(measures/density.py) against the dense float64 Hessian's ``eigvalsh`` on two digits MLPs of at most
3k parameters (one at initialization, one trained): the Wasserstein-1 distance between the SLQ
spectral measure and the exact spectrum (scipy.stats.wasserstein_distance, with weights), the
top-10 outliers, the broadened density against an independent sum of Gaussians, a population
against a loop, and the density figure (report/spectra.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.stats import norm, wasserstein_distance

from implicitreg.config import MLPConfig
from implicitreg.data.digits import load_digits
from implicitreg.measures import DensityResult, hessian_density
from implicitreg.measures.curvature import hessian_operator
from implicitreg.models import build_model
from implicitreg.population import Population
from implicitreg.report.spectra import FLOOR, density_figure, save_density
from implicitreg.seeding import generator

D = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    d = load_digits(n_train=500, n_test=360, seed=0)
    return torch.as_tensor(d.x_train, dtype=D), torch.as_tensor(d.y_train)


def exact_spectrum(model, data) -> torch.Tensor:
    op = hessian_operator(model, F.cross_entropy, data)
    H = op.matmat(torch.eye(op.dim, dtype=D).unsqueeze(0))[0]
    return torch.linalg.eigvalsh((H + H.T) / 2)


@pytest.fixture(scope="module", params=["init", "trained"])
def network(request, digits):
    """A 64-16-10 MLP at initialization (1,210 parameters: a broad spectrum, both signs) or a
    64-32-10 MLP trained to loss ~4e-3 (2,410 parameters: a bulk at 0 and ~C outliers)."""
    if request.param == "init":
        model = build_model("mlp", MLPConfig(hidden=[16]), 64, 10, generator(1, "init")).double()
    else:
        model = build_model("mlp", MLPConfig(hidden=[32]), 64, 10, generator(0, "init")).double()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(300):
            opt.zero_grad()
            F.cross_entropy(model(digits[0]), digits[1]).backward()
            opt.step()
    model.eval()
    return model, exact_spectrum(model, digits)


@pytest.mark.parametrize("reorthogonalize", [True, False])
def test_the_slq_measure_is_within_1_percent_of_the_range_in_wasserstein_1(network, digits, reorthogonalize):
    # 10 probes × 100 steps; measured W1/range: 1.3e-3 (init) and 2.3e-4 (trained), either recurrence
    model, exact = network
    r = hessian_density(model, F.cross_entropy, digits, n_probes=10, n_iter=100, reorthogonalize=reorthogonalize)
    assert isinstance(r, DensityResult) and r.n_probes == 10 and r.m == 100 and r.n_hvp == 1000
    assert r.nodes.shape == r.weights.shape == (1000,)
    assert float(r.weights.sum()) == pytest.approx(1.0, abs=1e-12)
    nodes, weights = r.per_probe()
    torch.testing.assert_close(weights.sum(1), torch.ones(10, dtype=D), rtol=0, atol=1e-12)
    w1 = wasserstein_distance(r.nodes.numpy(), exact.numpy(), u_weights=r.weights.numpy())
    assert w1 <= 0.01 * float(exact[-1] - exact[0])


def test_the_outliers_are_the_top_eigenvalues(network, digits):
    # full reorthogonalization: every probe's extreme Ritz values converge to the eigenvalues
    # themselves (measured: 4e-15 relative at 100 steps)
    model, exact = network
    r = hessian_density(model, F.cross_entropy, digits, n_probes=10, n_iter=100)
    top = exact.flip(0)[:10]
    assert bool(((r.outliers(10) - top).abs() <= 1e-6 * top.abs()).all())


def test_the_density_is_the_broadened_measure(network, digits):
    model, exact = network
    r = hessian_density(model, F.cross_entropy, digits, n_probes=3, n_iter=40, grid_size=400)
    assert r.grid.shape == r.density.shape == (400,) and r.sigma.shape == ()
    nodes, weights, grid = r.nodes.numpy(), r.weights.numpy(), r.grid.numpy()
    real = weights > 0
    # σ is 1% of the nodes' range; the grid runs 4σ past the extreme nodes
    sigma = 0.01 * (nodes[real].max() - nodes[real].min())
    assert float(r.sigma) == pytest.approx(sigma, rel=1e-12)
    assert grid[0] == pytest.approx(nodes[real].min() - 4 * sigma) and grid[-1] == pytest.approx(nodes[real].max() + 4 * sigma)
    expected = (weights[None, :] * norm.pdf(grid[:, None], loc=nodes[None, :], scale=sigma)).sum(1)
    np.testing.assert_allclose(r.density.numpy(), expected, rtol=1e-10, atol=1e-12 * expected.max())
    # a probability density: the mass past 4σ beyond the extreme nodes is below 1e-4
    assert float(torch.trapezoid(r.density, r.grid)) == pytest.approx(1.0, abs=1e-4)
    fixed = hessian_density(model, F.cross_entropy, digits, n_probes=3, n_iter=40, sigma=0.05)
    assert float(fixed.sigma) == 0.05
    torch.testing.assert_close(fixed.nodes, r.nodes, rtol=0, atol=0)  # the quadrature does not depend on σ


def test_a_population_equals_a_loop():
    models = [build_model("mlp", MLPConfig(hidden=[6]), 4, 3, generator(seed, "init")) for seed in range(3)]
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(30, 4, generator=g, dtype=D), torch.randint(0, 3, (30,), generator=g)
    together = hessian_density(Population(models, dtype=D), F.cross_entropy, (x, y), n_probes=4, n_iter=20,
                               grid_size=50)
    assert together.nodes.shape == (3, 80) and together.density.shape == together.grid.shape == (3, 50)
    assert together.n_hvp.tolist() == [80, 80, 80]
    for p, model in enumerate(models):
        alone = hessian_density(model, F.cross_entropy, (x, y), n_probes=4, n_iter=20, grid_size=50)
        torch.testing.assert_close(together.nodes[p], alone.nodes, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(together.weights[p], alone.weights, rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(together.density[p], alone.density, rtol=1e-7, atol=1e-9)
    # n_iter past the dimension (51) stops there: the Krylov space is everything, the measure exact
    full = hessian_density(models[0], F.cross_entropy, (x, y), n_probes=1, n_iter=500)
    exact = exact_spectrum(models[0], (x, y))
    assert full.m == 51
    w1 = wasserstein_distance(full.nodes.numpy(), exact.numpy(), u_weights=full.weights.numpy())
    # exact support, one probe's random weights (uᵀq_j)² instead of 1/n: W1 ≤ range · their total
    # variation from uniform (measured W1/range: 0.045)
    assert w1 <= 0.2 * float(exact[-1] - exact[0])
    torch.testing.assert_close(full.outliers(5), exact.flip(0)[:5], rtol=1e-10, atol=1e-12)


def test_bad_arguments_say_what_was_expected(digits):
    model = build_model("mlp", MLPConfig(hidden=[6]), 64, 10, generator(0, "init")).double()
    for kwargs, field in (({"n_probes": 0}, "n_probes"), ({"n_iter": 0}, "n_iter"), ({"grid_size": 1}, "grid_size"),
                          ({"sigma": -1.0}, "sigma"), ({"n_probes": 2.5}, "n_probes")):
        with pytest.raises(ValueError, match=f"{field}: expected"):
            hessian_density(model, F.cross_entropy, digits, **kwargs)


# ---------------------------------------------------------------------------- the figure


def test_density_figure_draws_the_density_and_the_exact_histogram(network, digits, tmp_path):
    model, exact = network
    r = hessian_density(model, F.cross_entropy, digits, n_probes=4, n_iter=60)
    fig = density_figure(r, reference=exact)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and ax.get_xlabel() == "eigenvalue λ"
    (line,) = ax.get_lines()
    density = r.density.numpy()
    np.testing.assert_allclose(line.get_ydata(), np.maximum(density, FLOOR * density.max()))
    np.testing.assert_allclose(line.get_xdata(), r.grid.numpy())
    heights = [patch.get_height() for patch in ax.patches]
    widths = [patch.get_width() for patch in ax.patches]
    assert len(heights) == 100 and sum(h * w for h, w in zip(heights, widths)) == pytest.approx(1.0)
    path = save_density(r, tmp_path / "density.png", reference=exact)
    with Image.open(path) as image:
        assert image.size == (660, 440)  # 6 × 4 inches at 110 dpi


def test_density_figure_of_a_population_has_one_labelled_curve_per_member():
    models = [build_model("mlp", MLPConfig(hidden=[6]), 4, 3, generator(seed, "init")) for seed in range(2)]
    x, y = torch.randn(30, 4, dtype=D), torch.randint(0, 3, (30,))
    r = hessian_density(Population(models, dtype=D), F.cross_entropy, (x, y), n_probes=2, n_iter=10)
    fig = density_figure(r, labels=["seed 0", "seed 1"], log_y=False)
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["seed 0", "seed 1"] and ax.get_yscale() == "linear"
    np.testing.assert_allclose(ax.get_lines()[1].get_ydata(), r.density[1].numpy())
    with pytest.raises(ValueError, match="labels: expected 2"):
        density_figure(r, labels=["one"])
