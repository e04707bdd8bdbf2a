"""The MNIST-1D paper's 1-D CNN (Greydanus & Kobak 2024), with explicit dropout masks."""

from __future__ import annotations

import torch
from torch import nn


class CNN1D(nn.Module):
    """Conv1d layers (stride 2, padding 1, ReLU), flattened into a linear read-out.

    The first layer uses ``kernel_size`` (5 in the paper), later ones 3. For MNIST-1D
    (length 40, 25 channels, 3 layers) the read-out sees 25 × 5 features, as in the paper.
    """

    def __init__(self, input_len: int, channels: int, layers: int, kernel_size: int, output_dim: int):
        super().__init__()
        convs, lengths, in_ch, length = [], [], 1, input_len
        for i in range(layers):
            k = kernel_size if i == 0 else 3
            convs.append(nn.Conv1d(in_ch, channels, k, stride=2, padding=1))
            length = (length + 2 - k) // 2 + 1
            if length < 1:
                raise ValueError(f"cnn: input of length {input_len} is too short for {layers} layers")
            lengths.append(length)
            in_ch = channels
        self.convs = nn.ModuleList(convs)
        self.input_len = input_len  # operator norms depend on it (lengths 39 and 40 both give 19)
        self.lengths = lengths
        self.readout = nn.Linear(channels * length, output_dim)

    def hidden_shapes(self) -> list[tuple[int, ...]]:
        return [(conv.out_channels, length) for conv, length in zip(self.convs, self.lengths)]

    def forward(self, x: torch.Tensor, masks: list[torch.Tensor] | None = None) -> torch.Tensor:
        """x: [B, L] → logits [B, output_dim]; masks[i]: [B, channels, lengths[i]]."""
        h = x.unsqueeze(1)
        for i, conv in enumerate(self.convs):
            h = torch.relu(conv(h))
            if masks is not None:
                h = h * masks[i]
        return self.readout(h.flatten(1))
