"""Per-member random streams of training: labels, batch order, dropout masks.

The population loop and the sequential reference both draw from these, member by member, in
the same order, which is what makes their results comparable to rounding error.
"""

from __future__ import annotations

import torch

from implicitreg.data.label_noise import corrupt_labels
from implicitreg.plan import Member
from implicitreg.seeding import generator


def member_labels(labels: torch.Tensor, member: Member, n_classes: int) -> torch.Tensor:
    """The member's training labels [n]: corrupted by its label-noise fraction, fixed by its seed."""
    if member.label_noise == 0 or n_classes == 0:
        return labels
    return corrupt_labels(labels, member.label_noise, n_classes, generator(member.seed, "labels"))


class BatchOrder:
    """Mini-batch indices of one member: a fresh random permutation each epoch, no partial batch.

    ``batch_size >= n`` (or gd) gives the full data set every step, in order.
    """

    def __init__(self, seed: int, n: int, batch_size: int):
        self.n = n
        self.batch_size = min(batch_size, n)
        self.generator = generator(seed, "order")
        self.per_epoch = n // self.batch_size
        self._perm: torch.Tensor | None = None
        self._pos = self.per_epoch

    @property
    def full_batch(self) -> bool:
        return self.batch_size == self.n

    def next(self) -> torch.Tensor:
        """Indices [batch_size] (CPU int64) of the next batch."""
        if self.full_batch:
            return torch.arange(self.n)
        if self._pos == self.per_epoch:
            self._perm = torch.randperm(self.n, generator=self.generator)
            self._pos = 0
        start = self._pos * self.batch_size
        self._pos += 1
        return self._perm[start : start + self.batch_size]


class DropoutMasks:
    """Inverted-dropout masks of one member: keep with probability 1−p, scaled by 1/(1−p).

    Drawn in float64 on the CPU from the member's own stream, so the masks do not depend on the
    device, the precision or the other members of a population.
    """

    def __init__(self, seed: int, rate: float, hidden_shapes: list[tuple[int, ...]]):
        self.rate = rate
        self.shapes = hidden_shapes
        self.generator = generator(seed, "dropout")

    def next(self, batch: int) -> list[torch.Tensor] | None:
        """One mask per hidden layer, [batch, *shape] float64; None when the rate is 0."""
        if self.rate == 0:
            return None
        scale = 1.0 / (1.0 - self.rate)
        return [
            (torch.rand((batch, *shape), generator=self.generator, dtype=torch.float64) >= self.rate).double() * scale
            for shape in self.shapes
        ]
