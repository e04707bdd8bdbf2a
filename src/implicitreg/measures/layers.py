"""Per-layer norms: spectral (operator) and Frobenius norms of every weight layer, and their
products and sums (Bartlett 1998; Neyshabur et al. 2017; Jiang et al. 2020).

A *weight layer* is an ``nn.Linear`` or ``nn.Conv1d`` module; layers are listed in module
registration order (for :class:`~implicitreg.models.MLP` and :class:`~implicitreg.models.CNN1D`
that is the forward order). Biases are excluded from every measure here. A model with any other
module that carries weights (``nn.Conv2d``, ``nn.Embedding``, …) is refused with a ``ValueError``.

The spectral norm of a linear layer is ``torch.linalg.matrix_norm(W, ord=2)``. The spectral norm
of a ``Conv1d`` layer is its true operator norm as a linear map on inputs of the layer's actual
input length (stride, padding, dilation and groups included), computed matrix-free from AᵀA with
``conv1d`` and ``conv_transpose1d`` by Lanczos (power iteration accelerated in a Krylov space),
batched over the population with a grouped convolution. The input length of every convolution
is found by one forward pass on a zero input of the model's input shape: ``input_shape=`` when
given (``measures.compute`` also reads it from ``data``), else the module's ``input_len`` (or
``input_shape``) attribute; a model with convolutions and neither raises ``ValueError``.

BatchNorm in eval mode is an affine map per channel, part of the function but of no weight
layer: the norm measures fold it into the ``nn.Linear`` / ``nn.Conv1d`` layer feeding it
(:func:`folded`) before reading the weights; :func:`weight_layers` refuses an unfolded one.

References:
    Bartlett, Foster & Telgarsky, "Spectrally-normalized margin bounds for neural networks", 2017.
    Jiang et al., "Fantastic generalization measures and where to find them", ICLR 2020.
    Sedghi, Gupta & Long, "The singular values of convolutional layers", ICLR 2019.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from implicitreg.measures.core import Estimate, Stacked, register, require_eval, stacked
from implicitreg.measures.lanczos import lanczos, start_vector


@dataclass(frozen=True)
class WeightLayer:
    """One weight layer of a stacked model.

    Attributes:
        name: the module's path in the template ("layers.0", "convs.1", "readout").
        module: the template's module (for its hyperparameters: stride, padding, …).
        weight: [P, out, in] (linear) or [P, C_out, C_in/groups, k] (Conv1d).
    """

    name: str
    module: nn.Module
    weight: torch.Tensor

    @property
    def is_conv(self) -> bool:
        return isinstance(self.module, nn.Conv1d)

    def matrix(self) -> torch.Tensor:
        """The weight as a matrix per member: [P, out, in] (a Conv1d kernel as [P, C_out, C_in·k])."""
        return self.weight.flatten(2)


def weight_layers(s: Stacked) -> list[WeightLayer]:
    """The ``nn.Linear`` and ``nn.Conv1d`` layers of ``s`` in registration order.

    Raises:
        ValueError: a parameter of dim ≥ 2 per member belongs to no such layer, or there is none, or
            a BatchNorm layer is left unfolded (see :func:`folded`).
    """
    layers, covered = [], set()
    for name, module in s.template.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            raise ValueError(f"BatchNorm layer {name!r} scales its weight layer's output, which the weights alone do "
                             "not show: this measure does not fold it (fold_batchnorm(model) does)")
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            key = f"{name}.weight" if name else "weight"
            if key not in s.params:
                raise ValueError(f"layer {name or '<root>'}: no stacked parameter {key!r}")
            if isinstance(module, nn.Conv1d) and module.padding_mode != "zeros":
                raise ValueError(f"layer {name}: padding_mode={module.padding_mode!r} is not supported "
                                 "(expected 'zeros')")
            layers.append(WeightLayer(name or "<root>", module, s.params[key]))
            covered.add(key)
    other = [name for name, _ in s.weights() if name not in covered]
    if other:
        raise ValueError(f"weights outside nn.Linear / nn.Conv1d layers are not supported: {other}")
    if not layers:
        raise ValueError("the model has no nn.Linear or nn.Conv1d layer")
    return layers


def foreign_weights(model: nn.Module) -> str | None:
    """Why the weights of ``model`` are not all in ``nn.Linear`` / ``nn.Conv1d`` layers (None when they
    are): the modules holding a weight of dim ≥ 2 of another type (``nn.Conv2d``, ``nn.Embedding``, …)."""
    others = [f"{name or '<root>'} ({type(module).__name__})" for name, module in model.named_modules()
              if not isinstance(module, (nn.Linear, nn.Conv1d))
              and any(p.dim() >= 2 for p in module.parameters(recurse=False))]
    if others:
        more = f" and {len(others) - 3} more" if len(others) > 3 else ""
        return ("it reads the weights of nn.Linear and nn.Conv1d layers only, and the model has weights in "
                f"{', '.join(others[:3])}{more}")
    return None


def layered_model(model: nn.Module, input_shape=None) -> str | None:
    """Why the per-layer norm measures do not apply to ``model`` (None when they do): weights outside
    ``nn.Linear`` / ``nn.Conv1d`` layers, a BatchNorm that cannot be folded, convolutions whose input
    length is unknown (no ``input_shape``) — the checks the measures themselves make, without their
    arithmetic (one forward pass on a small input). The registry's ``applies`` of these measures."""
    reason = foreign_weights(model)
    if reason is not None:
        return reason
    try:
        s = folded(model, input_shape)
        conv_input_lengths(s, weight_layers(s), input_shape)
    except ValueError as err:
        return str(err)
    return None


def weight_layer_names(model, input_shape=None) -> list[str]:
    """Names of the weight layers, in the order of the columns of the per-layer measures."""
    return [layer.name for layer in weight_layers(folded(model, input_shape))]


def model_input_shape(template: nn.Module, input_shape=None) -> tuple[int, ...] | None:
    """The per-sample input shape: ``input_shape`` if given, else the module's ``input_len`` /
    ``input_shape`` attribute, else — for a model whose first weight layer is ``nn.Linear`` —
    ``(in_features,)``; None when none of these applies."""
    if input_shape is None:
        input_shape = getattr(template, "input_shape", None)
    if input_shape is None:
        input_shape = getattr(template, "input_len", None)
    if input_shape is None:
        first = next((m for m in template.modules() if isinstance(m, (nn.Linear, nn.Conv1d))), None)
        if isinstance(first, nn.Linear):
            return (first.in_features,)
        return None
    shape = (input_shape,) if isinstance(input_shape, int) else tuple(int(n) for n in input_shape)
    if not shape or any(n < 1 for n in shape):
        raise ValueError(f"input_shape: expected positive sizes, got {input_shape!r}")
    return shape


def _require_input_shape(s: Stacked, input_shape, what: str) -> tuple[int, ...]:
    shape = model_input_shape(s.template, input_shape)
    if shape is None:
        raise ValueError(
            f"{what} needs the model's per-sample input shape, which {type(s.template).__name__} does not store: "
            "pass input_shape=(L,) (e.g. (40,) for MNIST-1D) to the measure or to measures.compute — or give "
            "measures.compute data=(x, y), whose x it is read from — or give the module an `input_len` attribute")
    return shape


def folded(model, input_shape=None) -> Stacked:
    """``stacked(model)`` with every BatchNorm folded into the Linear / Conv1d layer that feeds it.

    In eval mode BatchNorm maps a channel z to γ (z − μ)/√(σ² + ε) + β (running μ, σ²), so after
    z = W x + b it is the layer W' = diag(s) W, b' = s (b − μ) + β with s = γ/√(σ² + ε): the same
    function, with the scale in the weights where the norm measures read it. Which layer feeds a
    BatchNorm is seen in one forward pass (its input must be that layer's output tensor), and the
    folded model's outputs are checked against the original's on a random input.

    Raises:
        ValueError: the model is in training mode, a BatchNorm has no running statistics or does
            not directly follow a Linear / Conv1d layer, or the folded model computes another function.
    """
    s = stacked(model)
    norms = [(name, m) for name, m in s.template.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return s
    require_eval(s.template)
    shape = _require_input_shape(s, input_shape, "folding BatchNorm")
    like = next(iter(s.params.values()))
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(like)
    feeders = _feeding_layers(s, x)
    template, params = copy.deepcopy(s.template), dict(s.params)
    for name, norm in norms:
        if norm.running_mean is None:
            raise ValueError(f"BatchNorm {name!r} keeps no running statistics (track_running_stats=False): it "
                             "normalizes by batch statistics even in eval mode, which no weight layer can hold")
        if name not in feeders:
            raise ValueError(f"BatchNorm {name!r} does not directly follow an nn.Linear / nn.Conv1d layer: "
                             "it cannot be folded into weights")
        layer = feeders[name]
        w = params[f"{layer}.weight"]  # [P, C, ...]
        mean, var = norm.running_mean.to(w), norm.running_var.to(w)
        gamma = params.pop(f"{name}.weight", torch.ones_like(mean).expand(w.shape[0], -1))
        beta = params.pop(f"{name}.bias", torch.zeros_like(mean).expand(w.shape[0], -1))
        scale = gamma / torch.sqrt(var + norm.eps)  # [P, C]
        bias = params.get(f"{layer}.bias", torch.zeros_like(scale))
        params[f"{layer}.weight"] = w * scale.reshape(*scale.shape, *[1] * (w.dim() - 2))
        params[f"{layer}.bias"] = (bias - mean) * scale + beta
        parent, _, leaf = name.rpartition(".")
        setattr(template.get_submodule(parent), leaf, nn.Identity())
        module = template.get_submodule(layer)
        if module.bias is None:  # the folded layer has a bias even where the original had none
            module.bias = nn.Parameter(torch.zeros(module.weight.shape[0], dtype=w.dtype, device=w.device))
    out = Stacked(template, params, s.single)
    with torch.no_grad():
        before, after = s.forward(x), out.forward(x)
    tol = torch.finfo(x.dtype).eps ** 0.5
    if not torch.allclose(after, before, rtol=tol, atol=tol * float(before.abs().max())):
        raise ValueError("folding BatchNorm into the layers that feed it changed the model's outputs (a layer's "
                         "output is used elsewhere too, e.g. a skip connection): it cannot be folded into weights")
    return out


def _feeding_layers(s: Stacked, x: torch.Tensor) -> dict[str, str]:
    """BatchNorm name → name of the Linear / Conv1d layer whose output tensor it receives (member 0 on x)."""
    outputs: dict[int, tuple[str, torch.Tensor]] = {}  # holds the tensors, so that their ids stay unique
    feeders: dict[str, str] = {}

    def layer_hook(name):
        return lambda _module, _args, out: outputs.__setitem__(id(out), (name, out))

    def norm_hook(name):
        def hook(_module, args):
            source = outputs.get(id(args[0]))
            if source is not None and source[1] is args[0]:
                feeders[name] = source[0]
        return hook

    handles = []
    for name, module in s.template.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            handles.append(module.register_forward_hook(layer_hook(name)))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            handles.append(module.register_forward_pre_hook(norm_hook(name)))
    try:
        with torch.no_grad():
            functional_call(s.template, {k: v[0] for k, v in s.params.items()}, (x,))
    except RuntimeError as err:
        raise ValueError(f"input_shape {tuple(x.shape[1:])} does not fit the model: {err}") from err
    finally:
        for handle in handles:
            handle.remove()
    return feeders


def fold_batchnorm(model: nn.Module, input_shape=None) -> nn.Module:
    """A copy of ``model`` (eval mode) with every BatchNorm folded into the layer feeding it (:func:`folded`)."""
    s = folded(model, input_shape)
    module = copy.deepcopy(s.template)
    module.load_state_dict({k: v[0] for k, v in s.params.items()}, strict=False)
    return module


def conv_input_lengths(s: Stacked, layers: list[WeightLayer], input_shape=None) -> dict[str, int]:
    """Input length of every Conv1d layer, from one forward pass of member 0 on a zero input."""
    convs = [layer for layer in layers if layer.is_conv]
    if not convs:
        return {}
    shape = _require_input_shape(s, input_shape, "the operator norm of a Conv1d layer")
    require_eval(s.template)
    lengths: dict[str, int] = {}
    handles = [layer.module.register_forward_pre_hook(
        lambda _m, args, name=layer.name: lengths.__setitem__(name, int(args[0].shape[-1]))) for layer in convs]
    try:
        first = next(iter(s.params.values()))
        member = {k: v[0] for k, v in s.params.items()}
        with torch.no_grad():
            functional_call(s.template, member, (torch.zeros(1, *shape, dtype=first.dtype, device=first.device),))
    except RuntimeError as err:
        raise ValueError(f"input_shape {shape} does not fit the model: {err}") from err
    finally:
        for handle in handles:
            handle.remove()
    missing = [layer.name for layer in convs if layer.name not in lengths]
    if missing:
        raise ValueError(f"Conv1d layers {missing} are not used in the forward pass")
    return lengths


def _conv_geometry(conv: nn.Conv1d, length: int) -> tuple[int, int, int, int, int]:
    """(stride, padding, dilation, output length, output_padding of the adjoint) of ``conv`` on ``length``."""
    (k,), (stride,), (dilation,) = conv.kernel_size, conv.stride, conv.dilation
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            pad = 0
        elif dilation * (k - 1) % 2 == 0:  # "same" with symmetric padding
            pad = dilation * (k - 1) // 2
        else:
            raise ValueError(f"padding='same' with an asymmetric pad (kernel {k}, dilation {dilation}) is not supported")
    else:
        (pad,) = conv.padding
    out_len = (length + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    if out_len < 1:
        raise ValueError(f"input length {length} is too short for a Conv1d with kernel {k}")
    output_padding = length - ((out_len - 1) * stride - 2 * pad + dilation * (k - 1) + 1)
    return stride, pad, dilation, out_len, output_padding


def conv1d_operator_norms(weight: torch.Tensor, conv: nn.Conv1d, length: int, tol: float = 1e-10,
                          max_iter: int = 500, seed: int = 0, with_convergence: bool = False) -> torch.Tensor | Estimate:
    """Operator norms ‖A‖₂ of the convolutions with kernels ``weight`` [P, C_out, C_in/g, k] on inputs
    of length ``length`` (zero padding, ``conv``'s stride, dilation and groups): [P].

    σ² is the top eigenvalue of AᵀA (A = ``conv1d``, Aᵀ = ``conv_transpose1d``), found matrix-free
    by :func:`~implicitreg.measures.lanczos.lanczos` (full reorthogonalization: a Krylov-accelerated
    power iteration, far fewer products when the top of the spectrum is clustered, as it is for
    convolutions), all members at once with a grouped convolution, from one start vector shared by
    the members (drawn from ``seed``), so a population's norms equal a loop over its members.

    The iteration runs in float64 whatever the weights' dtype (the products are small
    convolutions): in float32 the relative residual cannot go below ~1e-5, and the top eigenvalues
    of a convolution's AᵀA are clustered that tightly, so a float32 run could stop on the second
    eigenvalue; the norms are returned in the weights' dtype. A member has converged when the
    residual of its top Ritz pair is below ``tol``·σ² (relative, floored at 100·eps of float64):
    an eigenvalue of AᵀA then lies that close to the Ritz value, which never exceeds σ². A Krylov
    space that becomes invariant or reaches the dimension C_in·L gives the exact value (residual
    0). Non-convergence after ``max_iter`` products is reported with a ``RuntimeWarning``, or —
    ``with_convergence=True`` — as the flags [P] of an :class:`Estimate`.
    """
    P, c_out, c_in_g, _ = weight.shape
    groups = conv.groups * P
    c_in = c_in_g * conv.groups
    stride, pad, dilation, _, output_padding = _conv_geometry(conv, length)
    w = weight.detach().to(torch.float64).reshape(P * c_out, c_in_g, -1)

    def gram(v: torch.Tensor) -> torch.Tensor:  # AᵀA v for every member: [P, C_in·L] → [P, C_in·L]
        u = F.conv1d(v.reshape(1, P * c_in, length), w, None, stride, pad, dilation, groups)
        return F.conv_transpose1d(u, w, None, stride, pad, output_padding, groups, dilation).reshape(P, -1)

    n = c_in * length
    generator = torch.Generator().manual_seed(seed)
    v0 = start_vector(generator, n, w).expand(P, n)
    with torch.no_grad():
        # check_ratio 1/8: a product is two small convolutions, cheaper than an eigh of T at every step
        result = lanczos(gram, v0, k=1, tol=max(tol, 100 * torch.finfo(w.dtype).eps), max_iter=min(max_iter, n),
                         check_ratio=1 / 8, generator=generator)
    values, converged = result.values[:, 0].clamp_min(0).sqrt().to(weight.dtype), result.converged[:, 0]
    if with_convergence:
        return Estimate(values, converged)
    if not bool(converged.all()):
        warnings.warn(f"Conv1d operator norm: Lanczos did not reach rtol {tol:g} in {int(result.n_matvec.max())} "
                      f"iterations for members {torch.nonzero(~converged).flatten().tolist()}", RuntimeWarning,
                      stacklevel=2)
    return values


def conv1d_operator_frobenius(weight: torch.Tensor, conv: nn.Conv1d, length: int) -> torch.Tensor:
    """Frobenius norms ‖A‖_F of the convolutions with kernels ``weight`` [P, C_out, C_in/g, k] as
    linear maps on inputs of length ``length`` (``conv``'s stride, padding, dilation): [P], exact.

    Every kernel entry w[o, i, j] appears in A once per output position t whose tap j reads an
    input position inside the signal (t·stride + j·dilation − padding in [0, L)), not in the zero
    padding; so ‖A‖_F² = Σ_j n_j ‖w[:, :, :, j]‖² with n_j that count (groups change nothing: each
    entry still appears once per such position). Without padding n_j = L_out for every tap, and
    ‖A‖_F = √L_out · ‖kernel‖_F.
    """
    stride, pad, dilation, out_len, _ = _conv_geometry(conv, length)
    t = torch.arange(out_len)
    pos = t[None, :] * stride + torch.arange(weight.shape[-1])[:, None] * dilation - pad  # [k, L_out]
    counts = ((pos >= 0) & (pos < length)).sum(1).to(torch.float64)  # n_j [k]
    per_tap = weight.detach().to(torch.float64).pow(2).sum((1, 2))  # [P, k]
    return (per_tap @ counts.to(per_tap.device)).sqrt().to(weight.dtype)


def layer_stable_ranks(s: Stacked, input_shape=None, layers: list[WeightLayer] | None = None) -> Estimate:
    """Stable rank ‖A‖_F² / ‖A‖₂² of every weight layer's map, value [P, L], with the convergence of
    the Conv1d operator norms [P] (see :func:`layer_spectral_estimates`).

    One convention with :func:`spectral_norms`: A is the linear map the layer applies — the weight
    matrix of a linear layer, the convolution operator on the layer's actual input of a Conv1d
    layer (:func:`conv1d_operator_frobenius`, :func:`conv1d_operator_norms`), so the denominator is
    the square of the spectral norm :func:`spectral_norms` reports. A zero map has stable rank 0.
    """
    layers = weight_layers(s) if layers is None else layers
    spectral = layer_spectral_estimates(s, input_shape, layers)
    lengths = conv_input_lengths(s, layers, input_shape)
    frob = torch.stack([conv1d_operator_frobenius(layer.weight, layer.module, lengths[layer.name]) if layer.is_conv
                        else layer.matrix().flatten(1).norm(dim=1) for layer in layers], dim=1)
    top = spectral.value
    ratio = frob.pow(2) / torch.where(top > 0, top, torch.ones_like(top)).pow(2)
    return Estimate(torch.where(top > 0, ratio, torch.zeros_like(ratio)), spectral.converged)


def layer_spectral_estimates(s: Stacked, input_shape=None, layers: list[WeightLayer] | None = None) -> Estimate:
    """Spectral norm of every weight layer, value [P, L], and whether all of a member's were
    exact or converged, [P] (a linear layer's is an SVD; a Conv1d layer's an iteration)."""
    layers = weight_layers(s) if layers is None else layers
    lengths = conv_input_lengths(s, layers, input_shape)
    values, converged = [], torch.ones(s.size, dtype=torch.bool, device=layers[0].weight.device)
    for layer in layers:
        if layer.is_conv:
            conv = conv1d_operator_norms(layer.weight, layer.module, lengths[layer.name], with_convergence=True)
            values.append(conv.value)
            converged = converged & conv.converged
        else:
            values.append(torch.linalg.matrix_norm(layer.weight, ord=2))
    return Estimate(torch.stack(values, dim=1), converged)


def layer_spectral_norms(s: Stacked, input_shape=None, layers: list[WeightLayer] | None = None) -> torch.Tensor:
    """Spectral norm of every weight layer: [P, L] (see :func:`spectral_norms`); warns where a
    Conv1d layer's iteration did not converge."""
    return report(layer_spectral_estimates(s, input_shape, layers), False, "spectral norm of a Conv1d layer")


def report(estimate: Estimate, with_convergence: bool, what: str) -> torch.Tensor | Estimate:
    """What a measure built on spectral norms returns: the :class:`Estimate` when asked for it,
    else its value, after a ``RuntimeWarning`` naming the members whose iteration did not converge."""
    if with_convergence:
        return estimate
    failed = ~estimate.converged.reshape(-1)
    if bool(failed.any()):
        warnings.warn(f"{what}: Lanczos did not converge for member(s) {failed.nonzero().flatten().tolist()[:10]}",
                      RuntimeWarning, stacklevel=3)
    return estimate.value


def spectral_norms(model, input_shape=None) -> torch.Tensor:
    """Spectral norm ‖W_i‖₂ of every weight layer: [L] for a module, [P, L] for a population.

    Linear layers: the largest singular value of the weight matrix. Conv1d layers: the operator
    norm of the convolution on the layer's actual input (see the module docstring). Biases are
    excluded; BatchNorm is folded into the layer feeding it. Column order: :func:`weight_layer_names`.

    Convention (shared with :func:`~implicitreg.measures.rank.stable_ranks`): a layer's spectral
    quantities are those of the linear map it applies — for a Conv1d layer the convolution
    operator, not the kernel reshaped to [C_out, C_in·k] (whose largest singular value is not a
    bound on how much the layer can stretch an input).

    Args:
        model: a module or population.
        input_shape: the per-sample input shape (e.g. ``(40,)`` for a CNN1D on MNIST-1D); needed
            for convolutional models that do not store an ``input_len``.
    """
    s = folded(model, input_shape)
    return s.finish(layer_spectral_norms(s, input_shape))


def layer_frobenius_norms(s: Stacked) -> torch.Tensor:
    """Frobenius norm of every weight tensor: [P, L] (see :func:`frobenius_norms`)."""
    return torch.stack([layer.matrix().flatten(1).norm(dim=1) for layer in weight_layers(s)], dim=1)


def frobenius_norms(model, input_shape=None) -> torch.Tensor:
    """Frobenius norm of every weight tensor (a Conv1d *kernel*, not its operator): [L] or [P, L].

    Biases are excluded; BatchNorm is folded (``input_shape`` as :func:`spectral_norms`, read only
    then). Column order: :func:`weight_layer_names`.
    """
    s = folded(model, input_shape)
    return s.finish(layer_frobenius_norms(s))


def _spectral_measure(model, input_shape, with_convergence: bool, what: str, reduce) -> torch.Tensor | Estimate:
    s = folded(model, input_shape)
    estimate = layer_spectral_estimates(s, input_shape)
    return report(Estimate(s.finish(reduce(estimate.value)), s.finish(estimate.converged)), with_convergence, what)


def _frobenius_measure(model, input_shape, reduce) -> torch.Tensor:
    s = folded(model, input_shape)
    return s.finish(reduce(layer_frobenius_norms(s)))


@register("spectral_product", "norm-product", applies=layered_model)
def spectral_product(model, input_shape=None, with_convergence: bool = False) -> torch.Tensor | Estimate:
    """Π_i ‖W_i‖₂ over weight layers (biases excluded; Conv1d: operator norm; BatchNorm folded)."""
    return _spectral_measure(model, input_shape, with_convergence, "spectral_product", lambda v: v.prod(dim=1))


@register("frobenius_product", "norm-product", applies=layered_model)
def frobenius_product(model, input_shape=None) -> torch.Tensor:
    """Π_i ‖W_i‖_F over weight layers (biases excluded; Conv1d: kernel norm; BatchNorm folded)."""
    return _frobenius_measure(model, input_shape, lambda v: v.prod(dim=1))


@register("sum_of_spectral", "norm-product", applies=layered_model)
def sum_of_spectral(model, input_shape=None, with_convergence: bool = False) -> torch.Tensor | Estimate:
    """Σ_i ‖W_i‖₂ over weight layers (biases excluded; Conv1d: operator norm; BatchNorm folded)."""
    return _spectral_measure(model, input_shape, with_convergence, "sum_of_spectral", lambda v: v.sum(dim=1))


@register("sum_of_frobenius", "norm-product", applies=layered_model)
def sum_of_frobenius(model, input_shape=None) -> torch.Tensor:
    """Σ_i ‖W_i‖_F over weight layers (biases excluded; Conv1d: kernel norm; BatchNorm folded)."""
    return _frobenius_measure(model, input_shape, lambda v: v.sum(dim=1))
