"""The operator every curvature matrix of the package is seen through, and the data rules it shares.

- :class:`CurvatureOperator` (``HessianOperator``): P members' matrices (Hessian, GGN, Fisher) as
  one batched linear operator — ``matvec`` [P, n] → [P, n], ``matmat`` [P, S, n] → [P, S, n] (S
  probes per member in one pass), ``quadratic_forms`` [P, S, n] → [P, S], ``members(idx)`` the
  operator of some members only (what Lanczos multiplies once most members have converged),
  ``as_linear_operator(member)`` for scipy.
- :class:`FlatModel` (:func:`flat_model`): a module or population as a function of its flat
  parameters on one batch, vmapped over members — the view of the GGN, the Fishers and the
  gradient statistics.
- The data: one batch ``(x, y)`` with x shared and y shared [N, ...] or per member [P, N, ...],
  or a re-iterable of such batches (:func:`check_data`, :func:`data_batches`).

The Hessian's own operator is built in :mod:`~implicitreg.measures.hessian`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.func import functional_call, vmap

from implicitreg.measures.core import Stacked, require_eval, stacked
from implicitreg.measures.lanczos import MatVec
from implicitreg.measures.trace_estimators import MatMat

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Data points × members × probes that one vmapped pass of :meth:`CurvatureOperator.matmat` evaluates
#: by default (a forward and backward through 65,536 samples at once).
PASS_SAMPLES = 1 << 16


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
        self._check_probes(V, block)
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
        self._check_probes(V, block)
        if self.forms is None:
            return (V.to(self.flat) * self.matmat(V, block)).sum(-1)
        return self.forms(V.to(self.flat), block)

    def _check_probes(self, V: torch.Tensor, block: int | None) -> None:
        """V must be [P, S, n] and ``block`` positive or None: else a ValueError saying so."""
        if V.dim() != 3 or V.shape[0] != self.size or V.shape[2] != self.dim:
            raise ValueError(f"V: expected shape [{self.size}, S, {self.dim}] (members, vectors, parameters), "
                             f"got {tuple(V.shape)}")
        if block is not None and block < 1:
            raise ValueError(f"block: expected a positive number of vectors per pass or None, got {block}")

    def members(self, members: torch.Tensor | Sequence[int]) -> CurvatureOperator:
        """The operator of some members only: row i of its products is member ``members[i]``'s.

        Its products cost only those members' (making it costs ``restrict_cost`` products per
        member: the written-out Hessian slices its cached gradient pass, the autograd one builds a
        gradient graph of its own members); batched Lanczos uses it once enough members have
        converged (:func:`~implicitreg.measures.lanczos.lanczos`'s ``subset``).

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
        return _vmapped(member_stack(s, idx), flat[at], member_product, aux[at] if aux_per_member else aux,
                        aux_per_member, kind, samples)

    return CurvatureOperator(s, flat, matvec, lambda V: many(flat, V, aux), kind, samples, restrict=restrict)


def member_stack(s: Stacked, idx: torch.Tensor) -> Stacked:
    """The stacked view of members ``idx`` (int64, CPU) of ``s``: a population of len(idx)."""
    return Stacked(s.template, {name: p[idx.to(p.device)] for name, p in s.params.items()}, False)


def member_data(data, idx: torch.Tensor, s: Stacked):
    """``data`` for members ``idx`` of ``s``: per-member targets [P, N, ...] sliced (the rule of :func:`check_data`)."""
    if s.single:
        return data
    size = s.size

    def part(pair):
        x, y = pair
        y = torch.as_tensor(y)
        per_member = y.dim() >= 2 and y.shape[0] == size and y.shape[1] == torch.as_tensor(x).shape[0]
        return (x, y[idx.to(y.device)]) if per_member else (x, y)

    return part(data) if is_full_batch(data) else _MemberBatches(data, part)


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
    x, y = check_data(data, s)
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


def to_like(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` on ``like``'s device, and in its dtype if ``t`` is floating (labels stay integers)."""
    return t.to(device=like.device, dtype=like.dtype) if t.is_floating_point() else t.to(like.device)


def is_full_batch(data) -> bool:
    """A full batch ``(x, y)`` (x a tensor or array), as opposed to an iterable of batches."""
    return isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], (torch.Tensor, np.ndarray))


def data_batches(data):
    """``data`` as a re-iterable of (x, y) batches, or a TypeError saying what was expected."""
    if isinstance(data, torch.Tensor) or not isinstance(data, Iterable):
        raise TypeError(f"data: expected a pair (x, y) of tensors or a re-iterable of such pairs "
                        f"(a DataLoader, a list of batches), got {type(data).__name__}")
    if isinstance(data, Iterator):
        raise TypeError(f"data: every product passes over the batches again, so they must be re-iterable "
                        f"(a DataLoader, a list); got a one-shot iterator ({type(data).__name__})")
    return data


def check_data(data, s: Stacked) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch ``(x, y)`` as tensors: x [N, ...] with N ≥ 1, y [N, ...] or (a population's) [P, N, ...];
    otherwise a TypeError or ValueError that says what was expected."""
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
