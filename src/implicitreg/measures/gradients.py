"""Gradient statistics from per-sample gradients: the gradient noise scale, gradient diversity and
the gradient signal-to-noise ratio, on a module or every member of a population.

**Per-sample gradients.** g_i = ∇_θ ℓ(f(x_i; θ), y_i), with ℓ(·) = ``loss_fn`` on the batch of the
one sample (x_i, y_i) — for a mean-reduction loss this is the i-th term of the mean training loss,
whose gradient is then ḡ = (1/N) Σ g_i. Computed with ``torch.func``: ``grad`` of a
``functional_call`` of the model on flat parameters, ``vmap`` ped over samples and members.
Parameters are flattened in ``named_parameters()`` order (as the Hessian measures').

**Gradient noise scale** (McCandlish, Kaplan, Amodei et al. 2018): B_simple = tr(Σ)/|G|², with G the
true gradient and Σ the covariance of one sample's gradient. Their Appendix A estimates both from
the squared norms of mean gradients at two batch sizes B_small < B_big, which are unbiased:
|G|² ≈ (B_big |G_big|² − B_small |G_small|²)/(B_big − B_small) and
tr(Σ) ≈ (|G_small|² − |G_big|²)/(1/B_small − 1/B_big). Per-sample gradients give B_small = 1
(|G_small|² averaged over the N samples: (1/N) Σ ‖g_i‖²) and B_big = N (|G_big|² = ‖ḡ‖²):

    tr Σ̂ = N/(N − 1) · ((1/N) Σ ‖g_i‖² − ‖ḡ‖²)      (the unbiased sample covariance's trace)
    |Ĝ|² = (N ‖ḡ‖² − (1/N) Σ ‖g_i‖²)/(N − 1) = ‖ḡ‖² − tr Σ̂ / N

both unbiased for samples drawn iid from the data distribution; B̂_simple = tr Σ̂ / |Ĝ|², a ratio of
unbiased estimates (consistent, not unbiased). When |Ĝ|² ≤ 0 the N samples do not resolve the
gradient from its noise, and B̂_simple is reported as +inf.

**Gradient diversity** (Yin et al. 2018): Δ = Σ_i ‖g_i‖² / ‖Σ_i g_i‖², in [1/N, ∞); large when the
samples' gradients are near-orthogonal (mini-batch SGD then speeds up with the batch size).

**Gradient signal-to-noise ratio** (Liu et al. 2020, "GSNR"): per parameter j, r_j = ḡ_j² / s_j²
with s_j² the unbiased sample variance of g_ij over samples; reported as the mean of r_j over the
parameters whose gradient varies (s_j² > 0: a parameter of a dead unit has no ratio).

References:
    McCandlish, Kaplan, Amodei et al., "An empirical model of large-batch training", 2018.
    Yin, Pananjady, Lam, Papailiopoulos, Ramchandran & Bartlett, "Gradient diversity: a key
    ingredient for scalable distributed learning", AISTATS 2018.
    Liu, Wang, Yang et al., "Understanding why neural networks generalize well through GSNR of
    parameters", ICLR 2020.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import grad, vmap

from implicitreg.measures.core import register
from implicitreg.measures.curvature_operator import LossFn, flat_model

#: Bytes of per-sample gradients held at once by the statistics (chunks of samples beyond it).
CHUNK_BYTES = 256 * 2 ** 20


def _per_sample_fn(fm, loss_fn: LossFn):
    """(θ [P, n], x [b, ...], y) → per-sample gradients [P, b, n], vmapped over members and samples."""
    forward = fm.forward

    def sample_loss(theta: torch.Tensor, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return loss_fn(forward(theta, xi.unsqueeze(0)), yi.unsqueeze(0))

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    return vmap(per_sample, in_dims=(0, None, 0 if fm.per_member_y else None))


def _chunks(fm, n_members: int, chunk_size: int | None):
    """Sample slices of at most ``chunk_size`` (default: :data:`CHUNK_BYTES` of gradients)."""
    n, dim = fm.x.shape[0], fm.flat.shape[1]
    if chunk_size is None:
        chunk_size = max(1, CHUNK_BYTES // max(1, n_members * dim * fm.flat.element_size()))
    elif int(chunk_size) < 1:
        raise ValueError(f"chunk_size: expected a positive number of samples, got {chunk_size!r}")
    return [slice(i, min(n, i + int(chunk_size))) for i in range(0, n, int(chunk_size))]


def _targets(fm, rows: slice) -> torch.Tensor:
    return fm.y[:, rows] if fm.per_member_y else fm.y[rows]


def per_sample_gradients(model, loss_fn: LossFn, data, chunk_size: int | None = None) -> torch.Tensor:
    """Gradients of every sample's loss: [N, n] for a module, [P, N, n] for a population.

    Args:
        model: an ``nn.Module`` (eval mode) or a population.
        loss_fn: ``loss_fn(outputs, y)`` → the mean loss; it is applied to one sample at a time.
        data: ``(x, y)``: x [N, ...]; y [N, ...], or [P, N, ...] per member of a population.
        chunk_size: samples per vmapped pass (None: all at once — the result is held anyway).
    """
    fm = flat_model(model, data)
    fn = _per_sample_fn(fm, loss_fn)
    rows = [slice(None)] if chunk_size is None else _chunks(fm, fm.stacked.size, chunk_size)
    g = torch.cat([fn(fm.flat, fm.x[r], _targets(fm, r)) for r in rows], dim=1)
    return g[0] if fm.stacked.single else g


@dataclass(frozen=True)
class GradientStats:
    """Per-sample gradient statistics; each field 0-d for a module, [P] for a population.

    Attributes:
        noise_scale: B̂_simple = tr Σ̂ / |Ĝ|² (+inf where |Ĝ|² ≤ 0).
        trace_cov: tr Σ̂, the unbiased trace of the per-sample gradient covariance.
        grad_norm2: |Ĝ|² = ‖ḡ‖² − tr Σ̂/N, the unbiased squared norm of the true gradient.
        mean_grad_norm2: ‖ḡ‖², the squared norm of the full-batch gradient.
        diversity: Σ‖g_i‖² / ‖Σ g_i‖². snr: mean over parameters of ḡ_j² / s_j².
        n_samples: N.
    """

    noise_scale: torch.Tensor
    trace_cov: torch.Tensor
    grad_norm2: torch.Tensor
    mean_grad_norm2: torch.Tensor
    diversity: torch.Tensor
    snr: torch.Tensor
    n_samples: int


def gradient_statistics(model, loss_fn: LossFn, data, chunk_size: int | None = None) -> GradientStats:
    """Noise scale, diversity and signal-to-noise ratio of the per-sample gradients (module docstring).

    The gradients are reduced to their sums Σ g_i, Σ g_i² (elementwise) and Σ ‖g_i‖² chunk by chunk
    (``chunk_size`` samples; default: :data:`CHUNK_BYTES` of gradients at a time), so memory does
    not grow with N. Needs N ≥ 2.
    """
    fm = flat_model(model, data)
    n = fm.x.shape[0]
    if n < 2:
        raise ValueError(f"data: gradient statistics need N ≥ 2 samples, got N = {n}")
    fn = _per_sample_fn(fm, loss_fn)
    P, dim = fm.flat.shape
    total = torch.zeros(P, dim, dtype=torch.float64, device=fm.flat.device)
    squares = torch.zeros_like(total)
    for rows in _chunks(fm, P, chunk_size):
        g = fn(fm.flat, fm.x[rows], _targets(fm, rows)).to(torch.float64)  # [P, b, n]
        total += g.sum(1)
        squares += g.pow(2).sum(1)
    mean = total / n
    mean_norm2 = mean.pow(2).sum(1)  # ‖ḡ‖²
    mean_sq_norm = squares.sum(1) / n  # (1/N) Σ ‖g_i‖²
    trace_cov = n / (n - 1) * (mean_sq_norm - mean_norm2)
    grad_norm2 = mean_norm2 - trace_cov / n
    noise_scale = torch.where(grad_norm2 > 0, trace_cov / grad_norm2, torch.full_like(grad_norm2, float("inf")))
    diversity = mean_sq_norm / (n * mean_norm2)
    variance = (squares - n * mean.pow(2)) / (n - 1)  # s_j², unbiased
    # a parameter whose gradient is the same on every sample (a dead unit: 0) has no ratio; the
    # threshold is the rounding left in s_j² by the cancellation above
    varies = variance > 64 * torch.finfo(torch.float64).eps * squares / (n - 1)
    ratio = torch.where(varies, mean.pow(2) / torch.where(varies, variance, torch.ones_like(variance)),
                        torch.zeros_like(variance))
    snr = ratio.sum(1) / varies.sum(1)  # NaN only where no parameter varies
    s = fm.stacked
    return GradientStats(s.finish(noise_scale), s.finish(trace_cov), s.finish(grad_norm2), s.finish(mean_norm2),
                         s.finish(diversity), s.finish(snr), n)


_NEEDS = ("params", "data", "loss")


@register("gradient_noise_scale", "optimization", needs=_NEEDS, lower_is_simpler=None, cost="forward")
def gradient_noise_scale(model, loss_fn: LossFn, data, chunk_size: int | None = None) -> torch.Tensor:
    """Gradient noise scale B_simple = tr Σ / |G|² (McCandlish et al. 2018), unbiased per-sample estimates."""
    return gradient_statistics(model, loss_fn, data, chunk_size).noise_scale


@register("gradient_diversity", "optimization", needs=_NEEDS, lower_is_simpler=None, cost="forward")
def gradient_diversity(model, loss_fn: LossFn, data, chunk_size: int | None = None) -> torch.Tensor:
    """Gradient diversity Σ‖g_i‖² / ‖Σ g_i‖² of the per-sample gradients (Yin et al. 2018)."""
    return gradient_statistics(model, loss_fn, data, chunk_size).diversity


@register("gradient_snr", "optimization", needs=_NEEDS, lower_is_simpler=None, cost="forward")
def gradient_snr(model, loss_fn: LossFn, data, chunk_size: int | None = None) -> torch.Tensor:
    """Mean over parameters of the gradient signal-to-noise ratio ḡ_j² / s_j² (Liu et al. 2020)."""
    return gradient_statistics(model, loss_fn, data, chunk_size).snr


__all__ = ["CHUNK_BYTES", "GradientStats", "gradient_diversity", "gradient_noise_scale", "gradient_snr",
           "gradient_statistics", "per_sample_gradients"]
