"""What produced a result: versions, git SHA, device, threads, host (airbench-style provenance)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = ("implicitreg", "torch", "numpy", "scipy", "pandas", "pydantic", "scikit-learn", "mnist1d")


def git_sha() -> str | None:
    """The commit of the source tree the package runs from, if it is a git checkout."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def versions() -> dict[str, str | None]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def collect(device: torch.device, threads: int) -> dict:
    """Provenance of a run on ``device`` with ``threads`` intra-op threads."""
    return {
        "versions": versions(),
        "python": sys.version.split()[0],
        "git_sha": git_sha(),
        "device": str(device),
        "device_name": device_name(device),
        "threads": threads,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
