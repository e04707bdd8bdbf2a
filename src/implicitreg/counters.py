"""Counter-based random numbers: each value a pure function of (key, counter), on any device.

A counter-based generator has no state: the i-th number of stream ``key`` is ``hash(key, i)``, so
P members' streams are drawn in one tensor operation on the population's device, a member's
numbers do not depend on which other members share its population or chunk, and CPU and CUDA
give the same bits (Salmon et al. 2011).

- 64-bit words (keys, sub-keys, permutations): splitmix64 (Steele, Lea & Flood 2014; Java's
  ``SplittableRandom``), the i-th word of stream s being ``mix64(s + φ·(i + 1))`` (passes BigCrush).
- 32-bit words in bulk (dropout masks, millions per step): Wellons' ``lowbias32`` finalizer over
  the Weyl sequence ``s + φ₃₂·(i + 1)``, with s the low half of a splitmix64 sub-key. Half the
  memory traffic of 64-bit words, which on a CPU is what the cost is: 2²⁰ words took 3.0 ms on
  2 cores, as long as ``torch.rand`` (3.0 ms), where the 64-bit hash took about twice that.

PyTorch has no unsigned arithmetic on every device, so words are int64 / int32 holding the same
bits: additions and multiplications wrap modulo 2⁶⁴ / 2³² exactly as unsigned ones do, and the
logical right shift is an arithmetic shift with the copied sign bits masked off. Every step works
in place on a fresh tensor (out-of-place integer chains cost several times more on CPU).
tests/test_counters.py checks each function against Python's exact integers and splitmix64's
published outputs.

References:
    Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011.
    Steele, Lea & Flood, "Fast splittable pseudorandom number generators", OOPSLA 2014.
    Wellons, "Prospecting for hash functions" (2018), lowbias32.
"""

from __future__ import annotations

import torch


def _signed(word: int, bits: int = 64) -> int:
    """The signed integer holding the bits of an unsigned ``bits``-bit ``word``."""
    word %= 1 << bits
    return word - (1 << bits) if word >= 1 << (bits - 1) else word


_PHI64, _PHI32 = 0x9E3779B97F4A7C15, 0x9E3779B9  # 2⁶⁴/φ and 2³²/φ: the Weyl increments
_M64 = (_signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB))
_M32 = (_signed(0x21F0AAAD, 32), _signed(0x735A2D97, 32))


def _xorshift_(x: torch.Tensor, bits: int, width: int) -> torch.Tensor:
    """x ^= x >>> bits (logical shift of ``width``-bit words), in place."""
    return x.bitwise_xor_((x >> bits).bitwise_and_((1 << (width - bits)) - 1))


def _mix64_(x: torch.Tensor) -> torch.Tensor:
    """The splitmix64 finalizer, in place over int64 words (a bijection of 64-bit words)."""
    _xorshift_(x, 30, 64).mul_(_M64[0])
    _xorshift_(x, 27, 64).mul_(_M64[1])
    return _xorshift_(x, 31, 64)


def _mix32_(x: torch.Tensor) -> torch.Tensor:
    """Wellons' lowbias32 finalizer, in place over int32 words (a bijection of 32-bit words)."""
    _xorshift_(x, 16, 32).mul_(_M32[0])
    _xorshift_(x, 15, 32).mul_(_M32[1])
    return _xorshift_(x, 15, 32)


def derive(keys: torch.Tensor, *counters: int) -> torch.Tensor:
    """Sub-keys int64 [P] of ``keys`` int64 [P] for a tuple of non-negative counters (epoch, step, ...).

    Each counter is absorbed by one splitmix64 step, so (key, a, b) and (key, b, a) differ.
    """
    for counter in counters:
        keys = _mix64_(keys + _signed(_PHI64 * (counter + 1)))
    return keys


def words(keys: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` splitmix64 outputs seeded by each key: int64 [P, n] (64 random bits each)."""
    counter = torch.arange(1, n + 1, device=keys.device, dtype=torch.int64).mul_(_signed(_PHI64))
    return _mix64_(keys.unsqueeze(1) + counter)


def words32(keys: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` 32-bit words per key: int32 [P, n], lowbias32 over the key's low half plus φ₃₂·(i + 1)."""
    seeds = (keys & 0xFFFFFFFF).to(torch.int32)  # the int32 with the low half's bits (wraps)
    counter = torch.arange(1, n + 1, device=keys.device, dtype=torch.int32).mul_(_signed(_PHI32, 32))
    return _mix32_(seeds.unsqueeze(1) + counter)


def permutations(keys: torch.Tensor, n: int) -> torch.Tensor:
    """One uniformly random permutation of range(n) per key: int64 [P, n].

    Sorting n random 64-bit words gives every order with equal probability up to ties, which
    occur with probability below n²/2⁶⁵ (and then break by position: the sort is stable).
    """
    return torch.sort(words(keys, n), dim=1, stable=True).indices


def drop_thresholds(rate: torch.Tensor) -> torch.Tensor:
    """The int32 [P] that :func:`keep_mask` compares words with, for drop rates ``rate`` [P] (float).

    round(rate · 2³²), with its sign bit flipped: unsigned order is then signed order.
    """
    threshold = torch.round(rate.double() * 2.0**32).to(torch.int64).clamp_(0, 2**32 - 1)
    return (threshold - 2**31).to(torch.int32)  # t ^ 0x80000000, as a signed int32


def keep_mask(keys: torch.Tensor, n: int, thresholds: torch.Tensor) -> torch.Tensor:
    """Bernoulli keep-decisions: bool [P, n], True with probability 1 − rate_p.

    ``thresholds`` [P] from :func:`drop_thresholds` (computed once per set of rates). Element i of
    member p is dropped when its 32-bit word, read unsigned, falls below round(rate_p · 2³²): the
    realized rate is within 2⁻³³ of the one asked for.
    """
    bits = words32(keys, n).bitwise_xor_(_signed(0x80000000, 32))
    return bits >= thresholds.unsqueeze(1)
