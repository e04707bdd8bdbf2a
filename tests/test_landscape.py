"""Reference tests of the loss landscapes (implicitreg.landscape) and their figures (report/landscapes.py).

References: the analytic surface of a quadratic loss (the coefficients of a polynomial in α and β,
computed in numpy), the invariance filter normalization exists for (Li et al. 2018: a ReLU network
rescaled by per-layer factors has the same slice), scikit-learn's PCA, a loop over points each loaded
into a plain module, and the closed form of a quadratic's barrier along a line. Everything in float64,
where the population pass and the loop differ by rounding alone (≈ 1e-16 relative), so the 1e-10 and
1e-12 tolerances leave four or more orders of margin; 1e-8 for PCA is scikit-learn's SVD against ours
on a 12 × 203 matrix (measured 4e-16).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.decomposition import PCA
from torch import nn

from implicitreg import landscape
from implicitreg.landscape import evaluate_points, interpolate, slice_1d, slice_2d, trajectory_pca
from implicitreg.report.landscapes import interpolation_figure, save_surface, slice_figure, surface_figure

README = Path(__file__).resolve().parents[1] / "README.md"


def mlp(seed: int = 0, d: int = 6, h: int = 9, c: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, c)).double().eval()


def cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4, 3)).double().eval()


def classification(n: int = 50, d: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def loop(model: nn.Module, points: torch.Tensor, loss_fn, x, y) -> tuple[np.ndarray, np.ndarray]:
    """Loss and accuracy of each flat point [G, n], loaded one at a time into a copy of the module."""
    losses, accs = [], []
    for point in points:
        m = copy.deepcopy(model)
        torch.nn.utils.vector_to_parameters(point.clone(), m.parameters())
        with torch.no_grad():
            out = m(x)
        losses.append(float(loss_fn(out, y)))
        accs.append(float((out.argmax(-1) == y).double().mean()))
    return np.array(losses), np.array(accs)


def flat(model: nn.Module) -> torch.Tensor:
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach()


# --- the analytic surface of a quadratic loss -------------------------------------------------


def quadratic_problem(n: int = 40, d: int = 5, seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, d, generator=g, dtype=torch.float64))
    return model, x, y


def quadratic_surface(model, x, y, d1, d2, alphas, betas) -> np.ndarray:
    """mean((X(w + a·d1 + b·d2) − y)²) as c0 + c1·a + c2·b + c11·a² + c12·a·b + c22·b² (numpy)."""
    X, t = x.numpy(), y.numpy()[:, 0]
    w = model.weight.detach().numpy()[0]
    r, u, v = X @ w - t, X @ d1["weight"].numpy()[0], X @ d2["weight"].numpy()[0]
    c0, c1, c2 = np.mean(r * r), 2 * np.mean(r * u), 2 * np.mean(r * v)
    c11, c12, c22 = np.mean(u * u), 2 * np.mean(u * v), np.mean(v * v)
    a, b = np.meshgrid(alphas.numpy(), betas.numpy(), indexing="ij")
    return c0 + c1 * a + c2 * b + c11 * a ** 2 + c12 * a * b + c22 * b ** 2


@pytest.mark.parametrize("budget", [landscape.BUDGET, 7])  # 7: rows split in chunks of 7, one point per pass
@pytest.mark.parametrize("normalization", [None, "filter"])
def test_a_quadratic_loss_gives_its_analytic_surface(budget, normalization):
    model, x, y = quadratic_problem()
    g = torch.Generator().manual_seed(0)
    given = ({"weight": torch.randn(1, 5, generator=g, dtype=torch.float64)},
             {"weight": torch.randn(1, 5, generator=g, dtype=torch.float64)})
    result = slice_2d(model, F.mse_loss, (x, y), given, span=((-2.0, 1.5), (-1.0, 3.0)), steps=(9, 7),
                      normalization=normalization, budget=budget)
    assert result.loss.shape == (9, 7) and result.accuracy is None  # float targets: no accuracy
    d1, d2 = result.directions
    if normalization is None:
        assert torch.equal(d1["weight"], given[0]["weight"])
    else:  # one filter (the single output neuron): rescaled to ‖w‖
        assert float(d1["weight"].norm()) == pytest.approx(float(model.weight.detach().norm()), rel=1e-14)
    expected = quadratic_surface(model, x, y, d1, d2, result.alphas, result.betas)
    np.testing.assert_allclose(result.loss.numpy(), expected, rtol=0, atol=1e-10)
    line = slice_1d(model, F.mse_loss, (x, y), given[0], span=(-2.0, 1.5), steps=9, normalization=normalization,
                    budget=budget)
    expected_line = quadratic_surface(model, x, y, line.direction, d2, line.alphas, torch.zeros(1, dtype=torch.float64))
    np.testing.assert_allclose(line.loss.numpy(), expected_line[:, 0], rtol=0, atol=1e-10)


# --- filter normalization ---------------------------------------------------------------------


def test_filter_normalization_scales_each_filter_and_zeroes_biases():
    model = cnn()
    d = landscape.random_direction(model, seed=4)
    for name, w in model.named_parameters():
        if w.dim() <= 1:
            assert torch.count_nonzero(d[name]) == 0, name  # ignore="biasbn": biases get no direction
        else:
            dims = tuple(range(1, w.dim()))
            np.testing.assert_allclose(d[name].norm(dim=dims).numpy(), w.detach().norm(dim=dims).numpy(), rtol=1e-13)
    kept = landscape.random_direction(model, seed=4, ignore=None)  # the authors' other choice: d = θ
    assert torch.equal(kept["0.bias"], model[0].bias.detach())
    layer = landscape.random_direction(model, seed=4, normalization="layer")
    assert float(layer["0.weight"].norm()) == pytest.approx(float(model[0].weight.detach().norm()), rel=1e-13)
    raw = landscape.random_direction(model, seed=4, normalization=None)
    g = torch.Generator().manual_seed(4)
    assert torch.equal(raw["0.weight"], torch.randn(4, 1, 3, generator=g, dtype=torch.float64))


def rescaled(model: nn.Module, first: str, second: str, factor: float = 10.0) -> nn.Module:
    """W₁·c, b₁·c, W₂/c: the same function for a ReLU network (ReLU is positively homogeneous)."""
    out = copy.deepcopy(model)
    state = dict(out.named_parameters())
    with torch.no_grad():
        state[f"{first}.weight"].mul_(factor)
        state[f"{first}.bias"].mul_(factor)
        state[f"{second}.weight"].div_(factor)
    return out


@pytest.mark.parametrize("ignore", ["biasbn", None])
@pytest.mark.parametrize("make, layers, shape", [(mlp, ("0", "2"), (6,)), (cnn, ("0", "3"), (1, 6))])
def test_a_rescaled_relu_network_has_the_same_filter_normalized_slice(make, layers, shape, ignore):
    model = make()
    x = torch.randn(30, *shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = torch.randint(0, 3, (30,), generator=torch.Generator().manual_seed(5))
    other = rescaled(model, *layers)
    with torch.no_grad():  # the same function, so the same loss at the centre
        assert torch.allclose(model(x), other(x), rtol=1e-12, atol=1e-12)
    a = slice_1d(model, F.cross_entropy, (x, y), span=(-1.0, 1.0), steps=11, seed=7, ignore=ignore)
    b = slice_1d(other, F.cross_entropy, (x, y), span=(-1.0, 1.0), steps=11, seed=7, ignore=ignore)
    np.testing.assert_allclose(b.loss.numpy(), a.loss.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(b.accuracy.numpy(), a.accuracy.numpy())
    a2 = slice_2d(model, F.cross_entropy, (x, y), steps=5, seed=7, ignore=ignore)
    b2 = slice_2d(other, F.cross_entropy, (x, y), steps=5, seed=7, ignore=ignore)
    np.testing.assert_allclose(b2.loss.numpy(), a2.loss.numpy(), rtol=0, atol=1e-6)
    # without the normalization the same Gaussian direction sees two different landscapes
    raw_a = slice_1d(model, F.cross_entropy, (x, y), steps=11, seed=7, normalization=None)
    raw_b = slice_1d(other, F.cross_entropy, (x, y), steps=11, seed=7, normalization=None)
    assert float((raw_a.loss - raw_b.loss).abs().max()) > 1e-2


# --- the population evaluation against a loop -------------------------------------------------


@pytest.mark.parametrize("budget", [landscape.BUDGET, 120, 13])  # one pass; 2 points per pass; rows split
def test_population_evaluation_equals_a_loop_over_points(budget):
    model = mlp()
    x, y = classification()
    g = torch.Generator().manual_seed(9)
    points = flat(model) + 0.5 * torch.randn(37, flat(model).numel(), generator=g, dtype=torch.float64)
    loss, acc = evaluate_points(model, F.cross_entropy, (x, y), points, budget=budget)
    ref_loss, ref_acc = loop(model, points, F.cross_entropy, x, y)
    np.testing.assert_allclose(loss.numpy(), ref_loss, rtol=0, atol=1e-12)
    np.testing.assert_allclose(acc.numpy(), ref_acc, rtol=0, atol=1e-12)
    as_dict = landscape.layout.Layout.of(model).unflatten_params(points)
    np.testing.assert_array_equal(evaluate_points(model, F.cross_entropy, (x, y), as_dict, budget=budget)[0].numpy(),
                                  loss.numpy())


def test_a_slice_plane_equals_a_loop_over_its_points():
    model = mlp()
    x, y = classification()
    result = slice_2d(model, F.cross_entropy, (x, y), steps=(4, 3), span=((-1.0, 1.0), (-0.5, 0.5)), seed=3,
                      budget=100)
    d1, d2 = (torch.cat([d[k].reshape(-1) for k, _ in model.named_parameters()]) for d in result.directions)
    grid = torch.cartesian_prod(result.alphas, result.betas)
    points = flat(model) + grid[:, :1] * d1 + grid[:, 1:] * d2
    ref_loss, ref_acc = loop(model, points, F.cross_entropy, x, y)
    np.testing.assert_allclose(result.loss.reshape(-1).numpy(), ref_loss, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.accuracy.reshape(-1).numpy(), ref_acc, rtol=0, atol=1e-12)


def batchnorm_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).double()
    with torch.no_grad():
        net[1].running_mean.copy_(torch.randn(8, dtype=torch.float64))
        net[1].running_var.copy_(torch.rand(8, dtype=torch.float64) + 0.5)
    return net.eval()


def test_batchnorm_statistics_are_held_on_slices_and_interpolated_between_models():
    x, y = classification()
    a, b = batchnorm_net(0), batchnorm_net(1)
    line = slice_1d(a, F.cross_entropy, (x, y), steps=5, seed=2)
    assert torch.count_nonzero(line.direction["1.weight"]) == 0 and torch.count_nonzero(line.direction["1.bias"]) == 0
    pts = flat(a) + line.alphas[:, None] * torch.cat([line.direction[k].reshape(-1) for k, _ in a.named_parameters()])
    np.testing.assert_allclose(line.loss.numpy(), loop(a, pts, F.cross_entropy, x, y)[0], rtol=0, atol=1e-12)
    path = interpolate(a, b, F.cross_entropy, (x, y), steps=5)
    expected = []
    for t in path.t.tolist():  # parameters and running statistics, both (1 − t)·a + t·b
        m = copy.deepcopy(a)
        state = {k: (1 - t) * v + t * b.state_dict()[k] if v.is_floating_point() else v
                 for k, v in a.state_dict().items()}
        m.load_state_dict(state)
        with torch.no_grad():
            expected.append(float(F.cross_entropy(m(x), y)))
    np.testing.assert_allclose(path.loss.numpy(), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="training mode.*model.eval"):
        slice_1d(batchnorm_net(0).train(), F.cross_entropy, (x, y))


# --- the linear path and its barrier ----------------------------------------------------------


def signed_square(out: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """mean(sᵢ·outᵢ²): with a linear model, the quadratic form wᵀ(XᵀSX/N)w, indefinite for mixed signs."""
    return (s * out ** 2).mean()


def test_the_barrier_of_a_quadratic_along_a_line_is_its_closed_form():
    n, d = 30, 4
    g = torch.Generator().manual_seed(11)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    s = torch.where(torch.arange(n) % 3 == 0, -2.0, 1.0).double().unsqueeze(1)  # mixed signs
    A = (x.T @ (s * x) / n).numpy()
    evals, evecs = np.linalg.eigh(A)
    assert evals[0] < 0 < evals[-1]
    # a path along the negative-curvature axis, centred where the endpoints' losses are equal
    delta = 1.5 * evecs[:, 0]
    c = np.random.default_rng(0).normal(size=d)
    c -= (c @ A @ delta) / ((A @ delta) @ (A @ delta)) * (A @ delta)  # cᵀAδ = 0: q(c − δ/2) = q(c + δ/2)
    ends = []
    for w in (c - delta / 2, c + delta / 2):
        m = nn.Linear(d, 1, bias=False).double()
        with torch.no_grad():
            m.weight.copy_(torch.tensor(w).unsqueeze(0))
        ends.append(m)
    kappa = float(delta @ A @ delta)  # q((1 − t)a + tb) = (1 − t)q(a) + t·q(b) − t(1 − t)·κ
    path = interpolate(*ends, signed_square, (x, s), steps=21, span=(-0.5, 1.5))
    q = lambda w: float(w @ A @ w)  # noqa: E731
    t = path.t.numpy()
    np.testing.assert_allclose(path.loss.numpy(), q(c - delta / 2) * (1 - t) + q(c + delta / 2) * t - t * (1 - t) * kappa,
                               rtol=0, atol=1e-12)
    assert path.barrier == pytest.approx(-kappa / 4, abs=1e-12) and path.barrier_t == pytest.approx(0.5, abs=1e-15)
    assert path.barrier_mean == pytest.approx(-kappa / 4, abs=1e-12)  # the endpoints' losses are equal
    assert path.accuracy is None and path.error_barrier is None
    # along a positive-curvature axis the loss stays below the chord: no barrier
    flat_ends = [copy.deepcopy(ends[0]), copy.deepcopy(ends[0])]
    with torch.no_grad():
        flat_ends[1].weight.add_(torch.tensor(evecs[:, -1]).unsqueeze(0))
    convex = interpolate(*flat_ends, signed_square, (x, s), steps=11)
    assert abs(convex.barrier) <= 1e-12 and convex.barrier_t in (0.0, 1.0)


def test_barrier_heights_on_values_with_a_known_peak():
    t = torch.tensor([-0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5], dtype=torch.float64)
    values = torch.tensor([9.0, 1.0, 2.5, 4.0, 3.5, 3.0, 9.0], dtype=torch.float64)
    chord, at, mean = landscape.barrier_heights(t, values)
    # chord at 0.5 is 2.0 → excess 2.0; at 0.25: 2.5 − 1.5 = 1.0; at 0.75: 3.5 − 2.5 = 1.0; outside [0, 1] ignored
    assert (chord, at, mean) == (2.0, 0.5, 2.0)


def test_error_barrier_of_two_classifiers():
    x, y = classification()
    path = interpolate(mlp(0), mlp(1), F.cross_entropy, (x, y), steps=9)
    assert path.accuracy is not None and path.t[0] == 0 and path.t[-1] == 1
    error = 1 - path.accuracy
    chord = (1 - path.t) * error[0] + path.t * error[-1]
    assert path.error_barrier == pytest.approx(float((error - chord).max()), abs=1e-15)
    assert path.error_barrier_mean == pytest.approx(float(error.max() - (error[0] + error[-1]) / 2), abs=1e-15)
    ref = loop(mlp(0), flat(mlp(0)) + path.t[:, None] * (flat(mlp(1)) - flat(mlp(0))), F.cross_entropy, x, y)
    np.testing.assert_allclose(path.loss.numpy(), ref[0], rtol=0, atol=1e-12)


# --- the PCA plane of a trajectory ------------------------------------------------------------


def trajectory(steps: int = 12):
    """SGD snapshots (state_dicts) of a small MLP, the last one the trained model."""
    model = mlp(d=6, h=20)
    x, y = classification()
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    snapshots = []
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = torch.randint(0, len(x), (16,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x[batch]), y[batch]).backward()
        opt.step()
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return model, snapshots, (x, y)


def test_trajectory_pca_matches_scikit_learn():
    model, snapshots, data = trajectory()
    plane = trajectory_pca(snapshots, model=model)
    X = np.stack([torch.cat([s[k].reshape(-1) for k, _ in model.named_parameters()]).numpy() for s in snapshots])
    assert X.shape == (12, 203)
    pca = PCA(n_components=2, svd_solver="full").fit(X)
    signs = np.sign(np.sum(plane.components.numpy() * pca.components_, axis=1))
    assert signs.tolist() == [1.0, 1.0]  # scikit-learn's convention: each axis's largest entry positive
    np.testing.assert_allclose(plane.components.numpy() * signs[:, None], pca.components_, rtol=0, atol=1e-8)
    np.testing.assert_allclose(plane.explained_variance.numpy(), pca.explained_variance_, rtol=1e-8, atol=0)
    np.testing.assert_allclose(plane.explained_variance_ratio.numpy(), pca.explained_variance_ratio_, rtol=1e-8)
    np.testing.assert_allclose(plane.scores.numpy() * signs, pca.transform(X), rtol=0, atol=1e-8)
    # coordinates in the plane are relative to the last snapshot (Li et al. 2018's origin)
    np.testing.assert_allclose(plane.coords.numpy() * signs, pca.transform(X) - pca.transform(X[-1:]), rtol=0,
                               atol=1e-8)
    assert np.allclose(plane.coords[-1].numpy(), 0, atol=1e-12)
    assert plane.loss is None and plane.path_loss is None
    # the same plane from modules and from one flat tensor
    modules = []
    for s in snapshots:
        m = copy.deepcopy(model)
        m.load_state_dict(s)
        modules.append(m)
    np.testing.assert_allclose(trajectory_pca(modules).components.numpy(), plane.components.numpy(), atol=1e-14)
    np.testing.assert_allclose(trajectory_pca(torch.tensor(X), model=model).scores.numpy(), plane.scores.numpy(),
                               atol=1e-14)


def test_trajectory_plane_contour_and_path_losses_equal_a_loop():
    model, snapshots, (x, y) = trajectory()
    plane = trajectory_pca(snapshots, F.cross_entropy, (x, y), model=model, steps=(5, 4), margin=0.1, budget=200)
    assert plane.loss.shape == (5, 4) and plane.accuracy.shape == (5, 4)
    # the grid covers the path with the margin on both sides
    for j, axis in enumerate((plane.alphas, plane.betas)):
        lo, hi = float(plane.coords[:, j].min()), float(plane.coords[:, j].max())
        assert float(axis[0]) == pytest.approx(lo - 0.1 * (hi - lo)) and float(axis[-1]) == pytest.approx(
            hi + 0.1 * (hi - lo))
    grid = torch.cartesian_prod(plane.alphas, plane.betas)
    points = plane.origin + grid @ plane.components
    np.testing.assert_allclose(plane.loss.reshape(-1).numpy(), loop(model, points, F.cross_entropy, x, y)[0],
                               rtol=0, atol=1e-12)
    path = torch.stack([torch.cat([s[k].reshape(-1) for k, _ in model.named_parameters()]) for s in snapshots])
    np.testing.assert_allclose(plane.path_loss.numpy(), loop(model, path, F.cross_entropy, x, y)[0], rtol=0,
                               atol=1e-12)


# --- refusals ---------------------------------------------------------------------------------


def test_mistakes_say_what_was_expected_and_what_arrived():
    x, y = classification()
    model = mlp()
    with pytest.raises(ValueError, match=r"span: expected finite low < high, got \(1.0, -1.0\)"):
        slice_1d(model, F.cross_entropy, (x, y), span=(1.0, -1.0))
    with pytest.raises(ValueError, match="steps: expected an integer ≥ 2, got 1"):
        slice_1d(model, F.cross_entropy, (x, y), steps=1)
    with pytest.raises(ValueError, match=r"direction: parameter '0.weight' must have shape \[9, 6\], got \[6, 9\]"):
        slice_1d(model, F.cross_entropy, (x, y), {k: v.detach().mT if v.dim() == 2 else v.detach()
                                                  for k, v in model.named_parameters()})
    with pytest.raises(ValueError, match="direction: expected a flat tensor of 93 parameters, got shape"):
        slice_1d(model, F.cross_entropy, (x, y), torch.zeros(5))
    with pytest.raises(ValueError, match="normalization: expected 'filter', 'layer' or None, got 'unit'"):
        slice_1d(model, F.cross_entropy, (x, y), normalization="unit")
    with pytest.raises(ValueError, match="models must share one architecture"):
        interpolate(model, mlp(h=5), F.cross_entropy, (x, y))
    with pytest.raises(ValueError, match=r"span: expected low ≤ 0 and high ≥ 1"):
        interpolate(model, mlp(1), F.cross_entropy, (x, y), span=(0.2, 1.0))
    with pytest.raises(ValueError, match="snapshots: expected at least 3.*got 2"):
        trajectory_pca([model, mlp(1)])
    with pytest.raises(ValueError, match="model: expected the architecture"):
        trajectory_pca([flat(model)] * 3)
    with pytest.raises(ValueError, match=r"data: expected x \[N, ...\] and y \[N, ...\] with the same N"):
        slice_1d(model, F.cross_entropy, (x, y[:10]))
    with pytest.raises(ValueError, match="loss_fn: expected a scalar"):
        slice_1d(model, lambda out, t: F.cross_entropy(out, t, reduction="none"), (x, y), steps=3)
    with pytest.raises(TypeError, match="model: expected an nn.Module, got str"):
        slice_1d("model", F.cross_entropy, (x, y))


def test_a_straight_trajectory_warns_that_its_second_axis_is_arbitrary():
    model = mlp()
    start, step = flat(model), torch.linspace(0, 1, flat(model).numel(), dtype=torch.float64)
    with pytest.warns(UserWarning, match="lie on a line"):
        trajectory_pca([start + k * step for k in range(4)], model=model)


# --- figures ----------------------------------------------------------------------------------


def test_figures_draw_the_results(tmp_path):
    x, y = classification()
    model = mlp()
    line = slice_1d(model, F.cross_entropy, (x, y), steps=7)
    fig = slice_figure(line)
    ax, twin = fig.axes
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), line.loss.numpy())
    np.testing.assert_allclose(twin.lines[0].get_ydata(), 100 * line.accuracy.numpy())

    path = interpolate(model, mlp(1), F.cross_entropy, (x, y), steps=9)
    fig = interpolation_figure(path)
    lines = {ln.get_label(): ln for ln in fig.axes[0].lines}
    np.testing.assert_array_equal(lines["loss"].get_ydata(), path.loss.numpy())
    bar = [ln for name, ln in lines.items() if name.startswith("barrier")][0]
    assert np.allclose(np.diff(bar.get_ydata()), path.barrier) and bar.get_xdata()[0] == path.barrier_t

    _, snapshots, _ = trajectory()
    trained = mlp(d=6, h=20)
    plane = trajectory_pca(snapshots, F.cross_entropy, (x, y), model=trained, steps=6)
    fig = surface_figure(plane)
    drawn = {ln.get_label(): ln for ln in fig.axes[0].lines}
    np.testing.assert_array_equal(drawn["training path"].get_xdata(), plane.coords[:, 0].numpy())
    np.testing.assert_array_equal(drawn["training path"].get_ydata(), plane.coords[:, 1].numpy())
    assert re.match(r"1st principal component \(\d+\.\d% of variance\)", fig.axes[0].get_xlabel())
    surface = slice_2d(model, F.cross_entropy, (x, y), steps=5)
    assert save_surface(surface, tmp_path / "plane.png", scale="linear").stat().st_size > 1000
    with pytest.raises(ValueError, match="scale: expected 'auto', 'log' or 'linear', got 'cubic'"):
        surface_figure(surface, scale="cubic")


# --- the README's example ---------------------------------------------------------------------


def test_readme_loss_landscapes_example_runs(tmp_path, monkeypatch):
    text = README.read_text(encoding="utf-8")
    block = text.split("## Loss landscapes")[1].split("```python")[1].split("```")[0]
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - our own documentation
    line, surface, plane, path = (namespace[k] for k in ("line", "surface", "plane", "path"))
    assert torch.isfinite(line.loss).all() and line.loss.shape == (21,) and surface.loss.shape == (15, 15)
    # the centre of the slices is the trained model itself
    assert float(line.loss[10]) == pytest.approx(float(surface.loss[7, 7]), rel=1e-6)
    assert plane.loss.shape == (15, 15) and float(plane.explained_variance_ratio.sum()) <= 1 + 1e-12
    assert path.barrier >= 0
    assert all((tmp_path / name).stat().st_size > 1000 for name in ("slice.png", "plane.png", "path.png"))


def test_the_model_is_left_as_it_was():
    """Points are passed to torch.func.functional_call, never written into the module."""
    model = mlp()
    before = copy.deepcopy(model.state_dict())
    x, y = classification()
    slice_2d(model, F.cross_entropy, (x, y), steps=3)
    interpolate(model, mlp(1), F.cross_entropy, (x, y), steps=3)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
