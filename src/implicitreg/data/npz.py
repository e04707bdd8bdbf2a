"""A user's own problem from an ``.npz`` file (``implicitreg run STUDY --data FILE.npz``).

Every check names the file, the array, what was expected and what arrived, as a ``ValueError``
(the CLI turns it into one line and exit code 2). The file is untrusted: before any array is
allocated, its zip directory and ``.npy`` headers are read and refused when

- a member is not an ``.npy`` array, or its header is not numpy's (or holds pickled objects);
- the arrays would take more than :data:`MAX_NPZ_BYTES` (2 GiB) once inflated (a zip bomb), or a
  header claims more data than its member holds;
- the shapes are wrong for the problem, or the exact solve of a problem that size would need more
  than :func:`solve_memory_limit` (half of this machine's memory; see :func:`solve_bytes`).
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

MAX_NPZ_BYTES = 2 << 30  # the arrays of one --data file, inflated
# What a hostile archive can make zipfile or numpy raise while reading a member.
_READ_ERRORS = (zipfile.BadZipFile, OSError, EOFError, zlib.error, ValueError, NotImplementedError, RuntimeError)

Shapes = dict[str, tuple[int, ...]]


def _size(nbytes: float) -> str:
    """``nbytes`` in binary units, three significant digits."""
    for power, unit in ((5, "PiB"), (4, "TiB"), (3, "GiB"), (2, "MiB"), (1, "KiB"), (0, "bytes")):
        if nbytes >= 1024**power or power == 0:
            return f"{nbytes / 1024**power:.3g} {unit}"


def solve_bytes(rows: int, cols: int) -> int:
    """Rough peak memory (bytes) of the exact references on a ``rows × cols`` problem, in float64.

    The largest objects they form are a square matrix of side ``max(rows, cols)`` (min-norm's
    projector ``X⁺X`` is d×d, the Q_α dual's Hessian n×n) and a few copies of ``X`` (the SVD
    factors of ``pinv``, the LP's constraint matrix ``[X, −X]``).
    """
    return 8 * (max(rows, cols) ** 2 + 4 * rows * cols)


def solve_memory_limit() -> int:
    """Half of this machine's physical memory (8 GiB where that cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (AttributeError, ValueError, OSError):  # not POSIX
        return 8 << 30


def check_solve_memory(path: str | Path, what: str, needed: int) -> None:
    """Refuse a problem whose solve needs more than :func:`solve_memory_limit` bytes.

    Args:
        path: the ``--data`` file, for the message. what: the problem, e.g. ``"X of shape (30, 10000000)"``.
        needed: bytes the solve would need (e.g. :func:`solve_bytes`).
    """
    limit = solve_memory_limit()
    if needed > limit:
        raise ValueError(f"--data {path}: {what} is too large to solve exactly: it needs about {_size(needed)} of "
                         f"memory, more than the limit of {_size(limit)} (half of this machine's memory)")


def _member_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> tuple[tuple[int, ...], int]:
    """The shape and data size (bytes) an ``.npy`` member declares, checked against the member's size."""
    name = info.filename[:-4]
    try:
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"unsupported .npy format version {version}")
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(member)
            header_bytes = member.tell()
    except _READ_ERRORS as err:
        raise ValueError(f"--data {path}: array {name} is not a readable .npy array ({err})") from None
    if dtype.kind not in "biuf":  # also refuses object arrays, which only a pickle could hold
        raise ValueError(f"--data {path}: array {name} must be numeric, got dtype {dtype}")
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > MAX_NPZ_BYTES:
        raise ValueError(f"--data {path}: array {name} claims shape {shape} ({_size(nbytes)}), more than the "
                         f"{_size(MAX_NPZ_BYTES)} limit on a --data file")
    if info.file_size != header_bytes + nbytes:
        raise ValueError(f"--data {path}: array {name} claims shape {shape} of {dtype} ({nbytes} bytes) but its "
                         f"member holds {info.file_size - header_bytes} bytes of data (truncated or not numpy's)")
    return tuple(shape), nbytes


def read_npz(path: str | Path, required: tuple[str, ...], optional: tuple[str, ...] = (),
             check_shapes: Callable[[Shapes], None] | None = None) -> dict[str, np.ndarray]:
    """The named arrays of ``path``; a missing or malformed file or array, one that is not numeric
    and finite, or one larger than the limits raises ``ValueError``.

    ``check_shapes`` receives the declared shapes of the arrays found, before any is read, and
    raises ``ValueError`` for shapes the problem cannot use.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--data: {path} does not exist or is not a file (expected an .npz file)")
    if not zipfile.is_zipfile(path):  # np.load would read other files as .npy or pickles
        raise ValueError(f"--data {path}: not a readable .npz file (expected a zip archive written by numpy.savez)")
    try:
        archive = zipfile.ZipFile(path)
    except _READ_ERRORS as err:
        raise ValueError(f"--data {path}: not a readable .npz file ({err})") from None
    with archive:
        members = {info.filename: info for info in archive.infolist()}
        strange = [name for name in members if not name.endswith(".npy")]
        if strange:
            raise ValueError(f"--data {path}: member {strange[0]} is not a .npy array (an .npz holds only .npy "
                             "members, as numpy.savez writes them)")
        present = {name[:-4] for name in members}
        missing = [name for name in required if name not in present]
        if missing:
            raise ValueError(f"--data {path}: missing array(s) {', '.join(missing)}; expected "
                             f"{', '.join(required)}, found {', '.join(sorted(present)) or 'none'}")
        wanted = [name for name in (*required, *optional) if name in present]
        headers = {name: _member_header(archive, members[f"{name}.npy"], path) for name in wanted}
        total = sum(nbytes for _, nbytes in headers.values())
        if total > MAX_NPZ_BYTES:
            raise ValueError(f"--data {path}: the arrays inflate to {_size(total)}, more than the "
                             f"{_size(MAX_NPZ_BYTES)} limit on a --data file")
        if check_shapes is not None:
            check_shapes({name: shape for name, (shape, _) in headers.items()})
        arrays = {}
        for name in wanted:
            try:
                with archive.open(members[f"{name}.npy"]) as member:
                    arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
            except _READ_ERRORS as err:
                raise ValueError(f"--data {path}: array {name} could not be read ({err})") from None
    for name, array in arrays.items():
        if not np.all(np.isfinite(array)):
            raise ValueError(f"--data {path}: array {name} holds NaN or inf")
    return arrays


def _regression_shapes(path: Path) -> Callable[[Shapes], None]:
    def check(shapes: Shapes) -> None:
        x, y = shapes["X"], shapes["y"]
        if len(x) != 2 or x[0] < 1 or x[1] < 1:
            raise ValueError(f"--data {path}: X must be a 2-D array (n×d), got shape {x}")
        if y != (x[0],):
            raise ValueError(f"--data {path}: y must have shape ({x[0]},) to match X {x}, got {y}")
        check_solve_memory(path, f"X of shape {x}", solve_bytes(*x))
    return check


def read_regression(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``X`` (n×d) and ``y`` (n) as float64."""
    arrays = read_npz(path, ("X", "y"), check_shapes=_regression_shapes(Path(path)))
    return arrays["X"].astype(np.float64), arrays["y"].astype(np.float64)


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


def _completion_shapes(path: Path) -> Callable[[Shapes], None]:
    def check(shapes: Shapes) -> None:
        observed = shapes["observed"]
        if len(observed) != 2:
            raise ValueError(f"--data {path}: observed must be a 2-D matrix (n1×n2), got shape {observed}")
        if shapes["mask"] != observed:
            raise ValueError(f"--data {path}: mask must have the shape of observed {observed}, got {shapes['mask']}")
        if "truth" in shapes and shapes["truth"] != observed:
            raise ValueError(f"--data {path}: truth must have the shape of observed {observed}, got {shapes['truth']}")
        # the min-nuclear-norm reference is a semidefinite program over an (n1+n2)-square block
        side = observed[0] + observed[1]
        check_solve_memory(path, f"observed of shape {observed}", solve_bytes(side, side))
    return check


def read_matrix_completion(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``observed`` (n1×n2, zeros where unobserved), boolean ``mask`` (n1×n2), optional ``truth``."""
    arrays = read_npz(path, ("observed", "mask"), ("truth",), check_shapes=_completion_shapes(Path(path)))
    observed, mask = arrays["observed"].astype(np.float64), arrays["mask"]
    if mask.dtype != np.bool_ and not set(np.unique(mask).tolist()) <= {0, 1}:
        raise ValueError(f"--data {path}: mask must be boolean (or 0/1), got values {np.unique(mask)[:5].tolist()}")
    mask = mask.astype(bool)
    if not mask.any():
        raise ValueError(f"--data {path}: mask observes no entry")
    if np.any(observed[~mask] != 0):
        raise ValueError(f"--data {path}: observed must be zero where mask is False")
    truth = arrays.get("truth")
    return observed, mask, None if truth is None else truth.astype(np.float64)
