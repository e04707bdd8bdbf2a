"""Hand-batched :class:`~implicitreg.models.CNN1D` over a population's stacked parameters.

Each strided convolution is one ``baddbmm`` over im2col columns, channels last, with an explicit
col2im backward (a few strided adds) — autograd's ``unfold`` backward is what made the generic
(:class:`~implicitreg.kernels.VmapKernel`) path slow. Same interface as the kernels of
:mod:`implicitreg.kernels`: ``to_kernel``/``to_module``, ``loss_and_grad``, ``forward``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from implicitreg.kernels import Params, log_softmax_last


def output_grad(out: torch.Tensor, y: torch.Tensor, loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-member mean loss [P] and its gradient with respect to the outputs out: [P, B, C].

    Cross-entropy (integer targets y: [P, B]): softmax − one-hot, over B; squared error (real y):
    2 (o − y) / B.
    """
    batch = out.shape[1]
    if loss == "cross_entropy":
        logp = log_softmax_last(out)
        value = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1).mean(1)
        # a dense subtraction of the one-hot rather than scatter_add_, which is non-deterministic on CUDA
        g = logp.exp_().sub_(F.one_hot(y, out.shape[-1]).to(out.dtype))
        return value, g.div_(batch)
    residual = out.squeeze(-1) - y
    return (residual**2).mean(1), (2.0 / batch) * residual.unsqueeze(-1)


class CNNKernel:
    """Hand-batched :class:`~implicitreg.models.CNN1D`: activations [P, B, L, C] (channels last).

    Kernel layout: conv weights [P, k·C_in, C_out] (offset-major), biases [P, 1, C_out]; the
    read-out weight [P, L·C, out] matches the channels-last flattening.
    """

    def __init__(self, model: nn.Module, loss: str):
        self.loss = loss
        self.kernels = [conv.kernel_size[0] for conv in model.convs]
        self.lengths = list(model.lengths)
        self.channels = model.convs[0].out_channels

    def to_kernel(self, params: Params) -> Params:
        out = {}
        for i in range(len(self.kernels)):
            w = params[f"convs.{i}.weight"]  # [P, C_out, C_in, k]
            out[f"convs.{i}.weight"] = w.permute(0, 3, 2, 1).reshape(w.shape[0], -1, w.shape[1]).contiguous()
            out[f"convs.{i}.bias"] = params[f"convs.{i}.bias"].unsqueeze(1).contiguous()
        w = params["readout.weight"]  # [P, out, C·L], channel-major
        p, n_out = w.shape[:2]
        out["readout.weight"] = (w.reshape(p, n_out, self.channels, self.lengths[-1]).permute(0, 3, 2, 1)
                                 .reshape(p, -1, n_out).contiguous())
        out["readout.bias"] = params["readout.bias"].unsqueeze(1).contiguous()
        return out

    def to_module(self, params: Params) -> Params:
        out = {}
        for i, k in enumerate(self.kernels):
            w = params[f"convs.{i}.weight"]  # [P, k·C_in, C_out]
            p, _, c_out = w.shape
            out[f"convs.{i}.weight"] = w.reshape(p, k, -1, c_out).permute(0, 3, 2, 1)
            out[f"convs.{i}.bias"] = params[f"convs.{i}.bias"].squeeze(1)
        w = params["readout.weight"]  # [P, L·C, out]
        p, _, n_out = w.shape
        out["readout.weight"] = w.reshape(p, self.lengths[-1], self.channels, n_out).permute(0, 3, 2, 1).reshape(
            p, n_out, -1)
        out["readout.bias"] = params["readout.bias"].squeeze(1)
        return out

    @staticmethod
    def _columns(h: torch.Tensor, k: int, length: int) -> torch.Tensor:
        """im2col of a stride-2, padding-1 convolution: [P, B, L, C] → [P, B·L_out, k·C]."""
        padded = F.pad(h, (0, 0, 1, 1))
        taps = [padded[:, :, j : j + 2 * (length - 1) + 1 : 2, :] for j in range(k)]
        p, b = h.shape[:2]
        return torch.stack(taps, dim=3).reshape(p, b * length, -1)

    @staticmethod
    def _col2im(d_cols: torch.Tensor, k: int, length: int, in_length: int) -> torch.Tensor:
        """Adjoint of :meth:`_columns`: [P, B·L_out, k·C] → [P, B, L_in, C]."""
        p = d_cols.shape[0]
        d_cols = d_cols.reshape(p, -1, length, k, d_cols.shape[-1] // k)
        d_padded = d_cols.new_zeros(p, d_cols.shape[1], in_length + 2, d_cols.shape[-1])
        for j in range(k):
            d_padded[:, :, j : j + 2 * (length - 1) + 1 : 2, :] += d_cols[:, :, :, j, :]
        return d_padded[:, :, 1 : in_length + 1, :]

    def _features(self, params: Params, x: torch.Tensor, masks):
        """Forward through the convolutions; returns the columns and activations of every layer."""
        h = x.unsqueeze(-1)  # [P, B, L, 1]
        cols, acts = [], [h]
        for i, (k, length) in enumerate(zip(self.kernels, self.lengths)):
            c = self._columns(h, k, length)
            out = torch.baddbmm(params[f"convs.{i}.bias"], c, params[f"convs.{i}.weight"]).clamp_(min=0)
            h = out.reshape(x.shape[0], x.shape[1], length, -1)
            if masks is not None:
                h = h * masks[i].transpose(-1, -2)  # masks come as [P, B, C, L]
            cols.append(c)
            acts.append(h)
        return cols, acts

    def loss_and_grad(self, params: Params, x: torch.Tensor, y: torch.Tensor, masks) -> tuple[torch.Tensor, Params]:
        """x: [P, B, L], y: [P, B]; masks: list of [P, B, C, L_i] or None → loss [P], grads (kernel layout)."""
        p, b = x.shape[:2]
        cols, acts = self._features(params, x, masks)
        flat = acts[-1].reshape(p, b, -1)
        out = torch.baddbmm(params["readout.bias"], flat, params["readout.weight"])
        loss, delta = output_grad(out, y, self.loss)
        grads: Params = {"readout.weight": torch.bmm(flat.transpose(1, 2), delta),
                         "readout.bias": delta.sum(1, keepdim=True)}
        back = torch.bmm(delta, params["readout.weight"].transpose(1, 2)).reshape(acts[-1].shape)
        for i in range(len(self.kernels) - 1, -1, -1):
            if masks is not None:
                back = back * masks[i].transpose(-1, -2)
            d_pre = torch.ops.aten.threshold_backward(back, acts[i + 1], 0).reshape(p, -1, back.shape[-1])
            grads[f"convs.{i}.weight"] = torch.bmm(cols[i].transpose(1, 2), d_pre)
            grads[f"convs.{i}.bias"] = d_pre.sum(1, keepdim=True)
            if i > 0:
                d_cols = torch.bmm(d_pre, params[f"convs.{i}.weight"].transpose(1, 2))
                back = self._col2im(d_cols, self.kernels[i], self.lengths[i], self.lengths[i - 1])
        return loss, grads

    def forward(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """x: [N, L] shared by all members → outputs [P, N, C]."""
        p = params["readout.bias"].shape[0]
        _, acts = self._features(params, x.unsqueeze(0).expand(p, -1, -1), None)
        flat = acts[-1].reshape(p, x.shape[0], -1)
        return torch.baddbmm(params["readout.bias"], flat, params["readout.weight"])
