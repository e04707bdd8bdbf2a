"""Float32 matmul precision on CUDA: IEEE float32 unless a run opts into TF32 (``train.matmul_precision``).

TF32 rounds the inputs of float32 matrix products and convolutions to a 10-bit mantissa on Ampere
and later GPUs (about 1e-3 relative per product instead of 6e-8) for up to 8× the throughput. That
is a numerical change a study's verdict must not inherit unannounced, and PyTorch's own defaults
differ between matmuls (IEEE) and cuDNN convolutions (TF32): here both are IEEE unless asked for.
CPU arithmetic is unaffected either way.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Literal

import torch

MatmulPrecision = Literal["highest", "tf32"]


def _backends() -> list[object]:
    """The PyTorch settings objects with an ``fp32_precision`` (PyTorch ≥ 2.9): CUDA matmuls, cuDNN convolutions."""
    found = [torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)]
    return [b for b in found if b is not None and hasattr(b, "fp32_precision")]


@contextmanager
def matmul_precision(precision: MatmulPrecision) -> Iterator[None]:
    """Within the block, CUDA float32 matmuls and convolutions are IEEE (``"highest"``) or TF32
    (``"tf32"``); the previous settings come back afterwards, also after an exception."""
    if precision not in ("highest", "tf32"):
        raise ValueError(f"train.matmul_precision: expected highest or tf32, got {precision!r}")
    value = "tf32" if precision == "tf32" else "ieee"
    backends = _backends()
    if backends:  # the per-backend API; mixing it with the legacy flags is an error in PyTorch
        saved = [b.fp32_precision for b in backends]
        try:
            for b in backends:
                b.fp32_precision = value
            yield
        finally:
            for b, old in zip(backends, saved):
                b.fp32_precision = old
        return
    flags = (torch.backends.cuda.matmul, torch.backends.cudnn)  # PyTorch < 2.9: allow_tf32
    saved_flags = [f.allow_tf32 for f in flags]
    try:
        for f in flags:
            f.allow_tf32 = precision == "tf32"
        yield
    finally:
        for f, old in zip(flags, saved_flags):
            f.allow_tf32 = old
