"""A user's own ``nn.Module``, built by a factory named ``"package.module:function"``.

The factory is called as ``function(input_dim, n_classes)`` (``n_classes`` is 1 for a regression
target: the number of outputs) and must return an ``nn.Module`` whose ``forward(x)`` maps a batch
[B, input_dim] to outputs [B, n_classes].

Each member's initialization is the factory's own, drawn from torch's global random stream seeded
from the member's init stream (and restored afterwards, so building a model disturbs nothing), in
float64 so that float32 and float64 runs start from the same point; ``init_scale`` then multiplies
every parameter — for ``nn.Linear``/``nn.Conv1d`` layers exactly what the MLP's and CNN's
``init_scale`` does (:func:`implicitreg.models.init.reset_parameters`: PyTorch's default × scale).
"""

from __future__ import annotations

import importlib
import re
from typing import Callable

import torch
from pydantic import Field, field_validator
from torch import nn

from implicitreg.config import Strict

FACTORY = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*")


class ModuleConfig(Strict):
    """A model of the user's own: the factory that builds it, and the init scale of a member."""

    factory: str = Field(..., description='"package.module:function", called with (input_dim, n_classes)')
    init_scale: float = Field(1.0, gt=0.0, description="multiplies every parameter of the factory's initialization")

    @field_validator("factory")
    @classmethod
    def _spelled(cls, value: str) -> str:
        if not FACTORY.fullmatch(value):
            raise ValueError(f'expected "package.module:function" (a dotted module path, a colon, a function '
                             f"name), got {value!r}")
        return value


def load_factory(spec: str) -> Callable[[int, int], nn.Module]:
    """The function ``spec`` (``"package.module:function"``) names; ``ValueError`` saying why not:
    a module that cannot be imported (with the import's own error), a missing or non-callable name."""
    if not FACTORY.fullmatch(spec):
        raise ValueError(f'model.factory: expected "package.module:function", got {spec!r}')
    module_name, function = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # the user's module: any error while importing it is theirs
        raise ValueError(f"model.factory: cannot import {module_name!r} ({type(err).__name__}: "
                         f"{' '.join(str(err).split())}); it must be installed or on PYTHONPATH") from None
    fn = getattr(module, function, None)
    if fn is None:
        raise ValueError(f"model.factory: module {module_name!r} has no {function!r}")
    if not callable(fn):
        raise ValueError(f"model.factory: {spec} is a {type(fn).__name__}, not a function")
    return fn


def build_module(config: ModuleConfig, input_dim: int, output_dim: int,
                 generator: torch.Generator | None = None) -> nn.Module:
    """Call the factory and return its module in float64, scaled by ``config.init_scale``.

    With ``generator``, the factory's random draws come from a seed taken from it (one member's
    init stream); without, from a fixed seed (a model built only to be inspected: its size, its
    buffers). Torch's global random state is the same afterwards as before.
    """
    fn = load_factory(config.factory)
    seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if generator is not None else 0
    default = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # the CPU stream alone: CUDA's is not forked
        torch.set_default_dtype(torch.float64)
        try:
            model = fn(input_dim, output_dim)
        finally:
            torch.set_default_dtype(default)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model.factory: {config.factory}({input_dim}, {output_dim}) returned a "
                         f"{type(model).__name__}, not an nn.Module")
    model = model.double()
    if config.init_scale != 1.0:
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(config.init_scale)
    return model


def population_refusal(model: nn.Module) -> str | None:
    """Why the population engine cannot train ``model`` (None when it can): its parameters are
    stacked and its forward pass vmapped, so buffers (BatchNorm's running statistics) cannot be
    carried and random layers (Dropout) cannot draw inside the vmap."""
    buffers = [name for name, _ in model.named_buffers()]
    if buffers:
        return f"the model has buffers ({', '.join(buffers[:3])}{', …' if len(buffers) > 3 else ''})"
    random_layers = [name for name, m in model.named_modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    if random_layers:
        return f"the model has random layers ({', '.join(random_layers[:3])})"
    return None
