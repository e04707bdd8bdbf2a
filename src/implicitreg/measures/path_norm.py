"""Path norm of ReLU networks (Neyshabur, Tomioka & Srebro 2015).

    ‖θ‖_path,p = ( Σ over input→output paths  Π_{edges e on the path} |w_e|^p )^(1/p)

Bias convention: a bias b_j of unit j is the weight of an edge from a constant-1 input unit to
unit j, so every bias starts its own paths: |b_j|^p times the sum over the paths from unit j to
the outputs. (Equivalently, the path norm of the network whose input is augmented by a constant
1 feeding every layer.) This keeps the measure invariant under the ReLU rescaling that leaves
the function unchanged: a hidden unit's incoming weights and bias times c > 0, its outgoing
weights times 1/c.

Computed with the standard trick: every parameter replaced by |θ|^p, one forward pass of an
all-ones input, outputs summed, 1/p-th power. With nonnegative weights, biases and input every
pre-activation is ≥ 0, so ReLU is the identity there and the pass sums over all paths. The
trick holds for networks of ``nn.Linear`` / ``nn.Conv1d`` layers, ReLUs and linear reshapes
(:class:`~implicitreg.models.MLP`, :class:`~implicitreg.models.CNN1D`), with BatchNorm (eval
mode) folded into the layer feeding it first; pooling or other nonlinearities would make it
something else.

References:
    Neyshabur, Tomioka & Srebro, "Norm-based capacity control in neural networks", COLT 2015.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, vmap

from implicitreg.measures.core import register, require_eval
from implicitreg.measures.layers import _require_input_shape, folded, layered_model, model_input_shape, weight_layers

#: Modules without children that the one-pass formula sums paths through: weight layers, ReLU,
#: reshapes, eval-mode Dropout (the identity) and BatchNorm (folded into the layer feeding it).
PATH_MODULES = (nn.Linear, nn.Conv1d, nn.ReLU, nn.Flatten, nn.Unflatten, nn.Identity,
                nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


def _uncovered(module: nn.Module) -> str | None:
    """Why the one-pass formula does not cover ``module``'s leaves (None when it does)."""
    other = [f"{name or '<root>'} ({type(leaf).__name__})" for name, leaf in module.named_modules()
             if not any(True for _ in leaf.children()) and not isinstance(leaf, PATH_MODULES)]
    if not other:
        return None
    return ("its one-pass formula sums the paths of networks of nn.Linear / nn.Conv1d layers, ReLUs and "
            f"BatchNorm, and the model also has {', '.join(other[:3])}" + (" …" if len(other) > 3 else ""))


def relu_network(model: nn.Module, input_shape=None) -> str | None:
    """Why :func:`path_norm` does not apply to ``model`` (None when it does): the per-layer checks of
    :func:`~implicitreg.measures.layers.layered_model`, an unknown input shape, or a module the
    formula does not cover (pooling, a nonlinearity other than ReLU, a normalization other than
    BatchNorm), where the pass of |θ|^p on all-ones inputs would compute something else.
    Nonlinearities applied as functions in ``forward`` (``F.relu``) cannot be seen here."""
    reason = layered_model(model, input_shape) or _uncovered(model)
    if reason is not None:
        return reason
    if model_input_shape(model, input_shape) is None:
        return f"it needs the per-sample input shape, which {type(model).__name__} does not store (pass input_shape)"
    return None


@register("path_norm", "norm", applies=relu_network)
def path_norm(model, p: float = 2, input_shape=None) -> torch.Tensor:
    """ℓp path norm (biases as paths from a constant-1 input; Neyshabur et al. 2015).

    Args:
        model: a ReLU network (module or population) of ``nn.Linear`` / ``nn.Conv1d`` layers.
        p: the exponent, > 0 (2 by default).
        input_shape: per-sample input shape; needed for convolutional models that store no
            ``input_len`` (e.g. ``(40,)`` for a CNN1D on MNIST-1D).

    Returns:
        0-d for a module, [P] for a population.
    """
    if not p > 0:
        raise ValueError(f"p: expected a positive exponent, got {p!r}")
    s = folded(model, input_shape)  # eval-mode BatchNorm is an affine map: its scales enter the paths
    weight_layers(s)  # refuses weights outside Linear / Conv1d layers
    uncovered = _uncovered(s.template)  # pooling, tanh, …: the pass below would compute something else
    if uncovered is not None:
        raise ValueError(f"path_norm does not apply: {uncovered}")
    require_eval(s.template)
    shape = _require_input_shape(s, input_shape, "the path norm")
    first = next(iter(s.params.values()))
    powered = {k: v.detach().abs().pow(p) for k, v in s.params.items()}
    ones = torch.ones(1, *shape, dtype=first.dtype, device=first.device)
    with torch.no_grad():
        out = vmap(lambda params: functional_call(s.template, params, (ones,)))(powered)  # [P, 1, C]
    return s.finish(out.flatten(1).sum(1).pow(1 / p))
