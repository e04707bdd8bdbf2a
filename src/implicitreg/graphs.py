"""CUDA-graph replay of a population's forward and backward pass: one launch per step.

On a GPU a population step of small models is bound by kernel launches, not arithmetic: the MLP
kernel's forward and backward are ~30 launches of a few microseconds of work each. Captured once
in a CUDA graph, they replay as one launch. A graph reads and writes fixed addresses, so the batch
and masks are copied into static input buffers before each replay, the parameters must be updated
in place (:func:`~implicitreg.optim.apply_updates` does), and the graph is captured again when the
parameters move — when members leave the population (:meth:`Population.select`) or the batch
shape changes. The step must not synchronize with the host: nothing in the kernels does
(:mod:`implicitreg.sampling` draws batches and masks on the device).

Anything that fails in capture falls back, with a warning, to the eager pass: a graph is an
optimization, never a requirement. The capture itself is injectable (``capture=``), so that the
plumbing — static buffers, re-capture, fallback — is tested on CPU with a stand-in.

References:
    PyTorch, "CUDA Graphs" (torch.cuda.graph; warm-up on a side stream before capture).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from implicitreg.population import Population

Replay = Callable[[], tuple[torch.Tensor, dict[str, torch.Tensor]]]
Capture = Callable[[Callable[[], tuple[torch.Tensor, dict[str, torch.Tensor]]]], Replay]


def cuda_capture(step: Callable[[], tuple[torch.Tensor, dict]], warmup: int = 3) -> Replay:
    """Capture ``step`` (a closure over static tensors) in a CUDA graph; return its replay.

    Warm-up runs on a side stream first, as capture requires (cuBLAS workspaces, allocator pools).
    """
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(warmup):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = step()

    def replay() -> tuple[torch.Tensor, dict]:
        graph.replay()
        return outputs

    return replay


class GraphedLossAndGrad:
    """``population.loss_and_grad`` replayed from a graph; same arguments, same results.

    Args:
        population: the population whose parameters the graph reads (updated in place between replays).
        capture: turns a closure into its replay (default :func:`cuda_capture`).

    Attributes:
        captures: how many times a graph was captured (1 + one per change of parameters or shapes).
        fallback: why capture failed, if it did (then every call runs eagerly); else None.
    """

    def __init__(self, population: Population, capture: Capture = cuda_capture):
        self.population = population
        self.capture = capture
        self.captures = 0
        self.fallback: str | None = None
        self._key: tuple | None = None
        self._replay: Replay | None = None
        self._inputs: tuple[torch.Tensor, torch.Tensor, list[torch.Tensor] | None] | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, masks: list[torch.Tensor] | None):
        """x: [P, B, ...], y: [P, B]; masks: list of [P, B, ...] or None → loss [P], grads (kernel layout).

        The results live in the graph's buffers: valid until the next call.
        """
        if self.fallback is not None:
            return self.population.loss_and_grad(x, y, masks)
        key = self._signature(x, y, masks)
        if key != self._key:
            try:
                self._record(x, y, masks)
                self._key = key
            except Exception as err:  # an op that cannot be captured: train eagerly, say so once
                self.fallback = f"{type(err).__name__}: {err}"
                warnings.warn(f"CUDA graph capture failed, training without graphs: {self.fallback}", stacklevel=2)
                return self.population.loss_and_grad(x, y, masks)
        static_x, static_y, static_masks = self._inputs
        static_x.copy_(x)
        static_y.copy_(y)
        for static, mask in zip(static_masks or [], masks or []):
            static.copy_(mask)
        return self._replay()

    def _signature(self, x, y, masks) -> tuple:
        """What a graph is specific to: the parameters' addresses and shapes, the inputs' shapes."""
        params = tuple((k, v.data_ptr(), tuple(v.shape)) for k, v in self.population.params.items())
        shapes = (tuple(x.shape), tuple(y.shape), None if masks is None else tuple(tuple(m.shape) for m in masks))
        return params, shapes, x.dtype, y.dtype

    def _record(self, x, y, masks) -> None:
        inputs = (x.clone(), y.clone(), None if masks is None else [m.clone() for m in masks])
        self._inputs = inputs
        self._replay = self.capture(lambda: self.population.loss_and_grad(*inputs))
        self.captures += 1
