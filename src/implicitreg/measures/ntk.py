"""The empirical neural tangent kernel and how far it moves in training (Jacot, Gabriel & Hongler
2018; Chizat, Oyallon & Bach 2019; Fort et al. 2020).

**Convention.** For outputs f(x; θ) ∈ ℝ^C and the Jacobian J = ∂f/∂θ of a batch x [N, ...], rows
ordered sample-major (row i·C + c is output c of sample i), the empirical NTK is

    K = J Jᵀ ∈ ℝ^{N·C × N·C},   K[(i, c), (j, c')] = ⟨∂f_c(x_i)/∂θ, ∂f_c'(x_j)/∂θ⟩,

over all parameters (``named_parameters()``), as :func:`empirical_ntk` returns it.
``trace_outputs=True`` gives the [N, N] kernel Σ_c K[(i, c), (j, c)] (the trace over outputs,
``torch.func``'s "trace" mode); a model with one output per sample (outputs [N] or [N, 1]) has
C = 1 and an [N, N] kernel either way.

**Kernel movement.** ‖K_θ − K_θ₀‖_F / ‖K_θ₀‖_F between the initial parameters θ₀ and the current
θ, on the same inputs, full [N·C, N·C] kernels: near 0 in the lazy (kernel) regime, where the
network trains as its linearization, of order 1 where it learns features (Chizat et al. 2019).

The Jacobian is materialized, member by member and ``chunk_size`` samples at a time
(``vmap`` over samples of ``jacrev`` of a ``functional_call``): memory N·C × n parameters per
member. The registered :func:`kernel_movement` therefore takes the first ``n_samples`` (default
32) training inputs.
"""

from __future__ import annotations

import math

import torch
from torch.func import functional_call, jacrev, vmap

from implicitreg.measures.core import Stacked, register, require_eval, stacked


def _jacobian(s: Stacked, member: int, x: torch.Tensor, chunk_size: int | None) -> torch.Tensor:
    """J of member ``member`` on x: [N, C, n] (C = 1 for scalar outputs)."""
    names = list(s.params)
    shapes = [tuple(p.shape[1:]) for p in s.params.values()]
    numels = [math.prod(shape) for shape in shapes]
    theta = torch.cat([s.params[name][member].detach().reshape(-1) for name in names])
    template = s.template

    def one(t: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
        params = {name: chunk.view(shape) for name, chunk, shape in zip(names, t.split(numels), shapes)}
        return functional_call(template, params, (xi.unsqueeze(0),)).reshape(-1)  # [C]

    jac = vmap(jacrev(one), in_dims=(None, 0), chunk_size=chunk_size)(theta, x.to(device=theta.device, dtype=theta.dtype) if x.is_floating_point() else x.to(theta.device))  # [N, C, n]
    return jac


def _kernel(jac: torch.Tensor, trace_outputs: bool) -> torch.Tensor:
    n, c, _ = jac.shape
    if trace_outputs:
        return torch.einsum("icp,jcp->ij", jac, jac)
    rows = jac.reshape(n * c, -1)
    return rows @ rows.T


def _check_x(x) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(f"x: expected inputs [N, ...] with N ≥ 1, got shape {tuple(x.shape)}")
    return x


def empirical_ntk(model, x, trace_outputs: bool = False, chunk_size: int | None = None) -> torch.Tensor:
    """The empirical NTK J Jᵀ of ``model`` on inputs x [N, ...] (module docstring for the layout).

    Args:
        model: an ``nn.Module`` (eval mode) or a population.
        x: inputs [N, ...], shared by all members.
        trace_outputs: return the [N, N] kernel summed over outputs instead of [N·C, N·C].
        chunk_size: samples per vmapped Jacobian pass (None: all).

    Returns:
        [N·C, N·C] (or [N, N]) for a module, [P, ...] for a population, in the parameters' dtype.
    """
    s = stacked(model)
    require_eval(s.template)
    x = _check_x(x)
    kernels = [_kernel(_jacobian(s, p, x, chunk_size), trace_outputs) for p in range(s.size)]
    return kernels[0] if s.single else torch.stack(kernels)


def kernel_distance(model, init, x, chunk_size: int | None = None) -> torch.Tensor:
    """‖K_θ − K_θ₀‖_F / ‖K_θ₀‖_F on x, per member: 0-d or [P] (full [N·C, N·C] kernels)."""
    s, s0 = stacked(model), stacked(init)
    if set(s.params) != set(s0.params):
        raise ValueError(f"init has parameters {sorted(s0.params)}, the model {sorted(s.params)}")
    if s0.size != s.size:
        raise ValueError(f"init has {s0.size} member(s), the model {s.size}")
    require_eval(s.template)
    x = _check_x(x)
    s0 = Stacked(s.template, {k: v.to(s.params[k]) for k, v in s0.params.items()}, s.single)
    values = []
    for p in range(s.size):
        now = _kernel(_jacobian(s, p, x, chunk_size), False)
        then = _kernel(_jacobian(s0, p, x, chunk_size), False)
        values.append(torch.linalg.matrix_norm(now - then) / torch.linalg.matrix_norm(then))
    return s.finish(torch.stack(values))


@register("kernel_movement", "norm", needs=("params", "init", "data"), lower_is_simpler=True, cost="forward")
def kernel_movement(model, init, data, n_samples: int = 32, chunk_size: int | None = None) -> torch.Tensor:
    """Relative movement ‖K − K₀‖_F/‖K₀‖_F of the empirical NTK since init, on the first 32 training inputs."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise TypeError(f"data: expected a pair (x, y) of tensors, got {type(data).__name__}")
    if int(n_samples) < 1:
        raise ValueError(f"n_samples: expected a positive number of inputs, got {n_samples!r}")
    return kernel_distance(model, init, _check_x(data[0])[: int(n_samples)], chunk_size)


__all__ = ["empirical_ntk", "kernel_distance", "kernel_movement"]
