"""The Hessian's spectral density by stochastic Lanczos quadrature (SLQ), Gaussian-broadened.

For a unit probe u, m Lanczos steps on H from u give the m-point Gauss quadrature of u's spectral
measure Σ_j (uᵀq_j)² δ(λ − λ_j): nodes θ_i (the eigenvalues of the tridiagonal T_m) and weights
w_i (the squared first components of T_m's eigenvectors, summing to 1), exact for polynomials of
degree < 2m (Golub & Meurant 2010). For a random u, E[(uᵀq_j)²] = 1/n: averaged over probes this
is the empirical spectral distribution (1/n) Σ_j δ(λ − λ_j) (Lin, Saad & Yang 2016; Ghorbani,
Krishnan & Xiao 2019; Papyan 2020). Broadened by a Gaussian of width σ it is a smooth density:

    φ(t) = (1/n_v) Σ_probes Σ_i w_i N(t; θ_i, σ²).

Lanczos runs with full reorthogonalization by default (:func:`~implicitreg.measures.lanczos.lanczos`):
the extreme Ritz values of each probe then converge to the outlying eigenvalues themselves,
without the spurious copies of the plain recurrence. All probes of all members run as one batch
(rows member × probe), their HVPs one vmapped pass (:meth:`CurvatureOperator.matmat`).

References:
    Golub & Meurant, *Matrices, Moments and Quadrature with Applications* (2010). Lin, Saad & Yang,
    "Approximating spectral densities of large matrices", SIAM Review 58(1), 2016. Ghorbani,
    Krishnan & Xiao, "An investigation into neural net optimization via Hessian eigenvalue
    density", ICML 2019. Papyan, "Traces of class/cross-class structure pervade deep learning
    spectra", JMLR 2020.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from implicitreg.measures.curvature_operator import CurvatureOperator, LossFn
from implicitreg.measures.hessian import hessian_operator
from implicitreg.measures.lanczos import lanczos


@dataclass(frozen=True)
class DensityResult:
    """A spectral density by stochastic Lanczos quadrature.

    Shapes are for a module; a population has a leading member axis [P, ...] on every tensor.

    Attributes:
        nodes: [n_probes · m] the quadrature nodes (Ritz values) of all probes, probe by probe
            (probe i's m nodes at i·m … (i + 1)·m − 1).
        weights: [n_probes · m] their weights: each probe's sum to 1/n_probes, so all sum to 1.
            The pair is the spectral measure Σ weights δ(λ − nodes). Nodes of a probe whose Krylov
            space became invariant before m steps are padding with weight 0.
        grid: [G] evaluation points, from the smallest node − 4σ to the largest + 4σ.
        density: [G] the broadened density on ``grid`` (integrates to ~1).
        sigma: 0-d the Gaussian width used.
        n_probes: probes per member; m: Lanczos steps per probe (``n_iter``, or fewer where the
            dimension is smaller); n_hvp: Hessian-vector products per member (int, or [P]).
    """

    nodes: torch.Tensor
    weights: torch.Tensor
    grid: torch.Tensor
    density: torch.Tensor
    sigma: torch.Tensor
    n_probes: int
    m: int
    n_hvp: int | torch.Tensor

    def per_probe(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Nodes and weights probe by probe: [..., n_probes, m] each, each probe's weights summing to 1."""
        shape = (*self.nodes.shape[:-1], self.n_probes, self.m)
        return self.nodes.reshape(shape), self.weights.reshape(shape) * self.n_probes

    def outliers(self, k: int) -> torch.Tensor:
        """The k largest Ritz values of the first probe, largest first: [..., k].

        With full reorthogonalization and enough steps these are the k largest eigenvalues (the
        extreme Ritz values converge first); a probe holds each eigenvalue once.
        """
        nodes, weights = self.per_probe()
        first = torch.where(weights[..., 0, :] > 0, nodes[..., 0, :], torch.full_like(nodes[..., 0, :], -math.inf))
        return first.topk(k, dim=-1).values


def hessian_density(model, loss_fn: LossFn, data, n_probes: int = 10, n_iter: int = 100, *, sigma: float | None = None,
                    grid_size: int = 1000, seed: int = 0, reorthogonalize: bool = True,
                    probe_batch: int | None = None) -> DensityResult:
    """The Hessian's spectral density by stochastic Lanczos quadrature, broadened by a Gaussian.

    Args:
        model: an ``nn.Module`` or a Population. loss_fn, data: as
            :func:`~implicitreg.measures.hessian.hessian_operator`.
        n_probes: random start vectors (Gaussian, shared by all members, drawn from ``seed``).
        n_iter: Lanczos steps (HVPs) per probe, at most the parameter count.
        sigma: the broadening's standard deviation; None: 1% of each member's spectral range
            (largest minus smallest node).
        grid_size: points of the density's grid.
        reorthogonalize: full reorthogonalization (memory: P·n_probes·m·n float64 numbers); False
            runs the plain recurrence (two vectors per probe), whose outliers may repeat.
        probe_batch: most probes per vmapped HVP pass (memory); None:
            :meth:`~implicitreg.measures.curvature_operator.CurvatureOperator.matmat`'s default.

    Returns:
        :class:`DensityResult`.
    """
    return operator_density(hessian_operator(model, loss_fn, data), n_probes=n_probes, n_iter=n_iter, sigma=sigma,
                            grid_size=grid_size, seed=seed, reorthogonalize=reorthogonalize, probe_batch=probe_batch)


def operator_density(op: CurvatureOperator, n_probes: int = 10, n_iter: int = 100, *, sigma: float | None = None,
                     grid_size: int = 1000, seed: int = 0, reorthogonalize: bool = True,
                     probe_batch: int | None = None) -> DensityResult:
    """SLQ density of any :class:`CurvatureOperator` (Hessian, GGN, Fisher); see :func:`hessian_density`."""
    for name, value, least in (("n_probes", n_probes, 1), ("n_iter", n_iter, 1), ("grid_size", grid_size, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name}: expected an integer ≥ {least}, got {value!r}")
    if sigma is not None and not (isinstance(sigma, (int, float)) and sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma: expected a positive width or None, got {sigma!r}")
    P, n = op.size, op.dim
    generator = torch.Generator().manual_seed(seed)
    probes = torch.randn(n_probes, n, generator=generator, dtype=torch.float64).to(op.flat)
    v0 = probes.expand(P, -1, -1).reshape(P * n_probes, n)  # rows: member-major, probe-minor

    def matvec(v: torch.Tensor) -> torch.Tensor:
        return op.matmat(v.reshape(P, n_probes, n), block=probe_batch).reshape(P * n_probes, n)

    # tol 0: every probe takes its n_iter steps (or stops where its Krylov space is invariant);
    # check_ratio 1: no convergence check is needed, so they come at 1, 2, 4, … steps only
    result = lanczos(matvec, v0, k=1, tol=0.0, max_iter=min(n_iter, n), reorthogonalize=reorthogonalize,
                     check_ratio=1.0, generator=generator)
    theta, w = result.quadrature()  # [P·n_probes, m], in float64 (the recurrence's dtype)
    m = theta.shape[1]
    nodes, weights = theta.reshape(P, n_probes * m), w.reshape(P, n_probes * m) / n_probes
    real = weights > 0
    hi = torch.where(real, nodes, torch.full_like(nodes, -math.inf)).amax(1)
    lo = torch.where(real, nodes, torch.full_like(nodes, math.inf)).amin(1)
    if sigma is None:
        width = 0.01 * (hi - lo)
        width = torch.where(width > 0, width, torch.ones_like(width))  # a single-point spectrum: unit width
    else:
        width = torch.full_like(hi, float(sigma))
    fraction = torch.linspace(0, 1, grid_size, dtype=nodes.dtype, device=nodes.device)
    grid = (lo - 4 * width)[:, None] + fraction * ((hi - lo) + 8 * width)[:, None]  # [P, G]
    z = (grid[:, :, None] - nodes[:, None, :]) / width[:, None, None]  # [P, G, n_probes·m]
    kernel = torch.exp(-0.5 * z**2) / (width[:, None, None] * math.sqrt(2 * math.pi))
    density = (kernel * weights[:, None, :]).sum(-1)
    n_hvp = result.n_matvec.reshape(P, n_probes).sum(1)
    dtype = op.flat.dtype
    out = [t.to(dtype) for t in (nodes, weights, grid, density, width)]
    if op.stacked.single:
        return DensityResult(*(t[0] for t in out), n_probes, m, int(n_hvp[0]))
    return DensityResult(*out, n_probes, m, n_hvp)


__all__ = ["DensityResult", "hessian_density", "operator_density"]
