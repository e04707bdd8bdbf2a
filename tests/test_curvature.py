"""Reference tests of the curvature measures: HVPs, Lanczos and power iteration against the dense
Hessian's ``eigvalsh`` on tiny float64 networks (~50 parameters), Hutchinson's trace against the
exact trace, a population against a loop over its members, and power iteration beside Lanczos on
explicit matrices with known spectra (the Lanczos recurrence itself: tests/test_lanczos.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from implicitreg.config import CNNConfig, MLPConfig
from implicitreg.measures.core import REGISTRY
from implicitreg.measures.curvature import (
    EigResult,
    TraceResult,
    hessian_eigenvalues,
    hessian_operator,
    hessian_trace,
    hessian_vector_product,
    power_iteration,
    top_hessian_eigenvalue,
)
from implicitreg.measures.lanczos import lanczos
from implicitreg.models import build_model
from implicitreg.population import Population
from implicitreg.seeding import generator

from conftest import dense_hessian

N, CLASSES = 30, 3


pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(seed: int = 0):
    return build_model("mlp", MLPConfig(hidden=[6]), 4, CLASSES, generator(seed, "init"))  # 51 parameters


def cnn(seed: int = 0):
    return build_model("cnn", CNNConfig(channels=2, layers=2), 12, CLASSES, generator(seed, "init"))  # 47


def data_for(model, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    d = 4 if model.__class__.__name__ == "MLP" else 12
    return torch.randn(N, d, generator=g, dtype=torch.float64), torch.randint(0, CLASSES, (N,), generator=g)


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def problem(request):
    model = mlp() if request.param == "mlp" else cnn()
    data = data_for(model)
    H = dense_hessian(model, *data)
    return model, data, H, torch.linalg.eigvalsh(H).flip(0)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b).abs() / b.abs()).max()


# ---------------------------------------------------------------------------- HVP


def test_hvp_matches_dense_hessian(problem):
    model, data, H, _ = problem
    v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    hv = hessian_vector_product(model, F.cross_entropy, data, v)
    assert hv.shape == v.shape
    torch.testing.assert_close(hv, H @ v, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------- eigenvalues


def test_lanczos_top3_matches_eigvalsh(problem):
    model, data, _, exact = problem
    r = hessian_eigenvalues(model, F.cross_entropy, data, k=3, tol=1e-6)
    assert isinstance(r, EigResult) and isinstance(r.n_hvp, int)
    assert r.values.shape == r.converged.shape == r.residuals.shape == (3,)
    assert bool(r.converged.all()) and r.n_hvp <= 200
    assert (r.residuals < 1e-6).all()
    # eigenvalue error ≤ residual (and ~ residual² / gap): the relative error is far below tol
    assert rel_err(r.values, exact[:3]) <= 1e-6
    # the residual bound is the true residual of the Ritz pairs; determinism: same seed, same bits
    again = hessian_eigenvalues(model, F.cross_entropy, data, k=3, tol=1e-6)
    assert torch.equal(again.values, r.values) and again.n_hvp == r.n_hvp


def test_power_iteration_top1_on_a_clear_gap(problem):
    model, data, _, exact = problem
    # both test problems have λ1/λ2 ≤ 0.7 and λ1 > |λ_min|: power iteration converges to λ1 fast
    assert exact[1] / exact[0] < 0.7 and exact[0] > exact[-1].abs()
    r = hessian_eigenvalues(model, F.cross_entropy, data, k=1, method="power", tol=1e-9, max_hvp=500)
    assert bool(r.converged.all())
    assert rel_err(r.values, exact[:1]) <= 1e-6
    # the true residual is reported: Rayleigh-quotient error ~ residual², so residual ~ √(error)
    assert 0 < float(r.residuals[0]) < 1e-2
    lz = hessian_eigenvalues(model, F.cross_entropy, data, k=1, tol=1e-6)
    assert lz.n_hvp < r.n_hvp  # the point of Lanczos


def test_power_iteration_deflation_k3():
    model = mlp()
    data = data_for(model)
    exact = torch.linalg.eigvalsh(dense_hessian(model, *data)).flip(0)
    r = hessian_eigenvalues(model, F.cross_entropy, data, k=3, method="power", tol=1e-10, max_hvp=1500)
    assert bool(r.converged.all())
    assert rel_err(r.values, exact[:3]) <= 1e-5


def test_budget_too_small_reports_not_converged(problem):
    model, data, _, _ = problem
    r = hessian_eigenvalues(model, F.cross_entropy, data, k=3, max_hvp=4)
    assert not bool(r.converged.all()) and r.n_hvp == 4
    assert (r.residuals[~r.converged] >= 1e-6).all()
    p = hessian_eigenvalues(model, F.cross_entropy, data, k=1, method="power", tol=1e-12, max_hvp=3)
    assert not bool(p.converged.any()) and p.n_hvp == 3
    with pytest.warns(RuntimeWarning, match="did not reach"):
        value = top_hessian_eigenvalue(model, F.cross_entropy, data, max_hvp=2)
    assert value.shape == ()


# ---------------------------------------------------------------------------- trace


def test_hutchinson_within_three_standard_errors(problem):
    model, data, H, _ = problem
    r = hessian_trace(model, F.cross_entropy, data, n_samples=100, seed=0)
    assert isinstance(r, TraceResult) and r.value.shape == r.stderr.shape == () and r.n_hvp == 100
    # zᵀHz is unbiased for tr H; by the CLT the mean of 100 draws is ~normal with sd ≈ stderr,
    # so |error| < 3·stderr has probability ≈ 99.7%; the seed is fixed, so the test is deterministic.
    assert abs(float(r.value - H.trace())) < 3 * float(r.stderr)
    # Rademacher variance is 2·Σ_{i≠j} H_ij²: the reported stderr should be of that size
    expected_sd = math.sqrt(2 * float((H**2).sum() - (H.diagonal() ** 2).sum()) / 100)
    assert 0.5 * expected_sd < float(r.stderr) < 2 * expected_sd


# ---------------------------------------------------------------------------- populations


@pytest.fixture(scope="module")
def population_case():
    models = [mlp(seed) for seed in range(3)]
    x, y = data_for(models[0])
    labels = torch.stack([y, torch.roll(y, 1), torch.randint(0, CLASSES, (N,), generator=torch.Generator().manual_seed(5))])
    return models, Population(models, dtype=torch.float64), x, labels


def test_population_equals_loop(population_case):
    # the members share the start vector and probes; their HVPs differ only by vmap's batching,
    # so a population agrees with the loop to rounding (float64: 1e-10 relative, tol-independent)
    models, pop, x, labels = population_case
    y = labels[0]
    r = hessian_eigenvalues(pop, F.cross_entropy, (x, y), k=2)
    assert r.values.shape == r.converged.shape == (3, 2) and r.n_hvp.shape == (3,)
    t = hessian_trace(pop, F.cross_entropy, (x, y), n_samples=10)
    assert t.value.shape == t.stderr.shape == (3,)
    for i, model in enumerate(models):
        single = hessian_eigenvalues(model, F.cross_entropy, (x, y), k=2)
        torch.testing.assert_close(r.values[i], single.values, rtol=1e-10, atol=0)
        assert int(r.n_hvp[i]) == single.n_hvp and torch.equal(r.converged[i], single.converged)
        st = hessian_trace(model, F.cross_entropy, (x, y), n_samples=10)
        torch.testing.assert_close(t.value[i], st.value, rtol=1e-10, atol=0)
        torch.testing.assert_close(t.stderr[i], st.stderr, rtol=1e-8, atol=0)
    assert top_hessian_eigenvalue(pop, F.cross_entropy, (x, y)).shape == (3,)


def test_population_with_per_member_labels(population_case):
    models, pop, x, labels = population_case
    v = torch.randn(3, 51, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    hv = hessian_vector_product(pop, F.cross_entropy, (x, labels), v)
    r = hessian_eigenvalues(pop, F.cross_entropy, (x, labels), k=1, method="power", tol=1e-8, max_hvp=300)
    for i, model in enumerate(models):
        torch.testing.assert_close(hv[i], dense_hessian(model, x, labels[i]) @ v[i], rtol=1e-10, atol=1e-12)
        single = hessian_eigenvalues(model, F.cross_entropy, (x, labels[i]), k=1, method="power", tol=1e-8,
                                     max_hvp=300)
        torch.testing.assert_close(r.values[i], single.values, rtol=1e-10, atol=0)
        assert int(r.n_hvp[i]) == single.n_hvp  # a converged member's count stops with it


def test_converged_members_leave_the_products(population_case):
    # members that converge at different speeds (a first layer scaled to 0.01: ~10 products; as
    # initialized: ~17), with per-member labels: each member's result is the one it has alone,
    # while the member-HVPs computed — counted through the operator — drop below P per step
    import dataclasses

    from implicitreg.measures.curvature import operator_eigenvalues

    _, _, x, labels = population_case
    models = [mlp(seed) for seed in range(4)]
    with torch.no_grad():
        for model in models[1:]:
            model.layers[0].weight.mul_(0.01)
    labels = torch.cat([labels, labels[:1]])
    pop = Population(models, dtype=torch.float64)
    computed = []

    def counted(op):  # the operator, with every product's member count recorded (its subsets' too)
        def matvec(v):
            computed.append(v.shape[0])
            return op.matvec(v)
        return dataclasses.replace(op, matvec=matvec, restrict=lambda idx: counted(op.members(idx)))

    r = operator_eigenvalues(counted(hessian_operator(pop, F.cross_entropy, (x, labels))), k=1, tol=1e-10)
    assert bool(r.converged.all()) and int(r.n_hvp.min()) < int(r.n_hvp.max())
    assert len(computed) == int(r.n_hvp.max())
    assert int(r.n_hvp.sum()) <= sum(computed) < 4 * int(r.n_hvp.max())  # fewer than every member every step
    assert computed[-1] == 1  # the slowest member alone, once the others converged
    for i, model in enumerate(models):
        single = hessian_eigenvalues(model, F.cross_entropy, (x, labels[i]), k=1, tol=1e-10)
        torch.testing.assert_close(r.values[i], single.values, rtol=1e-10, atol=0)
        assert int(r.n_hvp[i]) == single.n_hvp
        exact = torch.linalg.eigvalsh(dense_hessian(model, x, labels[i]))[-1]
        torch.testing.assert_close(r.values[i, 0], exact, rtol=1e-8, atol=0)
    op = hessian_operator(pop, F.cross_entropy, (x, labels))
    v = torch.randn(2, op.dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    full = op.matvec(torch.cat([v[:1], v[:1], v[1:], v[1:]]))
    torch.testing.assert_close(op.members([1, 3]).matvec(v), full[[1, 3]], rtol=1e-10, atol=1e-13)
    batches = [(x[:12], labels[:, :12]), (x[12:], labels[:, 12:])]  # the same loss on mini-batches
    torch.testing.assert_close(hessian_operator(pop, F.cross_entropy, batches).members([1, 3]).matvec(v),
                               full[[1, 3]], rtol=1e-10, atol=1e-13)
    for bad in ([], [3, 1], [0, 4], [1, 1], [0.5]):
        with pytest.raises(ValueError, match="members"):
            op.members(bad)
    from implicitreg.measures.ggn import ggn_operator  # the vmapped operators (GGN, Fishers) restrict too

    ggn = ggn_operator(pop, F.cross_entropy, (x, labels))
    torch.testing.assert_close(ggn.members([1, 3]).matvec(v), ggn.matvec(torch.cat([v[:1], v[:1], v[1:], v[1:]]))[[1, 3]],
                               rtol=1e-10, atol=1e-13)


# ---------------------------------------------------------------------------- recurrences on explicit matrices


def spectrum_operator(eigs: list[float], seed: int = 0):
    """H = Q diag(eigs) Qᵀ for a random orthogonal Q; one member."""
    n = len(eigs)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    H = q @ torch.diag(torch.tensor(eigs, dtype=torch.float64)) @ q.T
    v0 = torch.randn(1, n, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    return (lambda v: v @ H), v0


def test_lanczos_finds_largest_algebraic_and_power_largest_magnitude():
    matvec, v0 = spectrum_operator([3.0, 2.0, 1.0, 0.5, -0.2, -6.0])
    assert float(lanczos(matvec, v0, k=1, tol=1e-10).values[0, 0]) == pytest.approx(3.0, rel=1e-10)
    assert float(power_iteration(matvec, v0, k=1, tol=1e-10, max_iter=500).values[0, 0]) == pytest.approx(-6.0,
                                                                                                          rel=1e-6)


def test_pyhessian_rule_stops_early_on_a_small_gap_and_the_residual_shows_it():
    # λ2/λ1 = 0.999: each power step changes the estimate by far less than 1e-3, so PyHessian's
    # rule (relative change < tol) stops almost at once, far from the top eigenvalue
    eigs = [1.0, 0.999] + torch.linspace(0.1, 0.9, 38).tolist()
    matvec, v0 = spectrum_operator(eigs)
    p = power_iteration(matvec, v0, k=1, tol=1e-3, max_iter=200)
    assert bool(p.converged.all()) and int(p.n_hvp[0]) < 50
    assert abs(float(p.values[0, 0]) - 1.0) > 1e-3  # "converged", but the error exceeds tol
    assert float(p.residuals[0, 0]) > 1e-2  # ... and the true residual says so
    lz = lanczos(matvec, v0, k=1, tol=1e-3, max_iter=40)
    assert bool(lz.converged.all()) and abs(float(lz.values[0, 0]) - 1.0) <= 1e-3


def test_operator_shapes_and_errors():
    model = mlp()
    x, y = data_for(model)
    op = hessian_operator(model, F.cross_entropy, (x, y))
    assert op.size == 1 and op.dim == 51
    with pytest.raises(ValueError, match="expected shape"):
        op.matvec(torch.zeros(2, 51, dtype=torch.float64))
    with pytest.raises(TypeError, match="pair"):
        hessian_eigenvalues(model, F.cross_entropy, x)
    with pytest.raises(ValueError, match="y must be"):
        hessian_eigenvalues(model, F.cross_entropy, (x, y[:5]))
    with pytest.raises(ValueError, match="method"):
        hessian_eigenvalues(model, F.cross_entropy, (x, y), method="arnoldi")
    with pytest.raises(ValueError, match="k:"):
        hessian_eigenvalues(model, F.cross_entropy, (x, y), k=0)
    with pytest.raises(ValueError, match="max_hvp"):
        hessian_eigenvalues(model, F.cross_entropy, (x, y), k=3, max_hvp=2)
    with pytest.raises(ValueError, match="n_samples"):
        hessian_trace(model, F.cross_entropy, (x, y), n_samples=1)


def test_registered_with_metadata():
    for name in ("top_hessian_eigenvalue", "hessian_trace"):
        info = REGISTRY[name]
        assert info.cost == "hvp" and info.lower_is_simpler is True
        assert set(info.needs) == {"params", "data", "loss", "hvp"} and info.summary
    model = mlp()
    data = data_for(model)
    assert REGISTRY["hessian_trace"].fn(model, F.cross_entropy, data).shape == ()


def test_works_under_no_grad():
    model = mlp()
    data = data_for(model)
    with torch.no_grad():
        r = hessian_eigenvalues(model, F.cross_entropy, data, k=1)
    assert bool(r.converged.all()) and float(r.values[0]) > 0


# ---------------------------------------------------------------------------- regression (MSE)


def test_hessian_of_the_regression_loss_matches_the_dense_hessian():
    """The library's regression loss (F.mse_loss) under forward-over-reverse: torch's formula once
    failed with "ZeroTensors are immutable" on the target's implicit tangent."""
    from implicitreg.measures import compute
    from implicitreg.measures.tracking import loss_fn_for

    model = build_model("mlp", MLPConfig(hidden=[5]), 3, 1, generator(0, "init"))  # 26 parameters
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(N, 3, generator=g, dtype=torch.float64), torch.randn(N, generator=g, dtype=torch.float64)
    named = [(name, p.detach()) for name, p in model.named_parameters()]
    numels = [p.numel() for _, p in named]

    def loss(theta):  # the MSE written out, so the reference does not go through F.mse_loss
        params = {name: t.view(p.shape) for (name, p), t in zip(named, theta.split(numels))}
        return ((functional_call(model, params, (x,)).squeeze(-1) - y) ** 2).mean()

    H = torch.autograd.functional.hessian(loss, torch.cat([p.reshape(-1) for _, p in named]))
    exact = torch.linalg.eigvalsh(H).flip(0)
    mse = loss_fn_for(0)
    columns = torch.stack([hessian_vector_product(model, mse, (x, y), e) for e in torch.eye(H.shape[0], dtype=H.dtype)])
    torch.testing.assert_close(columns, H, rtol=1e-10, atol=1e-12)
    assert abs(float(columns.trace() - H.trace())) <= 1e-8 * abs(float(H.trace()))
    r = hessian_eigenvalues(model, mse, (x, y), k=3, tol=1e-10)
    assert bool(r.converged.all()) and rel_err(r.values, exact[:3]) <= 1e-8
    # measures.compute's default loss for float targets, and a population of regression members
    pop = Population([model, build_model("mlp", MLPConfig(hidden=[5]), 3, 1, generator(1, "init"))],
                     loss="mse", dtype=torch.float64)
    values = compute(["top_hessian_eigenvalue", "hessian_trace"], pop, data=(x, y))
    assert float(values["top_hessian_eigenvalue"][0]) == pytest.approx(float(exact[0]), rel=1e-8)
    trace = hessian_trace(model, F.mse_loss, (x, y.unsqueeze(1)), n_samples=100)
    assert abs(float(trace.value - H.trace())) < 3 * float(trace.stderr)
    torch.testing.assert_close(values["hessian_trace"][0], hessian_trace(model, mse, (x, y)).value, rtol=1e-10, atol=0)


def test_a_regression_run_tracks_its_sharpness():
    """`implicitreg run width --set data=regression --set train.track=[top_hessian_eigenvalue]`, in small."""
    from implicitreg.config import DataConfig, TrainConfig
    from implicitreg.data import load_dataset
    from implicitreg.plan import Group, Member
    from implicitreg.train import train_population

    data = load_dataset(DataConfig(name="regression", n_train=32, n_test=16, dim=5)).tensors("cpu", torch.float64)
    train = TrainConfig(optimizer="gd", lr=0.05, max_steps=4, eval_every=2, dtype="float64", target_train_acc=None,
                        track=["top_hessian_eigenvalue"], track_expensive_every=2)
    group = Group("mlp", MLPConfig(hidden=[4]), DataConfig(), train, (Member("a", 0, 0.05), Member("b", 1, 0.05)))
    for result in train_population(group, data):
        sharpness = [v for _, name, v in result.metrics if name == "top_hessian_eigenvalue"]
        assert len(sharpness) == 2 and all(v > 0 for v in sharpness)
