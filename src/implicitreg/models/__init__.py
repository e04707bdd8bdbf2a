"""Models with an explicit initialization scale: MLP, the MNIST-1D 1-D CNN, and a user's own module
(built by a factory, :mod:`implicitreg.models.factory`)."""

from __future__ import annotations

import torch
from torch import nn

from implicitreg.config import CNNConfig, MLPConfig
from implicitreg.models.cnn1d import CNN1D
from implicitreg.models.factory import ModuleConfig, build_module
from implicitreg.models.init import reset_parameters
from implicitreg.models.mlp import MLP

ARCHITECTURES = {"mlp": MLPConfig, "cnn": CNNConfig, "module": ModuleConfig}


def build_model(
    arch: str, config: MLPConfig | CNNConfig | ModuleConfig, input_dim: int, output_dim: int,
    generator: torch.Generator | None = None
) -> nn.Module:
    """Construct a float64 model; with ``generator``, draw its initialization from it.

    The init is drawn in float64 so that float32 and float64 runs start from the same point.
    """
    if arch == "module":  # the user's factory draws its own init (seeded from the generator)
        return build_module(config, input_dim, output_dim, generator)
    if arch == "mlp":
        model: nn.Module = MLP(input_dim, list(config.hidden), output_dim)
    elif arch == "cnn":
        model = CNN1D(input_dim, config.channels, config.layers, config.kernel_size, output_dim)
    else:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {sorted(ARCHITECTURES)}")
    model = model.double()
    if generator is not None:
        reset_parameters(model, generator, config.init_scale)
    return model


__all__ = ["ARCHITECTURES", "CNN1D", "MLP", "ModuleConfig", "build_model", "reset_parameters"]
