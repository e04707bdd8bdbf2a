"""A solved study's arrays (``solutions.npz``): written once its solve finished, read by its analysis
and figures."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from implicitreg.studies.base import Study, is_solved


SOLUTIONS = "solutions.npz"


def write_solutions(directory: Path, arrays: dict[str, np.ndarray]) -> None:
    """``solutions.npz``, replaced atomically."""
    tmp = directory / (SOLUTIONS + ".tmp")
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(tmp, directory / SOLUTIONS)


def read_solutions(directory: Path) -> dict[str, np.ndarray]:
    """The arrays of ``solutions.npz`` (empty if the study has not finished solving)."""
    path = Path(directory) / SOLUTIONS
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def solved_args(study: Study, directory: Path) -> tuple[dict[str, np.ndarray], ...]:
    """A solved study's analysis and figures also receive its solutions."""
    return (read_solutions(directory),) if is_solved(study) else ()
