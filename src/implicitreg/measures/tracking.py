"""Registered measures by name: :func:`compute` passes each what its metadata says it needs.

Pure functions of a model or population, data and a loss; the training loop tracks them through
the engine's hooks (:mod:`implicitreg.hooks`), which call :func:`compute`."""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F

from implicitreg.measures.core import REGISTRY
from implicitreg.measures.mlp_hessian import mean_squared_error


def loss_fn_for(n_classes: int):
    """The mean training loss the measures differentiate: cross-entropy, or MSE for regression."""
    return F.cross_entropy if n_classes else mean_squared_error


def compute(names: list[str], model, *, init=None, data=None, loss_fn=None, input_shape=None,
            with_convergence: bool = False):
    """Evaluate registered measures by name, passing each what its metadata says it needs.

    Args:
        model: an ``nn.Module`` or a population. init: the initial model (for "init" measures).
        data: ``(x, y)`` training data. loss_fn: ``loss_fn(outputs, y)`` → mean loss; by default
            cross-entropy for integer labels, mean squared error otherwise.
        input_shape: per-sample input shape, passed to the measures that take one (convolutional
            models with no ``input_len``); by default x's, when ``data`` is given.
        with_convergence: also return, for every iterative measure (:attr:`MeasureInfo.iterative`:
            Lanczos, the σ search, Conv1d spectral norms), whether each member converged.
    Returns:
        name → 0-d tensor (module) or [P] (population); with ``with_convergence`` a pair
        ``(values, converged)``, converged: name → bool tensor of the same shape, for the
        iterative measures among ``names`` (they then do not warn: the flags are the report).
    """
    if loss_fn is None and data is not None:
        loss_fn = loss_fn_for(0 if torch.is_floating_point(torch.as_tensor(data[1])) else 1)
    if input_shape is None and data is not None:
        input_shape = tuple(torch.as_tensor(data[0]).shape[1:])
    given = {"init": init, "data": data, "loss": loss_fn}
    values, converged = {}, {}
    for name in names:
        if name not in REGISTRY:
            raise ValueError(f"unknown measure {name!r}; expected any of {sorted(REGISTRY)}")
        info = REGISTRY[name]
        missing = [need for need in info.needs if need in given and given[need] is None]
        if missing:
            raise ValueError(f"measure {name!r} needs {', '.join(missing)}")
        args = [model] + [given[need] for need in ("init", "loss", "data") if need in info.needs]
        kwargs = {"input_shape": input_shape} if "input_shape" in inspect.signature(info.fn).parameters else {}
        if with_convergence and info.iterative:
            estimate = info.fn(*args, with_convergence=True, **kwargs)
            values[name], converged[name] = estimate.value, estimate.converged
        else:
            values[name] = info.fn(*args, **kwargs)
    return (values, converged) if with_convergence else values

