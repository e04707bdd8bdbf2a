"""Gromov's (2023) network: a two-layer MLP with a quadratic activation and no biases.

f(x) = W₂ (W₁ x)², x the concatenated one-hot vectors of a and b [2p], W₁ [h, 2p], W₂ [p, h]. On such
inputs W₁x = u_a + v_b (one column per token), and the square holds the product term 2·u_a⊙v_b that
Gromov's analytic solution uses: with u_a = cos(2πka/p + φ), v_b = cos(2πkb/p + ψ) the products carry
cos(2πk(a + b)/p + φ + ψ), from which W₂ reads (a + b) mod p.

The engine builds it as a user module (``arch="module"``): ``factory = "implicitreg.studies.grokking.
model:quadratic_w{h}"`` names the width in the function's name, since a factory is called with
(input_dim, n_classes) only; the population trains it through the vmap kernel.
"""

from __future__ import annotations

import re
from typing import Callable

import torch
from torch import nn

FACTORY = "implicitreg.studies.grokking.model:quadratic_w{width}"
_NAME = re.compile(r"quadratic_w([1-9][0-9]*)")


class Quadratic(nn.Module):
    """x [B, input_dim] → W₂ (W₁ x)² [B, output_dim]; ``layers`` as in the MLP (``layers.0.weight``
    is the embedding [width, input_dim]). PyTorch's default init: U(±1/√fan_in)."""

    def __init__(self, input_dim: int, width: int, output_dim: int):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(input_dim, width, bias=False), nn.Linear(width, output_dim, bias=False)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers[1](self.layers[0](x) ** 2)


def factory(width: int) -> str:
    """The factory spec of a quadratic network of ``width`` hidden units."""
    return FACTORY.format(width=width)


def __getattr__(name: str) -> Callable[[int, int], Quadratic]:
    """``quadratic_w128`` → a factory ``(input_dim, n_classes) → Quadratic(input_dim, 128, n_classes)``."""
    match = _NAME.fullmatch(name)
    if match is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    width = int(match.group(1))
    return lambda input_dim, output_dim: Quadratic(input_dim, width, output_dim)
