"""The in-memory data set every stage consumes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Dataset:
    """Train and test arrays of one task.

    Attributes:
        x_train: [n_train, d] float64 inputs; x_test: [n_test, d].
        y_train: [n_train] int64 class labels (classification) or float64 targets (regression).
        n_classes: number of classes; 0 for regression.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int

    @property
    def input_dim(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    def tensors(self, device: torch.device | str, dtype: torch.dtype) -> "DeviceData":
        """Move the arrays to ``device`` once; training never copies data again."""
        label_dtype = torch.int64 if self.n_classes else dtype
        as_t = lambda a, dt: torch.as_tensor(np.ascontiguousarray(a)).to(device=device, dtype=dt)  # noqa: E731
        return DeviceData(
            x_train=as_t(self.x_train, dtype),
            y_train=as_t(self.y_train, label_dtype),
            x_test=as_t(self.x_test, dtype),
            y_test=as_t(self.y_test, label_dtype),
            n_classes=self.n_classes,
        )


@dataclass(frozen=True)
class DeviceData:
    """A :class:`Dataset` as tensors on the training device."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int


def split(x: np.ndarray, y: np.ndarray, n_test: int, seed: int) -> tuple[np.ndarray, ...]:
    """A seeded random train/test split: returns x_train, y_train, x_test, y_test."""
    order = np.random.default_rng(seed).permutation(len(x))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]
