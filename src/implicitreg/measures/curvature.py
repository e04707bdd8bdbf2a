"""Curvature (sharpness) measures: top Hessian eigenvalues and the Hessian trace.

All of them see the Hessian of the mean training loss with respect to all parameters (or a block
of them: ``params=``, :func:`layer_hessians`) only through Hessian-vector products (HVPs) of
:func:`~implicitreg.measures.hessian.hessian_operator` (written out for ReLU MLPs, by autograd
otherwise), a :class:`~implicitreg.measures.curvature_operator.CurvatureOperator` — the class the
GGN and Fisher operators (:mod:`~implicitreg.measures.ggn`) share. The Lanczos and power
recurrences run batched over members as [P, n] tensors: a sweep's sharpness costs about one
member's worth of Python overhead. (The operator's names are importable from here as before.)
- :func:`hessian_eigenvalues`: top-k (largest algebraic) eigenvalues by Lanczos
  (:func:`implicitreg.measures.lanczos.lanczos`: full reorthogonalization, a residual-based
  stopping rule), or by power iteration with deflation and PyHessian's stopping rule (kept for
  comparison; it stops on a small relative change of the estimate, which is not a bound on the
  error, so its true residuals are reported too).
- :func:`hessian_trace`: Hutchinson's estimator with Rademacher probes, Hutch++ or XTrace
  (:mod:`~implicitreg.measures.trace_estimators`), with a standard error.

Non-convergence is never silent: :class:`EigResult` carries per-eigenvalue ``converged`` flags,
the HVPs spent and the relative residuals; the registered top eigenvalue warns, or with
``with_convergence=True`` returns its flags. (A stochastic trace has no stopping rule: its
uncertainty is the standard error of :class:`TraceResult`.)

Power iteration is exposed on any batched symmetric operator (:func:`power_iteration`), as Lanczos
is in :mod:`implicitreg.measures.lanczos`; Ritz vectors or the smallest eigenvalues come from that
module on ``hessian_operator(...).matvec``, the spectral density from
:mod:`~implicitreg.measures.density`.

References:
    Lanczos (1950); Parlett, *The Symmetric Eigenvalue Problem* (1998), ch. 13 (residual bound
    ‖H y − θ y‖ = |β_m s_m|). Yao, Gholami, Keutzer & Mahoney, *PyHessian* (2020) (power iteration
    and its stopping rule). Hutchinson (1989); Meyer, Musco, Musco & Woodruff (2021) (Hutch++);
    Epperly, Tropp & Webber (2024) (XTrace).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch

from implicitreg.measures.core import Estimate, register, stacked
from implicitreg.measures.curvature_operator import CurvatureOperator, FlatModel, HessianOperator, LossFn, flat_model
from implicitreg.measures.hessian import hessian_operator, hessian_vector_product, select_params
from implicitreg.measures.lanczos import MatVec, Record, lanczos, orthogonalize, relative_residual, start_vector
from implicitreg.measures.trace_estimators import MIN_MATVECS, METHODS, Method, TraceResult, estimate_trace

# PyHessian adds this to the denominator of its relative-change test (hessian.eigenvalues).
_PYHESSIAN_EPS = 1e-6


@dataclass(frozen=True)
class EigResult:
    """Top-k Hessian eigenvalues and how far to trust them.

    Attributes:
        values: eigenvalues, largest first: [k] for a module, [P, k] for a population.
        converged: bool, same shape as ``values``: whether that eigenvalue met the method's own
            stopping rule (Lanczos: relative residual bound < tol; power: PyHessian's relative
            change < tol — which does not bound the error, see ``residuals``).
        n_hvp: Hessian-vector products each member's result used: an ``int`` for a module, an
            int64 tensor [P] for a population (per member, *not* the total; a member's count
            stops when it converges, although the batched computation runs as long as the
            slowest member).
        residuals: relative residuals ‖H v − θ v‖ / |θ|, same shape as ``values``. Lanczos: the
            Ritz bound |β_m s_m| / |θ| (exact in exact arithmetic, no extra HVP); power
            iteration: the true residual of the Rayleigh quotient at the last iterate.
    """

    values: torch.Tensor
    converged: torch.Tensor
    n_hvp: int | torch.Tensor
    residuals: torch.Tensor


# --------------------------------------------------------------------------------------------
# Hessian-vector products
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Power iteration on a batched symmetric operator (Lanczos: implicitreg.measures.lanczos)
# --------------------------------------------------------------------------------------------


def power_iteration(matvec: MatVec, v0: torch.Tensor, k: int = 1, tol: float = 1e-3, max_iter: int = 200,
                    generator: torch.Generator | None = None, record: Record | None = None) -> EigResult:
    """Top-k eigenvalues by power iteration with deflation, PyHessian's algorithm, batched over P.

    Each eigenvalue starts from a fresh random vector (``v0`` for the first); every iteration
    orthogonalizes v against the eigenvectors already found (deflation), takes λ = vᵀHv and
    v ← Hv/‖Hv‖, and stops when |λ_prev − λ| / (|λ_prev| + 1e-6) < tol (PyHessian's rule). That
    rule measures progress, not error: slow convergence (a small gap) looks like convergence.
    So the true relative residual ‖Hv − λv‖/|λ| at the last iterate (no extra product: Hv is at
    hand) is reported beside it. Power iteration finds the eigenvalues of largest *magnitude*;
    they are the largest algebraic ones only when no negative eigenvalue dominates.

    Differences from PyHessian: the reported λ is the latest Rayleigh quotient (PyHessian keeps
    the one before the test passed), and ``max_iter`` is a total budget split evenly over the k
    eigenvalues (``max_iter // k`` each).

    Args:
        matvec: v [P, n] → H v [P, n] (each member its own symmetric H).
        v0: start vectors [P, n] (need not be normalized).
        k: how many eigenvalues; tol: relative-change threshold; max_iter: most products.
        generator: the start vectors of the 2nd to k-th eigenvalue (a fixed default if None).
        record: ``record(n, λ [P, 1], rel_res [P, 1])`` after each product, with the current
            eigenvalue's estimate and the products spent so far.

    Returns:
        :class:`EigResult` with values [P, k], converged [P, k], n_hvp [P], residuals [P, k].
    """
    P, n = v0.shape
    if not 1 <= k <= n:
        raise ValueError(f"k: expected 1 ≤ k ≤ {n} (the number of parameters), got {k}")
    per = max_iter // k
    if per < 1:
        raise ValueError(f"max_hvp: power iteration needs at least k = {k} products, got {max_iter}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    values = v0.new_zeros(P, k)
    residuals = v0.new_full((P, k), float("inf"))
    converged = torch.zeros(P, k, dtype=torch.bool, device=v0.device)
    n_hvp = torch.zeros(P, dtype=torch.int64, device=v0.device)
    found = v0.new_zeros(P, 0, n)
    for i in range(k):
        v = v0 if i == 0 else start_vector(generator, n, v0).expand(P, n)
        v = v / v.norm(dim=1, keepdim=True)
        active = torch.ones(P, dtype=torch.bool, device=v0.device)
        previous: torch.Tensor | None = None
        for _ in range(per):
            v = orthogonalize(v, found)
            v = v / v.norm(dim=1, keepdim=True)
            hv = matvec(v)
            lam = (hv * v).sum(1)
            rel = relative_residual((hv - lam[:, None] * v).norm(dim=1, keepdim=True), lam[:, None])[:, 0]
            n_hvp += active.to(torch.int64)
            values[active, i], residuals[active, i] = lam[active], rel[active]
            if record is not None:
                record(int(n_hvp.max()), values[:, i : i + 1], residuals[:, i : i + 1])
            v = torch.where(active[:, None], hv / hv.norm(dim=1, keepdim=True).clamp_min(1e-300), v)
            if previous is not None:
                stop = active & ((previous - lam).abs() / (previous.abs() + _PYHESSIAN_EPS) < tol)
                converged[stop, i] = True
                active &= ~stop
            previous = lam
            if not bool(active.any()):
                break
        found = torch.cat([found, v[:, None]], dim=1)
    return EigResult(values, converged, n_hvp, residuals)


# --------------------------------------------------------------------------------------------
# Measures
# --------------------------------------------------------------------------------------------


def hessian_eigenvalues(model, loss_fn: LossFn, data, k: int = 1,
                        method: Literal["lanczos", "power"] = "lanczos", tol: float = 1e-6,
                        max_hvp: int = 200, seed: int = 0) -> EigResult:
    """Top-k eigenvalues (largest first) of the Hessian of the mean training loss w.r.t. all parameters.

    Args:
        model: an ``nn.Module`` (``forward(x)``) or a Population.
        loss_fn: ``loss_fn(outputs, y)`` → mean loss, e.g. ``torch.nn.functional.cross_entropy``.
        data: ``(x, y)``, the full batch, or a re-iterable of batches (see :func:`hessian_operator`).
        k: how many eigenvalues.
        method: "lanczos" (largest algebraic; full reorthogonalization; stops when every Ritz
            residual bound is below ``tol`` relative to its Ritz value) or "power" (PyHessian's
            power iteration with deflation: largest magnitude; stops on a relative change below
            ``tol``, which is not an error bound — read ``residuals``).
        tol: relative tolerance of the stopping rule (float32 models cannot go much below ~1e-6).
        max_hvp: most Hessian-vector products per member; when hit, ``converged`` says False.
        seed: seed of the random start vector, shared by all members (deterministic).

    Returns:
        :class:`EigResult`: values/converged/residuals [k] and ``n_hvp`` an int for a module;
        [P, k] and ``n_hvp`` [P] (per member) for a population.
    """
    return operator_eigenvalues(hessian_operator(model, loss_fn, data), k=k, method=method, tol=tol,
                                max_hvp=max_hvp, seed=seed)


def operator_eigenvalues(op: CurvatureOperator, k: int = 1, method: Literal["lanczos", "power"] = "lanczos",
                         tol: float = 1e-6, max_hvp: int = 200, seed: int = 0) -> EigResult:
    """Top-k eigenvalues of any :class:`CurvatureOperator` (see :func:`hessian_eigenvalues` for the arguments)."""
    if method not in ("lanczos", "power"):
        raise ValueError(f"method: expected 'lanczos' or 'power', got {method!r}")
    if not tol > 0:
        raise ValueError(f"tol: expected a positive number, got {tol}")
    if not 1 <= k <= op.dim:
        raise ValueError(f"k: expected 1 ≤ k ≤ {op.dim} (the number of parameters), got {k}")
    if max_hvp < k:
        raise ValueError(f"max_hvp: {method} needs at least k = {k} products, got {max_hvp}")
    generator = torch.Generator().manual_seed(seed)
    v0 = start_vector(generator, op.dim, op.flat).expand(op.size, -1)
    if method == "lanczos":
        # check_ratio 0: a convergence check (an m × m eigh) after every HVP costs far less than an HVP
        # converged members leave the products (a new operator of the rest once that pays)
        subset = (lambda idx: op.members(idx).matvec) if op.restrict is not None else None
        lz = lanczos(op.matvec, v0, k=k, tol=tol, max_iter=max_hvp, generator=generator, subset=subset,
                     subset_fraction=1 / (1 + op.restrict_cost))
        result = EigResult(lz.values, lz.converged, lz.n_matvec, lz.residuals)
    else:
        result = power_iteration(op.matvec, v0, k=k, tol=tol, max_iter=max_hvp, generator=generator)
    if op.stacked.single:
        return EigResult(result.values[0], result.converged[0], int(result.n_hvp[0]), result.residuals[0])
    return result


def hessian_trace(model, loss_fn: LossFn, data, n_samples: int | None = None, seed: int = 0, *,
                  method: Method = "hutchinson", n_matvecs: int | None = None,
                  probe_batch: int | None = None) -> TraceResult:
    """A stochastic estimate of tr(H), by Hutchinson (Rademacher probes), Hutch++ or XTrace.

    The same probes are used for every member (drawn from ``seed``), so a population's estimate
    equals a loop over its members; the products of each estimator's stage run as one vmapped
    pass over members and probes (:mod:`~implicitreg.measures.trace_estimators`).

    Args:
        model, loss_fn, data: as :func:`hessian_eigenvalues`.
        n_samples: Hutchinson's probes (the name this function has always had); the same as
            ``n_matvecs``, give one or the other.
        seed: seed of the probes.
        method: "hutchinson" (the mean of zᵀHz), "hutchpp" (Meyer et al. 2021: exact on the top
            ~n_matvecs/3 directions, Hutchinson on the rest) or "xtrace" (Epperly, Tropp & Webber 2024).
        n_matvecs: HVPs per member (default 100): at least 2 for Hutchinson, 4 for the others.
        probe_batch: most probes per vmapped pass (memory); None: :meth:`CurvatureOperator.matmat`'s default.

    Returns:
        :class:`TraceResult`: value and stderr 0-d for a module, [P] for a population; ``n_hvp``.
        Hutchinson's stderr is sample std / √n_samples; Hutch++'s that of its Hutchinson part
        (conditional on the sketch); XTrace's the paper's (std of its leave-one-out estimates / √s).
    """
    return operator_trace(hessian_operator(model, loss_fn, data), method, trace_budget(n_samples, n_matvecs, method),
                          seed, probe_batch)


def operator_trace(op: CurvatureOperator, method: Method = "hutchinson", n_matvecs: int = 100, seed: int = 0,
                   probe_batch: int | None = None) -> TraceResult:
    """tr(A) of any :class:`CurvatureOperator` by ``method`` (see :func:`hessian_trace`)."""
    if method not in METHODS:
        raise ValueError(f"method: expected one of {list(METHODS)}, got {method!r}")
    if probe_batch is not None and (isinstance(probe_batch, bool) or not isinstance(probe_batch, int) or probe_batch < 1):
        raise ValueError(f"probe_batch: expected a positive integer or None, got {probe_batch!r}")
    generator = torch.Generator().manual_seed(seed)
    forms = None if op.forms is None else (lambda V: op.quadratic_forms(V, block=probe_batch))
    result = estimate_trace(lambda V: op.matmat(V, block=probe_batch), op.flat, n_matvecs, method, generator, forms)
    return TraceResult(op.stacked.finish(result.value), op.stacked.finish(result.stderr), result.n_hvp)


def trace_budget(n_samples: int | None, n_matvecs: int | None, method: str) -> int:
    """The products a trace estimate may use: ``n_matvecs``, or Hutchinson's ``n_samples``, default 100."""
    if n_samples is not None and n_matvecs is not None and n_samples != n_matvecs:
        raise ValueError(f"n_samples: the same as n_matvecs, give one of them (got n_samples={n_samples}, "
                         f"n_matvecs={n_matvecs})")
    budget = n_matvecs if n_matvecs is not None else (n_samples if n_samples is not None else 100)
    least = MIN_MATVECS.get(method, 2)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < least:
        name = "n_matvecs" if n_matvecs is not None or n_samples is None else "n_samples"
        raise ValueError(f"{name}: {method} needs an integer of at least {least} products"
                         + (" (the standard error needs them)" if method == "hutchinson" else "")
                         + f", got {budget!r}")
    return budget


@dataclass(frozen=True)
class LayerCurvature:
    """The Hessian's diagonal blocks, one per layer: H_ℓℓ, the Hessian w.r.t. layer ℓ's parameters
    with all others fixed.

    Attributes:
        layers: the layer (module) names, in parameter order; sizes: their parameter counts.
        top: largest eigenvalue of each block (Lanczos): [L] for a module, [P, L] for a population.
        converged: whether each block's Lanczos met ``tol``, same shape as ``top``.
        trace: tr(H_ℓℓ), same shape; stderr: its standard error (0 where it is exact).
        exact: per layer, whether the trace is exact (the block has at most ``n_matvecs``
            parameters: then it is Σ_i e_iᵀ H e_i over the block's unit vectors).
        n_hvp: products spent per layer (eigenvalue and trace together; the most over members).
    """

    layers: tuple[str, ...]
    sizes: tuple[int, ...]
    top: torch.Tensor
    converged: torch.Tensor
    trace: torch.Tensor
    stderr: torch.Tensor
    exact: tuple[bool, ...]
    n_hvp: tuple[int, ...]


def layer_hessians(model, loss_fn: LossFn, data, method: Method = "hutchpp", n_matvecs: int = 99,
                   tol: float = 1e-6, max_hvp: int = 200, seed: int = 0) -> LayerCurvature:
    """Top eigenvalue and trace of every layer's Hessian block H_ℓℓ (:func:`hessian_operator` with
    ``params=`` that layer; a *layer* is a module holding parameters of its own, e.g. one
    ``nn.Linear`` with its weight and bias).

    Args:
        model, loss_fn, data: as :func:`hessian_operator` (full batch or batches).
        method, n_matvecs, seed: the trace estimator of a block with more than ``n_matvecs``
            parameters (see :func:`hessian_trace`); a smaller block's trace is exact at ≤ n_matvecs products.
        tol, max_hvp: Lanczos' stopping rule for the top eigenvalue of each block.

    Returns:
        :class:`LayerCurvature`.
    """
    s = stacked(model)
    layers: dict[str, list[str]] = {}
    for name in s.params:
        layers.setdefault(name.rpartition(".")[0], []).append(name)
    n_matvecs = trace_budget(None, n_matvecs, method)
    tops, flags, traces, errors, exact, spent, sizes = [], [], [], [], [], [], []
    for names in layers.values():
        op = hessian_operator(model, loss_fn, data, params=names)
        eig = operator_eigenvalues(op, k=1, method="lanczos", tol=tol, max_hvp=max_hvp, seed=seed)
        if op.dim <= n_matvecs:
            eye = torch.eye(op.dim, dtype=op.flat.dtype, device=op.flat.device).expand(op.size, -1, -1)
            value = torch.diagonal(op.matmat(eye), dim1=1, dim2=2).sum(1)
            tr = TraceResult(s.finish(value), s.finish(torch.zeros_like(value)), op.dim)
        else:
            tr = operator_trace(op, method, n_matvecs, seed)
        tops.append(eig.values[..., 0])
        flags.append(eig.converged[..., 0])
        traces.append(tr.value)
        errors.append(tr.stderr)
        exact.append(op.dim <= n_matvecs)
        spent.append(int(torch.as_tensor(eig.n_hvp).max()) + tr.n_hvp)
        sizes.append(op.dim)
    return LayerCurvature(tuple(layers), tuple(sizes), torch.stack(tops, -1), torch.stack(flags, -1),
                          torch.stack(traces, -1), torch.stack(errors, -1), tuple(exact), tuple(spent))


@register("top_hessian_eigenvalue", "sharpness", needs=("params", "data", "loss", "hvp"), lower_is_simpler=True, cost="hvp")
def top_hessian_eigenvalue(model, loss_fn: LossFn, data, tol: float = 1e-6, max_hvp: int = 200, seed: int = 0,
                           with_convergence: bool = False) -> torch.Tensor | Estimate:
    """Largest Hessian eigenvalue of the training loss (sharpness), by Lanczos: 0-d or [P].

    Warns (``RuntimeWarning``) when a member did not converge within ``max_hvp`` products; with
    ``with_convergence=True`` returns an :class:`~implicitreg.measures.core.Estimate` (value and
    per-member ``converged``) instead of warning. The full result is :func:`hessian_eigenvalues`.
    """
    result = hessian_eigenvalues(model, loss_fn, data, k=1, method="lanczos", tol=tol, max_hvp=max_hvp, seed=seed)
    if with_convergence:
        return Estimate(result.values[..., 0], result.converged[..., 0])
    if not bool(result.converged.all()):
        warnings.warn(f"top_hessian_eigenvalue: Lanczos did not reach tol={tol} within {max_hvp} HVPs for "
                      f"{int((~result.converged).sum())} member(s); max relative residual "
                      f"{float(result.residuals.max()):.2e}", RuntimeWarning, stacklevel=2)
    return result.values[..., 0]


@register("hessian_trace", "sharpness", needs=("params", "data", "loss", "hvp"), lower_is_simpler=True, cost="hvp")
def hessian_trace_value(model, loss_fn: LossFn, data, n_samples: int = 100, seed: int = 0) -> torch.Tensor:
    """Trace of the training-loss Hessian (Hutchinson, Rademacher probes): 0-d or [P].

    The value of :func:`hessian_trace`, whose result also carries the standard error.
    """
    return hessian_trace(model, loss_fn, data, n_samples=n_samples, seed=seed).value


@register("hessian_trace_hutchpp", "sharpness", needs=("params", "data", "loss", "hvp"), lower_is_simpler=True,
          cost="hvp")
def hessian_trace_hutchpp(model, loss_fn: LossFn, data, n_matvecs: int = 99, seed: int = 0) -> torch.Tensor:
    """Trace of the training-loss Hessian by Hutch++ (99 HVPs: exact on the top 33 directions): 0-d or [P].

    The value of ``hessian_trace(..., method="hutchpp")``, whose result also carries the standard error.
    """
    return hessian_trace(model, loss_fn, data, seed=seed, method="hutchpp", n_matvecs=n_matvecs).value


__all__ = ["CurvatureOperator", "EigResult", "FlatModel", "HessianOperator", "LayerCurvature", "LossFn", "TraceResult",
           "flat_model", "hessian_eigenvalues", "hessian_operator", "hessian_trace", "hessian_trace_hutchpp",
           "hessian_trace_value", "hessian_vector_product", "layer_hessians", "operator_eigenvalues", "operator_trace",
           "power_iteration", "select_params", "top_hessian_eigenvalue", "trace_budget"]
