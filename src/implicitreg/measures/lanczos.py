"""Lanczos on a batch of P symmetric operators, seen only through a matrix-vector product.

One recurrence serves every spectral measure of the package: the top Hessian eigenvalues
(:mod:`~implicitreg.measures.hessian`: the operator is a batched Hessian-vector product) and the
operator norm of a ``Conv1d`` layer (:mod:`~implicitreg.measures.layers`, the operator is AᵀA by
``conv1d`` and ``conv_transpose1d``). Members are independent: the operator maps [P, n] → [P, n],
row p by member p's own matrix, and the recurrence runs batched over rows, so a population costs
one member's worth of Python overhead.

After m products the Lanczos basis V_m [n, m] and the tridiagonal T_m = V_mᵀ H V_m are known; the
Ritz pairs (θ_i, y_i = V_m s_i) of T_m approximate eigenpairs of H with the residual

    ‖H y_i − θ_i y_i‖ = |β_m s_i[m]|                      (Parlett 1998, §13.1)

at no extra product. A member stops — its result is frozen and it leaves the batch while slower
members keep iterating (an operator that can multiply a subset of members, ``subset=``, then stops
computing its products) — when all k wanted Ritz values have ``|β_m s_i[m]| / |θ_i| < tol``; a
member that runs out of budget reports ``converged=False`` for the Ritz values that did not get
there. For a symmetric H an eigenvalue lies within the residual of each θ_i, so a converged flag is
a guarantee, not a heuristic (unlike a stop on a small change of the estimate).

The recurrence (the basis, T, its eigenpairs and the residual bounds) runs in float64 whatever the
operator's dtype; only the products are made in ``v0``'s dtype (a float32 model's HVPs stay in
float32). A float32 recurrence rounds T and the basis at ~1e-7: on a 50,826-parameter float32 MLP
it reported residuals ~1e-9 while its top-5 Ritz values were 2.6–6.2e-6 off; in float64 they were
1e-7–9e-7 off at the same number of products. What no recurrence can see is the rounding of the
products themselves: for an operator of lower precision its unit roundoff times ‖T‖ is added to
every residual bound. That is a model of a product's error (ε‖H‖), not a proof — measured errors of
non-top eigenvalues reached ~2.7 ε‖H‖, so a residual at that floor can understate the error by
that much — but a tolerance below the products' precision is never reported as met
(tests/test_lanczos_precision.py).

Full reorthogonalization (``reorthogonalize=True``, the default) keeps the basis orthonormal, so no
spurious copies ("ghosts") of converged eigenvalues appear and repeated eigenvalues are found by
restarting after a breakdown; it costs the basis in memory (P × m × n). Without it the plain
three-term recurrence keeps two vectors per member: the right choice for stochastic Lanczos
quadrature (SLQ) of a spectral density, which needs only T_m (:meth:`LanczosResult.quadrature`).

References:
    Lanczos (1950). Parlett, *The Symmetric Eigenvalue Problem* (1998), ch. 13. Golub & Meurant,
    *Matrices, Moments and Quadrature* (2010) (Gauss quadrature from T_m). Ghorbani, Krishnan & Xiao,
    "An investigation into neural net optimization via Hessian eigenvalue density", ICML 2019 (SLQ).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

MatVec = Callable[[torch.Tensor], torch.Tensor]
Record = Callable[[int, torch.Tensor, torch.Tensor], None]
#: members (int64 [A], ascending indices into 0..P−1) → the product of only those members, v [A, n] → [A, n]
Subset = Callable[[torch.Tensor], MatVec]

#: With ``subset``, Lanczos asks for an operator of the members still running once they are at most
#: this fraction of the members its operator multiplies. A new operator may cost something to make
#: (the Hessian's: one gradient of its members, less than one HVP each), and after it every step
#: saves at least as many member-products as it has members, so it pays back within about one step,
#: and halving bounds the rebuilds by log2 P.
SUBSET_FRACTION = 0.5

# β below this multiple of eps·max|α| is a breakdown: the Krylov space is invariant (to rounding).
_BREAKDOWN = 1e3


@dataclass(frozen=True)
class LanczosResult:
    """What P batched Lanczos runs found, and how far to trust it.

    Attributes:
        values: [P, k] Ritz values: the k largest, largest first (``which="largest"``), or the
            k smallest, smallest first. NaN only where a run without reorthogonalization broke
            down before it had k Ritz values.
        converged: [P, k] bool: ``residuals < tol`` when the member stopped.
        residuals: [P, k] relative residual bounds |β_m s_i[m]| / |θ_i| when the member stopped
            (exact in exact arithmetic; no extra product), plus ε‖T‖ / |θ_i| for an operator of
            lower precision than the recurrence (ε its unit roundoff). Zero once the Krylov space is the whole
            space (m = n with reorthogonalization) or invariant.
        n_matvec: int64 [P]: products each member used until it stopped (*not* the batched total:
            the loop runs as long as the slowest member, ``n_matvec.max()`` steps).
        vectors: [P, k, n] unit Ritz vectors y_i = V_m s_i (``return_vectors=True``), else None.
        alpha: [P, m] the diagonal of each member's T (m = ``n_matvec.max()``); zero past a
            member's own ``n_matvec``. In the recurrence's dtype (:func:`recurrence_dtype`: float64
            for a float32 operator), like ``beta``; the other fields are in the operator's dtype.
        beta: [P, m − 1] the off-diagonal of T as it enters T (zero after a restart, and past a
            member's own ``n_matvec``). Zero padding adds decoupled zero rows to T, which carry no
            quadrature weight and do not change its other eigenvalues.
    """

    values: torch.Tensor
    converged: torch.Tensor
    residuals: torch.Tensor
    n_matvec: torch.Tensor
    vectors: torch.Tensor | None
    alpha: torch.Tensor
    beta: torch.Tensor

    def tridiagonal(self) -> torch.Tensor:
        """Each member's T as a dense [P, m, m] matrix."""
        return _tridiagonal(self.alpha, self.beta)

    def quadrature(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Gauss quadrature of the start vector's spectral measure: nodes [P, m], weights [P, m].

        With u = v0/‖v0‖, Σ_i w_i f(θ_i) ≈ uᵀ f(H) u, exactly for polynomials f of degree < 2m
        (Golub & Meurant 2010); the weights are the squared first components of T's eigenvectors
        and sum to 1. Averaged over random u this is stochastic Lanczos quadrature: the spectral
        density ≈ (1/n_v) Σ_u Σ_i w_i δ(λ − θ_i), the trace of f(H) ≈ n · mean_u Σ_i w_i f(θ_i).
        """
        nodes, vecs = torch.linalg.eigh(self.tridiagonal())
        return nodes, vecs[:, 0, :] ** 2


def start_vector(generator: torch.Generator, n: int, like: torch.Tensor) -> torch.Tensor:
    """One N(0, I) vector [n], drawn in float64 on the CPU (so CPU and CUDA runs agree), as ``like``.

    Shared by all members, it makes a population's result equal a loop over its members.
    """
    return torch.randn(n, generator=generator, dtype=torch.float64).to(like)


def orthogonalize(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """w [P, n] minus its projection on the orthonormal rows of basis [P, m, n], twice (CGS2)."""
    if basis.shape[1] == 0:
        return w
    for _ in range(2):  # a second pass restores orthogonality lost to cancellation ("twice is enough")
        # two bmm's, not einsum: measured 2x faster on CPU (einsum lays the operands out again)
        w = w - torch.bmm(torch.bmm(basis, w.unsqueeze(2)).transpose(1, 2), basis).squeeze(1)
    return w


def relative_residual(res: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """res / |θ| [P, k], with |θ| floored (relative to the member's largest |θ|) so a zero θ gives no NaN."""
    scale = theta.abs().nan_to_num(0.0).amax(-1, keepdim=True)
    floor = torch.clamp(scale * torch.finfo(theta.dtype).eps, min=torch.finfo(theta.dtype).tiny)
    return res / torch.maximum(theta.abs(), floor)


def lanczos(matvec: MatVec, v0: torch.Tensor, k: int = 1, tol: float = 1e-6, max_iter: int = 200, *,
            which: Literal["largest", "smallest"] = "largest", reorthogonalize: bool = True,
            return_vectors: bool = False, check_ratio: float = 0.0, generator: torch.Generator | None = None,
            record: Record | None = None, subset: Subset | None = None,
            subset_fraction: float = SUBSET_FRACTION) -> LanczosResult:
    """The k extreme (algebraic) eigenvalues of P symmetric operators by Lanczos, batched over members.

    Args:
        matvec: v [P, n] → H v [P, n], row p by member p's own symmetric H_p.
        v0: start vectors [P, n] (need not be normalized; a shared one, see :func:`start_vector`,
            makes a population's result equal a loop over its members).
        k: how many eigenvalues, 1 ≤ k ≤ n.
        tol: a member stops when every one of its k Ritz values has a relative residual bound
            below ``tol``; with 0 no member stops on its residual (only on its budget, or at a
            breakdown without reorthogonalization).
        max_iter: most products per member (at least k). After n products the Ritz values are
            exact (with reorthogonalization), so no member runs more than n.
        which: "largest" (the k largest, largest first) or "smallest" (the k smallest, smallest
            first). Both are algebraic, not by magnitude.
        reorthogonalize: full reorthogonalization (classical Gram–Schmidt, twice, against the
            whole basis) and restarts after a breakdown; False runs the plain three-term recurrence
            (memory: two vectors per member unless ``return_vectors``), whose Ritz values may hold
            ghost copies — for quadrature (SLQ), not for k > 1 eigenvalues. Without it a member
            whose Krylov space becomes invariant stops there (its Ritz values are then exact).
        return_vectors: also return the unit Ritz vectors [P, k, n] (keeps the basis even without
            reorthogonalization).
        check_ratio: after m products the next convergence check (an ``eigh`` of the m × m T)
            comes after max(1, ⌊check_ratio·m⌋) more products. 0 checks after every product: the
            fewest products, for an expensive operator (HVPs). A cheap operator with a long run
            saves the O(m³) checks with e.g. 1/8, for at most ~12% more products.
        generator: random restart vectors after a breakdown (a fixed default if None).
        record: called at every check as ``record(m, theta [P, min(k, m)], rel_res [P, min(k, m)])``
            with the current Ritz values and relative residual bounds of all members (a member
            that has finished: its final ones).
        subset: ``subset(members)`` → a matvec of only those members (int64 indices, ascending;
            row i of its [A, n] argument and result is member ``members[i]``). Without it every
            product multiplies all P members until the slowest finishes (finished members' rows are
            discarded); with it, once the members still running are at most ``subset_fraction``
            of those the operator multiplies, the rest of the run uses ``subset`` of them. The
            results are those of ``matvec`` to the products' rounding.
        subset_fraction: in (0, 1]; for an operator whose ``subset`` costs c products per member
            it keeps, 1 / (1 + c) restricts as soon as one step's idle products pay for the new
            operator (the default, :data:`SUBSET_FRACTION`, is this rule at c = 1).

    Memory: with reorthogonalization, the basis of P × m × n float64 numbers after m products (a
    1M-parameter model at m = 50 holds 400 MB per member, float32 model or not); it grows by doubling.

    Returns:
        :class:`LanczosResult`: values, converged, residuals [P, k]; n_matvec [P]; vectors
        [P, k, n] or None; the tridiagonal alpha [P, m], beta [P, m − 1].

    Raises:
        ValueError: v0 not [P, n] or with a zero row; k, max_iter, tol, which or check_ratio out of range.
    """
    if v0.dim() != 2 or v0.shape[0] < 1 or v0.shape[1] < 1:
        raise ValueError(f"v0: expected start vectors of shape [P, n] (members, dimension), got {tuple(v0.shape)}")
    P, n = v0.shape
    if not bool((v0.norm(dim=1) > 0).all()):
        raise ValueError("v0: expected a nonzero start vector for every member, got a zero row")
    if not 1 <= k <= n:
        raise ValueError(f"k: expected 1 ≤ k ≤ {n} (the dimension of the operator), got {k}")
    if max_iter < k:
        raise ValueError(f"max_iter: Lanczos needs at least k = {k} products, got {max_iter}")
    if which not in ("largest", "smallest"):
        raise ValueError(f"which: expected 'largest' or 'smallest', got {which!r}")
    if not tol >= 0:
        raise ValueError(f"tol: expected a number ≥ 0, got {tol}")
    if not check_ratio >= 0:
        raise ValueError(f"check_ratio: expected a number ≥ 0, got {check_ratio}")
    if not 0 < subset_fraction <= 1:
        raise ValueError(f"subset_fraction: expected a number in (0, 1], got {subset_fraction}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    dtype, device = v0.dtype, v0.device
    work = recurrence_dtype(dtype)
    # breakdown is judged at the products' precision: what is left of w after an invariant Krylov
    # space is their rounding, not the recurrence's
    eps, tiny = torch.finfo(dtype).eps, torch.finfo(work).tiny
    # the operator's own rounding, which residuals computed in the recurrence cannot see (module docstring)
    floor = eps if work != dtype else 0.0
    v0 = v0.to(work)
    product = _in_dtype(matvec, dtype, work)
    steps = min(max_iter, n)
    keep = reorthogonalize or return_vectors
    # The recurrence runs on the members still iterating (rows: their indices, ascending); a member
    # that finishes leaves every [A, ...] tensor below. The operator multiplies op_rows ⊇ rows:
    # all P members until ``subset`` gives one for fewer (at most log P / log(1 / subset_fraction) times).
    rows = torch.arange(P, device=device)
    op_rows = rows
    # the basis grows by doubling: memory is P × (products actually used) × n, not P × max_iter × n
    basis = v0.new_zeros(P, min(steps + 1, 32) if keep else 0, n)
    current = v0 / v0.norm(dim=1, keepdim=True)
    previous = torch.zeros_like(current)
    if keep:
        basis[:, 0] = current
    alpha, coupling = v0.new_zeros(P, steps), v0.new_zeros(P, steps)  # [P, steps]; coupling: β as it enters T
    values = v0.new_full((P, k), float("nan"))
    residuals = v0.new_full((P, k), float("inf"))
    converged = torch.zeros(P, k, dtype=torch.bool, device=device)
    vectors = v0.new_full((P, k, n), float("nan")) if return_vectors else None
    n_matvec = torch.zeros(P, dtype=torch.int64, device=device)
    next_check = 1
    for j in range(steps):
        m = j + 1
        if len(rows) == len(op_rows):
            w = product(current)
        else:  # the operator still covers finished members: zero rows for them, theirs discarded
            at = torch.searchsorted(op_rows, rows)
            full = current.new_zeros(len(op_rows), n)
            full[at] = current
            w = product(full)[at]
        a = (w * current).sum(1)
        alpha[rows, j] = a
        if reorthogonalize:
            w = orthogonalize(w, basis[:, :m])
        else:
            w = w - a[:, None] * current - (coupling[rows, j - 1][:, None] * previous if j else 0.0)
        beta = w.norm(dim=1)
        if reorthogonalize and m == n:
            beta = torch.zeros_like(beta)  # the basis spans the whole space: what is left of w is rounding
        broke = beta <= _BREAKDOWN * eps * alpha[rows, :m].abs().amax(1).clamp_min(tiny)
        if m >= next_check or m == steps or bool(broke.any()):
            next_check = m + max(1, int(m * check_ratio))
            theta_all, S = torch.linalg.eigh(_tridiagonal(alpha[rows, :m], coupling[rows, : m - 1]))  # ascending
            theta = theta_all
            top = min(k, m)
            if which == "largest":
                theta, S = theta.flip(-1), S.flip(-1)
            theta, S = theta[:, :top], S[:, :, :top]
            bound = (beta[:, None] * S[:, -1, :]).abs()
            if floor:
                bound = bound + floor * theta_all.abs().amax(1, keepdim=True)
            rel = relative_residual(bound, theta)
            if record is not None:  # every member: the finished ones with their final values
                seen_theta, seen_rel = values[:, :top].clone(), residuals[:, :top].clone()
                seen_theta[rows], seen_rel[rows] = theta, rel
                record(m, seen_theta, seen_rel)
            ok = rel < tol
            # a member finishes when all k Ritz values converged (none can before it has k), when
            # the budget ends, or — without reorthogonalization, which cannot restart — at a breakdown
            finishing = (ok.all(1) & (top == k)) | (m == steps) | (broke & (not reorthogonalize))
            if bool(finishing.any()):
                ended = rows[finishing]
                values[ended, :top] = theta[finishing]
                residuals[ended, :top] = rel[finishing]
                converged[ended, :top] = ok[finishing]
                n_matvec[ended] = m
                if vectors is not None:
                    vectors[ended, :top] = torch.einsum("pmn,pmk->pkn", basis[finishing, :m], S[finishing])
                going = ~finishing
                rows, w, beta, broke = rows[going], w[going], beta[going], broke[going]
                current, previous = current[going], previous[going]
                if keep:
                    basis = basis[going]
                if len(rows) == 0:
                    break
                if subset is not None and len(rows) <= subset_fraction * len(op_rows):
                    product, op_rows = _in_dtype(subset(rows), dtype, work), rows
        nxt = w / beta[:, None].clamp_min(tiny)
        if bool(broke.any()):  # (only with reorthogonalization: a plain recurrence's member finished above)
            # restart from a random vector orthogonal to the basis: finds repeated eigenvalues
            fresh = orthogonalize(start_vector(generator, n, v0).expand(len(rows), n), basis[:, :m])
            fresh = fresh / fresh.norm(dim=1, keepdim=True)
            nxt = torch.where(broke[:, None], fresh, nxt)
        coupling[rows, j] = torch.where(broke, torch.zeros_like(beta), beta)
        previous, current = current, nxt
        if keep:
            if m == basis.shape[1]:
                grow = min(basis.shape[1], steps + 1 - basis.shape[1])
                basis = torch.cat([basis, basis.new_zeros(len(rows), grow, n)], dim=1)
            basis[:, m] = nxt
    width = int(n_matvec.max())
    position = torch.arange(width, device=device)
    alpha = torch.where(position < n_matvec[:, None], alpha[:, :width], torch.zeros_like(alpha[:, :width]))
    beta_used = torch.where(position[:-1] < n_matvec[:, None] - 1, coupling[:, : width - 1],
                            torch.zeros_like(coupling[:, : width - 1]))
    if work != dtype:  # results in the operator's dtype; T stays in float64 (for quadrature)
        values, residuals = values.to(dtype), residuals.to(dtype)
        vectors = vectors.to(dtype) if vectors is not None else None
    return LanczosResult(values, converged, residuals, n_matvec, vectors, alpha, beta_used)


def _in_dtype(matvec: MatVec, dtype: torch.dtype, work: torch.dtype) -> MatVec:
    """``matvec`` on vectors of the recurrence's dtype ``work``, its products made in ``dtype``."""
    if work == dtype:
        return matvec
    return lambda v: matvec(v.to(dtype)).to(work)


def recurrence_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype Lanczos runs its recurrence in for an operator of ``dtype``: float64 for any real
    floating dtype of lower precision (float32, float16, bfloat16), ``dtype`` itself otherwise."""
    if dtype.is_floating_point and not dtype.is_complex and torch.finfo(dtype).bits < 64:
        return torch.float64
    return dtype


def _tridiagonal(alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """[P, m] diagonal and [P, m − 1] off-diagonal → the symmetric tridiagonal [P, m, m]."""
    T = torch.diag_embed(alpha)
    if beta.shape[-1]:
        T = T + torch.diag_embed(beta, 1) + torch.diag_embed(beta, -1)
    return T


__all__ = ["SUBSET_FRACTION", "LanczosResult", "MatVec", "Record", "Subset", "lanczos", "orthogonalize", "recurrence_dtype", "relative_residual",
           "start_vector"]
