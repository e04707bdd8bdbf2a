"""Input transforms that remove structure while keeping labels: spatial shuffling and random inputs.

- ``shuffled`` applies one fixed random permutation to the feature positions of every train and
  test input: locality is destroyed, information is not (the MNIST-1D paper's shuffled variant).
- ``gaussian`` replaces every input by i.i.d. Gaussian noise with the train inputs' mean and
  standard deviation (Zhang et al. 2017's "random pixels"): labels become unpredictable.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from implicitreg.data.dataset import Dataset

INPUT_MODES = ("original", "shuffled", "gaussian")


def transform_inputs(dataset: Dataset, mode: str, seed: int) -> Dataset:
    """The data set with its inputs transformed by ``mode`` (one of :data:`INPUT_MODES`), seeded."""
    if mode == "original":
        return dataset
    rng = np.random.default_rng([seed, INPUT_MODES.index(mode)])
    if mode == "shuffled":
        order = rng.permutation(dataset.input_dim)
        return replace(dataset, x_train=dataset.x_train[:, order], x_test=dataset.x_test[:, order])
    if mode == "gaussian":
        mean, std = dataset.x_train.mean(), dataset.x_train.std()
        noise = lambda x: rng.normal(mean, std, size=x.shape)  # noqa: E731
        return replace(dataset, x_train=noise(dataset.x_train), x_test=noise(dataset.x_test))
    raise ValueError(f"data.inputs: expected one of {INPUT_MODES}, got {mode!r}")
