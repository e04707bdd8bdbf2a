"""Counter-based streams against Python's exact integer arithmetic and splitmix64's published outputs."""

from __future__ import annotations

import pytest
import torch

from implicitreg import counters

MASK64, MASK32 = (1 << 64) - 1, (1 << 32) - 1


def splitmix64(seed: int, n: int) -> list[int]:
    """The reference generator (Steele, Lea & Flood 2014), in exact integers."""
    out, state = [], seed & MASK64
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        out.append(z ^ (z >> 31))
    return out


def lowbias32(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x21F0AAAD) & MASK32
    x ^= x >> 15
    x = (x * 0x735A2D97) & MASK32
    return x ^ (x >> 15)


def unsigned(t: torch.Tensor, mask: int) -> list[int]:
    return [v & mask for v in t.tolist()]


def test_words_are_splitmix64_including_its_published_outputs():
    # the first outputs of splitmix64 seeded with 1234567, as printed by its reference C code
    assert unsigned(counters.words(torch.tensor([1234567]), 3)[0], MASK64) == [
        6457827717110365317, 3203168211198807973, 9817491932198370423]
    seeds = [0, 1, (1 << 63) - 1, -1, -(1 << 63), 0x0123456789ABCDEF]  # int64s covering the sign bit
    got = counters.words(torch.tensor(seeds, dtype=torch.int64), 40)
    for row, seed in zip(got, seeds):
        assert unsigned(row, MASK64) == splitmix64(seed, 40)


def test_derive_absorbs_each_counter_with_one_splitmix_step():
    keys = torch.tensor([5, -3], dtype=torch.int64)
    got = counters.derive(keys, 7, 0)
    for key, value in zip(keys.tolist(), got.tolist()):
        step1 = splitmix64(key + 0x9E3779B97F4A7C15 * 7, 1)[0]  # key + φ(7 + 1) = (key + 7φ) + φ
        assert value & MASK64 == splitmix64(step1, 1)[0]
    assert not torch.equal(counters.derive(keys, 1, 2), counters.derive(keys, 2, 1))


def test_words32_are_lowbias32_over_the_weyl_sequence_of_the_low_half():
    keys = torch.tensor([0, -1, 0x7FFFFFFF12345678, -(1 << 63) + 99], dtype=torch.int64)
    got = counters.words32(keys, 50)
    assert got.dtype == torch.int32
    for row, key in zip(got, keys.tolist()):
        seed = key & MASK32
        assert unsigned(row, MASK32) == [lowbias32((seed + 0x9E3779B9 * (i + 1)) & MASK32) for i in range(50)]


def test_permutations_are_permutations_and_differ_by_key():
    perms = counters.permutations(torch.arange(20, dtype=torch.int64), 100)
    assert torch.equal(perms.sort(1).values, torch.arange(100).expand(20, 100))
    assert len({tuple(p.tolist()) for p in perms}) == 20


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 0.9])
def test_keep_mask_drops_exactly_the_words_below_the_threshold(rate):
    keys = torch.tensor([11, 12], dtype=torch.int64)
    keep = counters.keep_mask(keys, 5000, counters.drop_thresholds(torch.tensor([rate, rate])))
    threshold = round(rate * 2**32)
    words = counters.words32(keys, 5000)
    for row, key_words in zip(keep, words):
        assert row.tolist() == [(w & MASK32) >= threshold for w in key_words.tolist()]
    # 10,000 Bernoulli(rate) draws: std of the dropped fraction <= 0.005; 0.025 is 5 std
    assert abs((~keep).double().mean().item() - rate) < 0.025


def test_keep_mask_is_uniform_at_the_extremes_of_the_word_range():
    """Rates near 0 and 1 still work: the signed comparison of unsigned words does not wrap."""
    keys = torch.arange(4, dtype=torch.int64)
    assert bool(counters.keep_mask(keys, 1000, counters.drop_thresholds(torch.zeros(4))).all())
    # 1 − 2⁻⁴⁰ rounds to the threshold 2³², clamped to 2³² − 1: only the largest word is kept
    assert not bool(counters.keep_mask(keys, 1000, counters.drop_thresholds(torch.full((4,), 1.0 - 2**-40))).any())
    # rate 0.999 over 400,000 draws: 400 kept expected (std 20)
    assert 300 < int(counters.keep_mask(keys, 100000, counters.drop_thresholds(torch.full((4,), 0.999))).sum()) < 500


def test_streams_are_pure_functions_of_key_and_counter():
    """Pure functions of their inputs: a second call, or a slice of a longer stream, gives the same bits."""
    keys = torch.tensor([3, 4], dtype=torch.int64)
    assert torch.equal(counters.words(keys, 10), counters.words(keys, 30)[:, :10])
    assert torch.equal(counters.words32(keys, 10), counters.words32(keys, 30)[:, :10])
    assert torch.equal(counters.permutations(keys, 64), counters.permutations(keys, 64))
