"""Stochastic trace estimators of P symmetric operators seen only through batched products.

Three estimators of tr(A) from a budget of m matrix-vector products, generic in the operator
(Hessian, GGN, Fisher: :mod:`~implicitreg.measures.hessian`, :mod:`~implicitreg.measures.ggn`):

- :func:`hutchinson` — the mean of zᵀAz over m Rademacher probes z (Hutchinson 1989; Girard 1989).
  Its variance is 2 Σ_{i≠j} A_ij² / m: the whole Frobenius mass off the diagonal.
- :func:`hutchpp` — Hutch++ (Meyer, Musco, Musco & Woodruff 2021): m/3 products sketch the range
  of A (Q = orth(A S)), m/3 give tr(QᵀAQ) exactly, and the rest run Hutchinson on the deflated
  (I − QQᵀ)A(I − QQᵀ). Its variance is that of the part of A outside its top ~m/3 eigenvectors, so
  a spectrum with a few large outliers (a trained network's Hessian) costs far fewer products.
- :func:`xtrace` — XTrace (Epperly, Tropp & Webber 2024): m/2 probes ω_i and their products
  Y = AΩ; for each i the exact trace of A on span(Y without column i) plus a Hutchinson term of ω_i
  on the rest, averaged over i (every probe serves both roles: exchangeability). The probes are the
  paper's default: Gaussian vectors normalized to length √n, with its "improved" scaling of each
  residual term by (n − r_i) / ‖(I − P_i) ω_i‖².

All three are exact (to rounding) on an operator whose rank is below what their sketch spans:
rank < ⌊m/3⌋ for Hutch++, rank < ⌊m/2⌋ for XTrace (their Hutchinson terms vanish).

**Standard errors.** Hutchinson: the sample standard deviation of the m draws over √m. Hutch++:
the same of its Hutchinson part (m − 2⌊m/3⌋ draws): tr(QᵀAQ) is exact given Q, so this is the
estimator's standard error conditional on the sketch — the error the estimate actually has, since
given Q it is unbiased with exactly that variance. XTrace: the paper's, the standard deviation of
its m/2 leave-one-out estimates over √(m/2); those estimates share probes and are not independent,
so this is an estimate of the error, not a conditional standard error (Epperly, Tropp & Webber
2024, §2.2; how honest it is on a network's Hessian is measured in tests/test_trace_estimators.py).

**Batching.** Every estimator asks for its products in at most three calls of
``matmat(V [P, S, n]) → A V [P, S, n]`` (row p, s by member p's own operator), so an operator that
vectorizes over probes (a vmapped HVP) computes each call in one pass. The probes are drawn once
from ``generator`` (on the CPU, in float64) and shared by all members, so a population's estimate
equals a loop over its members. The algebra (QR, projections, the leave-one-out bases) runs in
float64; products are made in the operator's own dtype.

References:
    Hutchinson, "A stochastic estimator of the trace of the influence matrix for Laplacian
    smoothing splines" (1989). Meyer, Musco, Musco & Woodruff, "Hutch++: Optimal stochastic trace
    estimation", SOSA 2021. Epperly, Tropp & Webber, "XTrace: making the most of every sample in
    stochastic trace estimation", SIAM J. Matrix Anal. Appl. 45(1), 2024.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from implicitreg.measures.lanczos import recurrence_dtype

MatMat = Callable[[torch.Tensor], torch.Tensor]
Forms = Callable[[torch.Tensor], torch.Tensor]
Method = Literal["hutchinson", "hutchpp", "xtrace"]
METHODS: tuple[str, ...] = ("hutchinson", "hutchpp", "xtrace")

# Singular values of a leave-one-out sketch below this multiple of eps·σ_max are rounding: the
# sketch has fewer directions than probes (an operator of low rank).
_RANK_TOL = 1e3


@dataclass(frozen=True)
class TraceResult:
    """A stochastic estimate of tr(A) (the Hessian's, the GGN's, a Fisher's).

    Attributes:
        value: the estimate: 0-d for a module, [P] for a population.
        stderr: its standard error, same shape (see the module docstring for each method's).
        n_hvp: products (matrix-vector, e.g. HVPs) per member; for Hutchinson on an operator with
            quadratic forms (the written-out MLP Hessian), forms zᵀAz, each cheaper than a product.
    """

    value: torch.Tensor
    stderr: torch.Tensor
    n_hvp: int


def rademacher(generator: torch.Generator, count: int, n: int) -> torch.Tensor:
    """[count, n] independent ±1 entries, in float64 on the CPU (so CPU and CUDA runs agree)."""
    return (torch.randint(0, 2, (count, n), generator=generator) * 2 - 1).to(torch.float64)


def sphere(generator: torch.Generator, count: int, n: int) -> torch.Tensor:
    """[count, n] independent vectors uniform on the sphere of radius √n, in float64 on the CPU."""
    g = torch.randn(count, n, generator=generator, dtype=torch.float64)
    return g * (math.sqrt(n) / g.norm(dim=1, keepdim=True))


def hutchinson(matmat: MatMat, like: torch.Tensor, n_matvecs: int, generator: torch.Generator,
               forms: Forms | None = None) -> TraceResult:
    """Hutchinson's estimate: the mean of zᵀAz over ``n_matvecs`` shared Rademacher probes.

    Args:
        matmat: V [P, S, n] → A V [P, S, n], member p's symmetric A_p applied to its rows.
        like: any [P, n] tensor with the operator's members, dimension, dtype and device.
        n_matvecs: products per member (probes), at least 2 (for the standard error).
        generator: draws the probes.
        forms: V [P, S, n] → zᵀA_p z [P, S], where the operator has quadratic forms cheaper than its
            products (:meth:`~implicitreg.measures.curvature_operator.CurvatureOperator.quadratic_forms`);
            None: from ``matmat``.

    Returns:
        :class:`TraceResult`, value and stderr [P] in ``like``'s dtype, ``n_hvp = n_matvecs``.
    """
    P, n, work = _shape(like, n_matvecs, 2, "hutchinson")
    z = rademacher(generator, n_matvecs, n).to(device=like.device, dtype=work).expand(P, -1, -1)
    if forms is None:
        draws = (z * _apply(matmat, z, like)).sum(-1)  # [P, m]
    else:
        draws = forms(z.to(like.dtype)).to(work)
        if draws.shape != z.shape[:2]:
            raise ValueError(f"forms: expected a result of shape {tuple(z.shape[:2])}, got {tuple(draws.shape)}")
    return _mean(draws, 0.0, like, n_matvecs)


def hutchpp(matmat: MatMat, like: torch.Tensor, n_matvecs: int, generator: torch.Generator) -> TraceResult:
    """Hutch++ (Meyer et al. 2021, Algorithm 1 for symmetric A): tr(QᵀAQ) + Hutchinson on the deflated A.

    With m = ``n_matvecs``: k = min(⌊m/3⌋, n) Rademacher sketch vectors S give Q = orth(A S) (k
    products), tr(QᵀAQ) takes k more, and the remaining g = m − 2k probes G estimate
    tr((I − QQᵀ)A(I − QQᵀ)) by Hutchinson on (I − QQᵀ)G. Exact when rank A ≤ k.

    Args:
        matmat, like, generator: as :func:`hutchinson`.
        n_matvecs: at least 4 (one sketch vector and two Hutchinson probes for the standard error).

    Returns:
        :class:`TraceResult` [P]; stderr is the Hutchinson part's (std of its g draws / √g).
    """
    P, n, work = _shape(like, n_matvecs, 4, "hutchpp")
    k = min(n_matvecs // 3, n)
    g = n_matvecs - 2 * k
    sketch = rademacher(generator, k, n).to(device=like.device, dtype=work).expand(P, -1, -1)
    probes = rademacher(generator, g, n).to(device=like.device, dtype=work)
    Q, _ = torch.linalg.qr(_apply(matmat, sketch, like).transpose(1, 2))  # [P, n, k]: A's dominant range
    Qr = Q.transpose(1, 2)  # [P, k, n]
    exact = (Qr * _apply(matmat, Qr, like)).sum((1, 2))  # tr(QᵀAQ) [P]
    deflated = probes - torch.bmm(torch.bmm(probes.expand(P, -1, -1), Q), Qr)  # (I − QQᵀ)G as rows [P, g, n]
    draws = (deflated * _apply(matmat, deflated, like)).sum(-1)  # [P, g]
    return _mean(draws, exact, like, n_matvecs)


def xtrace(matmat: MatMat, like: torch.Tensor, n_matvecs: int, generator: torch.Generator) -> TraceResult:
    """XTrace (Epperly, Tropp & Webber 2024): the mean of s = ⌊m/2⌋ leave-one-out Hutch++ estimates.

    Probes ω_1..ω_s (uniform on the sphere of radius √n), Y = AΩ = QR (s products), Z = AQ (s
    more), H = QᵀAQ. For each i, P_i projects onto span(Y without column i) — in Q's coordinates
    the range of R without column i: all but the direction of row i of R⁻¹ (the paper's formula),
    or, where R is singular (an operator of rank < s), an SVD that drops directions at rounding
    level — and the i-th estimate is

        tr(P_i A) + (n − r_i) / ‖(I − P_i)ω_i‖² · ((I − P_i)ω_i)ᵀ A (I − P_i)ω_i,    r_i = rank P_i,

    every term from Y, Z and Q without further products (A(I − P_i)ω_i = y_i − Z Π_i Qᵀω_i). P_i
    does not depend on ω_i, so each estimate is unbiased; the normalization is the paper's
    "improved" one for spherical probes.

    Args:
        matmat, like, generator: as :func:`hutchinson`.
        n_matvecs: at least 4 (two probes); an odd budget leaves one product unused.

    Returns:
        :class:`TraceResult` [P], ``n_hvp = 2s``; stderr is the paper's std of the s estimates / √s.
    """
    P, n, work = _shape(like, n_matvecs, 4, "xtrace")
    s = min(n_matvecs // 2, n)
    omega = sphere(generator, s, n).to(device=like.device, dtype=work).expand(P, -1, -1)  # rows [P, s, n]
    Y = _apply(matmat, omega, like)  # rows y_i = A ω_i
    Q, R = torch.linalg.qr(Y.transpose(1, 2))  # Q [P, n, s], R [P, s, s]
    Qr = Q.transpose(1, 2)
    Z = _apply(matmat, Qr, like)  # rows A q_j
    H = torch.bmm(Qr, Z.transpose(1, 2))
    H = (H + H.transpose(1, 2)) / 2  # QᵀAQ, symmetric up to rounding
    W = torch.bmm(Qr, omega.transpose(1, 2))  # [P, s, s]: column i is Qᵀω_i
    Pi, rank = _leave_one_out(R, like.dtype)  # [P, i, s, s]: P_i in Q's coordinates, and its rank [P, s]
    w = W.transpose(1, 2)  # [P, i, s]: Qᵀω_i
    coef = (Pi @ w.unsqueeze(-1)).squeeze(-1)  # Π_i Qᵀω_i [P, i, s]
    u = omega - torch.bmm(coef, Qr)  # (I − P_i) ω_i
    Au = Y - torch.bmm(coef, Z)  # A (I − P_i) ω_i
    residual = (u * Au).sum(-1)  # [P, s]
    scale = (n - rank).to(work) / (u * u).sum(-1)
    estimates = (Pi * H.unsqueeze(1)).sum((-1, -2)) + scale * residual  # tr(Π_i H) + scaled residual term
    return _mean(estimates, 0.0, like, 2 * s)


ESTIMATORS: dict[str, Callable[[MatMat, torch.Tensor, int, torch.Generator], TraceResult]] = {
    "hutchinson": hutchinson, "hutchpp": hutchpp, "xtrace": xtrace}

#: the fewest products each method accepts
MIN_MATVECS = {"hutchinson": 2, "hutchpp": 4, "xtrace": 4}


def estimate_trace(matmat: MatMat, like: torch.Tensor, n_matvecs: int, method: Method = "hutchinson",
                   generator: torch.Generator | None = None, forms: Forms | None = None) -> TraceResult:
    """tr(A_p) for every member by ``method`` ("hutchinson", "hutchpp" or "xtrace"); see the module
    docstring. ``forms``: the operator's quadratic forms, which Hutchinson's estimate uses (see :func:`hutchinson`)."""
    if method not in ESTIMATORS:
        raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    if method == "hutchinson":
        return hutchinson(matmat, like, n_matvecs, generator, forms)
    return ESTIMATORS[method](matmat, like, n_matvecs, generator)


def _leave_one_out(R: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Projectors Π_i [P, s, s, s] onto the range of R [P, s, s] without its column i, and their ranks [P, s].

    R invertible (Y of full rank): the range misses one direction, the unit vector ŝ_i normal to
    every other column, i.e. row i of R⁻¹ (the paper's formula): Π_i = I − ŝ_iŝ_iᵀ, rank s − 1.
    Otherwise (an operator of rank < s, or a sketch too ill-conditioned to invert) an SVD of each
    R without column i, dropping directions at rounding level.
    """
    P, s, _ = R.shape
    eye = torch.eye(s, dtype=R.dtype, device=R.device)
    sigma = torch.linalg.svdvals(R)
    if bool((sigma[:, -1] > sigma[:, 0] * torch.finfo(dtype).eps ** 0.5).all()):
        normal = torch.linalg.solve_triangular(R, eye.expand(P, s, s), upper=True)  # R⁻¹: row i ⟂ columns j ≠ i
        normal = normal / normal.norm(dim=-1, keepdim=True)
        return eye - normal.unsqueeze(-1) * normal.unsqueeze(-2), torch.full((P, s), s - 1, device=R.device)
    keep = torch.tensor([[j for j in range(s) if j != i] for i in range(s)], device=R.device)
    U, sv, _ = torch.linalg.svd(R[:, :, keep].permute(0, 2, 1, 3), full_matrices=False)  # R_{-i}: [P, i, s, s−1]
    kept = sv > _RANK_TOL * torch.finfo(dtype).eps * sv.amax(-1, keepdim=True)
    U = U * kept.unsqueeze(-2)
    return U @ U.transpose(-1, -2), kept.sum(-1)


def _shape(like: torch.Tensor, n_matvecs: int, least: int, method: str) -> tuple[int, int, torch.dtype]:
    if like.dim() != 2 or like.shape[0] < 1 or like.shape[1] < 1:
        raise ValueError(f"like: expected a [P, n] tensor (members, dimension), got shape {tuple(like.shape)}")
    if isinstance(n_matvecs, bool) or not isinstance(n_matvecs, int) or n_matvecs < least:
        raise ValueError(f"n_matvecs: {method} needs an integer of at least {least} products, got {n_matvecs!r}")
    return like.shape[0], like.shape[1], recurrence_dtype(like.dtype)


def _apply(matmat: MatMat, V: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A V for float64 rows V [P, S, n]: products in the operator's dtype, the result in V's."""
    if V.shape[1] == 0:
        return V.clone()
    out = matmat(V.to(like.dtype))
    if out.shape != V.shape:
        raise ValueError(f"matmat: expected a result of shape {tuple(V.shape)}, got {tuple(out.shape)}")
    return out.to(V.dtype)


def _mean(draws: torch.Tensor, offset, like: torch.Tensor, n_matvecs: int) -> TraceResult:
    """offset + mean of draws [P, S], with the standard error std/√S (0 for S < 2), in like's dtype."""
    count = draws.shape[1]
    value = offset + draws.mean(1)
    stderr = draws.std(1) / math.sqrt(count) if count >= 2 else torch.zeros_like(value)
    return TraceResult(value.to(like.dtype), stderr.to(like.dtype), n_matvecs)


__all__ = ["ESTIMATORS", "METHODS", "MIN_MATVECS", "Forms", "MatMat", "Method", "TraceResult", "estimate_trace", "hutchinson",
           "hutchpp", "rademacher", "sphere", "xtrace"]
