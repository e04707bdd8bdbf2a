"""Loss landscapes: the PCA plane of a training trajectory."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from implicitreg.landscape.layout import BUDGET, Layout, LossFn, Params
from implicitreg.landscape.points import evaluate_chunks, plane
from implicitreg.landscape.directions import steps_of
from implicitreg.landscape.slices import pair_of


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
    layout = Layout.of(model)
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
    steps_x, steps_y = pair_of(steps, "steps")
    axes = []
    for j, n in enumerate((steps_of(steps_x, "steps"), steps_of(steps_y, "steps"))):
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
    loss, acc = evaluate_chunks(layout, loss_fn, data, grid.shape[0], plane(layout, plane_origin, dirs, grid), budget)
    path = flat.to(like)
    path_loss, _ = evaluate_chunks(layout, loss_fn, data, path.shape[0],
                             lambda a, b: torch.cat([path[a:b], base[layout.n_params:].expand(b - a, -1)], 1), budget)
    shape = (len(alphas), len(betas))
    return TrajectoryPlane(components, variance, ratio, mean, origin, scores, coords, alphas, betas,
                           loss.reshape(shape), None if acc is None else acc.reshape(shape), path_loss, directions)

