"""Rank measures: nuclear norm, effective rank and stable rank of weight matrices, per layer and of
the end-to-end matrix of a linear (factorized) model.

- nuclear norm ‖W‖_* = Σ σ_i (the implicit bias of deep matrix factorization: Gunasekar et
  al. 2017; Arora et al. 2019);
- effective rank exp(H(p)), p_i = σ_i / Σ_j σ_j, H the Shannon entropy (Roy & Vetterli 2007):
  equals k for k equal nonzero singular values;
- stable rank ‖W‖_F² / ‖W‖₂² (Rudelson & Vershynin 2007).

A zero matrix has effective and stable rank 0 (its rank). The per-layer nuclear norm and effective
rank take a ``Conv1d`` kernel as the matrix [C_out, C_in·k]; the per-layer stable rank is that of
the layer's map, the convolution operator, as the spectral norms are (:func:`stable_ranks`);
biases are ignored.

References:
    Roy & Vetterli, "The effective rank: a measure of effective dimensionality", EUSIPCO 2007.
    Arora, Cohen, Hu & Luo, "Implicit regularization in deep matrix factorization", NeurIPS 2019.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from implicitreg.measures.core import Stacked, register, stacked
from implicitreg.measures.layers import folded, foreign_weights, layer_stable_ranks, report, weight_layers


def nuclear_from_svals(svals: torch.Tensor) -> torch.Tensor:
    """Σ σ over the last dim: [..., k] → [...]."""
    return svals.sum(-1)


def effective_rank_from_svals(svals: torch.Tensor) -> torch.Tensor:
    """exp of the entropy of σ / Σσ over the last dim (0 log 0 = 0; a zero matrix gives 0): [..., k] → [...]."""
    total = svals.sum(-1, keepdim=True)
    p = svals / torch.where(total > 0, total, torch.ones_like(total))
    entropy = -torch.special.xlogy(p, p).sum(-1)
    return torch.where(total.squeeze(-1) > 0, entropy.exp(), torch.zeros_like(entropy))


def stable_rank_from_svals(svals: torch.Tensor) -> torch.Tensor:
    """Σσ² / max σ² over the last dim (a zero matrix gives 0): [..., k] → [...]."""
    top = svals.amax(-1)
    ratio = svals.pow(2).sum(-1) / torch.where(top > 0, top, torch.ones_like(top)).pow(2)
    return torch.where(top > 0, ratio, torch.zeros_like(ratio))


def _layer_svals(s: Stacked) -> list[torch.Tensor]:
    return [torch.linalg.svdvals(layer.matrix()) for layer in weight_layers(s)]


def nuclear_norms(model) -> torch.Tensor:
    """Nuclear norm of every weight matrix: [L] for a module, [P, L] for a population."""
    s = stacked(model)
    return s.finish(torch.stack([nuclear_from_svals(v) for v in _layer_svals(s)], dim=1))


def effective_ranks(model) -> torch.Tensor:
    """Effective rank (Roy & Vetterli 2007) of every weight matrix: [L] or [P, L]."""
    s = stacked(model)
    return s.finish(torch.stack([effective_rank_from_svals(v) for v in _layer_svals(s)], dim=1))


def stable_ranks(model, input_shape=None) -> torch.Tensor:
    """Stable rank ‖A‖_F²/‖A‖₂² of every weight layer's map: [L] or [P, L].

    Convention (shared with :func:`~implicitreg.measures.layers.spectral_norms`): A is the linear
    map the layer applies — a linear layer's weight matrix; a Conv1d layer's convolution operator
    on its actual input (stride, padding, dilation, groups), whose ‖A‖₂ is the norm
    ``spectral_norms`` reports (see :func:`~implicitreg.measures.layers.layer_stable_ranks`).
    Before this convention a Conv1d layer's stable rank was that of its kernel matrix
    [C_out, C_in·k], a ratio of two norms of a matrix that is not the map (its ‖·‖₂ is not the
    layer's spectral norm); linear layers are unchanged. ``input_shape`` as ``spectral_norms``
    (needed only for convolutional models without an ``input_len``); BatchNorm is folded, as there.
    Warns where a Conv1d operator norm did not converge.
    """
    s = folded(model, input_shape)
    return s.finish(report(layer_stable_ranks(s, input_shape), False, "stable_ranks (Conv1d operator norm)"))


_PASSIVE = (nn.Sequential, nn.ModuleList, nn.Identity, nn.Flatten, nn.Linear)


def _end_to_end(s: Stacked) -> torch.Tensor:
    layers = weight_layers(s)
    name = type(s.template).__name__
    convs = [layer.name for layer in layers if not isinstance(layer.module, nn.Linear)]
    if convs:
        raise ValueError(f"end-to-end rank needs a model of nn.Linear layers only; {name} has convolutions {convs}")
    if isinstance(s.template, nn.Sequential):
        active = [f"{n}: {type(m).__name__}" for n, m in s.template.named_modules() if not isinstance(m, _PASSIVE)]
        if active:
            raise ValueError(f"end-to-end rank needs a linear model; the nn.Sequential contains {active}")
    product = layers[0].weight
    for prev, layer in itertools.pairwise(layers):
        if layer.weight.shape[2] != product.shape[1]:
            raise ValueError(f"layer {layer.name} takes {layer.weight.shape[2]} inputs but {prev.name} gives "
                             f"{product.shape[1]}: the layers do not compose in registration order")
        product = layer.weight @ product
    _check_linear(s, product, name)
    return product


def _check_linear(s: Stacked, product: torch.Tensor, name: str) -> None:
    """Refuse a model whose function is not x ↦ W_L⋯W_1 x + const (hidden nonlinearity, other order)."""
    gen = torch.Generator(device=product.device).manual_seed(0)
    x = torch.randn(8, product.shape[2], generator=gen, dtype=product.dtype, device=product.device)
    x = torch.cat([x, -x, torch.zeros_like(x[:1])])
    try:
        with torch.no_grad():
            out = s.forward(x)  # [P, 17, C]
    except RuntimeError as err:
        raise ValueError(f"end-to-end rank: the model does not accept inputs of size {product.shape[2]}: {err}") from err
    if out.shape[-1] != product.shape[1]:
        raise ValueError(f"end-to-end rank: the model gives {out.shape[-1]} outputs, the product of its layers "
                         f"{product.shape[1]}")
    linear = out[:, :-1] - out[:, -1:]
    expected = x[:-1] @ product.transpose(1, 2)
    scale = 1 + expected.abs().amax() + out[:, -1].abs().amax()
    if (linear - expected).abs().amax() > torch.finfo(product.dtype).eps ** 0.5 * scale:
        raise ValueError(f"end-to-end rank needs a linear model, but {name}'s function is not the "
                         "product of its nn.Linear layers (a nonlinearity such as a ReLU between them, or layers "
                         "applied in another order)")


def linear_model(model: nn.Module, input_shape=None) -> str | None:
    """Why the end-to-end rank measures do not apply to ``model`` (None when they do): weights outside
    ``nn.Linear`` layers, BatchNorm, or a function that is not the product of its layers (checked as
    :func:`end_to_end_matrix` checks it, on a few random inputs)."""
    reason = foreign_weights(model)
    if reason is not None:
        return reason
    try:
        _end_to_end(stacked(model))
    except ValueError as err:
        return str(err)
    return None


def end_to_end_matrix(model) -> torch.Tensor:
    """The product W_L ⋯ W_1 of a model made only of ``nn.Linear`` layers (biases ignored):
    [out, in] for a module, [P, out, in] for a population.

    Raises:
        ValueError: the model has convolutions or a nonlinearity (checked structurally for
            ``nn.Sequential`` and numerically for any model: f(x) − f(0) must equal
            W_L⋯W_1 x on random inputs).
    """
    s = stacked(model)
    return s.finish(_end_to_end(s))


@register("nuclear_norm", "norm", applies=linear_model)
def nuclear_norm(model) -> torch.Tensor:
    """Nuclear norm of the end-to-end matrix W_L⋯W_1 of a linear (factorized) model."""
    s = stacked(model)
    return s.finish(nuclear_from_svals(torch.linalg.svdvals(_end_to_end(s))))


@register("effective_rank", "rank", applies=linear_model)
def effective_rank(model) -> torch.Tensor:
    """Effective rank (Roy & Vetterli 2007) of the end-to-end matrix of a linear (factorized) model."""
    s = stacked(model)
    return s.finish(effective_rank_from_svals(torch.linalg.svdvals(_end_to_end(s))))


@register("stable_rank", "rank", applies=linear_model)
def stable_rank(model) -> torch.Tensor:
    """Stable rank ‖W‖_F²/‖W‖₂² of the end-to-end matrix of a linear (factorized) model."""
    s = stacked(model)
    return s.finish(stable_rank_from_svals(torch.linalg.svdvals(_end_to_end(s))))
