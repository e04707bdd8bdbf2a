"""Data: MNIST-1D (offline), scikit-learn digits, synthetic generators, modular addition, label noise."""

from __future__ import annotations

from implicitreg.config import DataConfig
from implicitreg.data.dataset import Dataset, DeviceData
from implicitreg.data.digits import load_digits
from implicitreg.data.inputs import INPUT_MODES, transform_inputs
from implicitreg.data.label_noise import corrupt_labels
from implicitreg.data.mnist1d import CANONICAL_SEED, load_mnist1d
from implicitreg.data.modular import modular
from implicitreg.data.synthetic import regression, separable, teacher_student
from implicitreg.data.vision import load_cifar10, load_mnist


def load_dataset(config: DataConfig) -> Dataset:
    """Build the data set a :class:`DataConfig` names.

    ``config.seed`` is used as given; ``None`` means the data set's own default (MNIST-1D's 42,
    which is the paper's set; 0 for the others).
    """
    seed = config.seed
    if seed is None:
        seed = CANONICAL_SEED if config.name == "mnist1d" else 0
    sizes = dict(n_train=config.n_train, n_test=config.n_test, seed=seed)
    if config.name == "mnist1d":
        dataset = load_mnist1d(**sizes)
    elif config.name == "digits":
        dataset = load_digits(**sizes)
    elif config.name == "modular":  # data.dim is the modulus p, data.n_train the number of train pairs
        dataset = modular(p=config.dim, **sizes)
    elif config.name in ("mnist", "cifar10"):
        dataset = (load_mnist if config.name == "mnist" else load_cifar10)(config.root, **sizes)
    else:
        synthetic = {"regression": regression, "separable": separable, "teacher-student": teacher_student}
        dataset = synthetic[config.name](dim=config.dim, noise=config.noise, **sizes)
    return transform_inputs(dataset, config.inputs, seed)


__all__ = [
    "INPUT_MODES",
    "Dataset",
    "DeviceData",
    "corrupt_labels",
    "load_dataset",
    "load_digits",
    "load_cifar10",
    "load_mnist",
    "load_mnist1d",
    "modular",
    "regression",
    "separable",
    "teacher_student",
    "transform_inputs",
]
