"""A user's own problem from an ``.npz`` file (``implicitreg run STUDY --data FILE.npz``).

Every check names the file, the array, what was expected and what arrived, as a ``ValueError``
(the CLI turns it into one line and exit code 2).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np


def read_npz(path: str | Path, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The named arrays of ``path``; a missing file or array, or one that is not numeric and
    finite, raises ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--data: {path} does not exist or is not a file (expected an .npz file)")
    if not zipfile.is_zipfile(path):  # np.load would read other files as .npy or pickles
        raise ValueError(f"--data {path}: not a readable .npz file (expected a zip archive written by numpy.savez)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            present = set(archive.files)
            missing = [name for name in required if name not in present]
            if missing:
                raise ValueError(f"--data {path}: missing array(s) {', '.join(missing)}; expected "
                                 f"{', '.join(required)}, found {', '.join(sorted(present)) or 'none'}")
            arrays = {name: archive[name] for name in (*required, *optional) if name in present}
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ValueError(f"--data {path}: not a readable .npz file ({err})") from None
    for name, array in arrays.items():
        if array.dtype.kind not in "biuf":
            raise ValueError(f"--data {path}: array {name} must be numeric, got dtype {array.dtype}")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"--data {path}: array {name} holds NaN or inf")
    return arrays


def read_regression(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``X`` (n×d) and ``y`` (n) as float64."""
    arrays = read_npz(path, ("X", "y"))
    x, y = arrays["X"].astype(np.float64), arrays["y"].astype(np.float64)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"--data {path}: X must be a 2-D array (n×d), got shape {x.shape}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"--data {path}: y must have shape ({x.shape[0]},) to match X {x.shape}, got {y.shape}")
    return x, y


def read_classification(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``X`` (n×d) and binary labels ``y`` given as ±1 or 0/1, returned as ±1 float64."""
    x, y = read_regression(path)
    values = set(np.unique(y).tolist())
    if values <= {0.0, 1.0}:
        y = 2.0 * y - 1.0
    elif not values <= {-1.0, 1.0}:
        shown = sorted(values)[:5]
        raise ValueError(f"--data {path}: y must hold binary labels as ±1 or 0/1, got values {shown}")
    if len(set(np.unique(y).tolist())) < 2:
        raise ValueError(f"--data {path}: y holds a single class; a classifier needs both labels")
    return x, y


def read_matrix_completion(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``observed`` (n1×n2, zeros where unobserved), boolean ``mask`` (n1×n2), optional ``truth``."""
    arrays = read_npz(path, ("observed", "mask"), ("truth",))
    observed, mask = arrays["observed"].astype(np.float64), arrays["mask"]
    if observed.ndim != 2:
        raise ValueError(f"--data {path}: observed must be a 2-D matrix (n1×n2), got shape {observed.shape}")
    if mask.shape != observed.shape:
        raise ValueError(f"--data {path}: mask must have the shape of observed {observed.shape}, got {mask.shape}")
    if mask.dtype != np.bool_ and not set(np.unique(mask).tolist()) <= {0, 1}:
        raise ValueError(f"--data {path}: mask must be boolean (or 0/1), got values {np.unique(mask)[:5].tolist()}")
    mask = mask.astype(bool)
    if not mask.any():
        raise ValueError(f"--data {path}: mask observes no entry")
    if np.any(observed[~mask] != 0):
        raise ValueError(f"--data {path}: observed must be zero where mask is False")
    truth = arrays.get("truth")
    if truth is not None:
        truth = truth.astype(np.float64)
        if truth.shape != observed.shape:
            raise ValueError(f"--data {path}: truth must have the shape of observed {observed.shape}, "
                             f"got {truth.shape}")
    return observed, mask, truth
