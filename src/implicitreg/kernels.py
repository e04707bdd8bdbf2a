"""Batched forward/backward over a population's stacked parameters.

The kernels compute the same thing: per-member loss and gradient for a batch per member.

- :class:`VmapKernel` works for any ``nn.Module`` whose ``forward(x, masks)`` is functional:
  ``torch.func.vmap(grad_and_value(functional_call(...)))``.
- :class:`MLPKernel` is the MLP written out by hand with ``baddbmm``/``bmm`` and an explicit
  backward pass (no autograd graph, ReLU backward by ``threshold_backward``), keeping hidden
  weights as [P, in, out] and the read-out classes-first so every matmul runs near the sgemm
  rate without a transposed copy, and reusing its output buffers between steps
  (``benchmarks/population.py`` compares it with vmap).

The hand-batched :class:`~implicitreg.cnn_kernel.CNNKernel` lives in :mod:`implicitreg.cnn_kernel`;
both end in :func:`output_grad` (loss and its gradient, classes first).

Each takes parameters in *kernel layout* and converts from/to the module's own layout
(``nn.Linear`` stores [out, in]) with ``to_kernel``/``to_module``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

Params = dict[str, torch.Tensor]


def log_softmax_last(logits: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits, -1)`` for [P, N, C] with few classes.

    PyTorch's CPU kernel is about 9× slower over a short last dimension (C = 10) than over a
    middle one, so the classes are moved to the middle for the reduction.
    """
    return torch.log_softmax(logits.transpose(-1, -2).contiguous(), dim=-2).transpose(-1, -2)


def loss_per_sample(logits: torch.Tensor, targets: torch.Tensor, kind: str) -> torch.Tensor:
    """Cross-entropy (integer targets) or squared error (o − y)² (real targets), per sample: [..., N]."""
    if kind == "cross_entropy":
        if logits.dim() == 3:
            return -log_softmax_last(logits).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return F.cross_entropy(logits, targets, reduction="none")
    return (logits.squeeze(-1) - targets) ** 2


def output_grad(out: torch.Tensor, y: torch.Tensor, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-member mean loss [P] and its gradient with respect to the outputs, classes first: out [P, C, B].

    Cross-entropy (integer targets y: [P, B]): (softmax − one-hot) / B; squared error (real y, C = 1):
    2 (o − y) / B. The softmax runs over the middle dimension, where PyTorch's CPU kernel is fast
    (see :func:`~implicitreg.kernels.log_softmax_last`).
    """
    batch = out.shape[2]
    if loss == "cross_entropy":
        logp = torch.log_softmax(out, dim=1)
        value = -logp.gather(1, y.unsqueeze(1)).squeeze(1).mean(1)
        # a dense subtraction of the one-hot rather than scatter_add_ (non-deterministic on CUDA); the one-hot
        # by comparison, as F.one_hot reads the labels' range on the host (no CUDA graph could hold it)
        classes = torch.arange(out.shape[1], device=out.device).view(1, -1, 1)
        g = logp.exp_().sub_((y.unsqueeze(1) == classes).to(out.dtype))
        return value, g.div_(batch)
    residual = out.squeeze(1) - y
    return (residual**2).mean(1), (2.0 / batch) * residual.unsqueeze(1)


class Buffers:
    """Output tensors reused from call to call, keyed by name.

    Fresh multi-megabyte allocations every step cost page faults on CPU (measured: a third of
    the weight-gradient ``bmm`` time at H = 512); a buffer is reallocated only when its shape,
    dtype or device changes (e.g. after finished members leave the population).
    """

    def __init__(self) -> None:
        self._store: dict[str, torch.Tensor] = {}

    def __call__(self, key: str, shape, like: torch.Tensor) -> torch.Tensor:
        t = self._store.get(key)
        if t is None or t.shape != torch.Size(shape) or t.dtype != like.dtype or t.device != like.device:
            t = self._store[key] = torch.empty(shape, dtype=like.dtype, device=like.device)
        return t


class VmapKernel:
    """Any functional ``nn.Module`` over stacked parameters, via ``torch.func``."""

    def __init__(self, base: nn.Module, loss: str):
        self.base = base
        self.loss = loss

        def member_loss(params: Params, x: torch.Tensor, y: torch.Tensor, masks) -> torch.Tensor:
            # a user's module need not take masks: they are passed only when there are any
            out = functional_call(self.base, params, (x,) if masks is None else (x, masks))
            return loss_per_sample(out, y, self.loss).mean()

        self._grad = vmap(grad_and_value(member_loss))
        self._grad_nomask = vmap(grad_and_value(lambda p, x, y: member_loss(p, x, y, None)))
        self._forward = vmap(lambda p, x: functional_call(self.base, p, (x,)), in_dims=(0, None))

    def to_kernel(self, params: Params) -> Params:
        return params

    def to_module(self, params: Params) -> Params:
        return params

    def loss_and_grad(self, params: Params, x: torch.Tensor, y: torch.Tensor, masks) -> tuple[torch.Tensor, Params]:
        """x: [P, B, ...], y: [P, B]; masks: list of [P, B, ...] or None → loss [P], grads [P, ...]."""
        grads, loss = self._grad(params, x, y, masks) if masks is not None else self._grad_nomask(params, x, y)
        return loss, grads

    def forward(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """x: [N, ...] shared by all members → outputs [P, N, C]."""
        return self._forward(params, x)


class MLPKernel:
    """Hand-batched MLP: ``h_{l+1} = relu(h_l W_l + b_l)`` with W_l: [P, in, out], b_l: [P, 1, out].

    The read-out layer is kept classes-first, as ``nn.Linear`` stores it (W: [P, C, in], b: [P, C, 1]),
    and computes the logits transposed, [P, C, B]: with few classes (C = 10) the batched products
    [P, B, in] × [P, in, C] and their weight gradients run at ~15% of the sgemm rate on CPU, while
    the classes-first ones [P, C, in] × [P, in, B] run near it (measured at P = 64, B = 128,
    in = 128: 0.78 → 0.17 ms forward, 0.83 → 0.18 ms weight gradient), and the softmax over the
    middle dimension is the fast one (:func:`log_softmax_last`).
    """

    def __init__(self, n_layers: int, loss: str):
        self.n_layers = n_layers
        self.loss = loss
        self.names = [(f"layers.{i}.weight", f"layers.{i}.bias") for i in range(n_layers)]
        self.buffers = Buffers()

    def to_kernel(self, params: Params) -> Params:
        out = {}
        for w, b in self.names[:-1]:
            out[w] = params[w].transpose(1, 2).contiguous()
            out[b] = params[b].unsqueeze(1).contiguous()
        w, b = self.names[-1]
        out[w], out[b] = params[w].contiguous(), params[b].unsqueeze(2).contiguous()
        return out

    def to_module(self, params: Params) -> Params:
        out = {}
        for w, b in self.names[:-1]:
            out[w] = params[w].transpose(1, 2)
            out[b] = params[b].squeeze(1)
        w, b = self.names[-1]
        out[w], out[b] = params[w], params[b].squeeze(2)
        return out

    def loss_and_grad(self, params: Params, x: torch.Tensor, y: torch.Tensor, masks) -> tuple[torch.Tensor, Params]:
        """x: [P, B, D], y: [P, B]; masks: list of [P, B, H_l] or None → loss [P], grads (kernel layout).

        Activations and gradients are written into buffers reused from call to call: the
        returned gradients are valid until the next call.
        """
        buf = self.buffers
        acts = [x]
        h = x
        for i, (w, b) in enumerate(self.names[:-1]):
            h = torch.baddbmm(params[b], h, params[w], out=buf(f"act{i}", (*h.shape[:2], params[w].shape[2]), h))
            h.clamp_(min=0)
            if masks is not None:
                h.mul_(masks[i])
            acts.append(h)
        w, b = self.names[-1]
        loss, delta = output_grad(torch.baddbmm(params[b], params[w], h.transpose(1, 2)), y, self.loss)  # [P, C, B]
        grads: Params = {w: torch.bmm(delta, h, out=buf(w, params[w].shape, delta)),
                         b: torch.sum(delta, 2, keepdim=True, out=buf(b, params[b].shape, delta))}
        delta = delta.transpose(1, 2)  # [P, B, C]: the hidden layers' layout
        for i in range(self.n_layers - 1, -1, -1):
            w, b = self.names[i]
            if i < self.n_layers - 1:
                grads[w] = torch.bmm(acts[i].transpose(1, 2), delta, out=buf(w, params[w].shape, delta))
                grads[b] = torch.sum(delta, 1, keepdim=True, out=buf(b, params[b].shape, delta))
            if i > 0:
                weight = params[w] if i == self.n_layers - 1 else params[w].transpose(1, 2)
                back = torch.bmm(delta, weight, out=buf(f"back{i}", acts[i].shape, delta))
                if masks is not None:
                    back.mul_(masks[i - 1])
                # ReLU backward: zero where the (masked) activation is zero.
                delta = torch.ops.aten.threshold_backward.grad_input(
                    back, acts[i], 0, grad_input=buf(f"delta{i}", back.shape, back))
        return loss, grads

    def forward(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """x: [N, D] shared by all members → outputs [P, N, C] (a transposed view of classes-first logits)."""
        h = x
        for w, b in self.names[:-1]:
            h = torch.relu(torch.matmul(h, params[w]) + params[b])
        w, b = self.names[-1]
        return torch.baddbmm(params[b], params[w], h.transpose(-1, -2).expand(len(params[w]), -1, -1)).transpose(1, 2)
