"""Reference tests of the trace estimators (measures/trace_estimators.py) and of ``hessian_trace``'s
methods: exactness on low-rank operators, XTrace and Hutch++ against naive transcriptions of the
papers' algorithms on dense float64 matrices, a population against a loop, and — on the dense
Hessian of a trained digits MLP (1,482 parameters, float64) — accuracy at 99 products and the
honesty of each estimator's standard error over 200 seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from implicitreg.config import MLPConfig
from implicitreg.data.digits import load_digits
from implicitreg.measures.curvature import hessian_operator, hessian_trace
from implicitreg.measures.trace_estimators import (
    ESTIMATORS,
    TraceResult,
    estimate_trace,
    hutchinson,
    hutchpp,
    rademacher,
    sphere,
)
from implicitreg.models import build_model
from implicitreg.seeding import generator

D = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def with_spectrum(eigs, seed: int = 0) -> torch.Tensor:
    n = len(eigs)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=D))
    return q @ torch.diag(torch.as_tensor(eigs, dtype=D)) @ q.T


def dense_matmat(A: torch.Tensor):
    """V [P, S, n] → A_p V_p for a stack A [P, n, n] (or one [n, n] shared)."""
    return lambda V: V @ A.transpose(-1, -2)


def low_rank(n: int, rank: int, seed: int) -> torch.Tensor:
    """Indefinite, rank ``rank``: eigenvalues of both signs spread over two decades, the rest 0."""
    g = torch.Generator().manual_seed(100 + seed)
    values = torch.logspace(0, 2, rank, dtype=D) * torch.where(torch.rand(rank, generator=g) < 0.3, -1.0, 1.0)
    return with_spectrum(values.tolist() + [0.0] * (n - rank), seed)


# ---------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("method, m, rank", [("hutchpp", 30, 9), ("hutchpp", 31, 10), ("xtrace", 30, 14),
                                             ("xtrace", 31, 14)])
def test_exact_on_operators_of_low_rank(method, m, rank):
    # Hutch++ with m products sketches ⌊m/3⌋ directions, XTrace's leave-one-out bases ⌊m/2⌋ − 1:
    # an operator of at most that rank is captured whole and the Hutchinson terms vanish
    n = 80
    A = torch.stack([low_rank(n, rank, seed) for seed in range(3)])
    like = torch.zeros(3, n, dtype=D)
    r = estimate_trace(dense_matmat(A), like, m, method, torch.Generator().manual_seed(0))
    exact = torch.diagonal(A, dim1=1, dim2=2).sum(1)
    scale = torch.linalg.eigvalsh(A).abs().amax(1)
    # rounding: a QR of an n × m sketch and products of norm ~‖A‖ — 1e-12 of the largest eigenvalue
    torch.testing.assert_close(r.value, exact, rtol=0, atol=1e-12 * float(scale.max()))
    assert bool((r.stderr <= 1e-12 * scale).all())
    assert r.n_hvp == (m if method == "hutchpp" else 2 * (m // 2))


def test_hutchinson_is_not_exact_on_the_same_operator():
    # the contrast that makes the test above mean something: 30 Rademacher probes of a rank-9 operator
    A = low_rank(80, 9, 0)
    r = hutchinson(dense_matmat(A), torch.zeros(1, 80, dtype=D), 30, torch.Generator().manual_seed(0))
    assert abs(float(r.value[0] - A.trace())) > 1e-3 * float(A.abs().max())


def test_hutchinson_from_quadratic_forms_equals_it_from_products():
    """An operator's own quadratic forms (the written-out MLP Hessian's) replace zᵀ(Az): the same
    probes give the same draws, to rounding (1e-12 of |tr| on an 80 × 80 float64 matrix)."""
    A = torch.stack([low_rank(80, 9, 0), with_spectrum(torch.linspace(-1, 3, 80).tolist(), 1)])
    like = torch.zeros(2, 80, dtype=D)
    forms = lambda V: torch.einsum("psi,pij,psj->ps", V, A, V)  # noqa: E731
    via_products = estimate_trace(dense_matmat(A), like, 40, "hutchinson", torch.Generator().manual_seed(3))
    via_forms = estimate_trace(dense_matmat(A), like, 40, "hutchinson", torch.Generator().manual_seed(3), forms)
    scale = float(A.diagonal(dim1=1, dim2=2).sum(1).abs().max())
    assert float((via_forms.value - via_products.value).abs().max()) <= 1e-12 * scale
    assert float((via_forms.stderr - via_products.stderr).abs().max()) <= 1e-12 * scale
    with pytest.raises(ValueError, match=r"forms: expected a result of shape \(2, 40\), got \(2, 40, 80\)"):
        hutchinson(dense_matmat(A), like, 40, torch.Generator().manual_seed(3), dense_matmat(A))


# ---------------------------------------------------------------------------- against naive transcriptions


def naive_hutchpp(A: torch.Tensor, m: int, gen: torch.Generator) -> tuple[float, float]:
    """Meyer et al. (2021), Algorithm 1, written out with explicit n × n projectors."""
    n = A.shape[0]
    k = m // 3
    S = rademacher(gen, k, n).T
    G = rademacher(gen, m - 2 * k, n).T
    Q, _ = torch.linalg.qr(A @ S)
    proj = torch.eye(n, dtype=D) - Q @ Q.T
    draws = torch.diagonal(G.T @ proj @ A @ proj @ G)
    return float(torch.trace(Q.T @ A @ Q) + draws.mean()), float(draws.std() / math.sqrt(len(draws)))


def naive_xtrace(A: torch.Tensor, m: int, gen: torch.Generator) -> tuple[float, float]:
    """Epperly, Tropp & Webber (2024), Algorithm 1.2 with the "improved" normalization of spherical
    probes, written out with one QR of n × (s − 1) per left-out probe."""
    n = A.shape[0]
    s = m // 2
    omega = sphere(gen, s, n).T
    Y = A @ omega
    estimates = []
    for i in range(s):
        Qi, _ = torch.linalg.qr(torch.cat([Y[:, :i], Y[:, i + 1:]], dim=1))
        u = omega[:, i] - Qi @ (Qi.T @ omega[:, i])
        estimates.append(torch.trace(Qi.T @ A @ Qi) + (n - (s - 1)) / (u @ u) * (u @ A @ u))
    e = torch.stack(estimates)
    return float(e.mean()), float(e.std() / math.sqrt(s))


@pytest.mark.parametrize("method, naive", [("hutchpp", naive_hutchpp), ("xtrace", naive_xtrace)])
@pytest.mark.parametrize("m", [12, 25])
def test_batched_estimators_equal_the_papers_algorithms(method, naive, m):
    g = torch.Generator().manual_seed(3)
    A = with_spectrum((torch.randn(60, generator=g, dtype=D) * torch.logspace(1, -1, 60, dtype=D)).tolist())
    value, stderr = naive(A, m, torch.Generator().manual_seed(7))
    r = ESTIMATORS[method](dense_matmat(A), torch.zeros(1, 60, dtype=D), m, torch.Generator().manual_seed(7))
    assert isinstance(r, TraceResult)
    assert float(r.value[0]) == pytest.approx(value, rel=1e-10, abs=1e-12)
    assert float(r.stderr[0]) == pytest.approx(stderr, rel=1e-8, abs=1e-12)


@pytest.mark.parametrize("method", ["hutchinson", "hutchpp", "xtrace"])
def test_a_population_equals_a_loop_and_the_probes_are_shared(method):
    A = torch.stack([with_spectrum(torch.linspace(-1, 5, 40).tolist(), seed) * (seed + 1) for seed in range(3)])
    calls = []

    def counted(V):
        calls.append(tuple(V.shape))
        return dense_matmat(A)(V)

    together = estimate_trace(counted, torch.zeros(3, 40, dtype=D), 30, method, torch.Generator().manual_seed(5))
    # at most three batched calls (sketch, its products, the Hutchinson part), each for all members
    assert len(calls) <= 3 and all(shape[0] == 3 for shape in calls)
    assert sum(shape[1] for shape in calls) == together.n_hvp
    for p in range(3):
        alone = estimate_trace(dense_matmat(A[p : p + 1]), torch.zeros(1, 40, dtype=D), 30, method,
                               torch.Generator().manual_seed(5))
        torch.testing.assert_close(together.value[p], alone.value[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(together.stderr[p], alone.stderr[0], rtol=1e-10, atol=1e-12)


def test_float32_operators_get_float32_results_from_float64_algebra():
    A = with_spectrum(torch.linspace(0, 3, 50).tolist())
    A32 = A.float()
    r = hutchpp(lambda V: torch.einsum("ij,psj->psi", A32, V), torch.zeros(1, 50), 48,
                torch.Generator().manual_seed(0))
    assert r.value.dtype == torch.float32
    # the sketch captures 16 of 50 directions: not exact, but float32 products cost ~1e-6 only
    assert abs(float(r.value[0]) - float(A.trace())) < 4 * float(r.stderr[0]) + 1e-4


# ---------------------------------------------------------------------------- on a trained network's Hessian


@pytest.fixture(scope="module")
def trained():
    """A 64-16-16-10 ReLU MLP (1,482 parameters) trained to train loss ~5e-4 on 300 digits, float64."""
    d = load_digits(n_train=300, n_test=360, seed=0)
    x, y = torch.as_tensor(d.x_train, dtype=D), torch.as_tensor(d.y_train)
    model = build_model("mlp", MLPConfig(hidden=[16, 16]), 64, 10, generator(0, "init")).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(500):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    op = hessian_operator(model, F.cross_entropy, (x, y))
    H = op.matmat(torch.eye(op.dim, dtype=D).unsqueeze(0))[0]
    return model, (x, y), (H + H.T) / 2


@pytest.mark.parametrize("method", ["hutchinson", "hutchpp", "xtrace"])
def test_hessian_trace_is_the_estimator_on_the_hessian(trained, method):
    # the HVP path gives what the generic estimator gives on the dense Hessian, probe for probe
    model, data, H = trained
    r = hessian_trace(model, F.cross_entropy, data, method=method, n_matvecs=30, seed=4)
    ref = ESTIMATORS[method](dense_matmat(H), torch.zeros(1, H.shape[0], dtype=D), 30, torch.Generator().manual_seed(4))
    assert r.value.shape == r.stderr.shape == () and r.n_hvp == ref.n_hvp
    assert float(r.value) == pytest.approx(float(ref.value[0]), rel=1e-9)
    assert float(r.stderr) == pytest.approx(float(ref.stderr[0]), rel=1e-6)
    batched = hessian_trace(model, F.cross_entropy, data, method=method, n_matvecs=30, seed=4, probe_batch=7)
    assert float(batched.value) == pytest.approx(float(r.value), rel=1e-12)


SEEDS = 200


@pytest.fixture(scope="module")
def errors(trained):
    """Errors and reported standard errors of every estimator at 99 products, seeds 0..199: [seeds] each."""
    _, _, H = trained
    exact = float(H.trace())
    like = torch.zeros(1, H.shape[0], dtype=D)
    out = {}
    for method, estimator in ESTIMATORS.items():
        runs = [estimator(dense_matmat(H), like, 99, torch.Generator().manual_seed(seed)) for seed in range(SEEDS)]
        out[method] = (np.array([float(r.value[0]) - exact for r in runs]), np.array([float(r.stderr[0]) for r in runs]))
    return out


def test_hutchpp_beats_hutchinson_at_99_products(errors):
    # Meyer et al.: the error falls with the Frobenius mass outside the top ~33 eigenvectors, which
    # for a trained network is a small part (measured: mean |error| ~20× smaller here)
    hutch, hpp = np.abs(errors["hutchinson"][0]), np.abs(errors["hutchpp"][0])
    assert hpp.mean() < hutch.mean()
    assert hpp[:30].mean() < hutch[:30].mean()  # already over the first 30 seeds


def coverage(errors, method) -> float:
    err, stderr = errors[method]
    return float(np.mean(np.abs(err) <= 2 * stderr))


@pytest.mark.parametrize("method", ["hutchinson", "hutchpp"])
def test_the_reported_standard_error_is_honest(errors, method):
    # a Gaussian error within 2 standard errors 95% of the time; ≥ 90% over 200 seeds asks the
    # stderr not to be optimistic (binomial sd at 95%: 1.5%, so 90% is 3 sd below)
    assert coverage(errors, method) >= 0.9
    err, stderr = errors[method]
    assert abs(err.mean()) < 3 * np.sqrt(np.mean(err**2) / len(err))  # unbiased: the mean error is noise


@pytest.mark.xfail(strict=True, reason="XTrace's own error estimate (std of its leave-one-out estimates / √s, the "
                   "paper's) is optimistic on a network's Hessian: the estimates share probes; measured coverage "
                   "of |error| ≤ 2·stderr 84% over 1000 seeds on this net, 88% on a 2,410-parameter one")
def test_xtrace_standard_error_is_honest(errors):
    assert coverage(errors, "xtrace") >= 0.9


def test_xtrace_is_unbiased_and_accurate(errors):
    err, _ = errors["xtrace"]
    assert abs(err.mean()) < 3 * np.sqrt(np.mean(err**2) / len(err))
    assert np.abs(err).mean() < np.abs(errors["hutchinson"][0]).mean()


# ---------------------------------------------------------------------------- errors


def test_bad_arguments_say_what_was_expected(trained):
    model, data, _ = trained
    with pytest.raises(ValueError, match="method: expected one of"):
        hessian_trace(model, F.cross_entropy, data, method="girard")
    with pytest.raises(ValueError, match="n_matvecs: hutchpp needs an integer of at least 4"):
        hessian_trace(model, F.cross_entropy, data, method="hutchpp", n_matvecs=3)
    with pytest.raises(ValueError, match="n_samples: hutchinson needs"):
        hessian_trace(model, F.cross_entropy, data, n_samples=1)
    with pytest.raises(ValueError, match="n_samples: the same as n_matvecs"):
        hessian_trace(model, F.cross_entropy, data, n_samples=10, n_matvecs=20)
    with pytest.raises(ValueError, match="probe_batch"):
        hessian_trace(model, F.cross_entropy, data, n_matvecs=10, probe_batch=0)
    with pytest.raises(ValueError, match=r"like: expected a \[P, n\]"):
        hutchinson(lambda V: V, torch.zeros(5, dtype=D), 10, torch.Generator())
    with pytest.raises(ValueError, match="matmat: expected a result of shape"):
        hutchinson(lambda V: V[:, :1], torch.zeros(1, 5, dtype=D), 10, torch.Generator())
