"""Output margins and the spectrally-normalized margin (Bartlett, Foster & Telgarsky 2017).

References:
    Bartlett, Foster & Telgarsky, "Spectrally-normalized margin bounds for neural networks",
    NeurIPS 2017.
    Jiang et al., "Fantastic generalization measures and where to find them", ICLR 2020 (margins
    as a quantile over the training set rather than the minimum).
"""

from __future__ import annotations

import torch

from implicitreg.measures.core import Estimate, Stacked, register, stacked
from implicitreg.measures.layers import folded, layer_spectral_estimates, layered_model, report, weight_layers


def _unpack(data) -> tuple[torch.Tensor, torch.Tensor]:
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
        raise ValueError(f"data: expected a pair (x, y), got {type(data).__name__}")
    x, y = data
    if not (torch.is_tensor(y) and y.dim() in (1, 2) and not y.is_floating_point()):
        raise ValueError(f"data: y must be integer class labels of shape [N] (or [P, N], one row per member), got "
                         f"{getattr(y, 'dtype', type(y))} {tuple(getattr(y, 'shape', ()))}")
    if len(x) != y.shape[-1]:
        raise ValueError(f"data: x has {len(x)} rows, y {y.shape[-1]} labels")
    if len(x) == 0:
        raise ValueError("data: no points")
    return x, y


def output_margins(s: Stacked, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """f(x)[y] − max_{j≠y} f(x)[j] for every member and point: [P, N]; y: [N] shared or [P, N] per member."""
    dtype = next(iter(s.params.values())).dtype
    out = s.forward(x.to(dtype) if x.is_floating_point() else x)  # [P, N, C]
    if out.dim() != 3 or out.shape[-1] < 2:
        raise ValueError(f"margins need at least 2 output classes, the model gives outputs of shape {tuple(out.shape)}")
    if y.dim() == 2 and y.shape[0] != out.shape[0]:
        raise ValueError(f"data: y has labels for {y.shape[0]} members, the model has {out.shape[0]}")
    if int(y.min()) < 0 or int(y.max()) >= out.shape[-1]:
        raise ValueError(f"data: labels must lie in [0, {out.shape[-1]}), got [{int(y.min())}, {int(y.max())}]")
    idx = y.to(out.device).reshape(-1, out.shape[1], 1).expand(out.shape[0], -1, 1)
    correct = out.gather(2, idx).squeeze(2)
    others = out.scatter(2, idx, float("-inf")).amax(2)
    return correct - others


def _margin(s: Stacked, data, q: float) -> torch.Tensor:
    if not 0 <= q <= 1:
        raise ValueError(f"q: expected a quantile in [0, 1], got {q!r}")
    x, y = _unpack(data)
    margins = output_margins(s, x, y)
    return torch.quantile(margins, q, dim=1)  # linear interpolation between order statistics


@register("margin", "margin", needs=("params", "data"), lower_is_simpler=False, cost="forward")
def margin(model, data, q: float = 0.1) -> torch.Tensor:
    """q-quantile over the points of the output margin f(x)[y] − max_{j≠y} f(x)[j].

    Args:
        model: a classifier (module or population) with C ≥ 2 outputs.
        data: (x [N, ...], y [N] integer labels, or [P, N] with one row per member), usually the
            training set.
        q: the quantile (``torch.quantile``, linear interpolation); 0 gives the minimum margin.

    Returns:
        0-d for a module, [P] for a population. Negative when more than a q-fraction of the
        points is misclassified.
    """
    s = stacked(model)
    return s.finish(_margin(s, data, q))


def layer_group_norms(s: Stacked) -> torch.Tensor:
    """‖W_iᵀ‖_{2,1} = Σ_rows ‖W_i[row, :]‖₂ of every weight layer: [P, L]; a Conv1d kernel is
    reshaped to [C_out, C_in·k] first."""
    return torch.stack([layer.matrix().norm(dim=2).sum(1) for layer in weight_layers(s)], dim=1)


def _spectral_complexity(s: Stacked, input_shape) -> Estimate:
    """[P] values of a folded view, with the spectral norms' convergence [P]."""
    sigma = layer_spectral_estimates(s, input_shape)  # [P, L]
    group = layer_group_norms(s)
    value = sigma.value.prod(1) * (group / sigma.value).pow(2 / 3).sum(1).pow(3 / 2)
    return Estimate(value, sigma.converged)


@register("spectral_complexity", "norm-product", applies=layered_model)
def spectral_complexity(model, input_shape=None, with_convergence: bool = False) -> torch.Tensor | Estimate:
    """Spectral complexity (Π_i ‖W_i‖_σ)·(Σ_i (‖W_iᵀ‖_{2,1}/‖W_i‖_σ)^{2/3})^{3/2} (Bartlett et al. 2017).

    Choices: reference matrices M_i = 0; ReLU's Lipschitz constant 1; biases excluded; BatchNorm
    (eval mode) folded into the layer feeding it. For a Conv1d layer ‖W‖_σ is the operator norm of
    the convolution on its actual input (see :func:`~implicitreg.measures.layers.spectral_norms`)
    and ‖Wᵀ‖_{2,1} the (2,1) norm of the kernel reshaped to [C_out, C_in·k] (the sum over output
    channels of their kernels' ℓ2 norms), not of the unrolled operator (which would add a factor
    of about the output length). A layer with a zero weight gives NaN.

    Args:
        model: a module or population.
        input_shape: per-sample input shape, for convolutional models that store no ``input_len``.
        with_convergence: return an :class:`~implicitreg.measures.core.Estimate` with the Conv1d
            norms' per-member convergence instead of warning.

    Returns:
        0-d for a module, [P] for a population.
    """
    s = folded(model, input_shape)
    estimate = _spectral_complexity(s, input_shape)
    return report(Estimate(s.finish(estimate.value), s.finish(estimate.converged)), with_convergence,
                  "spectral_complexity")


@register("normalized_margin", "margin", needs=("params", "data"), lower_is_simpler=False, cost="forward",
          applies=layered_model)
def normalized_margin(model, data, q: float = 0.1, input_shape=None,
                      with_convergence: bool = False) -> torch.Tensor | Estimate:
    """Margin divided by spectral complexity: :func:`margin` / :func:`spectral_complexity`.

    Invariant under rescaling a layer's weight and bias by c > 0 and the next layer's weight by
    1/c, since the function, the product of spectral norms and every ratio ‖W_iᵀ‖_{2,1}/‖W_i‖_σ
    are. Not invariant under rescaling a single hidden unit (which changes spectral norms).
    ``input_shape`` defaults to that of the data's x.

    Returns:
        0-d for a module, [P] for a population (an :class:`~implicitreg.measures.core.Estimate`
        with ``with_convergence=True``). Higher is simpler.
    """
    x, _ = _unpack(data)
    input_shape = tuple(x.shape[1:]) if input_shape is None else input_shape
    s = folded(model, input_shape)
    complexity = _spectral_complexity(s, input_shape)
    value = _margin(s, data, q) / complexity.value
    return report(Estimate(s.finish(value), s.finish(complexity.converged)), with_convergence, "normalized_margin")
