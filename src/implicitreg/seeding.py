"""Independent random streams per (seed, purpose), so that arms of a study stay matched.

A member's initialization, data order, label corruption and dropout masks each come from a
generator keyed by its seed and the purpose alone: two arms with the same seed start from the
same weights and see the same batches, whatever else differs between them.
"""

from __future__ import annotations

import hashlib

import torch


def stream_seed(seed: int, purpose: str) -> int:
    """A 63-bit integer derived from ``seed`` and ``purpose`` (stable across runs and machines)."""
    digest = hashlib.sha256(f"implicitreg:{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(seed: int, purpose: str) -> torch.Generator:
    """A CPU generator for one stream (CPU so that CUDA and CPU runs draw the same numbers)."""
    return torch.Generator().manual_seed(stream_seed(seed, purpose))
