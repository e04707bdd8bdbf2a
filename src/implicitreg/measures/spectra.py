"""Weight spectra: empirical spectral densities of the weight layers, heavy-tailed power-law fits
and Marchenko–Pastur bulk fits (Martin & Mahoney 2021; WeightWatcher).

**Normalization.** A weight matrix W is n×m (``nn.Linear``: [out, in]; a ``Conv1d`` kernel as the
matrix [C_out, C_in·k] of :meth:`~implicitreg.measures.layers.WeightLayer.matrix`). With
N = max(n, m), M = min(n, m) and the aspect ratio q = M/N ≤ 1, its *empirical spectral density*
(ESD) is the set of the M eigenvalues of X = WᵀW/N (or WWᵀ/N, whichever is M×M): λ_i = s_i²/N for
the singular values s_i of W. For W with iid entries of variance σ², the ESD tends to the
Marchenko–Pastur law on [λ₋, λ₊], λ± = σ²(1 ± √q)² = σ²(1 ± √(M/N))² — the brief's
σ²(1 + √(N/M))² with the roles of its N and M swapped: the ratio under the root is always the
smaller dimension over the larger one, and the divisor of WᵀW is the larger one.

**Power law** (Clauset, Shalizi & Newman 2009, continuous case). The tail λ ≥ x_min is fitted by
the density p(λ) = (α − 1)/x_min · (λ/x_min)^(−α): for each candidate x_min (every eigenvalue
leaving at least ``min_tail`` in the tail) the maximum-likelihood α̂ = 1 + n_tail / Σ ln(λ_i/x_min)
(their eq. 3.1), and x_min is the candidate whose fitted law is closest to the tail in the
Kolmogorov–Smirnov distance D = max |S(λ) − P(λ)| (their §3.3; both sides of each step of the
empirical CDF S, as ``scipy.stats.kstest``). The standard error is (α̂ − 1)/√n_tail (their eq. 3.2).
α is the exponent of the *density*, as WeightWatcher reports it (2 ≲ α ≲ 6 for trained layers).

**Marchenko–Pastur bulk.** σ² is fitted from the median of the ESD: median(λ) = σ² · m_q, with
m_q the median of the unit-variance MP law of ratio q (found from its CDF by quadrature) —
a few spikes move the median by O(spikes/M) quantiles only, where the mean λ̄ = ‖W‖²_F/(NM) would
carry their whole mass. A *spike* is an eigenvalue above the bulk edge by more than the
finite-size fluctuation of the largest eigenvalue of pure noise (Johnstone 2001): the largest
eigenvalue of WᵀW for Gaussian W is μ + s·TW₁ with μ = (√(N−1) + √M)², s = (√(N−1) + √M)
(1/√(N−1) + 1/√M)^(1/3), so the threshold is σ²(μ + τ s)/N with τ = 2.0234, the 99% quantile of
Tracy–Widom TW₁ (Bejan 2005): a pure-noise layer shows a false spike about once in 100. A planted
signal is detectable when it exceeds the BBP threshold (Baik, Ben Arous & Péché 2005;
Benaych-Georges & Nadakuditi 2012): for W = σ(G + √N Σ θ_k u_k v_kᵀ), θ_k > q^(1/4).

**Summaries** (WeightWatcher's, Martin, Peng & Mahoney 2021), over the weight layers whose α is
defined: ``mean_alpha`` = mean α_l; ``alpha_weighted`` = mean α_l · log₁₀ λmax_l;
``log_spectral_norm`` = mean log₁₀ λmax_l; λmax_l = ‖W_l‖₂²/N_l in the normalization above (so
they differ from WeightWatcher's default, un-normalized eigenvalues of WᵀW, by log₁₀ N_l per
layer). The brief's "Σ α·log λmax" is the same up to the factor 1/L; the mean is what the paper
and WeightWatcher's summary report. ``n_spikes`` is the total count over layers.

References:
    Clauset, Shalizi & Newman, "Power-law distributions in empirical data", SIAM Review 2009.
    Martin & Mahoney, "Implicit self-regularization in deep neural networks", JMLR 2021.
    Martin, Peng & Mahoney, "Predicting trends in the quality of state-of-the-art neural networks
    without access to training or testing data", Nature Communications 2021.
    Marchenko & Pastur, "Distribution of eigenvalues for some sets of random matrices", 1967.
    Johnstone, "On the distribution of the largest eigenvalue in principal components analysis", 2001.
    Bejan, "Largest eigenvalues and sample covariance matrices. Tracy–Widom and Painlevé II", 2005.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from implicitreg.measures.core import Stacked, register
from implicitreg.measures.layers import folded, layered_model, weight_layers

#: 99% quantile of the Tracy–Widom law TW₁ (Bejan 2005, Table 1): the spike threshold's margin.
TW1_Q99 = 2.0234


@dataclass(frozen=True)
class WeightSpectrum:
    """The spectrum of one weight matrix and its fits (see the module docstring for conventions).

    Attributes:
        eigenvalues: the ESD, the M eigenvalues of WᵀW/N, ascending (numpy float64 [M]).
        shape: (n, m) of the matrix; N = max(n, m), M = min(n, m).
        alpha: power-law exponent of the tail's density (NaN when fewer than 2 positive eigenvalues).
        alpha_stderr: (α − 1)/√n_tail. xmin: the tail's lower end. n_tail: eigenvalues ≥ xmin.
        ks_distance: Kolmogorov–Smirnov distance between the tail and the fitted law.
        sigma2: the Marchenko–Pastur variance fitted to the bulk (from the median).
        mp_bulk_edge: λ₊ = σ²(1 + √(M/N))². spike_threshold: σ²(μ + τ s)/N (Tracy–Widom margin).
        n_spikes: eigenvalues above ``spike_threshold``.
    """

    eigenvalues: np.ndarray
    shape: tuple[int, int]
    alpha: float
    alpha_stderr: float
    xmin: float
    n_tail: int
    ks_distance: float
    sigma2: float
    mp_bulk_edge: float
    spike_threshold: float
    n_spikes: int

    @property
    def lambda_max(self) -> float:
        return float(self.eigenvalues[-1])

    @property
    def ratio(self) -> float:
        """q = M/N ≤ 1."""
        return min(self.shape) / max(self.shape)

    def histogram(self, bins: int = 50) -> tuple[np.ndarray, np.ndarray]:
        """The ESD as a density histogram: (bin edges [bins + 1], density [bins])."""
        density, edges = np.histogram(self.eigenvalues, bins=bins, density=True)
        return edges, density


def marchenko_pastur_density(x, ratio: float, sigma2: float = 1.0) -> np.ndarray:
    """The Marchenko–Pastur density of ratio q = M/N ∈ (0, 1] and variance σ² at x (array):
    √((λ₊ − x)(x − λ₋)) / (2π σ² q x) on [λ₋, λ₊], 0 elsewhere."""
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio: expected q = M/N in (0, 1], got {ratio!r}")
    x = np.asarray(x, dtype=np.float64)
    lo, hi = sigma2 * (1 - math.sqrt(ratio)) ** 2, sigma2 * (1 + math.sqrt(ratio)) ** 2
    inside = (x > lo) & (x < hi)
    out = np.zeros_like(x)
    xi = x[inside]
    out[inside] = np.sqrt((hi - xi) * (xi - lo)) / (2 * math.pi * sigma2 * ratio * xi)
    return out


@lru_cache(maxsize=256)
def marchenko_pastur_median(ratio: float) -> float:
    """The median of the unit-variance Marchenko–Pastur law of ratio q (quadrature + root finding)."""
    from scipy.integrate import quad
    from scipy.optimize import brentq

    lo, hi = (1 - math.sqrt(ratio)) ** 2, (1 + math.sqrt(ratio)) ** 2

    def cdf(t: float) -> float:
        # x = lo + (hi − lo)(1 − cos φ)/2 removes the square-root endpoints: smooth integrand in φ
        def integrand(phi: float) -> float:
            x = lo + (hi - lo) * (1 - math.cos(phi)) / 2
            jac = (hi - lo) * math.sin(phi) / 2
            return math.sqrt(max((hi - x) * (x - lo), 0.0)) / (2 * math.pi * ratio * x) * jac if x > 0 else 0.0

        end = math.acos(min(max(1 - 2 * (t - lo) / (hi - lo), -1.0), 1.0))
        return quad(integrand, 0.0, end, epsabs=1e-13, epsrel=1e-12, limit=200)[0]

    return float(brentq(lambda t: cdf(t) - 0.5, lo, hi, xtol=1e-14, rtol=1e-13))


def power_law_fit(values, min_tail: int = 10) -> tuple[float, float, int, float]:
    """Clauset–Shalizi–Newman fit of a continuous power-law tail to positive ``values``.

    Args:
        values: samples (array-like [n]); non-positive ones are dropped (the law lives on x > 0).
        min_tail: the fewest samples a candidate tail may hold (clipped to the number of positive
            samples, so that tiny spectra still get a — noisy — fit).

    Returns:
        (α, x_min, n_tail, KS distance); NaNs (and n_tail 0) when fewer than 2 distinct positive values.
    """
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    x = x[x > 0]
    n = x.size
    nan = (float("nan"), float("nan"), 0, float("nan"))
    if n < 2 or x[0] == x[-1]:
        return nan
    logs = np.log(x)
    suffix = np.cumsum(logs[::-1])[::-1]  # Σ_{j ≥ i} ln x_j
    best = nan
    last = n - max(2, min(int(min_tail), n))  # candidate i leaves n − i ≥ min_tail samples in the tail
    for i in range(last + 1):
        if i > 0 and x[i] == x[i - 1]:
            continue  # the same x_min as the previous candidate
        k = n - i
        spread = suffix[i] - k * logs[i]
        if spread <= 0:
            continue  # every tail value equals x_min: no finite α
        alpha = 1 + k / spread
        cdf = 1 - np.exp((1 - alpha) * (logs[i:] - logs[i]))  # P(x) = 1 − (x/x_min)^(1−α)
        steps = np.arange(1, k + 1) / k
        d = max(float(np.max(steps - cdf)), float(np.max(cdf - (steps - 1 / k))))
        if math.isnan(best[3]) or d < best[3]:  # ties keep the smaller x_min (the longer tail)
            best = (float(alpha), float(x[i]), k, d)
    return best


def _mp_fit(eigenvalues: np.ndarray, n: int, m: int) -> tuple[float, float, float, int]:
    """(σ², λ₊, spike threshold, number of spikes) of an ESD of an n×m matrix."""
    big, small = max(n, m), min(n, m)
    q = small / big
    sigma2 = float(np.median(eigenvalues)) / marchenko_pastur_median(q)
    edge = sigma2 * (1 + math.sqrt(q)) ** 2
    a, b = math.sqrt(max(big - 1, 1)), math.sqrt(small)
    mu, s = (a + b) ** 2, (a + b) * (1 / a + 1 / b) ** (1 / 3)
    threshold = sigma2 * (mu + TW1_Q99 * s) / big
    return sigma2, edge, threshold, int(np.sum(eigenvalues > threshold))


def weight_spectrum(matrix, min_tail: int = 10) -> WeightSpectrum:
    """The ESD of one weight matrix with its power-law and Marchenko–Pastur fits.

    Args:
        matrix: an n×m tensor or array (computed in float64).
        min_tail: the fewest eigenvalues the power-law tail may hold (see :func:`power_law_fit`).
    """
    w = torch.as_tensor(matrix).detach()
    if w.dim() != 2 or min(w.shape) < 1:
        raise ValueError(f"matrix: expected a 2-d n×m matrix with n, m ≥ 1, got shape {tuple(w.shape)}")
    n, m = w.shape
    s = torch.linalg.svdvals(w.to(device="cpu", dtype=torch.float64)).numpy()
    return _spectrum(np.sort(s ** 2 / max(n, m)), (n, m), min_tail)


def _spectrum(eigenvalues: np.ndarray, shape: tuple[int, int], min_tail: int) -> WeightSpectrum:
    alpha, xmin, n_tail, ks = power_law_fit(eigenvalues, min_tail)
    stderr = (alpha - 1) / math.sqrt(n_tail) if n_tail else float("nan")
    sigma2, edge, threshold, spikes = _mp_fit(eigenvalues, *shape)
    return WeightSpectrum(eigenvalues, shape, alpha, stderr, xmin, n_tail, ks, sigma2, edge, threshold, spikes)


def layer_spectra(s: Stacked, min_tail: int = 10) -> list[list[WeightSpectrum]]:
    """[member][layer] spectra of the weight layers of a stacked model (BatchNorm must be folded)."""
    layers = weight_layers(s)
    per_layer = []
    for layer in layers:
        w = layer.matrix().detach().to(device="cpu", dtype=torch.float64)  # [P, n, m]
        n, m = w.shape[1:]
        evs = torch.linalg.svdvals(w).pow(2).div(max(n, m)).numpy()  # batched over members
        per_layer.append([_spectrum(np.sort(ev), (n, m), min_tail) for ev in evs])
    return [list(member) for member in zip(*per_layer)]


def weight_spectra(model, input_shape=None, min_tail: int = 10) -> list[WeightSpectrum] | list[list[WeightSpectrum]]:
    """Spectra of every weight layer (``nn.Linear`` / ``nn.Conv1d``; BatchNorm folded, as
    :func:`~implicitreg.measures.layers.spectral_norms`): a list over layers for a module, a list
    over members of such lists for a population. Layer order: ``weight_layer_names``."""
    s = folded(model, input_shape)
    spectra = layer_spectra(s, min_tail)
    return spectra[0] if s.single else spectra


def _summary(model, input_shape, reduce) -> torch.Tensor:
    s = folded(model, input_shape)
    values = [reduce(member) for member in layer_spectra(s)]
    like = next(iter(s.params.values()))
    return s.finish(torch.tensor(values, dtype=torch.float64, device=like.device))


def _mean(values) -> float:
    values = [v for v in values if math.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def _log10(x: float) -> float:
    return math.log10(x) if x > 0 else float("nan")  # a zero layer has no spectrum: left out of the mean


def spectral_model(model, input_shape=None) -> str | None:
    """Why the weight-spectrum measures do not apply (None when they do): the per-layer checks of
    :func:`~implicitreg.measures.layers.layered_model`, and at least one weight layer with 2 or
    more eigenvalues (min(n, m) ≥ 2), without which no layer has a power-law fit."""
    reason = layered_model(model, input_shape)
    if reason is not None:
        return reason
    layers = weight_layers(folded(model, input_shape))
    if all(min(layer.matrix().shape[1:]) < 2 for layer in layers):
        return "every weight layer has a single singular value (min(out, in) = 1): no layer has a spectrum to fit"
    return None


@register("mean_alpha", "spectrum", lower_is_simpler=True, applies=spectral_model)
def mean_alpha(model, input_shape=None) -> torch.Tensor:
    """Mean over weight layers of the power-law exponent α of the ESD tail (Martin & Mahoney 2021)."""
    return _summary(model, input_shape, lambda layers: _mean([sp.alpha for sp in layers]))


@register("alpha_weighted", "norm-product", lower_is_simpler=True, applies=spectral_model)
def alpha_weighted(model, input_shape=None) -> torch.Tensor:
    """WeightWatcher's α̂: mean over weight layers of α · log₁₀ λmax (ESD of WᵀW/N)."""
    return _summary(model, input_shape,
                    lambda layers: _mean([sp.alpha * _log10(sp.lambda_max) for sp in layers]))


@register("log_spectral_norm", "norm-product", lower_is_simpler=True, applies=layered_model)
def log_spectral_norm(model, input_shape=None) -> torch.Tensor:
    """Mean over weight layers of log₁₀ λmax, λmax = ‖W‖₂²/max(n, m) (WeightWatcher's summary)."""
    return _summary(model, input_shape, lambda layers: _mean([_log10(sp.lambda_max) for sp in layers]))


@register("n_spikes", "spectrum", lower_is_simpler=None, applies=layered_model)
def n_spikes(model, input_shape=None) -> torch.Tensor:
    """Eigenvalues above the Marchenko–Pastur bulk edge (Tracy–Widom margin), summed over weight layers."""
    return _summary(model, input_shape, lambda layers: float(sum(sp.n_spikes for sp in layers)))


__all__ = ["TW1_Q99", "WeightSpectrum", "alpha_weighted", "layer_spectra", "log_spectral_norm",
           "marchenko_pastur_density", "marchenko_pastur_median", "mean_alpha", "n_spikes", "power_law_fit",
           "spectral_model", "weight_spectra", "weight_spectrum"]
