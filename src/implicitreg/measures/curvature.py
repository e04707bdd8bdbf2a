"""Curvature (sharpness) measures: top Hessian eigenvalues and the Hessian trace, and the operator
every curvature matrix of the package is seen through.

All of them see the Hessian of the mean training loss with respect to all parameters (or a block
of them: ``params=``, :func:`layer_hessians`) only through Hessian-vector products (HVPs). The
gradient g = ∇L is computed once per operator with its graph kept (reverse-over-reverse, as
PyHessian does), and every HVP is one backward of g·v through that graph, several probes per
backward (``is_grads_batched``); the data come as one batch or as mini-batches (a DataLoader), each
batch's product weighted by its size. On a population the gradient of all P members is one
graph — a ``vmap`` over members for small members and batches, P branches for large ones
(:data:`VMAP_MEMBERS_UP_TO`) — so one backward serves every member, and the Lanczos and power
recurrences run batched over members as [P, n] tensors: a sweep's sharpness costs about one
member's worth of Python overhead.

- :class:`CurvatureOperator` (``HessianOperator``): P members' matrices as one batched operator —
  ``matvec`` [P, n] → [P, n], ``matmat`` [P, S, n] → [P, S, n] (S probes per member in one vmapped
  pass), ``members(idx)`` the operator of some members only (what Lanczos multiplies once most
  members have converged), ``as_linear_operator(member)`` for scipy. The GGN and Fisher operators
  (:mod:`~implicitreg.measures.ggn`) are the same class.
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

import math
import warnings
from functools import partial
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch.func import functional_call, vmap

from implicitreg.measures.core import Estimate, Stacked, register, require_eval, stacked
from implicitreg.measures.lanczos import MatVec, Record, lanczos, orthogonalize, relative_residual, start_vector
from implicitreg.measures.mlp_hessian import SLICE_COST, MLPHessian, mlp_hessian
from implicitreg.measures.trace_estimators import MIN_MATVECS, METHODS, MatMat, Method, TraceResult, estimate_trace

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# PyHessian adds this to the denominator of its relative-change test (hessian.eigenvalues).
_PYHESSIAN_EPS = 1e-6

#: Data points × members × probes that one vmapped pass of :meth:`CurvatureOperator.matmat` evaluates
#: by default (a forward and backward through 65,536 samples at once).
PASS_SAMPLES = 1 << 16


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


@dataclass(frozen=True)
class CurvatureOperator:
    """P members' curvature matrices (Hessian, GGN, Fisher) as one batched linear operator.

    Attributes:
        stacked: the model or population seen as stacked parameters.
        flat: every member's parameters flattened in ``stacked.params`` order: [P, n].
        matvec: v [P, n] → A_p v_p for every member p, [P, n] (one vmapped product).
        probes: V [P, S, n] → A_p V_p for S vectors per member in one vmapped pass, or None
            (then :meth:`matmat` loops over ``matvec``).
        kind: what A is: "hessian", "ggn", "empirical_fisher" or "mc_fisher".
        samples: N, the data points one product passes through (0: unknown), for
            :meth:`matmat`'s default pass size.
        blocked: (V [P, S, n], block) → A V, an operator that splits probes into passes itself
            (the Hessian's: per data batch, through a retained gradient graph); then
            :meth:`matmat` hands it V whole with its ``block``.
        params: the parameter names the operator acts on, in ``flat``'s order (empty: all of
            ``stacked.params``; a block Hessian's: its layer's).
        restrict: members (int64 [A]) → the operator of only those members (:meth:`members`), or
            None where there is none.
        forms: (V [P, S, n], block) → v ᵀ A_p v for every row, [P, S], computed without A v (cheaper
            than the products: the written-out MLP Hessian's second-order forward pass), or None
            (then :meth:`quadratic_forms` takes them from :meth:`matmat`).
        restrict_cost: what ``restrict`` costs per member it keeps, in products (Lanczos restricts
            sooner when it is cheap: ``subset_fraction`` = 1 / (1 + cost)).
    """

    stacked: Stacked
    flat: torch.Tensor
    matvec: MatVec
    probes: MatMat | None = None
    kind: str = "hessian"
    samples: int = 0
    blocked: Callable[[torch.Tensor, int | None], torch.Tensor] | None = None
    params: tuple[str, ...] = ()
    restrict: Callable[[torch.Tensor], CurvatureOperator] | None = None
    forms: Callable[[torch.Tensor, int | None], torch.Tensor] | None = None
    restrict_cost: float = 1.0

    @property
    def size(self) -> int:
        return self.flat.shape[0]

    @property
    def dim(self) -> int:
        return self.flat.shape[1]

    def matmat(self, V: torch.Tensor, block: int | None = None) -> torch.Tensor:
        """A_p V_p for S vectors per member: V [P, S, n] → [P, S, n].

        ``block`` bounds how many vectors go through one vmapped pass (memory grows with it:
        each carries its own forward and backward through the data). None: as many as keep
        P · N · block ≤ :data:`PASS_SAMPLES` (measured on CPU: 99 probes of one 64-32-10 MLP on 500
        points ran 7× faster in one pass than one by one, while 16 members of a 40-128-128-10 MLP
        on 300 points ran fastest 8 probes at a time, slower again in passes of 32 or 99).
        """
        if V.dim() != 3 or V.shape[0] != self.size or V.shape[2] != self.dim:
            raise ValueError(f"V: expected shape [{self.size}, S, {self.dim}] (members, vectors, parameters), "
                             f"got {tuple(V.shape)}")
        if block is not None and block < 1:
            raise ValueError(f"block: expected a positive number of vectors per pass or None, got {block}")
        V = V.to(self.flat)
        if self.blocked is not None:
            return self.blocked(V, block)
        if self.probes is None:
            return torch.stack([self.matvec(V[:, i]) for i in range(V.shape[1])], dim=1)
        if block is None:
            block = max(1, PASS_SAMPLES // max(1, self.size * self.samples)) if self.samples else V.shape[1]
        step = block
        return torch.cat([self.probes(V[:, i : i + step]) for i in range(0, V.shape[1], step)], dim=1)

    def quadratic_forms(self, V: torch.Tensor, block: int | None = None) -> torch.Tensor:
        """v ᵀ A_p v for S vectors per member: V [P, S, n] → [P, S] (what Hutchinson's estimator needs)."""
        if self.forms is None:
            return (V.to(self.flat) * self.matmat(V, block)).sum(-1)
        if V.dim() != 3 or V.shape[0] != self.size or V.shape[2] != self.dim:
            raise ValueError(f"V: expected shape [{self.size}, S, {self.dim}] (members, vectors, parameters), "
                             f"got {tuple(V.shape)}")
        return self.forms(V.to(self.flat), block)

    def members(self, members: torch.Tensor | Sequence[int]) -> CurvatureOperator:
        """The operator of some members only: row i of its products is member ``members[i]``'s.

        Its products cost only those members' (the Hessian's builds a gradient graph of its own
        members: one gradient, less than one HVP each); batched Lanczos uses it once most members
        have converged (:func:`~implicitreg.measures.lanczos.lanczos`'s ``subset``).

        Args:
            members: distinct member indices in 0..P−1, ascending (int64 [A] or a sequence).

        Raises:
            ValueError: members empty, out of range, repeated or unsorted; or the operator has no
                ``restrict``.
        """
        idx = torch.as_tensor(members)
        if idx.dim() != 1 or len(idx) == 0 or idx.is_floating_point() or idx.dtype == torch.bool:
            raise ValueError(f"members: expected a non-empty 1-d sequence of integer indices, got {members!r}")
        idx = idx.to(torch.int64).cpu()
        if int(idx.min()) < 0 or int(idx.max()) >= self.size or bool((idx[1:] <= idx[:-1]).any()):
            raise ValueError(f"members: expected distinct ascending indices in 0..{self.size - 1}, got {idx.tolist()}")
        if self.restrict is None:
            raise ValueError(f"members: this {self.kind} operator cannot be restricted to some members")
        return self.restrict(idx)

    def as_linear_operator(self, member: int | None = None):
        """One member's operator as a ``scipy.sparse.linalg.LinearOperator`` [n, n] on numpy vectors.

        For scipy's solvers (``eigsh``, ``cg``, ``lobpcg``): products run in the model's dtype and
        device (float64 numpy out). ``member`` picks a population's member (required when P > 1).
        """
        from scipy.sparse.linalg import LinearOperator

        if member is None:
            if self.size != 1:
                raise ValueError(f"member: a population of {self.size} members needs member=0..{self.size - 1}")
            member = 0
        if isinstance(member, bool) or not isinstance(member, int) or not 0 <= member < self.size:
            raise ValueError(f"member: expected an integer in 0..{self.size - 1}, got {member!r}")
        n, flat = self.dim, self.flat

        def columns(X) -> np.ndarray:  # X [n, S] (numpy) → A X [n, S]
            X = np.asarray(X, dtype=np.float64).reshape(n, -1)
            V = torch.zeros(self.size, X.shape[1], n, dtype=flat.dtype, device=flat.device)
            V[member] = torch.from_numpy(X.T.copy()).to(V)
            with torch.no_grad():
                out = self.matmat(V)[member]
            return out.T.to(device="cpu", dtype=torch.float64).numpy()

        return LinearOperator((n, n), matvec=lambda x: columns(x)[:, 0], matmat=columns,
                              rmatvec=lambda x: columns(x)[:, 0], dtype=np.float64)


#: The Hessian's operator (the name this module has always used; the same class as the GGN's and the Fishers').
HessianOperator = CurvatureOperator


@dataclass(frozen=True)
class FlatModel:
    """A model or population as a function of flat parameters, with its data moved beside it.

    Attributes:
        stacked: the stacked view; flat: parameters [P, n] (``stacked.params`` order).
        x: inputs [N, ...]; y: targets [N, ...] shared, or [P, N, ...] per member.
        per_member_y: whether y has a leading member axis.
        forward: (θ [n], x) → one member's outputs [N, ...] (``functional_call`` of the template).
    """

    stacked: Stacked
    flat: torch.Tensor
    x: torch.Tensor
    y: torch.Tensor
    per_member_y: bool
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def operator(self, member_product: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                 aux: torch.Tensor, aux_per_member: bool, kind: str) -> CurvatureOperator:
        """The batched operator of ``member_product(θ [n], v [n], aux_p) → A v [n]``, vmapped over
        members (and over probes for :meth:`CurvatureOperator.matmat`)."""
        return _vmapped(self.stacked, self.flat, member_product, aux, aux_per_member, kind, self.x.shape[0])


def _vmapped(s: Stacked, flat: torch.Tensor, member_product: Callable, aux: torch.Tensor, aux_per_member: bool,
             kind: str, samples: int) -> CurvatureOperator:
    """:meth:`FlatModel.operator` of the members whose parameters are ``flat`` [P, n] (and aux)."""
    axis = 0 if aux_per_member else None
    one = vmap(member_product, in_dims=(0, 0, axis))
    many = vmap(vmap(member_product, in_dims=(None, 0, None)), in_dims=(0, 0, axis))

    def matvec(v: torch.Tensor) -> torch.Tensor:
        if v.shape != flat.shape:
            raise ValueError(f"v: expected shape {tuple(flat.shape)} (members, parameters), got {tuple(v.shape)}")
        return one(flat, v.to(flat), aux)

    def restrict(idx: torch.Tensor) -> CurvatureOperator:  # a vmap over fewer members: no graph to rebuild
        at = idx.to(flat.device)
        return _vmapped(_member_stack(s, idx), flat[at], member_product, aux[at] if aux_per_member else aux,
                        aux_per_member, kind, samples)

    return CurvatureOperator(s, flat, matvec, lambda V: many(flat, V, aux), kind, samples, restrict=restrict)


def _member_stack(s: Stacked, idx: torch.Tensor) -> Stacked:
    """The stacked view of members ``idx`` (int64, CPU) of ``s``: a population of len(idx)."""
    return Stacked(s.template, {name: p[idx.to(p.device)] for name, p in s.params.items()}, False)


def _member_data(data, idx: torch.Tensor, s: Stacked):
    """``data`` for members ``idx`` of ``s``: per-member targets [P, N, ...] sliced (the rule of :func:`_check_data`)."""
    if s.single:
        return data
    size = s.size

    def part(pair):
        x, y = pair
        y = torch.as_tensor(y)
        per_member = y.dim() >= 2 and y.shape[0] == size and y.shape[1] == torch.as_tensor(x).shape[0]
        return (x, y[idx.to(y.device)]) if per_member else (x, y)

    return part(data) if _is_pair(data) else _MemberBatches(data, part)


@dataclass(frozen=True)
class _MemberBatches:
    """A re-iterable of batches, each passed through ``part`` (the batches of some members)."""

    batches: Iterable
    part: Callable

    def __iter__(self):
        return (self.part(_check_pair(pair)) for pair in self.batches)


def _check_pair(pair):
    if not isinstance(pair, (tuple, list)) or len(pair) != 2:
        raise TypeError(f"data: expected a pair (x, y) of tensors, got {type(pair).__name__}")
    return pair


def flat_model(model, data) -> FlatModel:
    """View ``model`` (a module or population) as a function of flat parameters on full-batch ``data``."""
    s = stacked(model)
    require_eval(s.template)
    x, y = _check_data(data, s)
    names = list(s.params)
    shapes = [tuple(p.shape[1:]) for p in s.params.values()]
    numels = [math.prod(shape) for shape in shapes]
    flat = torch.cat([p.detach().reshape(s.size, -1) for p in s.params.values()], dim=1)
    x = x.to(device=flat.device, dtype=flat.dtype) if x.is_floating_point() else x.to(flat.device)
    y = y.to(device=flat.device, dtype=flat.dtype) if y.is_floating_point() else y.to(flat.device)
    per_member_y = (not s.single) and y.dim() >= 2 and y.shape[0] == s.size and y.shape[1] == x.shape[0]
    template = s.template

    def forward(theta: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        params = {name: chunk.view(shape) for name, chunk, shape in zip(names, theta.split(numels), shapes)}
        return functional_call(template, params, (xs,))

    return FlatModel(s, flat, x, y, per_member_y, forward)


def hessian_operator(model, loss_fn: LossFn, data, params: str | Sequence[str] | None = None, *,
                     autograd: bool = False) -> HessianOperator:
    """Build the batched HVP operator of a module (P = 1) or population, on a full batch or on batches.

    A ReLU MLP (:class:`~implicitreg.models.mlp.MLP` or an ``nn.Sequential`` of ``Linear`` and
    ``ReLU``) with ``F.cross_entropy`` or :func:`~implicitreg.measures.mlp_hessian.mean_squared_error`
    on one batch, with respect to all its parameters, gets the written-out products of
    :mod:`~implicitreg.measures.mlp_hessian` (no autograd graph; its quadratic forms vᵀHv, which
    Hutchinson's trace needs, cost about 60% of a product). Everything else is differentiated by
    autograd, as follows.

    Products reuse the gradient's graph (as PyHessian does): the gradient g = ∇L is computed once,
    with ``create_graph``, and each product H v = ∂(g·v)/∂θ is one backward through that graph —
    not a fresh forward and backward per product as ``jvp`` of ``grad`` needs. Several probes go
    through the graph in one batched backward (``is_grads_batched``). On batches the graph of each
    batch is built anew for every product (``matvec`` or a ``matmat`` of many probes), so that the
    data set need not fit in memory at once.

    Args:
        model: an ``nn.Module`` whose ``forward(x)`` returns outputs, or a Population.
        loss_fn: ``loss_fn(outputs, y)`` → the *mean* loss over the batch (0-d), e.g. ``F.cross_entropy``.
        data: ``(x, y)``, the full batch: x [N, ...] shared by all members; y [N, ...] shared, or
            — on a population — [P, N, ...] per member (e.g. members with corrupted labels). Or
            a re-iterable of such pairs (a ``DataLoader``, a list of batches): then H is the
            Hessian of the mean loss over all of them, Σ_b N_b H_b / Σ_b N_b (H_b the Hessian of
            batch b's mean loss, N_b its size).
        params: the parameters H is taken with respect to (the block H_BB of the full Hessian;
            the others held fixed): names of ``named_parameters()`` or module prefixes (``"0"``
            selects ``"0.weight"`` and ``"0.bias"``). None: all parameters.
        autograd: True: differentiate with autograd even where the written-out MLP products apply
            (they agree to rounding: tests/test_mlp_hessian.py).

    Returns:
        a :class:`CurvatureOperator` (kind "hessian"): ``matvec`` [P, n] → [P, n], ``matmat``
        [P, S, n] → [P, S, n], with n the number of selected parameters (``op.params`` names them).
    """
    s = stacked(model)
    require_eval(s.template)
    names = list(s.params)
    shapes = [tuple(p.shape[1:]) for p in s.params.values()]
    numels = [math.prod(shape) for shape in shapes]
    flat = torch.cat([p.detach().reshape(s.size, -1) for p in s.params.values()], dim=1)
    chosen = select_params(names, params)
    bounds = np.cumsum([0] + numels).tolist()
    segments = [(bounds[i], bounds[i + 1], names[i] in chosen) for i in range(len(names))]
    idx = torch.cat([torch.arange(a, b) for a, b, on in segments if on]).to(flat.device)
    sub = flat[:, idx] if len(chosen) < len(names) else flat
    template = s.template

    def forward(theta: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        tensors = {name: chunk.view(shape) for name, chunk, shape in zip(names, theta.split(numels), shapes)}
        return functional_call(template, tensors, (xs,))

    def gradient(x: torch.Tensor, y: torch.Tensor, per_member_y: bool) -> tuple[torch.Tensor, torch.Tensor, int]:
        """g = N_b · ∇_B (Σ_p L_p) with its graph, the leaf θ_B [P, n_B] it is taken against, and N_b."""
        with torch.enable_grad():
            leaf = sub.detach().requires_grad_()
            theta = leaf if sub is flat else torch.cat(
                [leaf[:, j : j + b - a] if on else flat[:, a:b]
                 for (a, b, on), j in zip(segments, _offsets(segments))], dim=1)
            if s.size == 1 or x.shape[0] * flat.shape[1] > VMAP_MEMBERS_UP_TO:  # see VMAP_MEMBERS_UP_TO
                # unbind, not theta[p]: each select's backward fills a [P, n] zero tensor for its
                # one row and the P of them are summed — O(P²n) per product, 15% of a product of
                # 16 MLP members (2,698 parameters, N = 2000); unbind's backward is one stack
                rows = theta.unbind(0)
                losses = torch.stack([loss_fn(forward(rows[p], x), y[p] if per_member_y else y)
                                      for p in range(s.size)])
            else:
                member = lambda t, ys: loss_fn(forward(t, x), ys)  # noqa: E731
                losses = vmap(member, in_dims=(0, 0 if per_member_y else None))(theta, y)
            total = losses.sum() * x.shape[0]
            g = torch.autograd.grad(total, leaf, create_graph=True)[0]
        return g, leaf, x.shape[0]

    def through(graph: tuple[torch.Tensor, torch.Tensor, int], V: torch.Tensor, block: int | None) -> torch.Tensor:
        """N_b H_b V for V [P, S, n_B] through a retained graph, ``block`` probes per backward."""
        g, leaf, n = graph
        if not g.requires_grad:  # the loss is linear in θ_B: H_BB = 0
            return torch.zeros_like(V)
        block = block if block is not None else max(1, GRAPH_PASS_SAMPLES // max(1, s.size * n))
        out = []
        for i in range(0, V.shape[1], block):
            chunk = V[:, i : i + block].transpose(0, 1)  # [S_b, P, n_B]
            if chunk.shape[0] == 1:
                hv = torch.autograd.grad(g, leaf, chunk[0], retain_graph=True, allow_unused=True)[0]
                hv = torch.zeros_like(chunk[0]) if hv is None else hv
                out.append(hv[:, None])
            else:
                hv = torch.autograd.grad(g, leaf, chunk, retain_graph=True, is_grads_batched=True,
                                         allow_unused=True)[0]
                out.append((torch.zeros_like(chunk) if hv is None else hv).transpose(0, 1))
        return torch.cat(out, dim=1).detach()

    def build(pair) -> tuple[torch.Tensor, torch.Tensor, int]:
        x, y = _check_data(pair, s)
        x, y = _to(x, flat), _to(y, flat)
        per_member_y = (not s.single) and y.dim() >= 2 and y.shape[0] == s.size and y.shape[1] == x.shape[0]
        return gradient(x, y, per_member_y)

    written = None if autograd or sub is not flat else _written_out(s, loss_fn, data, flat)
    if written is not None:  # a ReLU MLP with a known loss: no autograd graph (measures.mlp_hessian)
        return _written_operator(s, flat, written)
    if _is_pair(data):
        graph = build(data)  # once per operator: every product reuses it
        n_total = graph[2]

        def blocked(V: torch.Tensor, block: int | None) -> torch.Tensor:
            return through(graph, V, block) / n_total
    else:
        batches = _batches(data)
        n_total = 0

        def blocked(V: torch.Tensor, block: int | None) -> torch.Tensor:
            total, count = torch.zeros_like(V), 0
            for pair in batches:  # one batch's graph alive at a time
                graph = build(pair)
                total += through(graph, V, block)
                count += graph[2]
                del graph
            if count == 0:
                raise ValueError("data: the batches yielded no data point")
            return total / count

    def matvec(v: torch.Tensor) -> torch.Tensor:
        if v.shape != sub.shape:
            raise ValueError(f"v: expected shape {tuple(sub.shape)} (members, parameters), got {tuple(v.shape)}")
        return blocked(v.to(sub)[:, None], 1)[:, 0]

    selected = tuple(name for name in names if name in chosen)

    def restrict(idx: torch.Tensor) -> HessianOperator:
        # a graph of these members alone: the one above would compute every member's product
        return hessian_operator(_member_stack(s, idx), loss_fn, _member_data(data, idx, s), list(selected),
                                autograd=autograd)

    return CurvatureOperator(s, sub, matvec, None, "hessian", n_total, blocked, selected, restrict)


def _written_operator(s: Stacked, flat: torch.Tensor, written: MLPHessian) -> HessianOperator:
    """The Hessian operator of the written-out products of ``written`` (members' parameters ``flat`` [P, n])."""
    blocked = partial(_in_passes, written.matmat, written.pass_probes)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        if v.shape != flat.shape:
            raise ValueError(f"v: expected shape {tuple(flat.shape)} (members, parameters), got {tuple(v.shape)}")
        return blocked(v.to(flat)[:, None], 1)[:, 0]

    def restrict(idx: torch.Tensor) -> HessianOperator:  # the cached gradient pass sliced: nothing recomputed
        return _written_operator(_member_stack(s, idx), flat[idx.to(flat.device)], written.members(idx))

    return CurvatureOperator(s, flat, matvec, None, "hessian", written.samples, blocked, tuple(s.params), restrict,
                             partial(_in_passes, written.quadratic, written.pass_probes), SLICE_COST)


def _written_out(s: Stacked, loss_fn: LossFn, data, flat: torch.Tensor) -> MLPHessian | None:
    """The written-out Hessian of a ReLU MLP population on one batch, or None (then autograd's)."""
    if not _is_pair(data):
        return None
    x, y = _check_data(data, s)
    return mlp_hessian(s.template, s.params, loss_fn, _to(x, flat), _to(y, flat))


def _in_passes(fn: Callable[[torch.Tensor], torch.Tensor], default: int, V: torch.Tensor,
               block: int | None) -> torch.Tensor:
    """fn over V [P, S, n] in passes of ``block`` probes (None: ``default``), joined along the probes."""
    step = block if block is not None else default
    return torch.cat([fn(V[:, i : i + step]) for i in range(0, V.shape[1], step)], dim=1)


#: Data points × members × probes that one batched backward through a retained gradient graph
#: evaluates by default (:func:`hessian_operator`). Batching probes saves Python and dispatch per
#: product, not arithmetic: measured on CPU, one thread, 16 probes of a 40-32-32-10 MLP (2,698
#: parameters), ms per product at 1 / 2 / 4 / 8 / 16 probes per backward — N = 100: 0.46 / 0.44 /
#: 0.30 / 0.24 / 0.20; N = 500: 1.01 / 1.04 / 1.02 / 1.09 / 1.17; N = 2000: 3.51 / 3.63 / 3.56 /
#: 4.17 / 4.80 (the batched intermediates leave the cache).
GRAPH_PASS_SAMPLES = 1 << 10

#: A population's gradient graph is one ``vmap`` over members while N · n (batch points × one
#: member's parameters, the work of one member's forward) is at most this, else one graph of P
#: member branches (one backward still serves all members). Measured on CPU, one thread, float32,
#: 16 MLP members, one product of all members, ms, vmap / branches / a loop of single-model
#: operators: N = 100, 40-32-32-10 (N·n = 0.27M): 1.9 / 5.7 / 7.0; N = 1000, same MLP (2.7M):
#: 15.6 / 15.7 / 16.1; N = 200, 40-128-128-10 (4.6M): 21.8 / 24.0 / 23.3; N = 1000, same (23M):
#: 94.7 / 64.7 / 62.0. (The former forward-over-reverse products: 135 batched, 162 looped, there.)
VMAP_MEMBERS_UP_TO = 1 << 22


def select_params(names: list[str], params: str | Sequence[str] | None) -> set[str]:
    """The parameter names ``params`` selects: exact names or module prefixes (``"0"`` → ``"0.*"``)."""
    if params is None:
        return set(names)
    wanted = [params] if isinstance(params, str) else list(params)
    if not wanted:
        raise ValueError("params: expected parameter names or module prefixes, got an empty selection")
    chosen: set[str] = set()
    for entry in wanted:
        if not isinstance(entry, str):
            raise TypeError(f"params: expected names (str), got {type(entry).__name__}")
        hits = [n for n in names if n == entry or n.startswith(entry + ".")]
        if not hits:
            raise ValueError(f"params: {entry!r} names no parameter; the model has {names}")
        chosen.update(hits)
    return chosen


def _offsets(segments: list[tuple[int, int, bool]]) -> list[int]:
    """Where each segment starts in the selected sub-vector (meaningful for selected segments)."""
    out, j = [], 0
    for a, b, on in segments:
        out.append(j)
        j += (b - a) if on else 0
    return out


def _to(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.to(device=like.device, dtype=like.dtype) if t.is_floating_point() else t.to(like.device)


def _is_pair(data) -> bool:
    """A full batch ``(x, y)`` (x a tensor or array), as opposed to an iterable of batches."""
    return isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], (torch.Tensor, np.ndarray))


def _batches(data):
    """``data`` as a re-iterable of (x, y) batches, or a TypeError saying what was expected."""
    if isinstance(data, torch.Tensor) or not isinstance(data, Iterable):
        raise TypeError(f"data: expected a pair (x, y) of tensors or a re-iterable of such pairs "
                        f"(a DataLoader, a list of batches), got {type(data).__name__}")
    if isinstance(data, Iterator):
        raise TypeError(f"data: every product passes over the batches again, so they must be re-iterable "
                        f"(a DataLoader, a list); got a one-shot iterator ({type(data).__name__})")
    return data


def hessian_vector_product(model, loss_fn: LossFn, data, v: torch.Tensor) -> torch.Tensor:
    """H v for the mean training loss: v [n] → [n] for a module, v [P, n] (or [n], shared) → [P, n].

    ``n`` counts all parameters, flattened in ``named_parameters()`` order.
    """
    op = hessian_operator(model, loss_fn, data)
    if v.dim() == 1:
        v = v.expand(op.size, -1)
    out = op.matvec(v)
    return out[0] if op.stacked.single else out


def _check_data(data, s: Stacked) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"data: expected a pair (x, y) of tensors, got {type(data).__name__}")
    x, y = (torch.as_tensor(t) for t in data)
    n = x.shape[0] if x.dim() else 0
    if n == 0:
        raise ValueError(f"data: x must be [N, ...] with N ≥ 1, got shape {tuple(x.shape)}")
    per_member = (not s.single) and y.dim() >= 2 and y.shape[0] == s.size and y.shape[1] == n
    if y.shape[0] != n and not per_member:
        raise ValueError(f"data: y must be [N={n}, ...]" + ("" if s.single else f" or [P={s.size}, N={n}, ...]")
                         + f", got shape {tuple(y.shape)}")
    return x, y


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


__all__ = ["GRAPH_PASS_SAMPLES", "PASS_SAMPLES", "VMAP_MEMBERS_UP_TO", "CurvatureOperator", "EigResult", "FlatModel",
           "HessianOperator", "LayerCurvature", "TraceResult", "flat_model", "hessian_eigenvalues", "hessian_operator", "hessian_trace",
           "hessian_trace_hutchpp", "hessian_trace_value", "hessian_vector_product", "layer_hessians",
           "operator_eigenvalues", "operator_trace", "power_iteration", "select_params", "top_hessian_eigenvalue",
           "trace_budget"]
