"""lazy-vs-rich: the data — a subset of MNIST-1D (generated offline), one-hot targets, float64 tensors."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from implicitreg.data.mnist1d import load_mnist1d


@dataclass(frozen=True)
class Problem:
    """x [n, 40], one-hot targets y [n, 10] and labels [n]; the same for the test points (float64 / int64)."""

    x: torch.Tensor
    y: torch.Tensor
    labels: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    labels_test: torch.Tensor
    source: str


def mnist1d_problem(n_train: int, n_test: int) -> Problem:
    """The first ``n_train`` training and ``n_test`` test points of the canonical MNIST-1D set
    (:func:`~implicitreg.data.mnist1d.load_mnist1d`: Greydanus & Kobak's 4000/1000 split, standardized
    inputs), with one-hot targets in {0, 1}^10 (the squared loss on one-hot vectors of the issue)."""
    data = load_mnist1d(n_train, n_test)
    labels, labels_test = torch.as_tensor(data.y_train), torch.as_tensor(data.y_test)
    one_hot = lambda t: torch.nn.functional.one_hot(t, data.n_classes).to(torch.float64)  # noqa: E731
    return Problem(torch.as_tensor(data.x_train, dtype=torch.float64), one_hot(labels), labels,
                   torch.as_tensor(data.x_test, dtype=torch.float64), one_hot(labels_test), labels_test,
                   f"MNIST-1D: first {n_train} train / {n_test} test points of the canonical set")
