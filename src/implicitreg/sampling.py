"""Per-member random streams of training: labels, batch order, dropout masks.

Batch orders and dropout masks come from counter-based streams (:mod:`implicitreg.counters`)
keyed by the member's seed and the epoch or step: all P members' batches of a step, or masks of a
layer, are one tensor operation on the population's device, with no Python over the members and
no copy from the host. A member's numbers depend on its seed and the step alone — not on which
members share its population, on chunking or on the device — and the sequential engine draws
from the same streams with P = 1, which is what makes the two engines comparable to rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from implicitreg.counters import derive, drop_thresholds, keep_mask, permutations
from implicitreg.data.label_noise import corrupt_labels
from implicitreg.plan import Member
from implicitreg.seeding import generator, stream_seed


def member_labels(labels: torch.Tensor, member: Member, n_classes: int) -> torch.Tensor:
    """The member's training labels [n]: corrupted by its label-noise fraction, fixed by its seed."""
    if member.label_noise == 0 or n_classes == 0:
        return labels
    return corrupt_labels(labels, member.label_noise, n_classes, generator(member.seed, "labels"))


def stream_keys(seeds: Sequence[int], purpose: str, device=None) -> torch.Tensor:
    """int64 [P]: the key of each member's ``purpose`` stream (:func:`~implicitreg.seeding.stream_seed`)."""
    return torch.tensor([stream_seed(seed, purpose) for seed in seeds], dtype=torch.int64, device=device)


def gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x[idx]`` for a data tensor x [n, ...] and indices idx [P, B] → [P, B, ...].

    One ``index_select`` over the flattened indices: the same copy as advanced indexing, about
    4× faster on CPU (measured 0.03 against 0.13 ms for 64 × 128 rows of 40 features).
    """
    return x.index_select(0, idx.reshape(-1)).view(*idx.shape, *x.shape[1:])


class BatchOrders:
    """Mini-batch indices of P members: a fresh random permutation per member and epoch, no partial batch.

    Member p's order in epoch e is a permutation keyed by (its seed, e); ``batch_size >= n`` (or
    gd) gives the full data set every step, in order.

    Args:
        seeds: the P members' seeds. n: training set size. device: where the indices live.
    """

    def __init__(self, seeds: Sequence[int], n: int, batch_size: int, device=None):
        self.n = n
        self.batch_size = min(batch_size, n)
        self.per_epoch = n // self.batch_size
        self.keys = stream_keys(seeds, "order", device)
        self._epoch, self._perm = -1, None

    @property
    def full_batch(self) -> bool:
        return self.batch_size == self.n

    def batch(self, step: int) -> torch.Tensor:
        """Indices int64 [P, batch_size] of every member's batch at 0-based ``step``."""
        if self.full_batch:
            return torch.arange(self.n, device=self.keys.device).expand(len(self.keys), self.n)
        epoch, position = divmod(step, self.per_epoch)
        if epoch != self._epoch:  # one sort per epoch, for all members
            self._epoch, self._perm = epoch, permutations(derive(self.keys, epoch), self.n)
        start = position * self.batch_size
        return self._perm[:, start : start + self.batch_size]

    def select(self, keep: torch.Tensor) -> None:
        """Keep the members at positions ``keep`` ([K] int64, on the orders' device)."""
        self.keys = self.keys[keep]
        if self._perm is not None:
            self._perm = self._perm[keep]


class DropoutMasks:
    """Inverted-dropout masks of P members: keep with probability 1 − p_m, scaled by 1/(1 − p_m).

    Member m's mask of hidden layer l at step s is keyed by (its seed, s, l); a member with rate 0
    gets ones (it shares the population's forward pass with the others).

    Args:
        seeds, rates: each member's seed and dropout rate p_m ∈ [0, 1). hidden_shapes: one shape
            per hidden layer (the model's ``hidden_shapes()``). device: where the masks live.
    """

    def __init__(self, seeds: Sequence[int], rates: Sequence[float], hidden_shapes: list[tuple[int, ...]],
                 device=None):
        self.shapes = hidden_shapes
        self.keys = stream_keys(seeds, "dropout", device)
        self.rates = torch.tensor(list(rates), dtype=torch.float64, device=device)
        self._dropping(list(rates))

    def _dropping(self, rates: list[float]) -> None:
        """Which members draw masks: only those with a rate above 0 (the others get ones), decided
        on the host when the members are known, so that a step never reads the device; and their
        keys, comparison thresholds and scales, fixed until members leave."""
        rows = [i for i, rate in enumerate(rates) if rate > 0]
        self.size = len(rates)
        self.all_drop = len(rows) == len(rates)
        self.rows = torch.tensor(rows, dtype=torch.int64, device=self.keys.device) if rows else None
        if self.rows is not None:
            keys, rates_ = (self.keys, self.rates) if self.all_drop else (self.keys[self.rows], self.rates[self.rows])
            self._drawing = keys, drop_thresholds(rates_), (1.0 / (1.0 - rates_)).unsqueeze(1)

    def masks(self, step: int, batch: int, dtype: torch.dtype) -> list[torch.Tensor] | None:
        """One mask per hidden layer, [P, batch, *shape] in ``dtype``, at 0-based ``step``; None
        when no member drops anything."""
        if self.rows is None or not self.shapes:
            return None
        keys, thresholds, scale = self._drawing
        keys = derive(keys, step)
        scale = scale.to(dtype)
        out = []
        for layer, shape in enumerate(self.shapes):
            size = batch * int(torch.Size(shape).numel())
            # a float multiply, not torch.where(keep, scale, 0): where with a broadcast scale runs ~10× slower on CPU
            drawn = keep_mask(derive(keys, layer), size, thresholds).to(dtype).mul_(scale)
            if not self.all_drop:  # members at rate 0 keep everything
                drawn = torch.ones((self.size, size), dtype=dtype, device=drawn.device).index_copy_(0, self.rows, drawn)
            out.append(drawn.reshape(self.size, batch, *shape))
        return out

    def select(self, keep: torch.Tensor) -> None:
        """Keep the members at positions ``keep`` ([K] int64, on the masks' device)."""
        self.keys, self.rates = self.keys[keep], self.rates[keep]
        self._dropping(self.rates.tolist())
