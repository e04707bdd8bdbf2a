"""Weight spectra (measures/spectra.py) against laws with known answers: Pareto samples, a
heavy-tailed random matrix, Gaussian matrices (Marchenko–Pastur), a planted low-rank signal (BBP),
and scipy's Pareto fit and KS statistic."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from implicitreg.measures import REGISTRY, compute, weight_spectra, weight_spectrum
from implicitreg.measures.spectra import marchenko_pastur_density, marchenko_pastur_median, power_law_fit
from implicitreg.population import Population

D = torch.float64


@pytest.mark.parametrize("alpha", [2.5, 3.5, 5.0])
def test_pareto_samples_recover_alpha(alpha):
    """20000 draws from the Pareto density (α − 1) x^(−α) on x ≥ 1 (inverse CDF). With x_min chosen by
    KS the fitted α's spread over seeds 0–9 is 0.008 / 0.013 / 0.021 (α = 2.5 / 3.5 / 5; largest
    error 0.042), so ±0.1 holds at ≥ 4.8 standard deviations. (At 5000 draws α = 5 spreads by 0.074
    and misses ±0.1 in some seeds: the MLE's own error (α − 1)/√n grows with α.)"""
    rng = np.random.default_rng(0)
    x = (1 - rng.random(20_000)) ** (-1 / (alpha - 1))
    fit_alpha, xmin, n_tail, ks = power_law_fit(x)
    assert abs(fit_alpha - alpha) <= 0.1
    assert n_tail >= 5000 and xmin < 1.5


def test_a_body_below_the_tail_is_cut_off_by_the_ks_choice_of_xmin():
    """2000 uniform draws on [0.1, 1] below 4000 Pareto draws (α = 3) above 1: x_min cuts the body off
    (x_min ≥ 0.95: a candidate inside the body bends the CDF away from any power law) and α stays
    within 0.1. Over seeds 0–9, x_min lies in 0.997–1.49 (KS may also cut into the tail, which costs
    points, not bias) and α within 0.05 of 3."""
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.uniform(0.1, 1.0, 2000), (1 - rng.random(4000)) ** (-1 / 2.0)])
    fit_alpha, xmin, n_tail, _ = power_law_fit(x)
    assert abs(fit_alpha - 3.0) <= 0.1
    assert xmin >= 0.95


def test_alpha_and_ks_distance_match_scipy():
    """At the chosen x_min, α is scipy's Pareto MLE (b = α − 1 with loc 0, scale x_min fixed) and the
    distance is scipy.stats.kstest's against that law: independent code for eq. 3.1 and §3.3."""
    from scipy import stats

    rng = np.random.default_rng(2)
    x = (1 - rng.random(800)) ** (-1 / 1.8) * 0.3
    alpha, xmin, n_tail, ks = power_law_fit(x)
    tail = np.sort(x)[np.sort(x) >= xmin]
    assert tail.size == n_tail
    b, _, _ = stats.pareto.fit(tail, floc=0, fscale=xmin)
    assert alpha == pytest.approx(1 + b, rel=1e-10)
    assert ks == pytest.approx(stats.kstest(tail, stats.pareto(b, scale=xmin).cdf).statistic, rel=1e-10)


def test_heavy_tailed_random_matrix_recovers_alpha():
    """W 2000×1000 with iid symmetric Pareto entries, P(|w| > t) = t^(−μ), μ = 1 (Martin & Mahoney's
    "very heavy-tailed" class, μ < 2): the top eigenvalues of WᵀW/N are dominated by single squared
    entries, whose tail index is μ/2, so the ESD's density tail has α = 1 + μ/2 = 1.5. Over seeds
    0–19 every fit lies within 0.075 of 1.5 (tails of ~200–370 eigenvalues, standard error ~0.03)."""
    rng = np.random.default_rng(0)
    w = rng.choice([-1.0, 1.0], size=(2000, 1000)) * (1 - rng.random((2000, 1000))) ** -1.0
    spectrum = weight_spectrum(w)
    assert abs(spectrum.alpha - 1.5) <= 0.1
    assert spectrum.alpha_stderr == pytest.approx((spectrum.alpha - 1) / math.sqrt(spectrum.n_tail))
    assert spectrum.eigenvalues.shape == (1000,)


@pytest.mark.parametrize("shape", [(1000, 500), (400, 800), (600, 600)])
def test_gaussian_matrix_has_no_spikes_and_the_mp_edge(shape):
    """iid N(0, σ² = 0.49): the fitted bulk edge is within 2% of σ²(1 + √(M/N))², no eigenvalue lies
    above the Tracy–Widom margin (measured false-spike rate of the 99% margin: 14 of 1000 matrices
    200×100, 2 of 200 at 1000×500, with the fitted σ²), and the eigenvalues follow the MP law (KS distance to its CDF
    below 0.03: the eigenvalues are rigid, their empirical CDF is O(log M / M) from the law)."""
    from scipy.integrate import quad

    n, m = shape
    big, small = max(shape), min(shape)
    g = torch.Generator().manual_seed(3)
    w = 0.7 * torch.randn(n, m, generator=g, dtype=D)
    spectrum = weight_spectrum(w)
    q = small / big
    predicted = 0.49 * (1 + math.sqrt(q)) ** 2
    assert abs(spectrum.mp_bulk_edge / predicted - 1) <= 0.02
    assert spectrum.n_spikes == 0
    assert spectrum.eigenvalues.shape == (small,)
    torch.testing.assert_close(torch.as_tensor(spectrum.eigenvalues),
                               torch.linalg.eigvalsh(w.T @ w / big if n >= m else w @ w.T / big))
    ev = spectrum.eigenvalues[::25]
    cdf = np.array([quad(lambda t: marchenko_pastur_density(np.array([t]), q, 0.49)[0], 0, e, limit=200)[0]
                    for e in ev])
    assert np.max(np.abs(cdf - (np.arange(0, small, 25) + 0.5) / small)) < 0.03


def test_mp_density_integrates_to_one_and_has_its_median():
    from scipy.integrate import quad

    for q in (0.1, 0.5, 1.0):
        lo, hi = (1 - math.sqrt(q)) ** 2, (1 + math.sqrt(q)) ** 2
        f = lambda t: marchenko_pastur_density(np.array([t]), q)[0]  # noqa: E731
        assert quad(f, lo, hi, limit=200)[0] == pytest.approx(1, abs=1e-7)
        assert quad(f, lo, marchenko_pastur_median(q), limit=200)[0] == pytest.approx(0.5, abs=1e-7)
    assert marchenko_pastur_median(1e-6) == pytest.approx(1, abs=1e-2)  # q → 0: the law concentrates at σ²


def test_planted_rank_three_signal_gives_three_spikes():
    """W = G + √N Σ_k θ_k u_k v_kᵀ, G iid N(0, 1) 1000×500, orthonormal u, v, θ = (1.5, 2, 3).
    With q = M/N = 0.5 the BBP threshold is θ > q^(1/4) = 0.84, so the weakest spike is 1.8× above
    it; above the threshold the spike of WᵀW/N sits at (1 + θ²)(q + θ²)/θ² (Benaych-Georges &
    Nadakuditi 2012) — 3.97, 5.63, 10.56, against a bulk edge of 2.91. Exactly 3 spikes; their
    values within 8% of the limit (finite-N fluctuations are O(1/√N) ~ 3%; seeds 0–2 give ≤ 3.7%)."""
    n, m, q = 1000, 500, 0.5
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(n, m, generator=g, dtype=D)
    u, _ = torch.linalg.qr(torch.randn(n, 3, generator=g, dtype=D))
    v, _ = torch.linalg.qr(torch.randn(m, 3, generator=g, dtype=D))
    theta = torch.tensor([1.5, 2.0, 3.0], dtype=D)
    spectrum = weight_spectrum(noise + math.sqrt(n) * (u * theta) @ v.T)
    assert spectrum.n_spikes == 3
    limit = ((1 + theta ** 2) * (q + theta ** 2) / theta ** 2).numpy()
    np.testing.assert_allclose(spectrum.eigenvalues[-3:], limit, rtol=0.08)
    assert abs(spectrum.sigma2 - 1) < 0.02  # the median ignores the spikes


def test_bad_matrix_is_refused_with_its_shape():
    with pytest.raises(ValueError, match="2-d"):
        weight_spectrum(torch.zeros(3, 4, 5))


def mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(30, 40), nn.ReLU(), nn.Linear(40, 20), nn.ReLU(), nn.Linear(20, 5)).to(D)


def test_summaries_are_the_layer_fits_on_modules_and_populations():
    models = [mlp(i) for i in range(3)]
    names = ["mean_alpha", "alpha_weighted", "log_spectral_norm", "n_spikes"]
    for model in models:
        spectra = weight_spectra(model)
        assert [sp.shape for sp in spectra] == [(40, 30), (20, 40), (5, 20)]
        for sp, layer in zip(spectra, [model[0], model[2], model[4]]):
            top = torch.linalg.matrix_norm(layer.weight.detach(), ord=2).item() ** 2 / max(layer.weight.shape)
            assert sp.lambda_max == pytest.approx(top, rel=1e-12)
        values = compute(names, model)
        assert values["mean_alpha"].item() == pytest.approx(np.mean([sp.alpha for sp in spectra]), rel=1e-12)
        assert values["alpha_weighted"].item() == pytest.approx(
            np.mean([sp.alpha * math.log10(sp.lambda_max) for sp in spectra]), rel=1e-12)
        assert values["log_spectral_norm"].item() == pytest.approx(
            np.mean([math.log10(sp.lambda_max) for sp in spectra]), rel=1e-12)
        assert values["n_spikes"].item() == sum(sp.n_spikes for sp in spectra)
    population = Population(models, dtype=D)
    stacked = compute(names, population)
    for name in names:
        assert stacked[name].shape == (3,)
        torch.testing.assert_close(stacked[name], torch.stack([compute([name], m)[name] for m in models]))
    assert all(REGISTRY[name].cost == "cheap" for name in names)


def test_a_model_of_single_output_columns_is_refused():
    model = nn.Sequential(nn.Linear(5, 1))
    assert "single singular value" in REGISTRY["mean_alpha"].refusal(model, (5,))
    assert REGISTRY["n_spikes"].refusal(model, (5,)) is None


def test_summaries_are_tracked_along_training():
    """train.track takes them at their cadence, finite, on every member of a population, and the
    spectral norms move with training (their values against references: the tests above)."""
    from implicitreg.config import DataConfig, MLPConfig, TrainConfig
    from implicitreg.data import load_dataset
    from implicitreg.plan import Group, Member
    from implicitreg.train import train_population

    data = load_dataset(DataConfig(name="digits", n_train=64, n_test=32)).tensors("cpu", D)
    names = ["mean_alpha", "alpha_weighted", "log_spectral_norm", "n_spikes"]
    train = TrainConfig(optimizer="gd", lr=0.5, max_steps=20, eval_every=10, dtype="float64",
                        target_train_acc=None, track=names, track_every=10)
    group = Group("mlp", MLPConfig(hidden=[16]), DataConfig(), train, (Member("a", 0, 0.5), Member("b", 1, 0.5)))
    for result in train_population(group, data):
        tracked = {}
        for step, name, value in result.metrics:
            if name in names:
                tracked.setdefault(name, {})[step] = value
        assert sorted(tracked) == sorted(names)
        for name in names:
            assert sorted(tracked[name]) == [10, 20] and all(math.isfinite(v) for v in tracked[name].values())
        assert tracked["log_spectral_norm"][20] != tracked["log_spectral_norm"][10]


def test_xmin_minimizes_the_ks_distance_over_all_candidates_with_scipy():
    """The x_min choice against scipy: for every candidate (leaving ≥ 10 samples), scipy's Pareto MLE
    of the tail and kstest's distance; the chosen x_min attains their minimum."""
    from scipy import stats

    rng = np.random.default_rng(4)
    x = np.sort(np.concatenate([rng.uniform(0.2, 1.0, 60), (1 - rng.random(140)) ** (-1 / 1.5)]))
    distances = []
    for xmin in x[:-9]:
        tail = x[x >= xmin]
        b, _, _ = stats.pareto.fit(tail, floc=0, fscale=xmin)
        distances.append(stats.kstest(tail, stats.pareto(b, scale=xmin).cdf).statistic)
    _, xmin, _, ks = power_law_fit(x)
    assert xmin == x[int(np.argmin(distances))]
    assert ks == pytest.approx(min(distances), rel=1e-10)
