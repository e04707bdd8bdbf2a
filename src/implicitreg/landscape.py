"""Loss landscapes: 1-D and 2-D slices, the linear path between two solutions, the PCA plane of a
training trajectory — every grid point evaluated as one member of a population.

Every landscape here is a set of points θ(c) = origin + Σₖ cₖ·dₖ in parameter space (a slice: the
model plus filter-normalized directions; the linear path: θ_a + t·(θ_b − θ_a); a PCA plane: the
last snapshot plus the two top components). The points are stacked, a chunk at a time, into
parameters [B, ...] and evaluated in one vmapped ``torch.func.functional_call`` on shared data —
the population path of :mod:`implicitreg.measures` — so a 51 × 51 surface costs about as much as a
few dozen forward passes of a batch of 2,601 models, not 2,601 Python-level passes. A chunk holds at
most ``budget`` evaluated samples (points × rows) and :data:`PARAM_BUDGET` stacked numbers; rows are
split when one point's data alone exceeds the budget (the loss is then the row-weighted mean of the
chunks' losses, so ``loss_fn`` must be a mean over rows, as ``F.cross_entropy`` and ``F.mse_loss``
are by default).

Filter normalization (Li, Xu, Taylor, Studer & Goldstein 2018, §4): a random Gaussian direction d
has each filter d_{i,j} (the slice along a weight's first axis: a convolution's output channel, the
weights into one neuron of a linear layer) rescaled to the norm of the same filter of the weights,
d_{i,j} ← d_{i,j}/‖d_{i,j}‖ · ‖θ_{i,j}‖, so that a slice does not change when a ReLU network is
reparametrized by per-layer scales. Biases and BatchNorm's weight and bias (every parameter with
≤ 1 dimension) get a zero direction by default (``ignore="biasbn"``), as in every example of the
authors' code (``--xignore biasbn``); ``ignore=None`` takes their code's other choice, the direction
equal to the parameter itself. Buffers (BatchNorm's running statistics) are held at the model's
values along slices (their ``--dir_type weights``) and interpolated with the parameters along the
linear path between two models (their ``--dir_type states``: two models' statistics differ).

References:
    Li, Xu, Taylor, Studer & Goldstein (2018), Visualizing the loss landscape of neural nets, NeurIPS.
    Goodfellow, Vinyals & Saxe (2015), Qualitatively characterizing neural network optimization problems.
    Frankle, Dziugaite, Roy & Carbin (2020), Linear mode connectivity and the lottery ticket hypothesis.
    Entezari, Sedghi, Saukh & Neyshabur (2022), The role of permutation invariance in linear mode
    connectivity of neural networks.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from implicitreg.measures.core import require_eval

Params = dict[str, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

#: Evaluated samples (points × rows) per vmapped pass, as curvature operators batch their probes.
BUDGET = 65_536
#: Stacked numbers (points × parameters) per pass: 2²⁵ is 256 MiB in float64.
PARAM_BUDGET = 1 << 25


# ---------------------------------------------------------------------------------------------
# flat views of a module's parameters and buffers


@dataclass(frozen=True)
class _Layout:
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
    def of(model: nn.Module) -> "_Layout":
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__} (for a population's member "
                            "use population.member(i))")
        require_eval(model)
        params = dict(model.named_parameters())
        if not params:
            raise ValueError("model: it has no parameters, so it has no loss landscape")
        buffers = dict(model.named_buffers())
        floating = {k: v for k, v in buffers.items() if v.is_floating_point()}
        return _Layout(model, tuple(params), tuple(tuple(p.shape) for p in params.values()),
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
                             f"{_describe(self.names, self.shapes)}, got "
                             f"{_describe(tuple(params), tuple(tuple(p.shape) for p in params.values()))}")
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
                                 f"({_describe(self.names, self.shapes)}); missing {missing[:5]}")
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


def _describe(names: Sequence[str], shapes: Sequence[tuple[int, ...]]) -> str:
    items = [f"{k} {list(s)}" for k, s in zip(names, shapes)]
    return ", ".join(items[:6]) + (f", … ({len(items)} in all)" if len(items) > 6 else "")


# ---------------------------------------------------------------------------------------------
# evaluation of many points as a population


def _data(data: Any, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` or an object with ``x_train``/``y_train`` → x [N, ...], y [N, ...] on the model's device."""
    if hasattr(data, "x_train") and hasattr(data, "y_train"):
        x, y = data.x_train, data.y_train
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
    else:
        raise TypeError(f"data: expected (x, y) or an object with x_train/y_train, got {type(data).__name__}")
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.dim() == 0 or y.dim() == 0 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"data: expected x [N, ...] and y [N, ...] with the same N ≥ 1, got x {list(x.shape)} and "
                         f"y {list(y.shape)}")
    x = x.to(device=like.device, dtype=like.dtype) if x.is_floating_point() else x.to(like.device)
    y = y.to(device=like.device, dtype=like.dtype) if y.is_floating_point() else y.to(like.device)
    return x, y


def _correct(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Correct predictions (a count, in the outputs' dtype) of outputs [N, C] against class labels [N];
    a single output is a binary logit (class 1 where > 0)."""
    logits = out.reshape(out.shape[0], -1)
    pred = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(-1)
    return (pred == y).to(out.dtype).sum()


def _evaluate(layout: _Layout, loss_fn: LossFn, data: Any, count: int,
              points: Callable[[int, int], torch.Tensor], budget: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Loss (and accuracy, for integer class labels [N]) at ``count`` points, ``points(start, stop)``
    giving the flat points [stop − start, n] of a chunk. Returns float64 tensors [count] on the CPU."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget: expected an integer ≥ 1 (evaluated samples per pass), got {budget!r}")
    x, y = _data(data, layout.like)
    n_rows = x.shape[0]
    classify = (not y.is_floating_point()) and y.dim() == 1
    rows = min(n_rows, budget)
    per_pass = max(1, min(budget // rows, PARAM_BUDGET // max(layout.size, 1)))
    template, fixed = layout.template, layout.fixed

    def member(params: Params, buffers: Params, xb: torch.Tensor, yb: torch.Tensor):
        out = functional_call(template, {**params, **buffers, **fixed}, (xb,))
        loss = loss_fn(out, yb)
        return loss, (_correct(out, yb) if classify else loss.new_zeros(()))

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
    layout = _Layout.of(model)
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

    return _evaluate(layout, loss_fn, data, count, chunk, budget)


def _plane(layout: _Layout, origin: torch.Tensor, directions: torch.Tensor,
           coefficients: torch.Tensor) -> Callable[[int, int], torch.Tensor]:
    """Points origin [n] + coefficients [G, k] @ directions [k, n], built a chunk at a time."""
    coefficients = coefficients.to(device=origin.device, dtype=origin.dtype)

    def chunk(start: int, stop: int) -> torch.Tensor:
        return origin + coefficients[start:stop] @ directions

    return chunk


# ---------------------------------------------------------------------------------------------
# directions


def normalize_direction(model: nn.Module, direction: "Params | Sequence[torch.Tensor] | torch.Tensor",
                        normalization: str | None = "filter", ignore: str | None = "biasbn") -> Params:
    """Scale a direction to the model's weights (Li et al. 2018, §4).

    Args:
        model: the ``nn.Module`` whose weights set the scale.
        direction: name → tensor, tensors in ``named_parameters()`` order, or flat [n_params].
        normalization: "filter" (each slice along a weight's first axis to the norm of the same slice
            of the weights), "layer" (each parameter tensor to the weights' norm), or None (as given).
        ignore: "biasbn": parameters with ≤ 1 dimension (biases, BatchNorm's weight and bias) get a
            zero direction; None: their direction is the parameter itself (the authors' code's other
            choice). Applies only with a normalization.

    Returns:
        name → tensor in each parameter's shape.
    """
    if normalization not in ("filter", "layer", None):
        raise ValueError(f"normalization: expected 'filter', 'layer' or None, got {normalization!r}")
    if ignore not in ("biasbn", None):
        raise ValueError(f"ignore: expected 'biasbn' or None, got {ignore!r}")
    layout = _Layout.of(model)
    d = layout.unflatten_params(layout.params_flat(direction, "direction"))
    if normalization is None:
        return d
    weights = dict(model.named_parameters())
    out = {}
    for name, v in d.items():
        w = weights[name].detach().to(v)
        if v.dim() <= 1:
            out[name] = torch.zeros_like(v) if ignore == "biasbn" else w.clone()
            continue
        if normalization == "filter":
            dims = tuple(range(1, v.dim()))
            dn, wn = v.norm(dim=dims, keepdim=True), w.norm(dim=dims, keepdim=True)
        else:
            dn, wn = v.norm(), w.norm()
        # a zero filter of the direction stays zero (the authors divide by ‖d‖ + 1e-10 for the same reason)
        out[name] = torch.where(dn > 0, v * (wn / torch.where(dn > 0, dn, torch.ones_like(dn))), torch.zeros_like(v))
    return out


def random_direction(model: nn.Module, seed: int = 0, normalization: str | None = "filter",
                     ignore: str | None = "biasbn") -> Params:
    """A Gaussian direction in parameter space, normalized by :func:`normalize_direction`.

    Drawn in float64 on the CPU from ``torch.Generator().manual_seed(seed)``, one tensor per parameter
    in ``named_parameters()`` order, so it is the same on every device and dtype.
    """
    layout = _Layout.of(model)
    g = torch.Generator().manual_seed(int(seed))
    raw = [torch.randn(shape, generator=g, dtype=torch.float64) for shape in layout.shapes]
    return normalize_direction(model, raw, normalization, ignore)


def _direction(model: nn.Module, layout: _Layout, given: Any, seed: int, normalization: str | None,
               ignore: str | None) -> Params:
    if given is None:
        return random_direction(model, seed, normalization, ignore)
    return normalize_direction(model, given, normalization, ignore)


def _span(span: Any, field: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in span)
    except (TypeError, ValueError):
        raise ValueError(f"{field}: expected (low, high), got {span!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"{field}: expected finite low < high, got {span!r}")
    return lo, hi


def _steps(steps: Any, field: str, least: int = 2) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < least:
        raise ValueError(f"{field}: expected an integer ≥ {least}, got {steps!r}")
    return steps


# ---------------------------------------------------------------------------------------------
# slices


@dataclass(frozen=True)
class Slice1D:
    """The loss along one direction: θ + α·d.

    Attributes:
        alphas: [S] step sizes (α = 1 moves every filter by its own norm, for a filter-normalized d).
        loss: [S] mean loss; accuracy: [S] (None for labels that are not integer classes).
        direction: name → tensor, the direction d used (after normalization).
    """

    alphas: torch.Tensor
    loss: torch.Tensor
    accuracy: torch.Tensor | None
    direction: Params


@dataclass(frozen=True)
class Slice2D:
    """The loss on a plane: θ + α·d₁ + β·d₂.

    Attributes:
        alphas: [Sx], betas: [Sy].
        loss: [Sx, Sy], ``loss[i, j]`` at (alphas[i], betas[j]); accuracy: same shape or None.
        directions: (d₁, d₂), each name → tensor, after normalization.
    """

    alphas: torch.Tensor
    betas: torch.Tensor
    loss: torch.Tensor
    accuracy: torch.Tensor | None
    directions: tuple[Params, Params]


def slice_1d(model: nn.Module, loss_fn: LossFn, data: Any, direction: Any = None, *,
             span: tuple[float, float] = (-1.0, 1.0), steps: int = 51, normalization: str | None = "filter",
             ignore: str | None = "biasbn", seed: int = 0, budget: int = BUDGET) -> Slice1D:
    """The loss (and accuracy) along a line through the model, every point a population member.

    Args:
        model: an ``nn.Module`` in eval mode.
        loss_fn, data: as :func:`evaluate_points`.
        direction: None (a Gaussian direction drawn from ``seed``), or name → tensor, tensors in
            ``named_parameters()`` order, or flat [n_params]; normalized by ``normalization`` and
            ``ignore`` (:func:`normalize_direction`; pass ``normalization=None`` to use it as given).
        span, steps: α runs over ``linspace(span[0], span[1], steps)``.
        budget: evaluated samples (points × rows) per pass.

    Returns:
        :class:`Slice1D`.
    """
    layout = _Layout.of(model)
    lo, hi = _span(span, "span")
    alphas = torch.linspace(lo, hi, _steps(steps, "steps"), dtype=torch.float64)
    d = _direction(model, layout, direction, seed, normalization, ignore)
    dirs = layout.pad(layout.params_flat(d, "direction")).unsqueeze(0)
    loss, acc = _evaluate(layout, loss_fn, data, len(alphas),
                          _plane(layout, layout.flatten(model), dirs, alphas.unsqueeze(1)), budget)
    return Slice1D(alphas, loss, acc, d)


def _pair(value: Any, field: str) -> tuple[Any, Any]:
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, (tuple, list)) for v in value):
        return value[0], value[1]
    if isinstance(value, (tuple, list)) and len(value) == 2 and field == "steps":
        return value[0], value[1]
    return value, value


def slice_2d(model: nn.Module, loss_fn: LossFn, data: Any, directions: Any = None, *,
             span: Any = (-1.0, 1.0), steps: Any = 25, normalization: str | None = "filter",
             ignore: str | None = "biasbn", seed: int = 0, budget: int = BUDGET) -> Slice2D:
    """The loss (and accuracy) on a plane through the model (Li et al. 2018's contour plots).

    Args:
        model, loss_fn, data: as :func:`slice_1d`.
        directions: None (two Gaussian directions, from ``seed`` and ``seed + 1``) or a pair (d₁, d₂),
            each as :func:`slice_1d`'s ``direction``; both normalized alike.
        span: (low, high) for both axes, or ((low, high), (low, high)) for α and β.
        steps: points per axis, an integer or (Sx, Sy).
        budget: evaluated samples (points × rows) per pass.

    Returns:
        :class:`Slice2D` with ``loss[i, j]`` at (alphas[i], betas[j]).
    """
    layout = _Layout.of(model)
    span_x, span_y = _pair(span, "span")
    steps_x, steps_y = _pair(steps, "steps")
    alphas = torch.linspace(*_span(span_x, "span"), _steps(steps_x, "steps"), dtype=torch.float64)
    betas = torch.linspace(*_span(span_y, "span"), _steps(steps_y, "steps"), dtype=torch.float64)
    if directions is None:
        given: tuple[Any, Any] = (None, None)
    elif isinstance(directions, (tuple, list)) and len(directions) == 2:
        given = (directions[0], directions[1])
    else:
        raise ValueError(f"directions: expected None or a pair (d1, d2), got {type(directions).__name__}")
    pair = (_direction(model, layout, given[0], seed, normalization, ignore),
            _direction(model, layout, given[1], seed + 1, normalization, ignore))
    dirs = torch.stack([layout.pad(layout.params_flat(d, "directions")) for d in pair])
    grid = torch.cartesian_prod(alphas, betas)  # [Sx·Sy, 2], α-major: reshapes to [Sx, Sy]
    loss, acc = _evaluate(layout, loss_fn, data, grid.shape[0], _plane(layout, layout.flatten(model), dirs, grid),
                          budget)
    shape = (len(alphas), len(betas))
    return Slice2D(alphas, betas, loss.reshape(shape), None if acc is None else acc.reshape(shape), pair)


# ---------------------------------------------------------------------------------------------
# the linear path between two solutions


@dataclass(frozen=True)
class Interpolation:
    """The loss along θ(t) = (1 − t)·θ_a + t·θ_b (Goodfellow, Vinyals & Saxe 2015).

    Barriers are maxima over the grid's points with 0 ≤ t ≤ 1 (so lower bounds of the supremum over
    the segment, equal to it where the maximizer is a grid point):

    * ``barrier`` = maxₜ L(θ(t)) − [(1 − t)·L(θ_a) + t·L(θ_b)], the height above the chord between the
      endpoints' losses (Entezari et al. 2022's loss barrier), at ``barrier_t``. ≥ 0 (the endpoints
      give 0); 0 for a convex loss. The two solutions are linearly mode-connected where it is ≈ 0.
    * ``barrier_mean`` = maxₜ L(θ(t)) − ½·(L(θ_a) + L(θ_b)), Frankle et al. 2020's definition (they
      report it for the test error: the ``error_*`` fields use 1 − accuracy).

    Attributes:
        t: [S] interpolation coefficients (0 and 1 always among them).
        loss: [S]; accuracy: [S] or None.
        barrier, barrier_t, barrier_mean: floats as above.
        error_barrier, error_barrier_mean: the same of the error 1 − accuracy (None without accuracy).
    """

    t: torch.Tensor
    loss: torch.Tensor
    accuracy: torch.Tensor | None
    barrier: float
    barrier_t: float
    barrier_mean: float
    error_barrier: float | None
    error_barrier_mean: float | None


def barrier_heights(t: torch.Tensor, values: torch.Tensor) -> tuple[float, float, float]:
    """(height above the endpoints' chord, its t, height above the endpoints' mean) of values [S] at
    t [S] (which contains 0 and 1), over the points with 0 ≤ t ≤ 1."""
    t, values = t.double(), values.double()
    at0, at1 = values[t == 0], values[t == 1]
    if at0.numel() != 1 or at1.numel() != 1:
        raise ValueError("t: expected exactly one point at t = 0 and one at t = 1")
    inside = (t >= 0) & (t <= 1)
    ts, vs = t[inside], values[inside]
    excess = vs - ((1 - ts) * at0 + ts * at1)
    i = int(torch.argmax(excess))
    return float(excess[i]), float(ts[i]), float(vs.max() - (at0 + at1) / 2)


def interpolate(model_a: nn.Module, model_b: nn.Module, loss_fn: LossFn, data: Any, *, steps: int = 25,
                span: tuple[float, float] = (0.0, 1.0), budget: int = BUDGET) -> Interpolation:
    """The loss (and accuracy) on the straight line between two solutions, and its barrier heights.

    Floating-point buffers (BatchNorm's running statistics) are interpolated with the parameters;
    integer buffers are model_a's.

    Args:
        model_a, model_b: ``nn.Module`` s of one architecture, in eval mode.
        loss_fn, data: as :func:`evaluate_points`.
        steps, span: t runs over ``linspace(span[0], span[1], steps)`` plus 0 and 1 (a span beyond
            [0, 1] shows the loss outside the segment; the barriers use 0 ≤ t ≤ 1 only).
        budget: evaluated samples (points × rows) per pass.

    Returns:
        :class:`Interpolation`.
    """
    layout = _Layout.of(model_a)
    _Layout.of(model_b)
    lo, hi = _span(span, "span")
    if lo > 0 or hi < 1:
        raise ValueError(f"span: expected low ≤ 0 and high ≥ 1 (the segment between the models), got {span!r}")
    t = torch.linspace(lo, hi, _steps(steps, "steps"), dtype=torch.float64)
    # linspace's rounding puts 2.8e-17 where 0 was meant: snap such points onto the endpoints
    for end in (0.0, 1.0):
        t = torch.where((t - end).abs() <= 1e-12 * (hi - lo), torch.full_like(t, end), t)
    t = torch.unique(torch.cat([t, torch.tensor([0.0, 1.0], dtype=torch.float64)]))  # sorted
    a, b = layout.flatten(model_a), layout.flatten(model_b)
    loss, acc = _evaluate(layout, loss_fn, data, len(t), _plane(layout, a, (b - a).unsqueeze(0), t.unsqueeze(1)),
                          budget)
    barrier, barrier_t, barrier_mean = barrier_heights(t, loss)
    if acc is None:
        error_barrier = error_barrier_mean = None
    else:
        error_barrier, _, error_barrier_mean = barrier_heights(t, 1 - acc)
    return Interpolation(t, loss, acc, barrier, barrier_t, barrier_mean, error_barrier, error_barrier_mean)


# ---------------------------------------------------------------------------------------------
# the PCA plane of a training trajectory


@dataclass(frozen=True)
class TrajectoryPlane:
    """The plane of a trajectory's two principal components, the path projected on it, and the loss there.

    The plane passes through ``origin`` (the last snapshot, as in Li et al. 2018, §7): a point (α, β)
    is origin + α·components[0] + β·components[1] (unit vectors, in parameter units).

    Attributes:
        components: [2, n_params] orthonormal principal axes of the snapshots (float64), each with its
            largest-magnitude entry positive (scikit-learn's sign convention).
        explained_variance: [2] the variance along each (divisor T − 1, as scikit-learn's PCA);
            explained_variance_ratio: [2] its fraction of the snapshots' total variance.
        mean: [n_params] the snapshots' mean; origin: [n_params] the last snapshot.
        scores: [T, 2] the snapshots' centred projections (scikit-learn's ``transform``).
        coords: [T, 2] the snapshots' coordinates in the plane, relative to ``origin``.
        alphas, betas: [Sx], [Sy] the contour grid (None without loss_fn and data).
        loss: [Sx, Sy] (``loss[i, j]`` at (alphas[i], betas[j])), accuracy: same or None.
        path_loss: [T] the loss at the snapshots themselves (not their projections), or None.
        directions: the two components as name → tensor.
    """

    components: torch.Tensor
    explained_variance: torch.Tensor
    explained_variance_ratio: torch.Tensor
    mean: torch.Tensor
    origin: torch.Tensor
    scores: torch.Tensor
    coords: torch.Tensor
    alphas: torch.Tensor | None
    betas: torch.Tensor | None
    loss: torch.Tensor | None
    accuracy: torch.Tensor | None
    path_loss: torch.Tensor | None
    directions: tuple[Params, Params]


def principal_components(snapshots: torch.Tensor, k: int = 2) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                        torch.Tensor]:
    """PCA of rows [T, n] in float64 by a thin SVD of the centred rows.

    Returns:
        (components [k, n] with scikit-learn's signs, explained variance [k] (÷ (T − 1)), its ratio [k]
        to the total variance, mean [n]).
    """
    x = snapshots.double()
    mean = x.mean(0)
    _, s, vt = torch.linalg.svd(x - mean, full_matrices=False)
    # scikit-learn's svd_flip(u_based_decision=False): the largest-magnitude entry of each axis positive
    signs = torch.sign(vt.gather(1, vt.abs().argmax(1, keepdim=True)))
    vt = vt * torch.where(signs == 0, torch.ones_like(signs), signs)
    variance = s ** 2 / (x.shape[0] - 1)
    total = variance.sum()
    ratio = variance / total if total > 0 else torch.zeros_like(variance)
    return vt[:k], variance[:k], ratio[:k], mean


def trajectory_pca(snapshots: Sequence[Any] | torch.Tensor, loss_fn: LossFn | None = None, data: Any = None, *,
                   model: nn.Module | None = None, steps: Any = 25, margin: float = 0.2,
                   budget: int = BUDGET) -> TrajectoryPlane:
    """The PCA plane of a training trajectory (Li et al. 2018, §7), the path on it, and its loss contour.

    Args:
        snapshots: T ≥ 3 parameter snapshots in training order: ``nn.Module`` s, dicts name → tensor
            (``state_dict`` s; buffers in them are ignored), or flat tensors [n_params] / one tensor
            [T, n_params]. No store keeps parameter checkpoints, so they are passed in (copy
            ``model.state_dict()`` every few steps of your loop).
        loss_fn, data: as :func:`evaluate_points`; with both, the loss is evaluated on a grid over the
            path's extent plus ``margin`` of it on each side, and at the snapshots.
        model: the architecture (its buffers are used on the plane); default: the last snapshot when
            the snapshots are modules. Needed for dict and tensor snapshots.
        steps: grid points per axis, an integer or (Sx, Sy).
        budget: evaluated samples (points × rows) per pass.

    Returns:
        :class:`TrajectoryPlane`.
    """
    if isinstance(snapshots, torch.Tensor):
        snapshots = list(snapshots)
    snapshots = list(snapshots)
    if model is None:
        if not snapshots or not isinstance(snapshots[-1], nn.Module):
            raise ValueError("model: expected the architecture (an nn.Module) for snapshots that are not modules")
        model = snapshots[-1]
    layout = _Layout.of(model)
    if len(snapshots) < 3:
        raise ValueError(f"snapshots: expected at least 3 (two principal axes of a path need three points), got "
                         f"{len(snapshots)}")
    if (loss_fn is None) != (data is None):
        raise ValueError("loss_fn and data: expected both (for the contour) or neither")
    if not (isinstance(margin, (int, float)) and math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin: expected a fraction ≥ 0 of the path's extent, got {margin!r}")
    flat = torch.stack([layout.params_flat(s, f"snapshots[{i}]", torch.float64).cpu() for i, s in enumerate(snapshots)])
    components, variance, ratio, mean = principal_components(flat, 2)
    if float(ratio[1]) < 1e-12:
        warnings.warn("trajectory_pca: the snapshots lie on a line (second principal variance ≈ 0); the plane's "
                      "second axis is arbitrary", stacklevel=2)
    origin = flat[-1]
    scores = (flat - mean) @ components.T
    coords = (flat - origin) @ components.T
    directions = (layout.unflatten_params(components[0]), layout.unflatten_params(components[1]))
    if loss_fn is None:
        return TrajectoryPlane(components, variance, ratio, mean, origin, scores, coords, None, None, None, None, None,
                               directions)
    steps_x, steps_y = _pair(steps, "steps")
    axes = []
    for j, n in enumerate((_steps(steps_x, "steps"), _steps(steps_y, "steps"))):
        lo, hi = float(coords[:, j].min()), float(coords[:, j].max())
        pad = margin * (hi - lo) if hi > lo else 1.0
        axes.append(torch.linspace(lo - pad, hi + pad, n, dtype=torch.float64))
    alphas, betas = axes
    like = layout.like
    base = layout.flatten(model)
    # the plane through the last snapshot's parameters, with the model's buffers
    plane_origin = torch.cat([origin.to(like), base[layout.n_params:]])
    dirs = torch.stack([layout.pad(c.to(like)) for c in components])
    grid = torch.cartesian_prod(alphas, betas)
    loss, acc = _evaluate(layout, loss_fn, data, grid.shape[0], _plane(layout, plane_origin, dirs, grid), budget)
    path = flat.to(like)
    path_loss, _ = _evaluate(layout, loss_fn, data, path.shape[0],
                             lambda a, b: torch.cat([path[a:b], base[layout.n_params:].expand(b - a, -1)], 1), budget)
    shape = (len(alphas), len(betas))
    return TrajectoryPlane(components, variance, ratio, mean, origin, scores, coords, alphas, betas,
                           loss.reshape(shape), None if acc is None else acc.reshape(shape), path_loss, directions)


__all__ = ["BUDGET", "Interpolation", "PARAM_BUDGET", "Slice1D", "Slice2D", "TrajectoryPlane", "barrier_heights",
           "evaluate_points", "interpolate", "normalize_direction", "principal_components", "random_direction",
           "slice_1d", "slice_2d", "trajectory_pca"]
