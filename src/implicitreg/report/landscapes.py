"""Figures of loss landscapes: a 1-D slice, a 2-D contour (with a training path on a PCA plane), and
the linear path between two solutions with its barrier.

They draw what :mod:`implicitreg.landscape` returns, read by attribute only (``alphas``, ``loss``,
``accuracy``; ``betas`` for a plane; ``coords`` and ``explained_variance_ratio`` for a trajectory's
plane; ``t``, ``barrier``, ``barrier_t`` for an interpolation), so nothing of the package above
``report`` is imported. matplotlib's object API only (no pyplot): save with
``report.figures.save_figure`` or the ``save_*`` functions here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from implicitreg.report.figures import save_figure, subplots


def _array(values: Any, ndim: int, field: str) -> np.ndarray:
    array = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64)
    if array.ndim != ndim:
        raise ValueError(f"{field}: expected {ndim} dimension(s), got shape {array.shape}")
    return array


def _accuracy_axis(ax: Any, x: np.ndarray, accuracy: Any) -> None:
    """Accuracy in % on a twin axis, dashed, so the loss keeps the left axis."""
    twin = ax.twinx()
    twin.plot(x, 100 * _array(accuracy, 1, "accuracy"), color="C1", linestyle="--", linewidth=1.2, label="accuracy")
    twin.set_ylabel("accuracy (%)", color="C1")
    twin.tick_params(axis="y", colors="C1")


def slice_figure(result: Any, *, title: str = "loss along a filter-normalized direction", log_y: bool = False,
                 size: tuple[float, float] = (5.5, 3.8)) -> Figure:
    """A 1-D slice: loss against the step α (accuracy on a second axis where known).

    Args:
        result: has ``alphas`` [S], ``loss`` [S] and ``accuracy`` ([S] or None) — a ``Slice1D``.
        title: the axes' title. log_y: logarithmic loss axis.
    """
    alphas, loss = _array(result.alphas, 1, "alphas"), _array(result.loss, 1, "loss")
    if alphas.shape != loss.shape:
        raise ValueError(f"result: alphas {alphas.shape} and loss {loss.shape} must have the same shape")
    fig, ax = subplots(figsize=size)
    ax.plot(alphas, loss, color="C0", linewidth=1.5, label="loss")
    ax.axvline(0.0, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("step along the direction α")
    ax.set_ylabel("loss", color="C0")
    if log_y:
        ax.set_yscale("log")
    if getattr(result, "accuracy", None) is not None:
        _accuracy_axis(ax, alphas, result.accuracy)
    if title:
        ax.set_title(title)
    return fig


def _levels(loss: np.ma.MaskedArray, levels: int, scale: str) -> tuple[np.ndarray, Any]:
    finite = loss.compressed()
    if finite.size == 0:
        raise ValueError("result: every loss on the grid is non-finite; nothing to draw")
    lo, hi = float(finite.min()), float(finite.max())
    if scale == "auto":
        scale = "log" if lo > 0 and hi / lo > 10 else "linear"
    if scale == "log":
        if lo <= 0:
            raise ValueError(f"scale: 'log' needs positive losses, the smallest is {lo}")
        return np.geomspace(lo, hi if hi > lo else lo * 1.01, levels), LogNorm(lo, hi if hi > lo else lo * 1.01)
    if scale != "linear":
        raise ValueError(f"scale: expected 'auto', 'log' or 'linear', got {scale!r}")
    return np.linspace(lo, hi if hi > lo else lo + 1e-12, levels), None


def surface_figure(result: Any, *, levels: int = 30, scale: str = "auto", title: str | None = None,
                   size: tuple[float, float] = (5.6, 4.6)) -> Figure:
    """A 2-D contour of the loss; on a trajectory's PCA plane, the path drawn over it.

    Args:
        result: has ``alphas`` [Sx], ``betas`` [Sy] and ``loss`` [Sx, Sy] (``loss[i, j]`` at
            (alphas[i], betas[j])) — a ``Slice2D``, or a ``TrajectoryPlane`` (also ``coords`` [T, 2]
            and ``explained_variance_ratio`` [2]: the path, from its first snapshot to its last at (0, 0)).
        levels: contour levels. scale: "log" (levels spaced by ratio: a basin's floor and its walls
            decades apart both show), "linear", or "auto" (log where the losses span over a decade).
        title: default names the kind of plane.

    Non-finite losses (a point where the model diverged) are left blank.
    """
    alphas, betas = _array(result.alphas, 1, "alphas"), _array(result.betas, 1, "betas")
    loss = _array(result.loss, 2, "loss")
    if loss.shape != (alphas.size, betas.size):
        raise ValueError(f"result: loss must be [len(alphas), len(betas)] = [{alphas.size}, {betas.size}], got "
                         f"{list(loss.shape)}")
    masked = np.ma.masked_invalid(loss.T)  # contour wants rows along y
    values, norm = _levels(masked, levels, scale)
    fig, ax = subplots(figsize=size)
    filled = ax.contourf(alphas, betas, masked, levels=values, norm=norm, cmap="viridis")
    ax.contour(alphas, betas, masked, levels=values, norm=norm, colors="white", linewidths=0.3, alpha=0.6)
    colorbar = fig.colorbar(filled, ax=ax)
    colorbar.set_label("loss")
    coords = getattr(result, "coords", None)
    if coords is not None:
        path = _array(coords, 2, "coords")
        ratio = _array(result.explained_variance_ratio, 1, "explained_variance_ratio")
        ax.plot(path[:, 0], path[:, 1], color="C3", marker=".", markersize=4, linewidth=1.2, label="training path")
        ax.plot(path[0, 0], path[0, 1], color="C3", marker="o", markersize=7, linestyle="none", label="start")
        ax.plot(path[-1, 0], path[-1, 1], color="white", marker="*", markersize=12, markeredgecolor="C3",
                linestyle="none", label="end")
        ax.set_xlabel(f"1st principal component ({100 * ratio[0]:.1f}% of variance)")
        ax.set_ylabel(f"2nd principal component ({100 * ratio[1]:.1f}% of variance)")
        ax.legend(fontsize=8, loc="best")
        default = "loss on the PCA plane of the training path"
    else:
        ax.plot(0.0, 0.0, color="white", marker="*", markersize=12, markeredgecolor="black", linestyle="none")
        ax.set_xlabel("α (first direction)")
        ax.set_ylabel("β (second direction)")
        default = "loss on a plane of filter-normalized directions"
    ax.set_title(default if title is None else title)
    return fig


def interpolation_figure(result: Any, *, title: str = "linear path between two solutions",
                         size: tuple[float, float] = (5.5, 3.8)) -> Figure:
    """The loss along (1 − t)·θ_a + t·θ_b, the chord between the endpoints' losses, and the barrier.

    Args:
        result: has ``t`` [S], ``loss`` [S], ``accuracy`` ([S] or None), ``barrier`` and ``barrier_t``
            — an ``Interpolation``.
    """
    t, loss = _array(result.t, 1, "t"), _array(result.loss, 1, "loss")
    if t.shape != loss.shape:
        raise ValueError(f"result: t {t.shape} and loss {loss.shape} must have the same shape")
    at0, at1 = float(loss[t == 0][0]), float(loss[t == 1][0])
    fig, ax = subplots(figsize=size)
    ax.plot(t, loss, color="C0", linewidth=1.5, label="loss")
    ax.plot([0, 1], [at0, at1], color="grey", linestyle=":", linewidth=1.0, label="chord")
    bt, height = float(result.barrier_t), float(result.barrier)
    base = (1 - bt) * at0 + bt * at1
    ax.plot([bt, bt], [base, base + height], color="C3", linewidth=2.0, label=f"barrier {height:.3g}")
    ax.set_xlabel("t (0: model a, 1: model b)")
    ax.set_ylabel("loss", color="C0")
    ax.legend(fontsize=8, loc="upper left")
    if getattr(result, "accuracy", None) is not None:
        _accuracy_axis(ax, t, result.accuracy)
    if title:
        ax.set_title(title)
    return fig


def save_slice(result: Any, path: Path, **kwargs: Any) -> Path:
    """Draw :func:`slice_figure` and write it as a PNG at ``path``."""
    return save_figure(slice_figure(result, **kwargs), Path(path))


def save_surface(result: Any, path: Path, **kwargs: Any) -> Path:
    """Draw :func:`surface_figure` and write it as a PNG at ``path``."""
    return save_figure(surface_figure(result, **kwargs), Path(path))


def save_interpolation(result: Any, path: Path, **kwargs: Any) -> Path:
    """Draw :func:`interpolation_figure` and write it as a PNG at ``path``."""
    return save_figure(interpolation_figure(result, **kwargs), Path(path))


__all__ = ["interpolation_figure", "save_interpolation", "save_slice", "save_surface", "slice_figure",
           "surface_figure"]
