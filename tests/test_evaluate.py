"""Kendall's τ against scipy, and Jiang et al.'s granulated τ on hand-built tables with known answers."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from implicitreg.evaluate import GranulatedTau, granulated_kendall_tau, kendall_tau


@pytest.mark.parametrize("seed", range(5))
def test_kendall_tau_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=30), rng.normal(size=30)
    b = b + 0.5 * a
    assert kendall_tau(a, b) == pytest.approx(stats.kendalltau(a, b)[0], abs=1e-12)
    # ties in both variables (τ-b)
    ta, tb = rng.integers(0, 4, size=25), rng.integers(0, 3, size=25)
    assert kendall_tau(ta, tb) == pytest.approx(stats.kendalltau(ta, tb)[0], abs=1e-12)


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
