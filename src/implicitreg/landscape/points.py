"""Loss landscapes: evaluation of many points as a population."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from implicitreg.landscape.layout import BUDGET, Layout, LossFn, PARAM_BUDGET, Params
from implicitreg.measures.core import unpack_data


def data_pair(data: Any, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` or an object with ``x_train``/``y_train`` → x [N, ...], y [N, ...] on the model's device."""
    x, y = unpack_data(data)
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.dim() == 0 or y.dim() == 0 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"data: expected x [N, ...] and y [N, ...] with the same N ≥ 1, got x {list(x.shape)} and "
                         f"y {list(y.shape)}")
    x = x.to(device=like.device, dtype=like.dtype) if x.is_floating_point() else x.to(like.device)
    y = y.to(device=like.device, dtype=like.dtype) if y.is_floating_point() else y.to(like.device)
    return x, y


def correct_count(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Correct predictions (a count, in the outputs' dtype) of outputs [N, C] against class labels [N];
    a single output is a binary logit (class 1 where > 0)."""
    logits = out.reshape(out.shape[0], -1)
    pred = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(-1)
    return (pred == y).to(out.dtype).sum()


def evaluate_chunks(layout: Layout, loss_fn: LossFn, data: Any, count: int,
              points: Callable[[int, int], torch.Tensor], budget: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Loss (and accuracy, for integer class labels [N]) at ``count`` points, ``points(start, stop)``
    giving the flat points [stop − start, n] of a chunk. Returns float64 tensors [count] on the CPU."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget: expected an integer ≥ 1 (evaluated samples per pass), got {budget!r}")
    x, y = data_pair(data, layout.like)
    n_rows = x.shape[0]
    classify = (not y.is_floating_point()) and y.dim() == 1
    rows = min(n_rows, budget)
    per_pass = max(1, min(budget // rows, PARAM_BUDGET // max(layout.size, 1)))
    template, fixed = layout.template, layout.fixed

    def member(params: Params, buffers: Params, xb: torch.Tensor, yb: torch.Tensor):
        out = functional_call(template, {**params, **buffers, **fixed}, (xb,))
        loss = loss_fn(out, yb)
        return loss, (correct_count(out, yb) if classify else loss.new_zeros(()))

    batched = vmap(member, in_dims=(0, 0, None, None))
    losses, correct = [], []
    with torch.no_grad():
        for start in range(0, count, per_pass):
            stop = min(count, start + per_pass)
            params, buffers = layout.split(points(start, stop))
            total = torch.zeros(stop - start, dtype=torch.float64, device=x.device)
            hits = torch.zeros_like(total)
            for r in range(0, n_rows, rows):
                xb, yb = x[r:r + rows], y[r:r + rows]
                loss, right = batched(params, buffers, xb, yb)
                if loss.shape != (stop - start,):
                    raise ValueError(f"loss_fn: expected a scalar (the mean loss over rows) per point, got shape "
                                     f"{list(loss.shape[1:])}")
                total += loss.double() * (xb.shape[0] / n_rows)
                hits += right.double()
            losses.append(total.cpu())
            correct.append(hits.cpu())
    loss = torch.cat(losses)
    return loss, (torch.cat(correct) / n_rows if classify else None)


def evaluate_points(model: nn.Module, loss_fn: LossFn, data: Any,
                    points: "Params | torch.Tensor", *, budget: int = BUDGET) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Loss and accuracy of ``model``'s architecture at G parameter points, as a population.

    Args:
        model: an ``nn.Module`` in eval mode (the architecture; its buffers are shared by every point).
        loss_fn: ``loss_fn(outputs [N, C], y [N, ...]) → the mean loss`` (0-d), vmappable by ``torch.func``.
        data: ``(x [N, ...], y [N, ...])`` or an object with ``x_train``/``y_train``.
        points: name → [G, *shape] for every parameter, or flat [G, n_params] (``named_parameters()`` order).
        budget: evaluated samples (points × rows) per vmapped pass.

    Returns:
        (loss [G], accuracy [G] or None where y is not integer class labels [N]), float64 on the CPU.
    """
    layout = Layout.of(model)
    if isinstance(points, dict):
        missing = [k for k in layout.names if k not in points]
        if missing:
            raise ValueError(f"points: expected [G, ...] for every parameter; missing {missing[:5]}")
        count = int(points[layout.names[0]].shape[0])
        flat = torch.cat([torch.as_tensor(points[k]).reshape(count, -1) for k in layout.names], dim=1)
    else:
        flat = torch.as_tensor(points)
        if flat.dim() != 2 or flat.shape[1] != layout.n_params:
            raise ValueError(f"points: expected [G, {layout.n_params}] flat parameters, got {list(flat.shape)}")
        count = flat.shape[0]
    if flat.shape[1] != layout.n_params:
        raise ValueError(f"points: expected {layout.n_params} numbers per point, got {flat.shape[1]}")
    flat = flat.detach().to(device=layout.like.device, dtype=layout.like.dtype)
    base = layout.flatten(model)[layout.n_params:]  # the shared floating buffers

    def chunk(start: int, stop: int) -> torch.Tensor:
        return torch.cat([flat[start:stop], base.expand(stop - start, -1)], dim=1)

    return evaluate_chunks(layout, loss_fn, data, count, chunk, budget)


def plane(layout: Layout, origin: torch.Tensor, directions: torch.Tensor,
           coefficients: torch.Tensor) -> Callable[[int, int], torch.Tensor]:
    """Points origin [n] + coefficients [G, k] @ directions [k, n], built a chunk at a time."""
    coefficients = coefficients.to(device=origin.device, dtype=origin.dtype)

    def chunk(start: int, stop: int) -> torch.Tensor:
        return origin + coefficients[start:stop] @ directions

    return chunk
