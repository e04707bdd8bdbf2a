"""How many members of a population train as one chunk: its memory, against the host's or GPU's."""

from __future__ import annotations

import math
import os

import torch

from implicitreg.backends.local import cached_dataset
from implicitreg.models import build_model
from implicitreg.plan import Group


def member_bytes(group: Group, n_eval: int = 2048) -> int:
    """Rough memory of one population member: parameters with gradient, optimizer state and
    initial copy (×8), plus activations of a training batch (×4 for backward) and of an
    evaluation chunk of ``n_eval`` points."""
    data = cached_dataset(group.data)
    model = build_model(group.arch, group.model, data.input_dim, data.n_classes or 1)
    params = sum(p.numel() for p in model.parameters())
    activations = sum(math.prod(shape) for shape in model.hidden_shapes())
    itemsize = 8 if group.train.dtype == "float64" else 4
    return itemsize * (8 * params + activations * (4 * group.train.batch_size + n_eval))


def max_members(group: Group, device: torch.device) -> int:
    """Members per population chunk: a chunk takes at most a quarter of host memory (and at
    most 8 GiB), or half of the GPU's free memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free // 2
    else:
        budget = min(8 << 30, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4)
    return max(1, int(budget // member_bytes(group)))
