"""Reference tests of the GGN and Fisher operators (measures/ggn.py) against dense float64 matrices
built independently — J from ``torch.autograd.functional.jacobian``, H_F from
``torch.autograd.functional.hessian`` of the loss in output space, per-sample gradients from the
Jacobian of the per-sample losses — on tiny networks (51 and 47 parameters); their top eigenvalues,
traces, populations, scipy LinearOperators (``eigsh`` against ``eigvalsh``), and the count of GGN
outliers on a trained 10-class digits MLP (Papyan 2020: about C)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from implicitreg.config import CNNConfig, MLPConfig
from implicitreg.data.digits import load_digits
from implicitreg.measures import REGISTRY, compute
from implicitreg.measures.curvature import hessian_operator
from implicitreg.measures.ggn import (
    OutlierResult,
    fisher_eigenvalues,
    fisher_operator,
    fisher_trace,
    ggn_eigenvalues,
    ggn_operator,
    ggn_outliers,
    ggn_trace,
    sample_labels,
)
from implicitreg.measures.trace_estimators import ESTIMATORS
from implicitreg.models import build_model
from implicitreg.population import Population
from implicitreg.seeding import generator

D = torch.float64
N, CLASSES = 30, 3


pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(seed: int = 0):
    return build_model("mlp", MLPConfig(hidden=[6]), 4, CLASSES, generator(seed, "init"))  # 51 parameters


def cnn(seed: int = 0):
    return build_model("cnn", CNNConfig(channels=2, layers=2), 12, CLASSES, generator(seed, "init"))  # 47


def data_for(model, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    d = 4 if model.__class__.__name__ == "MLP" else 12
    return torch.randn(N, d, generator=g, dtype=D), torch.randint(0, CLASSES, (N,), generator=g)


def as_function(model, x):
    """θ [n] → outputs [N, C], parameters flattened in named_parameters order; and θ itself."""
    named = [(name, p.detach()) for name, p in model.named_parameters()]
    numels = [p.numel() for _, p in named]

    def f(theta):
        params = {name: t.view(p.shape) for (name, p), t in zip(named, theta.split(numels))}
        return functional_call(model, params, (x,))

    return f, torch.cat([p.reshape(-1) for _, p in named])


def dense_ggn(model, loss_fn, data) -> torch.Tensor:
    """Jᵀ H_F J [n, n] from the full Jacobian and the loss's full Hessian in output space."""
    x, y = data
    f, theta = as_function(model, x)
    J = torch.autograd.functional.jacobian(f, theta)  # [N, C, n]
    outputs = f(theta).detach()
    H = torch.autograd.functional.hessian(lambda o: loss_fn(o, y), outputs)  # [N, C, N, C]
    return torch.einsum("icn,icjd,jdm->nm", J, H, J)


def dense_fisher(model, data, labels) -> torch.Tensor:
    """(1/(N·S)) Σ g gᵀ over per-sample cross-entropy gradients, labels [S, N]."""
    x, _ = data
    f, theta = as_function(model, x)
    total = torch.zeros(theta.numel(), theta.numel(), dtype=D)
    for row in labels:
        losses = lambda t, row=row: F.cross_entropy(f(t), row, reduction="none")  # noqa: E731
        G = torch.autograd.functional.jacobian(losses, theta)  # [N, n]
        total += G.T @ G
    return total / (labels.numel())


def columns(op) -> torch.Tensor:
    """The dense matrix of a one-member operator, column by column through its batched product."""
    return op.matmat(torch.eye(op.dim, dtype=D).unsqueeze(0))[0]


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def problem(request):
    model = mlp() if request.param == "mlp" else cnn()
    data = data_for(model)
    return model, data, dense_ggn(model, F.cross_entropy, data)


# ---------------------------------------------------------------------------- operators against dense


def test_ggn_products_equal_the_dense_ggn(problem):
    model, data, G = problem
    op = ggn_operator(model, F.cross_entropy, data)
    assert op.kind == "ggn" and op.dim == G.shape[0]
    torch.testing.assert_close(columns(op), G, rtol=1e-10, atol=1e-13)
    v = torch.randn(1, op.dim, generator=torch.Generator().manual_seed(1), dtype=D)
    torch.testing.assert_close(op.matvec(v)[0], G @ v[0], rtol=1e-10, atol=1e-13)
    # positive semi-definite (cross-entropy is convex in the logits), unlike the Hessian
    assert float(torch.linalg.eigvalsh(G).min()) > -1e-12
    assert float(torch.linalg.eigvalsh(columns(hessian_operator(model, F.cross_entropy, data))).min()) < -1e-6


def test_ggn_of_the_squared_loss_is_two_jtj_over_n():
    """For the mean squared error of one output H_F = (2/N) I: an independent closed form."""
    model = build_model("mlp", MLPConfig(hidden=[5]), 3, 1, generator(0, "init"))  # 26 parameters
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(N, 3, generator=g, dtype=D), torch.randn(N, generator=g, dtype=D)
    mse = lambda out, target: F.mse_loss(out.squeeze(-1), target)  # noqa: E731 (the library's regression loss)
    f, theta = as_function(model, x)
    J = torch.autograd.functional.jacobian(f, theta)[:, 0, :]  # [N, n]
    torch.testing.assert_close(columns(ggn_operator(model, mse, (x, y))), 2 * J.T @ J / N, rtol=1e-10, atol=1e-13)
    # the empirical Fisher of the same loss: per-sample gradients 2 (f_i − y_i) J_i
    r = 2 * (f(theta).detach()[:, 0] - y)
    ef = (J * r[:, None]).T @ (J * r[:, None]) / N
    torch.testing.assert_close(columns(fisher_operator(model, mse, (x, y))), ef, rtol=1e-10, atol=1e-13)


def test_empirical_fisher_equals_the_mean_outer_product_of_per_sample_gradients(problem):
    model, data, _ = problem
    op = fisher_operator(model, F.cross_entropy, data, kind="empirical")
    assert op.kind == "empirical_fisher"
    torch.testing.assert_close(columns(op), dense_fisher(model, data, data[1][None]), rtol=1e-10, atol=1e-13)


def test_monte_carlo_fisher_with_its_drawn_labels_and_in_expectation(problem):
    model, data, G = problem
    op = fisher_operator(model, F.cross_entropy, data, kind="mc", mc_samples=3, seed=5)
    with torch.no_grad():
        logits = model(data[0]).unsqueeze(0)
    labels = sample_labels(logits, 3, torch.Generator().manual_seed(5))[0]  # the labels the operator drew
    assert labels.shape == (3, N) and int(labels.min()) >= 0 and int(labels.max()) < CLASSES
    torch.testing.assert_close(columns(op), dense_fisher(model, data, labels), rtol=1e-10, atol=1e-13)
    # E_ŷ[∇ℓ ∇ℓᵀ] = Jᵀ(diag p − ppᵀ)J: the MC Fisher's mean is the GGN. Its relative error after S
    # draws is ~c/√S (c ≈ 1 here): 4000 draws give ~1.6e-2 at most (measured 4e-3)
    many = columns(fisher_operator(model, F.cross_entropy, data, kind="mc", mc_samples=4000, seed=1))
    error = float((many - G).norm() / G.norm())
    assert error < 3e-2
    # and it falls like 1/√S: 3 draws are √(4000/3) ≈ 37× further off in expectation (5× asked)
    assert error < float((columns(op) - G).norm() / G.norm()) / 5


def test_sampled_labels_follow_the_softmax():
    logits = torch.tensor([[[0.0, 1.0, -1.0], [2.0, 0.0, 0.0]]], dtype=D)
    labels = sample_labels(logits, 20000, torch.Generator().manual_seed(0))[0]  # [S, 2]
    for i in range(2):
        freq = torch.bincount(labels[:, i], minlength=3).double() / 20000
        # binomial standard error ≤ √(¼ / 20000) = 3.5e-3: 5 of them
        torch.testing.assert_close(freq, torch.softmax(logits[0, i], 0), rtol=0, atol=1.8e-2)


# ---------------------------------------------------------------------------- eigenvalues and traces


def test_top_eigenvalues_and_traces_match_the_dense_matrices(problem):
    model, data, G = problem
    exact = torch.linalg.eigvalsh(G).flip(0)
    r = ggn_eigenvalues(model, F.cross_entropy, data, k=3, tol=1e-10)
    assert bool(r.converged.all()) and r.values.shape == (3,)
    torch.testing.assert_close(r.values, exact[:3], rtol=1e-8, atol=0)
    n = G.shape[0]
    # Hutch++ with 3n products sketches all n directions: the trace is exact
    full = ggn_trace(model, F.cross_entropy, data, method="hutchpp", n_matvecs=3 * n)
    assert float(full.value) == pytest.approx(float(G.trace()), rel=1e-10) and float(full.stderr) < 1e-12
    # a real budget: each estimator sees the dense GGN's products, probe for probe (their accuracy
    # and standard errors are tests/test_trace_estimators.py's)
    for method in ("hutchinson", "hutchpp", "xtrace"):
        t = ggn_trace(model, F.cross_entropy, data, method=method, n_matvecs=30, seed=2)
        ref = ESTIMATORS[method](lambda V: V @ G, torch.zeros(1, n, dtype=D), 30, torch.Generator().manual_seed(2))
        assert float(t.value) == pytest.approx(float(ref.value[0]), rel=1e-9), method
        assert float(t.stderr) == pytest.approx(float(ref.stderr[0]), rel=1e-6), method
    EF = dense_fisher(model, data, data[1][None])
    f = fisher_eigenvalues(model, F.cross_entropy, data, kind="empirical", k=2, tol=1e-10)
    torch.testing.assert_close(f.values, torch.linalg.eigvalsh(EF).flip(0)[:2], rtol=1e-8, atol=0)
    ft = fisher_trace(model, F.cross_entropy, data, kind="empirical", n_matvecs=3 * n)
    assert float(ft.value) == pytest.approx(float(EF.trace()), rel=1e-10)


def test_population_equals_loop_with_per_member_labels():
    models = [mlp(seed) for seed in range(3)]
    x, y = data_for(models[0])
    labels = torch.stack([y, torch.roll(y, 1), torch.randint(0, CLASSES, (N,), generator=torch.Generator().manual_seed(5))])
    pop = Population(models, dtype=D)
    eig = ggn_eigenvalues(pop, F.cross_entropy, (x, labels), k=2, tol=1e-10)
    tr = ggn_trace(pop, F.cross_entropy, (x, labels), n_matvecs=24)
    mc = fisher_trace(pop, F.cross_entropy, (x, labels), kind="mc", n_matvecs=24, mc_samples=2)
    ef = fisher_operator(pop, F.cross_entropy, (x, labels))
    V = torch.randn(3, 4, 51, generator=torch.Generator().manual_seed(0), dtype=D)
    for i, model in enumerate(models):
        data = (x, labels[i])
        torch.testing.assert_close(eig.values[i], ggn_eigenvalues(model, F.cross_entropy, data, k=2, tol=1e-10).values,
                                   rtol=1e-10, atol=0)
        torch.testing.assert_close(tr.value[i], ggn_trace(model, F.cross_entropy, data, n_matvecs=24).value,
                                   rtol=1e-10, atol=1e-14)
        alone = fisher_trace(model, F.cross_entropy, data, kind="mc", n_matvecs=24, mc_samples=2)
        torch.testing.assert_close(mc.value[i], alone.value, rtol=1e-10, atol=1e-14)  # same drawn labels
        expected = V[i] @ dense_fisher(model, data, labels[i][None])  # rows: F v (F symmetric)
        torch.testing.assert_close(ef.matmat(V)[i], expected, rtol=1e-10, atol=1e-13)


def test_registered_measures_on_modules_and_populations():
    models = [mlp(seed) for seed in range(2)]
    x, y = data_for(models[0])
    pop = Population(models, dtype=D)
    names = ["top_ggn_eigenvalue", "ggn_trace", "empirical_fisher_trace", "mc_fisher_trace", "hessian_trace_hutchpp"]
    for name in names:
        info = REGISTRY[name]
        assert info.cost == "hvp" and info.family == "sharpness" and info.lower_is_simpler is True and info.summary
    together = compute(names, pop, data=(x, y))
    for i, model in enumerate(models):
        alone = compute(names, model, data=(x, y))
        for name in names:
            assert alone[name].shape == () and together[name].shape == (2,)
            torch.testing.assert_close(together[name][i], alone[name], rtol=1e-9, atol=1e-14)
    G = dense_ggn(models[0], F.cross_entropy, (x, y))
    assert float(together["top_ggn_eigenvalue"][0]) == pytest.approx(float(torch.linalg.eigvalsh(G)[-1]), rel=1e-6)
    values, converged = compute(["top_ggn_eigenvalue"], pop, data=(x, y), with_convergence=True)
    assert converged["top_ggn_eigenvalue"].shape == (2,) and bool(converged["top_ggn_eigenvalue"].all())


def test_monte_carlo_fisher_refuses_float_targets():
    model = build_model("mlp", MLPConfig(hidden=[5]), 3, 1, generator(0, "init"))
    x, y = torch.randn(N, 3, dtype=D), torch.randn(N, dtype=D)
    with pytest.raises(ValueError, match="kind: the Monte-Carlo Fisher draws integer labels"):
        fisher_operator(model, lambda o, t: F.mse_loss(o.squeeze(-1), t), (x, y), kind="mc")
    with pytest.raises(ValueError, match="kind: expected 'empirical' or 'mc'"):
        fisher_operator(model, F.mse_loss, (x, y), kind="true")
    with pytest.raises(ValueError, match="mc_samples"):
        fisher_operator(mlp(), F.cross_entropy, data_for(mlp()), kind="mc", mc_samples=0)


# ---------------------------------------------------------------------------- scipy LinearOperator


@pytest.mark.parametrize("build", [hessian_operator, ggn_operator])
def test_as_linear_operator_gives_scipy_eigsh_the_dense_spectrum(problem, build):
    from scipy.sparse.linalg import LinearOperator, eigsh

    model, data, _ = problem
    op = build(model, F.cross_entropy, data)
    dense = columns(op)
    linear = op.as_linear_operator()
    assert isinstance(linear, LinearOperator) and linear.shape == (op.dim, op.dim) and linear.dtype == np.float64
    x = np.random.default_rng(0).standard_normal(op.dim)
    np.testing.assert_allclose(linear.matvec(x), dense.numpy() @ x, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(linear.matmat(np.eye(op.dim)[:, :3]), dense.numpy()[:, :3], rtol=1e-10, atol=1e-13)
    values = np.sort(eigsh(linear, k=4, which="LA", tol=1e-12, v0=np.ones(op.dim))[0])[::-1]
    np.testing.assert_allclose(values, torch.linalg.eigvalsh(dense).flip(0)[:4].numpy(), rtol=1e-9, atol=1e-12)


def test_as_linear_operator_of_a_population_names_its_member():
    models = [mlp(seed) for seed in range(2)]
    x, y = data_for(models[0])
    op = ggn_operator(Population(models, dtype=D), F.cross_entropy, (x, y))
    with pytest.raises(ValueError, match="member: a population of 2 members needs member=0..1"):
        op.as_linear_operator()
    with pytest.raises(ValueError, match="member: expected an integer in 0..1"):
        op.as_linear_operator(member=2)
    x1 = np.random.default_rng(1).standard_normal(51)
    np.testing.assert_allclose(op.as_linear_operator(member=1).matvec(x1),
                               dense_ggn(models[1], F.cross_entropy, (x, y)).numpy() @ x1, rtol=1e-10, atol=1e-13)


# ---------------------------------------------------------------------------- outliers (Papyan 2020)


def test_the_ggn_of_a_trained_10_class_mlp_has_about_c_outliers():
    """A 64-32-10 MLP (2,410 parameters) trained to loss ~4e-3 on 500 digits, float64.

    Band fixed before measuring: C − 1 ≤ count ≤ C + 1 (softmax's H_F has rank C − 1, so Papyan's
    "about C" may read C − 1). Measured: 9 here (largest ratio λ9/λ10 = 2.3). On two other nets of
    this size the rule gave 9 (64-16-16-10, 300 digits) and 8 (64-64-10, 1000 digits: the ratios
    there are 1.76 at 8 and 1.38 at 9 — the outliers are weakly separated at this size).
    """
    d = load_digits(n_train=500, n_test=360, seed=0)
    x, y = torch.as_tensor(d.x_train, dtype=D), torch.as_tensor(d.y_train)
    model = build_model("mlp", MLPConfig(hidden=[32]), 64, 10, generator(0, "init")).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    r = ggn_outliers(model, F.cross_entropy, (x, y))
    assert isinstance(r, OutlierResult) and r.n_classes == 10 and r.converged
    assert r.eigenvalues.shape == (30,) and r.ratios.shape == (29,)
    assert int(r.ratios.argmax()) + 1 == r.count
    assert 9 <= r.count <= 11, (r.count, r.eigenvalues.tolist())
