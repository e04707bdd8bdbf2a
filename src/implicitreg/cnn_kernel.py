"""Hand-batched :class:`~implicitreg.models.CNN1D` over a population's stacked parameters.

Each strided convolution is one ``baddbmm`` over im2col columns, channels last: a layer's
activation is written into a zero-padded buffer, and the next layer's columns are one strided copy
of it (the k taps of an output position are k·C consecutive numbers). The backward is explicit:
``bmm`` for weights and inputs, a col2im of two strided copies and k − 2 adds, ``threshold_backward``
for the ReLU. The read-out is computed classes first. Outputs go to buffers reused between steps.
Same interface as the kernels of :mod:`implicitreg.kernels`: ``to_kernel``/``to_module``,
``loss_and_grad``, ``forward``.

Measured with ``benchmarks/population.py --part cnn`` (P = 10, 64 channels, batch 128): on one CPU
thread the kernel is 1.1× the P separate oneDNN convolutions of the sequential engine, which
already run near half the sgemm peak there, with matmuls of the same shapes per member
(N = C_out = 64); on two threads, where oneDNN's small convolutions scale worse, it is 1.6–2.3×
(the loop's time varies between runs, the kernel's, at ~49% of the peak, does not). Grouped
``conv1d`` (P members as groups) and ``torch.compile`` were measured there too and are no faster.
"""

from __future__ import annotations

import torch
from torch import nn

from implicitreg.kernels import Buffers, Params, output_grad


class CNNKernel:
    """Hand-batched :class:`~implicitreg.models.CNN1D`: activations [P, B, L, C] (channels last).

    Kernel layout: conv weights [P, k·C_in, C_out] (offset-major), biases [P, 1, C_out]; the read-out
    classes first, weight [P, out, L·C] (its columns in the channels-last flattening), bias [P, out, 1].
    """

    def __init__(self, model: nn.Module, loss: str):
        self.loss = loss
        self.kernels = [conv.kernel_size[0] for conv in model.convs]
        self.lengths = list(model.lengths)
        self.channels = model.convs[0].out_channels
        self.buffers = Buffers()

    def to_kernel(self, params: Params) -> Params:
        out = {}
        for i in range(len(self.kernels)):
            w = params[f"convs.{i}.weight"]  # [P, C_out, C_in, k]
            out[f"convs.{i}.weight"] = w.permute(0, 3, 2, 1).reshape(w.shape[0], -1, w.shape[1]).contiguous()
            out[f"convs.{i}.bias"] = params[f"convs.{i}.bias"].unsqueeze(1).contiguous()
        w = params["readout.weight"]  # [P, out, C·L], channel-major
        p, n_out = w.shape[:2]
        out["readout.weight"] = (w.reshape(p, n_out, self.channels, self.lengths[-1]).transpose(2, 3)
                                 .reshape(p, n_out, -1).contiguous())
        out["readout.bias"] = params["readout.bias"].unsqueeze(2).contiguous()
        return out

    def to_module(self, params: Params) -> Params:
        out = {}
        for i, k in enumerate(self.kernels):
            w = params[f"convs.{i}.weight"]  # [P, k·C_in, C_out]
            p, _, c_out = w.shape
            out[f"convs.{i}.weight"] = w.reshape(p, k, -1, c_out).permute(0, 3, 2, 1)
            out[f"convs.{i}.bias"] = params[f"convs.{i}.bias"].squeeze(1)
        w = params["readout.weight"]  # [P, out, L·C]
        p, n_out = w.shape[:2]
        out["readout.weight"] = w.reshape(p, n_out, self.lengths[-1], self.channels).transpose(2, 3).reshape(
            p, n_out, -1)
        out["readout.bias"] = params["readout.bias"].squeeze(2)
        return out

    def _features(self, params: Params, x: torch.Tensor, masks, buf: Buffers):
        """Forward through the convolutions: the im2col columns of every layer and its activations.

        Each layer's activation is written into the interior of a zero-padded buffer [P, B, L + 2, C],
        so the next layer's columns are one strided copy of it: with channels last, the k taps of an
        output position are k·C consecutive numbers starting at 2t·C. Activations: views [P, B, L, C].
        """
        p, b = x.shape[:2]
        padded = self._padded(buf, "pad0", p, b, x.shape[2], 1, x)
        padded[:, :, 1:-1, 0] = x
        cols, acts = [], []
        for i, (k, length) in enumerate(zip(self.kernels, self.lengths)):
            c_in = padded.shape[-1]
            window = padded.as_strided((p, b, length, k * c_in), (padded.stride(0), padded.stride(1), 2 * c_in, 1))
            c = buf(f"cols{i}", (p, b * length, k * c_in), x)
            c.view(p, b, length, k * c_in).copy_(window)
            w = params[f"convs.{i}.weight"]
            pre = torch.baddbmm(params[f"convs.{i}.bias"], c, w, out=buf(f"pre{i}", (p, b * length, w.shape[-1]), x))
            if i + 1 < len(self.kernels):
                padded = self._padded(buf, f"pad{i + 1}", p, b, length, w.shape[-1], x)
                h = padded[:, :, 1:-1]
            else:  # the read-out reads it flat: contiguous
                h = buf("last", (p, b, length, w.shape[-1]), x)
            torch.clamp(pre.view(p, b, length, -1), min=0, out=h)
            if masks is not None:
                h.mul_(masks[i].transpose(-1, -2))  # masks come as [P, B, C, L]
            cols.append(c)
            acts.append(h)
        return cols, acts

    @staticmethod
    def _padded(buf: Buffers, key: str, p: int, b: int, length: int, channels: int, like: torch.Tensor):
        """A [P, B, length + 2, C] buffer whose first and last positions (the convolution's padding) are zero."""
        t = buf(key, (p, b, length + 2, channels), like)
        t[:, :, 0].zero_()
        t[:, :, -1].zero_()
        return t

    def _col2im(self, d_cols: torch.Tensor, i: int) -> torch.Tensor:
        """Adjoint of layer i's column copy: [P, B·L_out, k·C] → gradient of its input, a view [P, B, L_in, C]."""
        k, length, in_length = self.kernels[i], self.lengths[i], self.lengths[i - 1]
        p, c = d_cols.shape[0], d_cols.shape[-1] // k
        taps = d_cols.view(p, -1, length, k, c)
        d_padded = self.buffers(f"dpad{i}", (p, taps.shape[1], in_length + 2, c), d_cols)
        # tap j of output t lands on padded position 2t + j: taps 0 and 1 cover positions 0 .. 2L_out − 1
        # without overlap (copied), later taps overlap them (added), positions past 2L_out are zero
        d_padded[:, :, 0 : 2 * length - 1 : 2] = taps[:, :, :, 0]
        if k > 1:
            d_padded[:, :, 1 : 2 * length : 2] = taps[:, :, :, 1]
            d_padded[:, :, 2 * length :].zero_()
        else:
            d_padded[:, :, 1::2].zero_()
        for j in range(2, k):
            d_padded[:, :, j : j + 2 * (length - 1) + 1 : 2] += taps[:, :, :, j]
        return d_padded[:, :, 1 : in_length + 1]

    def loss_and_grad(self, params: Params, x: torch.Tensor, y: torch.Tensor, masks) -> tuple[torch.Tensor, Params]:
        """x: [P, B, L], y: [P, B]; masks: list of [P, B, C, L_i] or None → loss [P], grads (kernel layout).

        Activations and gradients are written into buffers reused from call to call: the returned
        gradients are valid until the next call.
        """
        buf = self.buffers
        p, b = x.shape[:2]
        cols, acts = self._features(params, x, masks, buf)
        flat = acts[-1].view(p, b, -1)
        w_out = params["readout.weight"]  # [P, out, L·C]
        # classes first: the read-out's matmuls are [out, L·C]·[L·C, B] and [out, B]·[B, L·C], wide in
        # their last dimension, rather than [B, L·C]·[L·C, out] with out = 10 columns (4-5× slower, measured on CPU)
        out = torch.baddbmm(params["readout.bias"], w_out, flat.transpose(1, 2))
        loss, delta = output_grad(out, y, self.loss)  # delta: [P, out, B]
        grads: Params = {
            "readout.weight": torch.bmm(delta, flat, out=buf("g_readout", w_out.shape, x)),
            "readout.bias": delta.sum(2, keepdim=True)}
        back = torch.bmm(delta.transpose(1, 2), w_out, out=buf("back", flat.shape, x)).view(acts[-1].shape)
        for i in range(len(self.kernels) - 1, -1, -1):
            if masks is not None:
                back.mul_(masks[i].transpose(-1, -2))
            d_pre = torch.ops.aten.threshold_backward.grad_input(
                back, acts[i], 0, grad_input=buf(f"dpre{i}", acts[i].shape, x)).view(p, -1, back.shape[-1])
            w = params[f"convs.{i}.weight"]
            grads[f"convs.{i}.weight"] = torch.bmm(cols[i].transpose(1, 2), d_pre, out=buf(f"g{i}", w.shape, x))
            grads[f"convs.{i}.bias"] = torch.sum(d_pre, 1, keepdim=True,
                                                 out=buf(f"gb{i}", params[f"convs.{i}.bias"].shape, x))
            if i > 0:
                d_cols = torch.bmm(d_pre, w.transpose(1, 2), out=buf(f"dcols{i}", cols[i].shape, x))
                back = self._col2im(d_cols, i)
        return loss, grads

    def forward(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """x: [N, L] shared by all members → outputs [P, N, C]."""
        p = params["readout.bias"].shape[0]
        # fresh buffers: evaluation chunks are larger than training batches and need not be kept
        _, acts = self._features(params, x.unsqueeze(0).expand(p, -1, -1), None, Buffers())
        flat = acts[-1].reshape(p, x.shape[0], -1)
        return torch.baddbmm(params["readout.bias"], params["readout.weight"], flat.transpose(1, 2)).transpose(1, 2)
