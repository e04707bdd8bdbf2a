"""Generalized Gauss–Newton and Fisher matrices: operators, top eigenvalues, traces, outliers.

For a mean loss L(θ) = ℓ(f(X; θ), Y) of the network outputs F = f(X; θ) [N, C], with J = ∂F/∂θ
[N·C, n] and H_F = ∂²ℓ/∂F² [N·C, N·C] (block diagonal for a mean of per-sample losses):

- the **GGN** G = Jᵀ H_F J (Schraudolph 2002; Martens 2020): the Hessian without the term that
  carries the outputs' own curvature, positive semi-definite for a convex loss. A product
  G v = Jᵀ(H_F (J v)) is one forward-mode pass (J v), a product with the loss's Hessian in output
  space (a double derivative of ``loss_fn`` alone) and one reverse pass (Jᵀ·);
- the **empirical Fisher** F_emp = (1/N) Σ_i g_i g_iᵀ of the per-sample gradients g_i = J_iᵀ r_i,
  r_i = ∂ℓ_i/∂f_i, read as r = N · ∂L/∂F (so ``loss_fn`` must be the *mean* over the N samples
  of a per-sample loss, as every ``reduction="mean"`` loss is): F v = Jᵀ(r ⊙ (r·J v)) / N;
- the **Monte-Carlo Fisher** (Martens & Grosse 2015; Kunstner, Balles & Hennig 2019) with labels
  drawn from the model's own predictive distribution instead of the data's:
  (1/(N S)) Σ_i Σ_s ĝ_is ĝ_isᵀ, ŷ_is ~ softmax(f_i), for a categorical likelihood (cross-entropy
  on logits, integer labels). Its expectation over ŷ is the GGN of the cross-entropy (E[r rᵀ] =
  diag(p) − ppᵀ = H_F per sample), which tests/test_ggn.py checks.

All are :class:`~implicitreg.measures.curvature_operator.CurvatureOperator` s, vmapped over the members of a
population (and over probes), so the Lanczos of :mod:`~implicitreg.measures.lanczos` gives their
top eigenvalues and the estimators of :mod:`~implicitreg.measures.trace_estimators` their traces.

**Outliers.** Papyan (2019, 2020) found the spectra of the Hessian and the GGN of a C-class network
to be a bulk near zero and about C outliers (class means of the logit gradients), with a further
C(C − 1) "mini-outliers". :func:`ggn_outliers` counts them as the position of the largest
eigengap ratio λ_i / λ_{i+1} among the top 3C eigenvalues — a rule fixed before it was measured
(tests/test_ggn.py reports what it finds on a trained 10-class MLP).

References:
    Schraudolph, "Fast curvature matrix-vector products for second-order gradient descent" (2002).
    Martens, "New insights and perspectives on the natural gradient method", JMLR 2020. Martens &
    Grosse, "Optimizing neural networks with Kronecker-factored approximate curvature", ICML 2015.
    Kunstner, Balles & Hennig, "Limitations of the empirical Fisher approximation", NeurIPS 2019.
    Papyan, "Measurements of three-level hierarchical structure in the outliers in the spectrum of
    deepnet Hessians", ICML 2019; "Traces of class/cross-class structure pervade deep learning
    spectra", JMLR 2020.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch.func import grad, jvp, vjp, vmap

from implicitreg.measures.core import Estimate, register
from implicitreg.measures.curvature import EigResult, TraceResult, operator_eigenvalues, operator_trace, trace_budget
from implicitreg.measures.curvature_operator import CurvatureOperator, LossFn, flat_model
from implicitreg.measures.hessian import written_operator
from implicitreg.measures.mlp_hessian import mlp_hessian
from implicitreg.measures.trace_estimators import Method

FisherKind = Literal["empirical", "mc"]
_NEEDS = ("params", "data", "loss", "hvp")


def ggn_operator(model, loss_fn: LossFn, data, *, autograd: bool = False) -> CurvatureOperator:
    """The batched GGN operator Jᵀ H_F J of a module (P = 1) or population on full-batch ``data``.

    A ReLU MLP with ``F.cross_entropy`` or the squared error gets the written-out passes of
    :mod:`~implicitreg.measures.mlp_hessian` (as :func:`~implicitreg.measures.hessian.hessian_operator`
    does; vᵀGv from one forward pass); every other model ``jvp`` and ``vjp`` of the vmapped model.

    Args:
        model: an ``nn.Module`` or a Population. loss_fn: ``loss_fn(outputs, y)`` → the mean loss.
        data: ``(x, y)`` as :func:`~implicitreg.measures.hessian.hessian_operator`.
        autograd: True: ``jvp`` and ``vjp`` even where the written-out passes apply.

    Returns:
        a :class:`CurvatureOperator` of kind "ggn".
    """
    fm = flat_model(model, data)
    written = None if autograd else mlp_hessian(fm.stacked.template, fm.stacked.params, loss_fn, fm.x, fm.y,
                                                 gauss_newton=True)
    if written is not None:  # a ReLU MLP with a known loss: the written-out passes (measures.mlp_hessian)
        return written_operator(fm.stacked, fm.flat, written)
    x, forward = fm.x, fm.forward
    output_gradient = grad(loss_fn)  # ∂ℓ/∂F, differentiated once more along J v below

    def member_ggn(theta: torch.Tensor, v: torch.Tensor, ys: torch.Tensor) -> torch.Tensor:
        outputs, jv = jvp(lambda t: forward(t, x), (theta,), (v,))
        if ys.is_floating_point():  # a float target's zero tangent made explicit (see hessian_operator)
            hjv = jvp(output_gradient, (outputs, ys), (jv, torch.zeros_like(ys)))[1]
        else:
            hjv = jvp(lambda o: output_gradient(o, ys), (outputs,), (jv,))[1]
        _, pullback = vjp(lambda t: forward(t, x), theta)
        return pullback(hjv)[0]

    return fm.operator(member_ggn, fm.y, fm.per_member_y, "ggn")


def fisher_operator(model, loss_fn: LossFn, data, kind: FisherKind = "empirical", mc_samples: int = 1,
                    seed: int = 0, *, autograd: bool = False) -> CurvatureOperator:
    """The batched empirical (``kind="empirical"``) or Monte-Carlo (``kind="mc"``) Fisher operator.

    Args:
        model, loss_fn, data: as :func:`ggn_operator`; ``loss_fn`` must be the mean over the N
            samples of a per-sample loss (``reduction="mean"``), so that N·∂L/∂f_i is sample i's
            own gradient. For "mc" it must be the cross-entropy of logits (the labels are integers
            drawn from softmax(f_i)).
        kind: "empirical" (the data's labels) or "mc" (``mc_samples`` labels per sample drawn from
            the model's predictive distribution).
        mc_samples: labels drawn per sample (kind "mc").
        seed: seed of the drawn labels: uniforms shared by all members, each member inverting its
            own softmax, so a population's operator equals a loop over its members.
        autograd: True: ``jvp`` and ``vjp`` even where the written-out passes of a ReLU MLP apply
            (as in :func:`ggn_operator`).

    Returns:
        a :class:`CurvatureOperator` of kind "empirical_fisher" or "mc_fisher"; for "mc" its
        ``probes``/``matvec`` use the labels drawn once, at construction.
    """
    if kind not in ("empirical", "mc"):
        raise ValueError(f"kind: expected 'empirical' or 'mc', got {kind!r}")
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
        raise ValueError(f"mc_samples: expected a positive integer, got {mc_samples!r}")
    fm = flat_model(model, data)
    x, forward = fm.x, fm.forward
    n = x.shape[0]
    with torch.no_grad():
        outputs = vmap(forward, in_dims=(0, None))(fm.flat, x)  # [P, N, ...]
    if kind == "empirical":
        labels = fm.y.unsqueeze(1) if fm.per_member_y else fm.y.expand(fm.stacked.size, 1, *fm.y.shape)
    else:
        if fm.y.is_floating_point() or outputs.dim() != 3:
            raise ValueError("kind: the Monte-Carlo Fisher draws integer labels from softmax of [N, C] logits "
                             f"(cross-entropy); got {fm.y.dtype} targets and outputs of shape "
                             f"{tuple(outputs.shape[1:])} — use kind='empirical' or the GGN")
        labels = sample_labels(outputs, mc_samples, torch.Generator().manual_seed(seed))  # [P, S, N]
    per_sample = vmap(vmap(grad(loss_fn), in_dims=(None, 0)), in_dims=(0, 0))
    with torch.no_grad():
        r = n * per_sample(outputs, labels)  # [P, S, N, ...]: ∂ℓ_i/∂f_i for every drawn label
    kind_name = "empirical_fisher" if kind == "empirical" else "mc_fisher"
    written = None if autograd else mlp_hessian(fm.stacked.template, fm.stacked.params, loss_fn, fm.x, fm.y,
                                                 gauss_newton=True)
    if written is not None:  # a ReLU MLP with a known loss: the written-out passes (measures.mlp_hessian)
        return written_operator(fm.stacked, fm.flat, written.fisher(r.transpose(2, 3).contiguous()), kind_name)

    def member_fisher(theta: torch.Tensor, v: torch.Tensor, rs: torch.Tensor) -> torch.Tensor:
        jv = jvp(lambda t: forward(t, x), (theta,), (v,))[1]  # [N, ...]
        dots = (rs * jv).reshape(rs.shape[0], n, -1).sum(-1)  # r_is · J_i v   [S, N]
        u = (rs * dots.reshape(*dots.shape, *([1] * (rs.dim() - 2)))).sum(0) / (n * rs.shape[0])
        _, pullback = vjp(lambda t: forward(t, x), theta)
        return pullback(u)[0]

    return fm.operator(member_fisher, r, True, kind_name)


def sample_labels(logits: torch.Tensor, samples: int, generator: torch.Generator) -> torch.Tensor:
    """Labels drawn from softmax(logits [P, N, C]) by inverting its CDF at uniforms shared by the
    members (drawn in float64 on the CPU): int64 [P, samples, N]."""
    P, n, _ = logits.shape
    u = torch.rand(samples, n, generator=generator, dtype=torch.float64).to(logits.device)
    cdf = torch.softmax(logits.double(), dim=-1).cumsum(-1)  # [P, N, C]
    drawn = (u[None, :, :, None] > cdf[:, None]).sum(-1)  # the first class whose CDF reaches u
    return drawn.clamp_max(logits.shape[-1] - 1)  # u above a CDF that rounds below 1


# --------------------------------------------------------------------------------------------
# Eigenvalues and traces
# --------------------------------------------------------------------------------------------


def ggn_eigenvalues(model, loss_fn: LossFn, data, k: int = 1, tol: float = 1e-6, max_hvp: int = 200,
                    seed: int = 0) -> EigResult:
    """Top-k eigenvalues of the GGN by Lanczos (as :func:`~implicitreg.measures.curvature.hessian_eigenvalues`).

    Returns:
        :class:`EigResult`: values/converged/residuals [k] and ``n_hvp`` (GGN products) an int for
        a module; [P, k] and [P] for a population.
    """
    return operator_eigenvalues(ggn_operator(model, loss_fn, data), k=k, tol=tol, max_hvp=max_hvp, seed=seed)


def ggn_trace(model, loss_fn: LossFn, data, method: Method = "hutchpp", n_matvecs: int = 99, seed: int = 0,
              probe_batch: int | None = None) -> TraceResult:
    """tr(G) by Hutchinson, Hutch++ (default: the GGN's spectrum is a few outliers over a low bulk)
    or XTrace, from ``n_matvecs`` GGN products; see :func:`~implicitreg.measures.curvature.hessian_trace`."""
    return operator_trace(ggn_operator(model, loss_fn, data), method, trace_budget(None, n_matvecs, method), seed,
                          probe_batch)


def fisher_eigenvalues(model, loss_fn: LossFn, data, kind: FisherKind = "empirical", k: int = 1, tol: float = 1e-6,
                       max_hvp: int = 200, seed: int = 0, mc_samples: int = 1, mc_seed: int = 0) -> EigResult:
    """Top-k eigenvalues of the empirical or Monte-Carlo Fisher (:func:`fisher_operator`) by Lanczos."""
    op = fisher_operator(model, loss_fn, data, kind=kind, mc_samples=mc_samples, seed=mc_seed)
    return operator_eigenvalues(op, k=k, tol=tol, max_hvp=max_hvp, seed=seed)


def fisher_trace(model, loss_fn: LossFn, data, kind: FisherKind = "empirical", method: Method = "hutchpp",
                 n_matvecs: int = 99, seed: int = 0, mc_samples: int = 1, mc_seed: int = 0,
                 probe_batch: int | None = None) -> TraceResult:
    """tr(F) of the empirical or Monte-Carlo Fisher by a stochastic estimator (see :func:`ggn_trace`)."""
    op = fisher_operator(model, loss_fn, data, kind=kind, mc_samples=mc_samples, seed=mc_seed)
    return operator_trace(op, method, trace_budget(None, n_matvecs, method), seed, probe_batch)


@dataclass(frozen=True)
class OutlierResult:
    """Outliers of the GGN spectrum, counted at the largest eigengap ratio.

    Attributes:
        count: outliers: the i maximizing λ_i / λ_{i+1} among the top k (an int, or [P]).
        n_classes: C, the outputs per sample.
        eigenvalues: the top k, largest first: [k] or [P, k].
        ratios: λ_i / λ_{i+1}, [k − 1] or [P, k − 1] (inf where λ_{i+1} ≤ 0: the GGN's rank ends there).
        converged: whether Lanczos certified every one of the k eigenvalues (bool, or [P]).
    """

    count: int | torch.Tensor
    n_classes: int
    eigenvalues: torch.Tensor
    ratios: torch.Tensor
    converged: bool | torch.Tensor


def ggn_outliers(model, loss_fn: LossFn, data, k: int | None = None, tol: float = 1e-6, max_hvp: int = 500,
                 seed: int = 0) -> OutlierResult:
    """How many outliers the GGN spectrum has (Papyan 2020: about C for a C-class network).

    Args:
        model, loss_fn, data: as :func:`ggn_operator`.
        k: eigenvalues looked at (default 3C, at most the parameter count); at least 2.
        tol, max_hvp, seed: of the Lanczos run (:func:`ggn_eigenvalues`).

    Returns:
        :class:`OutlierResult`.
    """
    op = ggn_operator(model, loss_fn, data)
    fm = flat_model(model, data)
    with torch.no_grad():
        n_classes = int(fm.forward(fm.flat[0], fm.x[:1]).numel())
    k = min(3 * n_classes, op.dim) if k is None else k
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= op.dim:
        raise ValueError(f"k: expected an integer in 2..{op.dim} (eigenvalues to compare), got {k!r}")
    eig = operator_eigenvalues(op, k=k, tol=tol, max_hvp=max_hvp, seed=seed)
    values = eig.values if eig.values.dim() == 2 else eig.values.unsqueeze(0)
    below = values[:, 1:]
    ratios = torch.where(below > 0, values[:, :-1] / below.clamp_min(torch.finfo(values.dtype).tiny),
                         torch.full_like(below, float("inf")))
    count = ratios.argmax(1) + 1
    converged = eig.converged.all(-1)
    if op.stacked.single:
        return OutlierResult(int(count[0]), n_classes, values[0], ratios[0], bool(converged))
    return OutlierResult(count, n_classes, values, ratios, converged)


# --------------------------------------------------------------------------------------------
# Registered measures
# --------------------------------------------------------------------------------------------


@register("top_ggn_eigenvalue", "sharpness", needs=_NEEDS, lower_is_simpler=True, cost="hvp")
def top_ggn_eigenvalue(model, loss_fn: LossFn, data, tol: float = 1e-6, max_hvp: int = 200, seed: int = 0,
                       with_convergence: bool = False) -> torch.Tensor | Estimate:
    """Largest eigenvalue of the generalized Gauss–Newton matrix JᵀH_FJ, by Lanczos: 0-d or [P].

    Warns (``RuntimeWarning``) where a member did not converge; ``with_convergence=True`` returns
    an :class:`Estimate` with the flags instead. The full result is :func:`ggn_eigenvalues`.
    """
    result = ggn_eigenvalues(model, loss_fn, data, k=1, tol=tol, max_hvp=max_hvp, seed=seed)
    if with_convergence:
        return Estimate(result.values[..., 0], result.converged[..., 0])
    if not bool(result.converged.all()):
        warnings.warn(f"top_ggn_eigenvalue: Lanczos did not reach tol={tol} within {max_hvp} products for "
                      f"{int((~result.converged).sum())} member(s); max relative residual "
                      f"{float(result.residuals.max()):.2e}", RuntimeWarning, stacklevel=2)
    return result.values[..., 0]


@register("ggn_trace", "sharpness", needs=_NEEDS, lower_is_simpler=True, cost="hvp")
def ggn_trace_value(model, loss_fn: LossFn, data, n_matvecs: int = 99, seed: int = 0) -> torch.Tensor:
    """Trace of the generalized Gauss–Newton matrix (Hutch++, 99 products): 0-d or [P].

    The value of :func:`ggn_trace`, whose result also carries the standard error.
    """
    return ggn_trace(model, loss_fn, data, method="hutchpp", n_matvecs=n_matvecs, seed=seed).value


@register("empirical_fisher_trace", "sharpness", needs=_NEEDS, lower_is_simpler=True, cost="hvp")
def empirical_fisher_trace(model, loss_fn: LossFn, data, n_matvecs: int = 99, seed: int = 0) -> torch.Tensor:
    """Trace of the empirical Fisher (1/N)Σ g_i g_iᵀ of per-sample gradients (Hutch++, 99 products): 0-d or [P]."""
    return fisher_trace(model, loss_fn, data, kind="empirical", method="hutchpp", n_matvecs=n_matvecs, seed=seed).value


@register("mc_fisher_trace", "sharpness", needs=_NEEDS, lower_is_simpler=True, cost="hvp")
def mc_fisher_trace(model, loss_fn: LossFn, data, n_matvecs: int = 99, seed: int = 0) -> torch.Tensor:
    """Trace of the Monte-Carlo Fisher (labels drawn from the model's softmax; Hutch++, 99 products): 0-d or [P].

    Classification only (integer labels, cross-entropy on logits).
    """
    return fisher_trace(model, loss_fn, data, kind="mc", method="hutchpp", n_matvecs=n_matvecs, seed=seed,
                        mc_seed=seed).value


__all__ = ["FisherKind", "OutlierResult", "empirical_fisher_trace", "fisher_eigenvalues", "fisher_operator",
           "fisher_trace", "ggn_eigenvalues", "ggn_operator", "ggn_outliers", "ggn_trace", "ggn_trace_value",
           "mc_fisher_trace", "sample_labels", "top_ggn_eigenvalue"]
