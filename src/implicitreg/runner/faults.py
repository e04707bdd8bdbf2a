"""Creating a results directory, undoing a creation that failed, and storage failures told as the
user's mistake (:class:`ConfigError`) or the machine's (:class:`StorageFault`)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from implicitreg.config import ConfigError
from implicitreg.store import LOCK_FILENAME, StorageFault, bookkeeping_files, classify_write_error, describe_write_error


def make_directories(out: Path) -> list[Path]:
    """``mkdir -p out``; returns the directories it created, outermost first."""
    missing = [p for p in [out, *out.parents] if not p.exists()][::-1]
    for path in missing:
        path.mkdir(exist_ok=True)
    return missing


def remove_created(out: Path, created: list[Path], locked: bool) -> None:
    """Undo a creation that failed before any result was stored: a temporary store, the lock file
    if this process made the directory and held its lock, then the directories it made (each only
    if empty: nothing of anyone else's is removed, another process's lock file least of all)."""
    if locked and out.is_dir():
        for path in bookkeeping_files(out):
            if path.name != LOCK_FILENAME or created:
                path.unlink(missing_ok=True)
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:
            break


def write_fault(err: BaseException, out: Path, stored: bool) -> BaseException | None:
    """The user-facing error for a storage failure (None: not one). Before anything was stored, an
    unwritable ``--out`` is the command's mistake (:class:`ConfigError`); a full disk is the
    machine's (:class:`StorageFault`)."""
    kind = classify_write_error(err)
    reason = describe_write_error(err)
    if not stored and isinstance(err, (OSError, sqlite3.Error)):
        if kind != "full":  # read-only, no permission, a path the system refuses to create
            return ConfigError(f"--out: cannot write to {out} ({reason})")
        return StorageFault(f"cannot create the results store in {out} ({reason}); nothing was stored: "
                            "free some space and run the same command again")
    if kind is None:
        return None
    return StorageFault(f"writing to {out} failed ({reason}); what was stored before is kept: free some space, "
                        f"then continue with --resume --out {out}")
