"""Kendall's τ against scipy, and Jiang et al.'s granulated τ on hand-built tables with known answers."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from implicitreg.evaluate import GranulatedTau, granulated_kendall_tau, granulated_psi, group_codes, kendall_tau


def pair_count_tau_b(a, b) -> float:
    """τ-b by counting the n(n−1)/2 pairs: (C − D) / √((n0 − tied in a)(n0 − tied in b))."""
    concordant = discordant = tied_a = tied_b = pairs = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            pairs += 1
            da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
            tied_a += da == 0
            tied_b += db == 0
            concordant += da * db > 0
            discordant += da * db < 0
    return (concordant - discordant) / math.sqrt((pairs - tied_a) * (pairs - tied_b))


@pytest.mark.parametrize("seed", range(5))
def test_kendall_tau_matches_a_pair_count(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=30), rng.normal(size=30)
    b = b + 0.5 * a
    assert kendall_tau(a, b) == pytest.approx(pair_count_tau_b(a, b), abs=1e-12)
    # ties in both variables (τ-b)
    ta, tb = rng.integers(0, 4, size=25), rng.integers(0, 3, size=25)
    assert kendall_tau(ta, tb) == pytest.approx(pair_count_tau_b(ta, tb), abs=1e-12)


def test_kendall_tau_b_by_hand_with_ties():
    # x = (1, 1, 2, 3), y = (1, 2, 2, 3): of the 6 pairs, (1,2) is tied in x only, (2,3) in y only,
    # the other 4 are concordant: τ-b = (4 − 0) / √((6 − 1)(6 − 1)) = 0.8
    assert kendall_tau([1, 1, 2, 3], [1, 2, 2, 3]) == pytest.approx(0.8, abs=1e-15)
    # x = (1, 2, 2, 3), y = (3, 1, 2, 0): pairs (1,2) D, (1,3) D, (1,4) D, (2,3) x-tie, (2,4) D,
    # (3,4) D → (0 − 5) / √(5 · 6)
    assert kendall_tau([1, 2, 2, 3], [3, 1, 2, 0]) == pytest.approx(-5 / math.sqrt(30), abs=1e-15)


@pytest.mark.parametrize("seed", range(4))
def test_vectorized_psi_equals_the_grouped_definition(seed):
    """granulated_psi (all measures at once, resampled rows) against granulated_kendall_tau on the
    resampled frame: ties, NaN measures and duplicated rows included."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({h: rng.integers(0, 3, 60) for h in ("a", "b", "c")})
    frame["gap"] = rng.integers(0, 6, 60) / 10
    values = rng.integers(0, 5, size=(3, 60)).astype(float)
    values[1, rng.choice(60, 8, replace=False)] = np.nan
    codes = group_codes(frame, ["a", "b", "c"])
    for rows in (None, rng.integers(0, 60, 60)):
        psi = granulated_psi(values, frame["gap"].to_numpy(), codes, rows)
        picked = frame if rows is None else frame.iloc[rows]
        for k in range(3):
            sub = picked.assign(m=values[k] if rows is None else values[k][rows])
            expected = granulated_kendall_tau(sub[np.isfinite(sub["m"])], "m", "gap", ["a", "b", "c"]).psi
            assert psi[k] == pytest.approx(expected, abs=1e-12)


def test_vectorized_psi_known_answer():
    frame = table()
    psi = granulated_psi(frame[["measure"]].to_numpy().T, frame["gap"].to_numpy(), group_codes(frame, ["a", "b"]))
    assert psi[0] == pytest.approx(0.5)  # as computed by hand in test_granulated_tau_known_answer


def test_kendall_tau_by_hand_and_inputs():
    # pairs: (1,2) concordant, (1,3) concordant, (2,3) discordant → (2 − 1)/3
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    assert kendall_tau(torch.tensor([3.0, 2.0, 1.0]), [1, 2, 3]) == pytest.approx(-1.0)
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))  # constant measure
    assert math.isnan(kendall_tau([1], [2]))
    assert math.isnan(kendall_tau([1, float("nan"), 3], [1, 2, 3]))
    with pytest.raises(ValueError, match="same length"):
        kendall_tau([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="1-d"):
        kendall_tau(np.ones((2, 2)), np.ones((2, 2)))


def table():
    # rows (a, b, measure, gap), in shuffled order, plus a seed column that is not a hyperparameter
    rows = [
        (2, 1, 3.5, 3.5), (0, 0, 1.0, 1.0), (1, 1, 2.5, 1.5),
        (2, 0, 3.0, 3.0), (0, 1, 1.5, 2.5), (1, 0, 2.0, 2.0),
    ]
    frame = pd.DataFrame(rows, columns=["a", "b", "measure", "gap"])
    frame["seed"] = 0
    return frame


def test_granulated_tau_known_answer():
    result = granulated_kendall_tau(table(), "measure", "gap", ["a", "b"])
    assert isinstance(result, GranulatedTau)
    # ψ_a: groups b=0 → measure and gap in the same order, τ = 1; b=1 → measure (1.5, 2.5, 3.5),
    # gap (2.5, 1.5, 3.5): one discordant pair of three, τ = 1/3.  ψ_a = (1 + 1/3)/2 = 2/3.
    assert result.per_hyperparameter["a"] == pytest.approx(2 / 3)
    # ψ_b: groups a=0 → τ = 1; a=1 → (2, 2) vs (2.5, 1.5), τ = −1; a=2 → τ = 1.  ψ_b = 1/3.
    assert result.per_hyperparameter["b"] == pytest.approx(1 / 3)
    assert result.psi == pytest.approx(0.5)
    assert result.n_groups == {"a": 2, "b": 3}


def test_granulated_tau_skips_groups_without_tau():
    frame = pd.concat([table(), pd.DataFrame([{"a": 5, "b": 7, "measure": 0.0, "gap": 9.0, "seed": 0}])])
    result = granulated_kendall_tau(frame, "measure", "gap", ["a", "b"])
    # the new row is alone in its group for either hyperparameter: no τ, nothing changes
    assert result.per_hyperparameter == pytest.approx({"a": 2 / 3, "b": 1 / 3})
    assert result.n_groups == {"a": 2, "b": 3}


def test_granulated_tau_one_hyperparameter_is_plain_tau():
    frame = table()
    result = granulated_kendall_tau(frame, "measure", "gap", ["a"])
    assert result.psi == pytest.approx(kendall_tau(frame["measure"], frame["gap"]))
    assert result.n_groups == {"a": 1}


def test_granulated_tau_repeated_seeds_share_a_group():
    # two seeds per setting: rows that agree on every hyperparameter stay in one group
    frame = pd.concat([table().assign(seed=0), table().assign(seed=1, gap=lambda f: f["gap"] + 0.01)])
    result = granulated_kendall_tau(frame, "measure", "gap", ["a", "b"])
    for hp, group_key in [("a", "b"), ("b", "a")]:
        expected = np.mean([kendall_tau(g["measure"], g["gap"]) for _, g in frame.groupby(group_key)])
        assert result.per_hyperparameter[hp] == pytest.approx(expected)


def test_granulated_tau_bad_columns():
    with pytest.raises(ValueError, match="not in the frame"):
        granulated_kendall_tau(table(), "measure", "gap", ["a", "lr"])
    with pytest.raises(ValueError, match="at least one"):
        granulated_kendall_tau(table(), "measure", "gap", [])


def test_spearman_by_hand_with_ties_and_undefined_cases():
    from implicitreg.evaluate import spearman

    # x ranks (1, 2.5, 2.5, 4), y ranks (1, 2, 3, 4): deviations (−1.5, 0, 0, 1.5), (−1.5, −0.5, 0.5, 1.5)
    # → ρ = 4.5 / √(4.5 · 5)
    rho = spearman(pd.Series([1.0, 2.0, 2.0, 5.0]), pd.Series([10.0, 20.0, 30.0, 40.0]))
    assert rho == pytest.approx(4.5 / math.sqrt(4.5 * 5), abs=1e-15)
    assert spearman(pd.Series([1.0, 2.0, 3.0]), pd.Series([3.0, 2.0, 1.0])) == pytest.approx(-1.0)
    # non-finite pairs drop out; too few points or a constant side is undefined
    assert spearman(pd.Series([1.0, np.nan, 3.0, np.inf, 2.0]), pd.Series([1.0, 5.0, 3.0, 0.0, 2.0])) == pytest.approx(1.0)
    assert spearman(pd.Series([1.0, 2.0]), pd.Series([1.0, 2.0]), min_points=3) is None
    assert spearman(pd.Series([1.0, 1.0, 1.0]), pd.Series([1.0, 2.0, 3.0])) is None
