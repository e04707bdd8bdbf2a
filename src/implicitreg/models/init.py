"""Seeded, scaled initialization (PyTorch's default distribution, drawn from an explicit generator).

PyTorch's ``nn.Linear``/``nn.Conv1d`` draw from the global RNG; a population needs each member's
initialization to depend on its own seed alone, so the draw is made here from a generator.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def reset_parameters(module: nn.Module, generator: torch.Generator, scale: float = 1.0) -> nn.Module:
    """Re-draw every Linear/Conv1d layer as U(-s/√fan_in, s/√fan_in) (weights and biases).

    This is PyTorch's default (kaiming-uniform with a=√5) multiplied by ``scale``. Layers are
    visited in ``module.modules()`` order, weight before bias, so the draw is reproducible.
    """
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, (nn.Linear, nn.Conv1d)):
                fan_in = layer.weight[0].numel()
                bound = scale / math.sqrt(fan_in)
                for tensor in (layer.weight, layer.bias):
                    if tensor is None:
                        continue
                    draw = torch.rand(tensor.shape, generator=generator, dtype=torch.float64)
                    tensor.copy_((2.0 * draw - 1.0) * bound)
    return module
