"""The Fourier spectrum of a learned modular-addition embedding (Nanda et al. 2023; Gromov 2023).

The first layer of an MLP on the concatenated one-hot vectors of a and b, W [h, 2p], holds one
embedding vector per input token: column a of W[:, :p] for the first operand, column b of
W[:, p:] for the second. A network that has learned modular addition embeds each token through a
few frequencies k, as cos(2πka/p) and sin(2πka/p) (Nanda et al.'s "key frequencies"; Gromov's
analytic solution uses one frequency per hidden unit), so the power of the DFT over the token
axis concentrates on a few k; a random initialization spreads it evenly over all of them.
"""

from __future__ import annotations

import torch

TOP = 6  # the "fraction of power in the top 6 frequencies"


def unit_power(weight: torch.Tensor, p: int) -> torch.Tensor:
    """Power of each hidden unit's embedding row per frequency, both operands summed.

    Args:
        weight: first-layer weights [..., h, 2p] (a population's [P, h, 2p] or one module's [h, 2p]).
        p: the modulus.

    Returns:
        [..., h, p // 2] float64: for unit j and k = 1 … ⌊p/2⌋, |Σ_a W[j, a] e^{-2πika/p}|² over the first
        operand's block plus the same over the second's. The frequencies k and p − k carry the same
        power (real weights) and are counted once; k = 0 (the mean over tokens) is left out, as it
        says nothing about which residues are which.
    """
    if weight.shape[-1] != 2 * p:
        raise ValueError(f"frequency_power: expected weights [..., h, {2 * p}] for p = {p}, got {list(weight.shape)}")
    w = weight.detach().double()
    power = torch.zeros((*w.shape[:-1], p // 2), dtype=torch.float64, device=w.device)
    for block in (w[..., :p], w[..., p:]):
        spectrum = torch.fft.rfft(block, dim=-1)  # [..., h, p // 2 + 1]
        power = power + (spectrum.abs() ** 2)[..., 1 : p // 2 + 1]
    return power


def frequency_power(weight: torch.Tensor, p: int) -> torch.Tensor:
    """The embedding's power per frequency, summed over hidden units: [..., h, 2p] → [..., p // 2]
    (see :func:`unit_power`)."""
    return unit_power(weight, p).sum(-2)


def top_fraction(power: torch.Tensor, top: int = TOP) -> torch.Tensor:
    """The share of the total power [...] in the ``top`` strongest frequencies of ``power`` [..., K]."""
    strongest = power.topk(min(top, power.shape[-1]), dim=-1).values.sum(-1)
    return strongest / power.sum(-1)


def unit_concentration(weight: torch.Tensor, p: int) -> torch.Tensor:
    """Per-unit periodicity [...]: Σ_j max_k P[j, k] / Σ_j Σ_k P[j, k] for the unit powers P of
    :func:`unit_power` — the power-weighted mean over hidden units of the share of a unit's power in its
    own strongest frequency. Gromov's analytic solution gives every unit one frequency (share 1) while the
    units together use many, which this sees and the summed spectrum (:func:`frequency_power`) does not."""
    power = unit_power(weight, p)
    return power.max(-1).values.sum(-1) / power.sum((-1, -2))
