"""Input transforms: shuffling permutes positions consistently; Gaussian inputs match moments."""

import numpy as np
import pytest

from implicitreg.config import DataConfig
from implicitreg.data import load_dataset, transform_inputs


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(name="digits"))


def test_shuffled_is_one_permutation_of_positions_for_train_and_test(digits):
    shuffled = transform_inputs(digits, "shuffled", seed=3)
    # recover the permutation from the train set (columns are distinct), then check it on test
    columns = {digits.x_train[:, j].tobytes(): j for j in range(digits.input_dim)}
    order = [columns.get(shuffled.x_train[:, j].tobytes()) for j in range(digits.input_dim)]
    constant = {j for j in range(digits.input_dim) if np.ptp(digits.x_train[:, j]) == 0}
    assert all(o is not None for o in order)
    informative = [j for j in range(digits.input_dim) if order[j] not in constant]
    np.testing.assert_array_equal(shuffled.x_test[:, informative], digits.x_test[:, [order[j] for j in informative]])
    assert order != list(range(digits.input_dim))
    np.testing.assert_array_equal(shuffled.y_train, digits.y_train)
    np.testing.assert_array_equal(transform_inputs(digits, "shuffled", seed=3).x_train, shuffled.x_train)


def test_gaussian_inputs_match_the_moments_and_carry_no_signal(digits):
    noisy = transform_inputs(digits, "gaussian", seed=0)
    n = noisy.x_train.size
    # the sample mean of n i.i.d. draws is within 5 standard errors of the target mean
    assert abs(noisy.x_train.mean() - digits.x_train.mean()) < 5 * digits.x_train.std() / np.sqrt(n)
    assert noisy.x_train.std() == pytest.approx(digits.x_train.std(), rel=0.02)
    assert noisy.x_test.shape == digits.x_test.shape
    np.testing.assert_array_equal(noisy.y_test, digits.y_test)


def test_config_selects_the_transform():
    assert load_dataset(DataConfig(name="digits", inputs="shuffled")).x_train.shape == (1437, 64)
    with pytest.raises(ValueError):
        DataConfig(inputs="rotated")
