"""Exact Hessian-vector products of ReLU MLPs, written out by hand and batched over members and probes.

Pearlmutter's R-operator (1994) on the network z_l = W_l a_{l−1} + b_l, a_l = relu(z_l), a_0 = x,
and the mean loss L = N⁻¹ Σ_i ℓ(z_L,i, y_i). With the gradient's quantities computed once per
operator — activations a_l, ReLU masks m_l = [z_l > 0], output errors δ_L = ∂L/∂z_L and
back-propagated errors δ_l = m_l ⊙ W_{l+1}ᵀ δ_{l+1} — the product with a direction
v = (V_l, c_l) is one forward and one backward pass:

    R{z_l} = W_l R{a_{l−1}} + V_l a_{l−1} + c_l,       R{a_l} = m_l ⊙ R{z_l},      R{a_0} = 0
    R{δ_L} = ∇²ℓ · R{z_L} / N                            (softmax Jacobian, or 2/N for squared error)
    R{δ_l} = m_l ⊙ (W_{l+1}ᵀ R{δ_{l+1}} + V_{l+1}ᵀ δ_{l+1})
    (H v)_{W_l} = R{δ_l} a_{l−1}ᵀ + δ_l R{a_{l−1}}ᵀ,    (H v)_{b_l} = Σ_i R{δ_l}_i

(ReLU's second derivative is zero wherever it is defined, and autograd takes it to be zero at 0
as well, so these are the products autograd's reverse-over-reverse computes.) Everything is kept
features-first, [h, N] per member and probe, so each product is a batched [out, in] × [in, N]
matrix product, the shape the CPU's dgemm runs fastest; no autograd graph is built or walked.

Dropping the terms in δ (those that carry the network's own second derivatives) leaves the
generalized Gauss–Newton product G v = Jᵀ(∇²ℓ · J v) (``gauss_newton=True``,
:func:`~implicitreg.measures.ggn.ggn_operator`); with Σ_j r_j r_jᵀ / R of the per-sample output
gradients in place of ∇²ℓ, the empirical and Monte-Carlo Fishers (:meth:`MLPHessian.fisher`,
:func:`~implicitreg.measures.ggn.fisher_operator`).

:func:`~implicitreg.measures.hessian.hessian_operator` uses it for ReLU MLPs (the package's
:class:`~implicitreg.models.mlp.MLP`, or an ``nn.Sequential`` of ``Linear`` and ``ReLU``) with
``F.cross_entropy`` or :func:`mean_squared_error`, on one batch or batch by batch;
``benchmarks/curvature.py`` measures it against the peers.

Reference: Pearlmutter, *Fast exact multiplication by the Hessian*, Neural Computation 6 (1994).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from implicitreg.models.mlp import MLP


def mean_squared_error(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """N⁻¹ Σ_i (f(x_i) − y_i)² for one output: out [N, 1], y [N] (the regression loss the measures differentiate)."""
    return F.mse_loss(out.squeeze(-1), y)


#: The losses with a written-out second derivative, by the function object the caller passes.
LOSSES = {F.cross_entropy: "cross_entropy", mean_squared_error: "squared_error"}


def relu_mlp_layers(template: nn.Module) -> list[tuple[str, str]] | None:
    """(weight, bias) parameter names of a ReLU MLP's linear layers, input first, or None if
    ``template`` is not one (an :class:`MLP`, or an ``nn.Sequential`` Linear, ReLU, …, Linear with biases)."""
    if isinstance(template, MLP):
        return [(f"layers.{i}.weight", f"layers.{i}.bias") for i in range(len(template.layers))]
    if type(template) is not nn.Sequential or len(template) % 2 == 0:
        return None
    layers = []
    for i, module in enumerate(template):
        if i % 2 == 0:
            if type(module) is not nn.Linear or module.bias is None:
                return None
            layers.append((f"{i}.weight", f"{i}.bias"))
        elif type(module) is not nn.ReLU:
            return None
    return layers


#: Probes per pass by default: up to PASS_PROBES while a pass's widest intermediate (P · probes · N ·
#: width) holds at most PASS_ELEMENTS numbers. Measured on CPU, one thread, float64, 16 members of a
#: 40-32-32-10 MLP on N = 2000, ms per member-product at 1 / 2 / 4 / 8 probes per pass: 2.28 / 2.22 /
#: 1.95 / 1.88 (quadratic forms: 1.18 / 1.13 at 1 / 4, 1.11 at 8, 1.14 at 16).
PASS_PROBES = 8
PASS_ELEMENTS = 1 << 23

#: What :meth:`MLPHessian.members` costs per member kept, in products of one member: measured on CPU,
#: one thread, float64, 8 of 16 members of a 40-32-32-10 MLP on N = 2000: 0.18 (a rebuild: 0.95),
#: rounded up for the page faults of the first product into the new operator's fresh buffers.
SLICE_COST = 0.25


def mlp_hessian(template: nn.Module, params: dict[str, torch.Tensor], loss_fn, x: torch.Tensor,
                y: torch.Tensor, gauss_newton: bool = False) -> MLPHessian | None:
    """The written-out Hessian (or GGN) of ``template`` with stacked ``params`` (name → [P, ...]) on
    (x, y), or None where it does not apply (another architecture or loss, or data of other
    shapes): then the caller differentiates with autograd."""
    layers = relu_mlp_layers(template)
    loss = LOSSES.get(loss_fn)
    if layers is None or loss is None or list(params) != [name for pair in layers for name in pair]:
        return None
    weights = [params[w].detach() for w, _ in layers]
    P, N = weights[0].shape[0], x.shape[0]
    if x.dim() != 2 or not x.is_floating_point() or x.shape[1] != weights[0].shape[2] or y.shape not in ((N,), (P, N)):
        return None
    if loss == "squared_error" and (not y.is_floating_point() or weights[-1].shape[1] != 1):
        return None
    # cross-entropy: int64 labels of the C classes only (autograd's path raises on others, or skips
    # F.cross_entropy's ignore_index, which these written-out sums do not know)
    if loss == "cross_entropy" and (y.dtype != torch.int64 or bool((y < 0).any() | (y >= weights[-1].shape[1]).any())):
        return None
    return MLPHessian(weights, [params[b].detach() for _, b in layers], x, y, loss, gauss_newton)


class MLPHessian:
    """The Hessians of P ReLU MLPs' mean loss on one batch, as products with S probes per member.

    Args:
        weights: per layer, input first, [P, out, in] (``nn.Linear``'s layout).
        biases: per layer, [P, out].
        x: inputs [N, D] shared by the members.
        y: class labels (int64) or real targets, [N] shared or [P, N] per member.
        loss: "cross_entropy" (logits [N, C]) or "squared_error" (one output, N⁻¹ Σ (f − y)²).
        gauss_newton: the generalized Gauss–Newton G = Jᵀ ∇²ℓ J instead of H: the same passes
            without the terms in δ (those that carry the network's own second derivatives) —
            G v = Jᵀ(∇²ℓ · J v), and vᵀGv from the first-derivative forward pass alone.

    Parameters are flattened layer by layer, weight (row-major) then bias — the order of
    ``named_parameters()``.
    """

    def __init__(self, weights: list[torch.Tensor], biases: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                 loss: str, gauss_newton: bool = False):
        if loss not in ("cross_entropy", "squared_error"):
            raise ValueError(f"loss: expected 'cross_entropy' or 'squared_error', got {loss!r}")
        self.weights = weights
        self.loss = loss
        self.gauss_newton = gauss_newton
        self.outer: torch.Tensor | None = None  # a Fisher's output gradients r [P, R, C, N] (see fisher)
        P, N = weights[0].shape[0], x.shape[0]
        self.samples = N
        self.numels = [n for w in weights for n in (math.prod(w.shape[1:]), w.shape[1])]
        # the gradient's pass, features first: acts[l] = a_l [P, h, N], masks[l] = m_{l+1}
        self.inputs = x.t().to(weights[0]).contiguous()  # [D, N]
        a = self.inputs.expand(P, -1, -1)
        self.acts, self.masks = [a], []
        for i, (w, b) in enumerate(zip(weights, biases)):
            z = torch.baddbmm(b.unsqueeze(2), w, a)
            if i < len(weights) - 1:
                mask = (z > 0).to(z.dtype)
                a = z.mul_(mask)
                self.masks.append(mask)
                self.acts.append(a)
        y = y.to(z.device).expand(P, N) if y.dim() == 1 else y.to(z.device)
        self.softmax = torch.softmax(z, dim=1) if loss == "cross_entropy" else None  # [P, C, N]
        if loss == "cross_entropy":
            classes = torch.arange(z.shape[1], device=z.device).view(1, -1, 1)
            delta = (self.softmax - (y.unsqueeze(1) == classes).to(z.dtype)) / N
        else:
            delta = (2.0 / N) * (z - y.to(z.dtype).unsqueeze(1))
        self.deltas = [delta]  # δ_l [P, out_l, N], output layer first until reversed
        for i in range(len(weights) - 1, 0, -1):
            delta = torch.bmm(weights[i].transpose(1, 2), delta).mul_(self.masks[i - 1])
            self.deltas.append(delta)
        self.deltas.reverse()
        self._buffers: dict[tuple[str, int], torch.Tensor] = {}

    @property
    def pass_probes(self) -> int:
        """Probes per pass by default (see :data:`PASS_PROBES`)."""
        P, N = self.weights[0].shape[0], self.samples
        return max(1, min(PASS_PROBES, PASS_ELEMENTS // (P * N * max(w.shape[1] for w in self.weights))))

    def members(self, idx: torch.Tensor) -> MLPHessian:
        """The Hessians of members ``idx`` (int64 [A]) only: the gradient's pass sliced, not recomputed
        (:data:`SLICE_COST`)."""
        at = idx.to(self.inputs.device)
        out = self._sharing()
        out.weights = [w[at] for w in self.weights]
        out.acts = [self.inputs.expand(len(at), -1, -1)] + [a[at] for a in self.acts[1:]]
        out.masks = [m[at] for m in self.masks]
        out.deltas = [d[at] for d in self.deltas]
        out.softmax = None if self.softmax is None else self.softmax[at]
        out.outer = None if self.outer is None else self.outer[at]
        return out

    def fisher(self, r: torch.Tensor) -> MLPHessian:
        """The Fisher (1 / (N R)) Σ_i Σ_j g_ij g_ijᵀ of per-sample gradients g_ij = J_iᵀ r_ij instead:
        the Gauss–Newton passes with Σ_j r_ij r_ijᵀ / R in place of ∇²ℓ. r: the loss's gradients with
        respect to each sample's outputs, [P, R, C, N] (R = 1 for the empirical Fisher's data labels,
        R labels drawn per sample for the Monte-Carlo Fisher)."""
        out = self._sharing()
        out.gauss_newton, out.outer = True, r
        return out

    def _sharing(self) -> MLPHessian:
        """A shallow copy that shares this one's cached pass and has buffers of its own."""
        out = copy.copy(self)
        out._buffers = {}
        return out

    def _buffer(self, name: str, layer: int, shape: tuple[int, ...]) -> torch.Tensor:
        """An output tensor reused from product to product: a fresh multi-megabyte tensor each time
        costs page faults on CPU (measured: [16, 32, 2000] float64 products took 5.6 ms into fresh
        memory against 2.3 ms in place)."""
        t = self._buffers.get((name, layer))
        if t is None or t.shape != shape:
            t = self._buffers[name, layer] = torch.empty(shape, dtype=self.acts[0].dtype, device=self.acts[0].device)
        return t

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """H_p V_p (or G_p V_p) for S probes per member: V [P, S, n] → [P, S, n]."""
        P, S, N = V.shape[0], V.shape[1], self.samples
        Vw, Vb = self._directions(V)
        L = len(self.weights)
        # R-forward; Ra[l] = R{a_l} [P·S, h, N] (R{a_0} = 0)
        Ra: list[torch.Tensor | None] = [None]
        for i, (w, a) in enumerate(zip(self.weights, self.acts)):
            out, inp = w.shape[1:]
            Rz = self._times(Vw[i], i, a, "Rz").view(P * S, out, N)
            Rz += Vb[i].reshape(P * S, out, 1)
            if Ra[-1] is not None:
                Rz.baddbmm_(_per_probe(w, S), Ra[-1])
            if i < L - 1:
                Ra.append(Rz.view(P, S, out, N).mul_(self.masks[i].unsqueeze(1)).view(P * S, out, N))
        # R{δ_L}: the loss's second derivative at the outputs times R{z_L} (a Fisher's Σ_j r_j r_jᵀ / R)
        if self.outer is not None:
            Rz = Rz.view(P, S, -1, N)
            dots = torch.einsum("prcn,pscn->psrn", self.outer, Rz)
            Rd = torch.einsum("prcn,psrn->pscn", self.outer, dots).contiguous().div_(N * self.outer.shape[1])
            Rd = Rd.view(P * S, -1, N)
        elif self.loss == "cross_entropy":
            p = self.softmax.unsqueeze(1)  # [P, 1, C, N]
            Rz = Rz.view(P, S, -1, N)
            Rd = torch.mul(p, Rz, out=self._buffer("Rd", L - 1, Rz.shape))
            Rd = Rz.sub_(Rd.sum(2, keepdim=True)).mul_(p).div_(N).view(P * S, -1, N)
        else:
            Rd = Rz.mul_(2.0 / N)
        out_w: list[torch.Tensor] = [None] * L  # type: ignore[list-item]
        out_b: list[torch.Tensor] = [None] * L  # type: ignore[list-item]
        for i in range(L - 1, -1, -1):
            w, a, d = self.weights[i], self.acts[i], self.deltas[i]
            out, inp = w.shape[1:]
            if i == 0:  # the shared input: one [P·S·out, N] × [N, D] product
                gw = torch.mm(Rd.view(P * S * out, N), self.inputs.t()).view(P, S, out, inp)
            else:
                gw = torch.bmm(Rd.view(P, S * out, N), a.transpose(1, 2)).view(P, S, out, inp)
            if Ra[i] is not None and not self.gauss_newton:  # δ_l R{a_{l−1}}ᵀ (the GGN has no δ terms)
                if S == 1:
                    gw.view(P, out, inp).baddbmm_(d, Ra[i].transpose(1, 2))
                else:  # computed transposed, as R{a} δᵀ, to keep the probes outermost
                    gw += torch.bmm(Ra[i].view(P, S * inp, N), d.transpose(1, 2)).view(P, S, inp, out).transpose(2, 3)
            out_w[i], out_b[i] = gw, Rd.sum(2).view(P, S, out)
            if i > 0:
                back = self._buffer("Rd", i - 1, (P, S * inp, N))
                if self.gauss_newton:
                    torch.bmm(_per_probe(w, S).transpose(1, 2), Rd, out=back.view(P * S, inp, N))
                else:
                    torch.bmm(Vw[i].transpose(2, 3).reshape(P, S * inp, out), d, out=back)
                    back.view(P * S, inp, N).baddbmm_(_per_probe(w, S).transpose(1, 2), Rd)
                Rd = back.view(P, S, inp, N).mul_(self.masks[i - 1].unsqueeze(1)).view(P * S, inp, N)
        return torch.cat([t.reshape(P, S, -1) for pair in zip(out_w, out_b) for t in pair], dim=2)

    def quadratic(self, V: torch.Tensor) -> torch.Tensor:
        """v_s ᵀ H_p v_s for S probes per member, without H v: V [P, S, n] → [P, S].

        The second derivative of L(θ + t v) at t = 0, by a forward pass of the first and second
        derivatives along v (ż_l = W_l ȧ_{l−1} + V_l a_{l−1} + c_l, z̈_l = W_l ä_{l−1} + 2 V_l ȧ_{l−1},
        ȧ_l = m_l ⊙ ż_l, ä_l = m_l ⊙ z̈_l): vᵀHv = N⁻¹ Σ_i ż_L,iᵀ ∇²ℓ ż_L,i + Σ δ_L ⊙ z̈_L —
        about 60% of a product's multiplications, none of them a reduction over the batch.
        """
        P, S, N = V.shape[0], V.shape[1], self.samples
        Vw, Vb = self._directions(V)
        L = len(self.weights)
        da = dda = None  # ȧ, ä [P·S, h, N] (both 0 at the input; ä also after the first layer)
        for i, (w, a) in enumerate(zip(self.weights, self.acts)):
            out, inp = w.shape[1:]
            dz = self._times(Vw[i], i, a, "dz").view(P * S, out, N).add_(Vb[i].reshape(P * S, out, 1))
            ddz = None
            if da is not None:
                w_s = _per_probe(w, S)
                dz.baddbmm_(w_s, da)
            if da is not None and not self.gauss_newton:  # the GGN's form has no second derivatives
                ddz = torch.bmm(Vw[i].reshape(P * S, out, inp), da, out=self._buffer("ddz", i, (P * S, out, N))).mul_(2)
                if dda is not None:
                    ddz.baddbmm_(w_s, dda)
            if i < L - 1:
                mask = self.masks[i].unsqueeze(1)
                da = dz.view(P, S, out, N).mul_(mask).view(P * S, out, N)
                dda = None if ddz is None else ddz.view(P, S, out, N).mul_(mask).view(P * S, out, N)
        dz = dz.view(P, S, -1, N)
        if self.outer is not None:  # a Fisher's Σ_j (r_j · ż)² / R
            curvature = torch.einsum("prcn,pscn->psrn", self.outer, dz).square_().sum((2, 3)) / self.outer.shape[1]
        elif self.loss == "cross_entropy":  # żᵀ(diag p − p pᵀ)ż = Σ_c p_c ż_c² − (Σ_c p_c ż_c)²
            p = self.softmax.unsqueeze(1)
            pdz = torch.mul(p, dz, out=self._buffer("pdz", L, dz.shape))
            curvature = (pdz * dz).sum((2, 3)) - pdz.sum(2).square_().sum(2)
        else:
            curvature = 2.0 * dz.square().sum((2, 3))
        first = 0.0 if ddz is None else (self.deltas[-1].unsqueeze(1) * ddz.view(P, S, -1, N)).sum((2, 3))
        return curvature / N + first

    def _times(self, Vw: torch.Tensor, layer: int, a: torch.Tensor, name: str) -> torch.Tensor:
        """V_l a_{l−1} for every probe: Vw [P, S, out, in], a [P, in, N] → [P, S·out, N] (into a buffer)."""
        P, S, out, inp = Vw.shape
        N = self.samples
        if layer == 0:  # the shared input: one [P·S·out, D] × [D, N] product (a larger one runs nearer peak)
            return torch.mm(Vw.reshape(P * S * out, inp), self.inputs,
                            out=self._buffer(name, layer, (P * S * out, N))).view(P, S * out, N)
        return torch.bmm(Vw.reshape(P, S * out, inp), a, out=self._buffer(name, layer, (P, S * out, N)))

    def _directions(self, V: torch.Tensor) -> tuple[list[torch.Tensor], tuple[torch.Tensor, ...]]:
        """V [P, S, n] → per layer its weight directions [P, S, out, in] and bias directions [P, S, out]."""
        P, S = V.shape[:2]
        pieces = V.split(self.numels, dim=2)
        return [p.reshape(P, S, *w.shape[1:]) for p, w in zip(pieces[0::2], self.weights)], pieces[1::2]


def _per_probe(w: torch.Tensor, S: int) -> torch.Tensor:
    """w [P, out, in] repeated for S probes: [P·S, out, in] (a copy of the parameters, not of the data)."""
    return w if S == 1 else w.unsqueeze(1).expand(-1, S, -1, -1).reshape(-1, *w.shape[1:])
