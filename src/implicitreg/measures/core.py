"""What every measure is built on: one view of a plain ``nn.Module`` or a population as stacked
parameters, and a registry of measures with their metadata.

A measure is a pure function of a :class:`Stacked` view (plus data, a loss) that returns one
value per member, shape [P]. Called on a plain module it returns a 0-d tensor.

An *iterative* measure (Lanczos, power iteration, a bisection) also knows, per member, whether it
converged. Its function takes ``with_convergence: bool = False``: with False it returns the value
(and warns where a member did not converge); with True an :class:`Estimate` of the value and its
flags, and no warning — the caller holds the flags. :attr:`MeasureInfo.iterative` tells which.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol, runtime_checkable

import torch
from torch import nn
from torch.func import functional_call, vmap


@runtime_checkable
class PopulationLike(Protocol):
    """What measures read of a population (:class:`implicitreg.population.Population` is one):
    an architecture, the members' stacked parameters, and their outputs on shared inputs.

    Measures import no training code; any object with these three members is measured as P models.
    """

    template: nn.Module

    def module_params(self) -> dict[str, torch.Tensor]:
        """name → [P, ...] in the template's own layout."""
        ...

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, ...] → [P, N, C]."""
        ...


@dataclass(frozen=True)
class Stacked:
    """A model or population seen as stacked parameters.

    Attributes:
        template: a module with the architecture (its own parameter values are not used).
        params: name → [P, ...] in the module's own layout (``nn.Linear`` weights are [out, in]).
        single: True when built from a plain module (results are then squeezed to 0-d).
    """

    template: nn.Module
    params: dict[str, torch.Tensor]
    single: bool
    population: Any = field(default=None, compare=False)

    @property
    def size(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Outputs of every member on shared inputs x: [N, ...] → [P, N, C]."""
        if self.population is not None:
            return self.population.forward(x)
        require_eval(self.template)
        return vmap(lambda p: functional_call(self.template, p, (x,)))(self.params)

    def finish(self, values: torch.Tensor) -> torch.Tensor:
        """[P] → 0-d for a plain module, [P] for a population."""
        return values[0] if self.single else values

    def weights(self) -> list[tuple[str, torch.Tensor]]:
        """The weight tensors (dim ≥ 2 per member: linear and convolution kernels), in module order."""
        return [(name, p) for name, p in self.params.items() if p.dim() >= 3]


def unpack_data(data: Any) -> tuple[Any, Any]:
    """``(x, y)``, or an object with ``x_train``/``y_train`` (a data set), → ``(x, y)`` as given."""
    if hasattr(data, "x_train") and hasattr(data, "y_train"):
        return data.x_train, data.y_train
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return data[0], data[1]
    raise TypeError(f"data: expected (x, y) or an object with x_train/y_train, got {type(data).__name__}")


def stacked(model: "nn.Module | PopulationLike | Stacked") -> Stacked:
    """View a plain module (P = 1) or a population (:class:`PopulationLike`) as :class:`Stacked`."""
    if isinstance(model, Stacked):
        return model
    if isinstance(model, PopulationLike):
        return Stacked(model.template, {k: v.detach() for k, v in model.module_params().items()}, False, model)
    if isinstance(model, nn.Module):
        params = {k: v.detach().unsqueeze(0) for k, v in model.named_parameters()}
        if not params:
            raise ValueError("the model has no parameters to measure")
        return Stacked(model, params, True)
    raise TypeError("expected an nn.Module or a population (template, module_params(), forward()), "
                    f"got {type(model).__name__}")


@dataclass(frozen=True)
class Estimate:
    """An iterative measure's value with its per-member convergence.

    Attributes:
        value: 0-d for a module, [P] for a population.
        converged: bool, same shape: whether that member met the method's stopping rule.
    """

    value: torch.Tensor
    converged: torch.Tensor


#: Modules that compute something else in training mode (batch statistics, random masks).
_MODE_DEPENDENT = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


def require_eval(template: nn.Module) -> None:
    """Refuse a module whose BatchNorm or Dropout layers are in training mode.

    Measures evaluate the function the model computes at test time; in training mode BatchNorm
    would use (and update) batch statistics and Dropout draw masks, which ``vmap`` rejects.
    """
    training = [name or type(template).__name__ for name, m in template.named_modules()
                if isinstance(m, _MODE_DEPENDENT) and m.training]
    if training:
        raise ValueError(f"the model is in training mode ({', '.join(training[:5])} use batch statistics or random "
                         "masks there): call model.eval() before measuring it")


Needs = Literal["params", "init", "data", "loss", "hvp"]

Applicability = Callable[[nn.Module, "tuple[int, ...] | None"], "str | None"]
"""``applies(model, input_shape)``: None when a measure applies to the plain module ``model`` (in eval
mode), else the reason it does not, as one sentence. ``input_shape`` is the per-sample input shape
(None where unknown). A structural check, cheap next to the measure: it runs before training."""


@dataclass(frozen=True)
class MeasureInfo:
    """Metadata of a registered measure.

    Attributes:
        needs: what it reads besides the parameters ("init", "data", "loss", "hvp").
        lower_is_simpler: True when a lower value means a simpler model (norms); False for margins
            and flatness radii, None where it does not apply (counts, gaps).
        cost: "cheap" (a pass over the parameters), "forward" (passes over data), "hvp"
            (Hessian-vector products).
        family: the kind of complexity it measures (:data:`FAMILIES`), as Jiang et al. (2020)
            group them: "norm" (sizes of the parameters), "norm-product" (products of per-layer
            norms, their depth-balanced sums, spectral complexity), "margin", "flatness"
            (PAC-Bayes perturbation radii and bounds), "sharpness" (curvature and worst-case
            loss increase), "rank", "count"; beyond their table, "spectrum" (the shape of the layers'
            singular-value spectra: heavy-tail exponents, spikes) and "optimization" (statistics of
            the per-sample gradients: noise scale, diversity, signal-to-noise).
        applies: the models it supports (:data:`Applicability`); None: any model whose forward
            pass ``torch.func`` can run. Ask through :meth:`refusal`.
    """

    name: str
    fn: Callable[..., torch.Tensor]
    needs: tuple[Needs, ...]
    lower_is_simpler: bool | None
    cost: Literal["cheap", "forward", "hvp"]
    summary: str
    family: str
    applies: Applicability | None = None

    @property
    def iterative(self) -> bool:
        """True when the measure reports per-member convergence (``fn`` takes ``with_convergence``)."""
        return "with_convergence" in inspect.signature(self.fn).parameters

    def refusal(self, model: nn.Module, input_shape: tuple[int, ...] | None = None) -> str | None:
        """Why this measure does not apply to the plain module ``model`` (None when it does).

        The check sees the model as measures see it, in eval mode; every module's ``training``
        flag is restored afterwards. Where it returns None the measure's structural checks pass;
        data-dependent failures (labels of the wrong kind) can still occur when it is computed.
        """
        if self.applies is None:
            return None
        modes = [(module, module.training) for module in model.modules()]
        model.eval()
        try:
            return self.applies(model, None if input_shape is None else tuple(input_shape))
        finally:
            for module, training in modes:
                module.training = training


REGISTRY: dict[str, MeasureInfo] = {}
FAMILIES = ("norm", "norm-product", "margin", "flatness", "sharpness", "rank", "count", "spectrum", "optimization")


def register(name: str, family: str, needs: tuple[Needs, ...] = ("params",), lower_is_simpler: bool | None = True,
             cost: Literal["cheap", "forward", "hvp"] = "cheap", applies: Applicability | None = None):
    """Decorator adding a measure to :data:`REGISTRY` (its docstring's first line is the summary);
    ``applies`` says which models it supports (:data:`Applicability`; None: any)."""
    if family not in FAMILIES:
        raise ValueError(f"measure {name!r}: family must be one of {FAMILIES}, got {family!r}")

    def wrap(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        REGISTRY[name] = MeasureInfo(name, fn, needs, lower_is_simpler, cost, summary, family, applies)
        return fn

    return wrap
