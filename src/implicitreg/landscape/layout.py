"""Loss landscapes: flat views of a module's parameters and buffers."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from implicitreg.measures.core import require_eval


Params = dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Evaluated samples (points × rows) per vmapped pass, as curvature operators batch their probes.
BUDGET = 65_536
#: Stacked numbers (points × parameters) per pass: 2²⁵ is 256 MiB in float64.
PARAM_BUDGET = 1 << 25


@dataclass(frozen=True)
class Layout:
    """Parameters and floating-point buffers of a module as one flat vector [n] (parameters first,
    in ``named_parameters()`` order); integer buffers are held fixed."""

    template: nn.Module
    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    n_params: int
    buffer_names: tuple[str, ...]
    buffer_shapes: tuple[tuple[int, ...], ...]
    fixed: Params  # integer buffers (BatchNorm's num_batches_tracked): shared by every point

    @staticmethod
    def of(model: nn.Module) -> "Layout":
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__} (for a population's member "
                            "use population.member(i))")
        require_eval(model)
        params = dict(model.named_parameters())
        if not params:
            raise ValueError("model: it has no parameters, so it has no loss landscape")
        buffers = dict(model.named_buffers())
        floating = {k: v for k, v in buffers.items() if v.is_floating_point()}
        return Layout(model, tuple(params), tuple(tuple(p.shape) for p in params.values()),
                       sum(p.numel() for p in params.values()), tuple(floating),
                       tuple(tuple(b.shape) for b in floating.values()),
                       {k: v.detach() for k, v in buffers.items() if k not in floating})

    @property
    def like(self) -> torch.Tensor:
        return next(self.template.parameters())

    @property
    def size(self) -> int:
        return self.n_params + sum(math.prod(s) for s in self.buffer_shapes)

    def flatten(self, model: nn.Module) -> torch.Tensor:
        """A module of this architecture → [n] (parameters, then floating buffers)."""
        params, buffers = dict(model.named_parameters()), dict(model.named_buffers())
        if set(params) != set(self.names) or any(params[k].shape != s for k, s in zip(self.names, self.shapes)):
            raise ValueError("the models must share one architecture: expected parameters "
                             f"{describe(self.names, self.shapes)}, got "
                             f"{describe(tuple(params), tuple(tuple(p.shape) for p in params.values()))}")
        parts = [params[k].detach().reshape(-1) for k in self.names]
        parts += [buffers[k].detach().reshape(-1) for k in self.buffer_names]
        like = self.like
        return torch.cat([p.to(device=like.device, dtype=like.dtype) for p in parts])

    def params_flat(self, params: "Params | Sequence[torch.Tensor] | torch.Tensor | nn.Module",
                    field: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A direction or snapshot of the parameters → [n_params] on the model's device and dtype.

        Accepts a dict name → tensor (a ``state_dict``: buffers in it are ignored), tensors in
        ``named_parameters()`` order, a flat tensor [n_params], or a module of the same architecture.
        ``dtype``: default the model's.
        """
        like = self.like
        dtype = dtype or like.dtype
        if isinstance(params, nn.Module):
            params = dict(params.named_parameters())
        if isinstance(params, torch.Tensor):
            if params.dim() != 1 or params.numel() != self.n_params:
                raise ValueError(f"{field}: expected a flat tensor of {self.n_params} parameters, got shape "
                                 f"{list(params.shape)}")
            return params.detach().to(device=like.device, dtype=dtype)
        if isinstance(params, dict):
            missing = [k for k in self.names if k not in params]
            if missing:
                raise ValueError(f"{field}: expected a tensor for every parameter "
                                 f"({describe(self.names, self.shapes)}); missing {missing[:5]}")
            tensors = [params[k] for k in self.names]
        elif isinstance(params, (list, tuple)):
            if len(params) != len(self.names):
                raise ValueError(f"{field}: expected {len(self.names)} tensors (one per parameter, in "
                                 f"named_parameters() order), got {len(params)}")
            tensors = list(params)
        else:
            raise TypeError(f"{field}: expected a dict of tensors, a list of tensors, a flat tensor or an nn.Module, "
                            f"got {type(params).__name__}")
        for name, shape, t in zip(self.names, self.shapes, tensors):
            if tuple(torch.as_tensor(t).shape) != shape:
                raise ValueError(f"{field}: parameter {name!r} must have shape {list(shape)}, got "
                                 f"{list(torch.as_tensor(t).shape)}")
        return torch.cat([torch.as_tensor(t).detach().reshape(-1).to(device=like.device, dtype=dtype)
                          for t in tensors])

    def unflatten_params(self, flat: torch.Tensor) -> Params:
        """[..., n_params] → name → [..., *shape]."""
        out, start = {}, 0
        for name, shape in zip(self.names, self.shapes):
            size = math.prod(shape)
            out[name] = flat[..., start:start + size].reshape(*flat.shape[:-1], *shape)
            start += size
        return out

    def split(self, flat: torch.Tensor) -> tuple[Params, Params]:
        """[B, n] → (parameters [B, ...], floating buffers [B, ...])."""
        params = self.unflatten_params(flat[:, :self.n_params])
        buffers, start = {}, self.n_params
        for name, shape in zip(self.buffer_names, self.buffer_shapes):
            size = math.prod(shape)
            buffers[name] = flat[:, start:start + size].reshape(flat.shape[0], *shape)
            start += size
        return params, buffers

    def pad(self, direction: torch.Tensor) -> torch.Tensor:
        """A parameter direction [n_params] → [n] with zeros on the buffers (held fixed)."""
        return torch.cat([direction, direction.new_zeros(self.size - self.n_params)])


def describe(names: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> str:
    items = [f"{k} {list(s)}" for k, s in zip(names, shapes)]
    return ", ".join(items[:6]) + (f", … ({len(items)} in all)" if len(items) > 6 else "")
