"""How a group of runs trains: on which engine (:func:`engine_for`), and how many members of a
population train as one chunk (its memory, against the host's or GPU's)."""

from __future__ import annotations

import math
import os

import torch

from implicitreg.backends.local import cached_dataset
from implicitreg.models import build_model
from implicitreg.models.factory import population_refusal
from implicitreg.plan import Group

BUILT_IN = ("mlp", "cnn")  # architectures the population engine always takes


def engine_for(group: Group, engine: str) -> tuple[str, str]:
    """The engine that trains ``group`` and, when it is not the one asked for, why (else "").

    The population engine stacks the members' parameters and vmaps one forward pass: a user's own
    module with buffers (BatchNorm's running statistics) or random layers (Dropout) trains on the
    sequential engine instead, one model at a time.
    """
    if engine != "population" or group.arch in BUILT_IN:
        return engine, ""
    data = cached_dataset(group.data)
    reason = population_refusal(build_model(group.arch, group.model, data.input_dim, data.n_classes or 1))
    return ("sequential", reason) if reason else (engine, "")


def activation_size(model: torch.nn.Module, input_shape: tuple[int, ...]) -> int:
    """Numbers one example produces in a forward pass: ``model.hidden_shapes()`` where the model
    declares them (the MLP and CNN), else the outputs of its leaf modules, counted on one zero input
    in eval mode (a user's own module)."""
    if hasattr(model, "hidden_shapes"):
        return sum(math.prod(shape) for shape in model.hidden_shapes())
    sizes: list[int] = []
    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel() if torch.is_tensor(out) else 0))
               for m in leaves]
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), dtype=torch.float64))
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return sum(sizes)


def member_bytes(group: Group, n_eval: int = 2048) -> int:
    """Rough memory of one population member: parameters with gradient, optimizer state and
    initial copy (×8), plus activations of a training batch (×4 for backward) and of an
    evaluation chunk of ``n_eval`` points."""
    data = cached_dataset(group.data)
    model = build_model(group.arch, group.model, data.input_dim, data.n_classes or 1)
    params = sum(p.numel() for p in model.parameters())
    activations = activation_size(model, tuple(data.x_train.shape[1:]))
    itemsize = 8 if group.train.dtype == "float64" else 4
    return itemsize * (8 * params + activations * (4 * group.train.batch_size + n_eval))


def max_members(group: Group, device: torch.device, sharing: int = 1) -> int:
    """Members per population chunk: a chunk takes at most a quarter of host memory (and at
    most 8 GiB), or half of the GPU's free memory; ``sharing`` tasks that run at once on the host
    (a Ray node) share the host's quarter."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free // 2
    else:
        budget = min(8 << 30, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4) // max(1, sharing)
    return max(1, int(budget // member_bytes(group)))


def chunk_size(group: Group, engine: str, device: torch.device | None) -> int:
    """Members per task: the whole group on the sequential engine (it trains one model at a time);
    on the population engine as many as ``device``'s memory takes (:func:`max_members`). ``device``
    None: a remote worker's GPU, whose memory the driver cannot see — the whole group, which the
    worker splits only if its memory needs it (:mod:`implicitreg.backends.ray`)."""
    if engine == "sequential" or device is None:
        return len(group.members)
    return max_members(group, device)
