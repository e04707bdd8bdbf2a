"""Stable ranks of Conv1d layers follow the spectral norms' convention (the layer's map, the
convolution operator on its actual input): checked against the dense operator matrix built by
applying each layer to the unit inputs, with stride, padding, dilation and groups, in float64.
Tolerance 1e-8: ‖A‖_F is exact (rounding, ~1e-15) and ‖A‖₂ comes from Lanczos at rtol 1e-10."""

from __future__ import annotations

import torch
from torch import nn

from implicitreg.measures.layers import conv1d_operator_frobenius, spectral_norms
from implicitreg.measures.rank import stable_ranks
from implicitreg.population import Population

LENGTH = 11


class Convs(nn.Module):
    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.a = nn.Conv1d(2, 4, 3, stride=2, padding=1)
        self.b = nn.Conv1d(4, 4, 3, dilation=2, groups=2)
        self.c = nn.Conv1d(4, 3, 2, padding=1)
        self.head = nn.Linear(3 * 3, 5)
        self.input_len = 2 * LENGTH  # flat input [2·L], read as 2 channels
        self.double()

    def forward(self, x):
        x = x.reshape(x.shape[0], 2, LENGTH)
        return self.head(self.c(torch.tanh(self.b(torch.tanh(self.a(x))))).flatten(1))


def dense_operator(conv: nn.Conv1d, c_in: int, length: int) -> torch.Tensor:
    """A [C_out·L_out, C_in·L] of the bias-free convolution, column by column."""
    eye = torch.eye(c_in * length, dtype=torch.float64).reshape(-1, c_in, length)
    out = nn.functional.conv1d(eye, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    return out.flatten(1).T


def reference(model: Convs) -> torch.Tensor:
    """Stable ranks from dense matrices: each conv's operator on its actual input, then the linear head."""
    out, (c_in, length) = [], (2, LENGTH)
    for conv in (model.a, model.b, model.c):
        A = dense_operator(conv, c_in, length)
        s = torch.linalg.svdvals(A)
        out.append((s**2).sum() / s[0] ** 2)
        length = (A.shape[0] // conv.out_channels)
        c_in = conv.out_channels
    s = torch.linalg.svdvals(model.head.weight.detach())
    out.append((s**2).sum() / s[0] ** 2)
    return torch.stack(out)


def test_conv_stable_ranks_are_those_of_the_operator():
    model = Convs().eval()
    expected = reference(model)
    torch.testing.assert_close(stable_ranks(model), expected, rtol=1e-8, atol=0)
    # the denominator is the spectral norm spectral_norms reports
    frob = torch.stack([conv1d_operator_frobenius(m.weight.detach()[None], m, n)[0]
                        for m, n in ((model.a, LENGTH), (model.b, 6), (model.c, 2))])
    torch.testing.assert_close(frob.pow(2) / spectral_norms(model)[:3].pow(2), expected[:3], rtol=1e-8, atol=0)


def test_operator_frobenius_is_exact():
    model = Convs(1)
    for conv, c_in, length in ((model.a, 2, LENGTH), (model.b, 4, 6), (model.c, 4, 2)):
        A = dense_operator(conv, c_in, length)
        got = conv1d_operator_frobenius(conv.weight.detach()[None], conv, length)[0]
        torch.testing.assert_close(got, A.norm(), rtol=1e-13, atol=0)


def test_population_equals_members():
    members = [Convs(seed).eval() for seed in range(3)]
    pop = Population(members, dtype=torch.float64)
    torch.testing.assert_close(stable_ranks(pop), torch.stack([stable_ranks(m) for m in members]), rtol=1e-10, atol=0)
