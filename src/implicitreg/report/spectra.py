"""Figures of curvature spectra: the broadened spectral density of stochastic Lanczos quadrature.

:func:`density_figure` draws what :func:`implicitreg.measures.hessian_density` returns (any object
with ``grid`` and ``density``, [G] for one model or [P, G] for a population): the density against
λ on a logarithmic axis, as Ghorbani, Krishnan & Xiao (2019) and Papyan (2020) show it — the bulk
near zero and the outliers are decades apart in height. Exact eigenvalues, where known (a small
model's ``eigvalsh``), are drawn beneath as a histogram of the same normalization, so the two can be
compared by eye. matplotlib's object API only (no pyplot); nothing of the package above ``report``
is imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from implicitreg.report.figures import save_figure, subplots

#: Densities below this fraction of a curve's peak are clipped on the log axis (the Gaussian tails
#: fall to 1e-300 and would stretch it over hundreds of decades).
FLOOR = 1e-8


def _rows(values: Any) -> np.ndarray:
    array = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float64)
    if array.ndim not in (1, 2):
        raise ValueError(f"expected a density of shape [G] or [P, G], got shape {array.shape}")
    return array.reshape(-1, array.shape[-1])


def density_figure(result: Any, *, reference: Any = None, labels: Sequence[str] | None = None,
                   title: str = "Hessian spectral density", xlabel: str = "eigenvalue λ", log_y: bool = True,
                   bins: int = 100, size: tuple[float, float] = (6.0, 4.0)) -> Figure:
    """The broadened spectral density of one model or of every member of a population.

    Args:
        result: has ``grid`` and ``density``, each [G] or [P, G] (a ``DensityResult``).
        reference: exact eigenvalues [n] (one model) to draw beneath as a density histogram.
        labels: one legend entry per member (default "member p" where P > 1, none for one model).
        title, xlabel: the axes' title and x label. log_y: logarithmic density axis.
        bins: the reference histogram's bins.

    Returns:
        the :class:`~matplotlib.figure.Figure` (save it with ``report.figures.save_figure``).
    """
    grid, density = _rows(result.grid), _rows(result.density)
    if grid.shape != density.shape:
        raise ValueError(f"result: grid {grid.shape} and density {density.shape} must have the same shape")
    if labels is not None and len(labels) != density.shape[0]:
        raise ValueError(f"labels: expected {density.shape[0]} (one per member), got {len(labels)}")
    fig, ax = subplots(figsize=size)
    if reference is not None:
        eigenvalues = _rows(reference)[0]
        ax.hist(eigenvalues, bins=bins, density=True, color="lightgrey", label="exact eigenvalues", zorder=1)
    for p, (x, y) in enumerate(zip(grid, density)):
        name = labels[p] if labels is not None else (f"member {p}" if density.shape[0] > 1 else "SLQ density")
        shown = np.maximum(y, FLOOR * y.max()) if log_y else y
        ax.plot(x, shown, color=f"C{p % 10}", linewidth=1.2, label=name, zorder=2)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    if title:
        ax.set_title(title)
    if reference is not None or density.shape[0] > 1 or labels is not None:
        ax.legend(fontsize=8)
    return fig


def save_density(result: Any, path: Path, **kwargs: Any) -> Path:
    """Draw :func:`density_figure` and write it as a PNG at ``path``."""
    return save_figure(density_figure(result, **kwargs), Path(path))


__all__ = ["FLOOR", "density_figure", "save_density"]
