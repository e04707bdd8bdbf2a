"""Fully connected ReLU network with explicit dropout masks."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """``input_dim → hidden[0] → … → output_dim`` with ReLU after every hidden layer.

    Dropout is not a module state: ``forward`` takes the masks (one per hidden layer, already
    scaled by 1/(1-p)), so a population and a plain loop can draw them identically.
    """

    def __init__(self, input_dim: int, hidden: list[int], output_dim: int):
        super().__init__()
        sizes = [input_dim, *hidden, output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def hidden_shapes(self) -> list[tuple[int, ...]]:
        """Per-sample shapes of the hidden activations (where dropout masks apply)."""
        return [(layer.out_features,) for layer in self.layers[:-1]]

    def forward(self, x: torch.Tensor, masks: list[torch.Tensor] | None = None) -> torch.Tensor:
        """x: [B, input_dim] → logits [B, output_dim]; masks[i]: [B, hidden[i]]."""
        h = x
        for i, layer in enumerate(self.layers[:-1]):
            h = torch.relu(layer(h))
            if masks is not None:
                h = h * masks[i]
        return self.layers[-1](h)
