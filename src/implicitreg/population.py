"""A population: P models of one architecture as stacked parameters, trained as one computation.

Members differ in seed (initialization), init scale and — through the training loop — data
order, learning rate, weight decay, dropout rate and labels. The stacked parameters live in a
kernel's layout (:mod:`implicitreg.kernels`); ``member(i)`` gives back a plain ``nn.Module``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.func import stack_module_state

from implicitreg.cnn_kernel import CNNKernel
from implicitreg.kernels import MLPKernel, Params, VmapKernel
from implicitreg.models import CNN1D, MLP


class Population:
    """Stacked parameters of P modules plus the kernel that trains them.

    Args:
        modules: P modules of identical architecture (their values are copied, not shared).
        loss: "cross_entropy" (classification) or "mse" (regression).
        device, dtype: where and in what precision the population lives.
        kernel: "auto" (hand-batched for :class:`~implicitreg.models.MLP` and
            :class:`~implicitreg.models.CNN1D`, vmap otherwise) or "vmap".
    """

    def __init__(self, modules: list[nn.Module], loss: str = "cross_entropy", device="cpu",
                 dtype: torch.dtype = torch.float32, kernel: str = "auto"):
        if not modules:
            raise ValueError("a population needs at least one module")
        if loss not in ("cross_entropy", "mse"):
            raise ValueError(f"loss: expected cross_entropy or mse, got {loss!r}")
        self.size = len(modules)
        self.template = copy.deepcopy(modules[0]).to(device=device, dtype=dtype)
        stacked, buffers = stack_module_state(list(modules))
        if buffers:
            raise ValueError(f"modules with buffers are not supported yet: {sorted(buffers)}")
        if kernel == "auto" and isinstance(self.template, MLP):
            self.kernel: MLPKernel | CNNKernel | VmapKernel = MLPKernel(len(self.template.layers), loss)
        elif kernel == "auto" and isinstance(self.template, CNN1D):
            self.kernel = CNNKernel(self.template, loss)
        elif kernel in ("auto", "vmap"):
            self.kernel = VmapKernel(copy.deepcopy(self.template).to("meta"), loss)
        else:
            raise ValueError(f"kernel: expected auto or vmap, got {kernel!r}")
        as_module = {k: v.detach().to(device=device, dtype=dtype) for k, v in stacked.items()}
        self.params: Params = self.kernel.to_kernel(as_module)
        self.hidden_shapes = modules[0].hidden_shapes() if hasattr(modules[0], "hidden_shapes") else []

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.params.values())).dtype

    def module_params(self) -> Params:
        """The stacked parameters in the module's own layout (views where possible): [P, ...]."""
        return self.kernel.to_module(self.params)

    def loss_and_grad(self, x: torch.Tensor, y: torch.Tensor, masks=None) -> tuple[torch.Tensor, Params]:
        """Per-member mean loss [P] and gradients (kernel layout) on per-member batches x: [P, B, ...].

        The gradients may live in buffers the kernel reuses: they are valid until the next call.
        """
        return self.kernel.loss_and_grad(self.params, x, y, masks)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
        """Outputs of every member on shared inputs x: [N, ...] → [P, N, C], in row chunks."""
        return torch.cat([self.kernel.forward(self.params, x[i : i + chunk]) for i in range(0, len(x), chunk)], dim=1)

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the members at positions ``keep`` ([K] int64), in that order."""
        self.params = {k: v[keep] for k, v in self.params.items()}
        self.size = int(keep.shape[0])

    def subset(self, keep: torch.Tensor) -> "Population":
        """A new population of the members at positions ``keep`` (their parameters copied)."""
        sub = copy.copy(self)
        sub.params = {k: v[keep] for k, v in self.params.items()}
        sub.size = int(keep.shape[0])
        return sub

    def member(self, index: int) -> nn.Module:
        """A plain module holding member ``index``'s current parameters (a copy)."""
        module = copy.deepcopy(self.template).to(self.device)
        state = {k: v[index].detach().clone() for k, v in self.module_params().items()}
        module.load_state_dict(state)
        return module
