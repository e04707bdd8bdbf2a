"""The Hessian of the mean training loss as a batched operator (:func:`hessian_operator`).

Two ways to its products, with the same results to rounding:

- **Written out** (:mod:`~implicitreg.measures.mlp_hessian`), for a ReLU MLP with cross-entropy or
  squared error, on one batch or batch by batch: Pearlmutter's R-operator batched over members and
  probes, no autograd graph; quadratic forms vᵀHv (all Hutchinson's trace needs) without Hv.
- **Autograd**, for everything else: the gradient g = ∇L is computed once per operator with its
  graph kept (reverse-over-reverse, as PyHessian does), and every product is one backward of g·v
  through that graph, several probes per backward (``is_grads_batched``). On a population the
  gradient of all P members is one graph — a ``vmap`` over members for small members and batches,
  P branches for large ones (:data:`VMAP_MEMBERS_UP_TO`) — so one backward serves every member.
  The data come as one batch or as mini-batches (a DataLoader), each batch's product weighted by
  its size.

Reference: Pearlmutter, *Fast exact multiplication by the Hessian* (1994).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
import torch
from torch.func import functional_call, vmap

from implicitreg.measures.core import Stacked, require_eval, stacked
from implicitreg.measures.curvature_operator import (
    CurvatureOperator,
    HessianOperator,
    LossFn,
    check_data,
    data_batches,
    is_full_batch,
    member_data,
    member_stack,
    to_like,
)
from implicitreg.measures.mlp_hessian import LOSSES, SLICE_COST, MLPHessian, mlp_hessian, relu_mlp_layers


def hessian_operator(model, loss_fn: LossFn, data, params: str | Sequence[str] | None = None, *,
                     autograd: bool = False) -> HessianOperator:
    """Build the batched HVP operator of a module (P = 1) or population, on a full batch or on batches.

    A ReLU MLP (:class:`~implicitreg.models.mlp.MLP` or an ``nn.Sequential`` of ``Linear`` and
    ``ReLU``) with ``F.cross_entropy`` or :func:`~implicitreg.measures.mlp_hessian.mean_squared_error`,
    with respect to all its parameters, on one batch or on batches, gets the written-out products of
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
        x, y = check_data(pair, s)
        x, y = to_like(x, flat), to_like(y, flat)
        per_member_y = (not s.single) and y.dim() >= 2 and y.shape[0] == s.size and y.shape[1] == x.shape[0]
        return gradient(x, y, per_member_y)

    written = None if autograd or sub is not flat else _written_out(s, loss_fn, data, flat)
    if written is not None:  # a ReLU MLP with a known loss: no autograd graph (measures.mlp_hessian)
        return written_operator(s, flat, written)
    if is_full_batch(data):
        graph = build(data)  # once per operator: every product reuses it
        n_total = graph[2]

        def blocked(V: torch.Tensor, block: int | None) -> torch.Tensor:
            return through(graph, V, block) / n_total

        forms = None
    else:
        batches = data_batches(data)
        n_total = 0
        # a ReLU MLP with a known loss: each batch written out (where its data allow; autograd where not)
        may_write = not autograd and sub is flat and relu_mlp_layers(template) is not None and loss_fn in LOSSES

        def over_batches(V: torch.Tensor, block: int | None, written_fn: Callable, graph_fn: Callable) -> torch.Tensor:
            """Σ_b N_b f_b(V) / Σ_b N_b, one batch's pass or graph alive at a time."""
            total, count = None, 0
            for pair in batches:
                written = _written_out(s, loss_fn, pair, flat) if may_write else None
                if written is not None:
                    part, n = written_fn(written, V, block) * written.samples, written.samples
                else:
                    graph = build(pair)
                    part, n = graph_fn(graph, V, block), graph[2]
                    del graph
                total = part if total is None else total + part
                count += n
            if count == 0:
                raise ValueError("data: the batches yielded no data point")
            return total / count

        def blocked(V: torch.Tensor, block: int | None) -> torch.Tensor:
            return over_batches(V, block, lambda w, V, b: _in_passes(w.matmat, w.pass_probes, V, b), through)

        def batch_forms(V: torch.Tensor, block: int | None) -> torch.Tensor:
            return over_batches(V, block, lambda w, V, b: _in_passes(w.quadratic, w.pass_probes, V, b),
                                lambda graph, V, b: (V * through(graph, V, b)).sum(-1))

        forms = batch_forms if may_write else None

    selected = tuple(name for name in names if name in chosen)

    def restrict(idx: torch.Tensor) -> HessianOperator:
        # a graph of these members alone: the one above would compute every member's product
        return hessian_operator(member_stack(s, idx), loss_fn, member_data(data, idx, s), list(selected),
                                autograd=autograd)

    return CurvatureOperator(s, sub, _one_probe(blocked, sub), None, "hessian", n_total, blocked, selected, restrict,
                             forms)


def written_operator(s: Stacked, flat: torch.Tensor, written: MLPHessian, kind: str | None = None) -> CurvatureOperator:
    """The operator of the written-out products of ``written`` (members' parameters ``flat`` [P, n]):
    of ``kind``, by default "hessian", or "ggn" for a Gauss–Newton one."""
    kind = kind if kind is not None else ("ggn" if written.gauss_newton else "hessian")
    blocked = partial(_in_passes, written.matmat, written.pass_probes)

    def restrict(idx: torch.Tensor) -> HessianOperator:  # the cached gradient pass sliced: nothing recomputed
        return written_operator(member_stack(s, idx), flat[idx.to(flat.device)], written.members(idx), kind)

    return CurvatureOperator(s, flat, _one_probe(blocked, flat), None, kind, written.samples, blocked,
                             tuple(s.params), restrict, partial(_in_passes, written.quadratic, written.pass_probes),
                             SLICE_COST)


def _one_probe(blocked: Callable[[torch.Tensor, int | None], torch.Tensor], like: torch.Tensor):
    """v [P, n] (``like``'s shape) → A v, through ``blocked`` with one probe per member."""
    def matvec(v: torch.Tensor) -> torch.Tensor:
        if v.shape != like.shape:
            raise ValueError(f"v: expected shape {tuple(like.shape)} (members, parameters), got {tuple(v.shape)}")
        return blocked(v.to(like)[:, None], 1)[:, 0]

    return matvec


def _written_out(s: Stacked, loss_fn: LossFn, data, flat: torch.Tensor) -> MLPHessian | None:
    """The written-out Hessian of a ReLU MLP population on one batch, or None (then autograd's)."""
    if not is_full_batch(data):
        return None
    x, y = check_data(data, s)
    return mlp_hessian(s.template, s.params, loss_fn, to_like(x, flat), to_like(y, flat))


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


def hessian_vector_product(model, loss_fn: LossFn, data, v: torch.Tensor) -> torch.Tensor:
    """H v for the mean training loss: v [n] → [n] for a module, v [P, n] (or [n], shared) → [P, n].

    ``n`` counts all parameters, flattened in ``named_parameters()`` order.
    """
    op = hessian_operator(model, loss_fn, data)
    if v.dim() == 1:
        v = v.expand(op.size, -1)
    out = op.matvec(v)
    return out[0] if op.stacked.single else out
