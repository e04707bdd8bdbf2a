"""Label corruption: a fraction of training labels replaced by uniform random classes."""

from __future__ import annotations

import torch


def corrupt_labels(labels: torch.Tensor, fraction: float, n_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Replace ``round(fraction * n)`` labels, chosen at random, with uniform random classes.

    A replacement may coincide with the true label (Zhang et al. 2017's protocol), so at
    ``fraction=1`` about ``1/n_classes`` of labels stay correct by chance.

    Args:
        labels: [n] int64. fraction: in [0, 1]. generator: a CPU generator, fixed per seed.
    Returns:
        [n] int64 on ``labels``' device; ``labels`` itself is not modified.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"label noise fraction must lie in [0, 1], got {fraction}")
    n = labels.shape[0]
    count = int(round(fraction * n))
    out = labels.clone()
    if count == 0:
        return out
    chosen = torch.randperm(n, generator=generator)[:count]
    random = torch.randint(0, n_classes, (count,), generator=generator)
    out[chosen.to(labels.device)] = random.to(labels.device)
    return out
