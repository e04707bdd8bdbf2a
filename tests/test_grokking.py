"""The grokking study: the modular-addition data set, the embedding's Fourier concentration against a direct
DFT sum, the engine's full-batch AdamW against torch.optim.AdamW on a plain module, the analysis on fabricated
runs (pass, fail, inconclusive; NaN and missing runs), and a tiny run through the CLI."""

import itertools

import numpy as np
import pytest

from implicitreg.config import DataConfig
from implicitreg.data import load_dataset, modular
from implicitreg.data.modular import pairs



# --- the data set -------------------------------------------------------------------------------------------

def test_modular_labels_every_pair_once_with_its_sum_mod_p():
    p = 7
    data = modular(p=p, train_fraction=0.4, seed=3)
    assert data.n_classes == p and data.x_train.shape == (round(0.4 * 49), 2 * p)
    assert len(data.x_train) + len(data.x_test) == p * p
    # each row is two one-hot blocks; the label is (a + b) mod p, checked against an explicit enumeration
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        assert set(np.unique(x)) == {0.0, 1.0} and (x[:, :p].sum(1) == 1).all() and (x[:, p:].sum(1) == 1).all()
        a, b = pairs(x, p)
        assert (y == (a + b) % p).all() and y.dtype == np.int64
    seen = list(zip(*pairs(np.concatenate([data.x_train, data.x_test]), p)))
    assert sorted(seen) == list(itertools.product(range(p), range(p)))  # a partition of Z_p × Z_p


def test_modular_is_deterministic_in_p_fraction_and_seed():
    first, again = modular(11, 0.3, seed=5), modular(11, 0.3, seed=5)
    other = modular(11, 0.3, seed=6)
    assert np.array_equal(first.x_train, again.x_train) and np.array_equal(first.y_test, again.y_test)
    assert not np.array_equal(first.x_train, other.x_train)
    assert len(modular(11, 0.5, seed=5).y_train) == round(0.5 * 121)


def test_modular_through_the_data_config():
    # data.dim is the modulus, data.n_train the number of train pairs, n_test a prefix of the rest
    data = load_dataset(DataConfig(name="modular", dim=13, n_train=60, n_test=50, seed=2))
    direct = modular(13, seed=2, n_train=60, n_test=50)
    assert data.x_train.shape == (60, 26) and data.x_test.shape == (50, 26)
    assert np.array_equal(data.x_train, direct.x_train) and np.array_equal(data.y_test, direct.y_test)
    assert np.array_equal(load_dataset(DataConfig(name="modular", dim=13, seed=2)).y_train,
                          modular(13, seed=2).y_train)


@pytest.mark.parametrize("kwargs,field", [
    ({"p": 1}, "p (data.dim)"), ({"p": 5, "train_fraction": 1.0}, "train_fraction"),
    ({"p": 5, "n_train": 25}, "n_train"), ({"p": 5, "n_train": 20, "n_test": 6}, "n_test"),
])
def test_modular_rejects_bad_sizes_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field.replace("(", r"\(").replace(")", r"\)")):
        modular(**kwargs)
