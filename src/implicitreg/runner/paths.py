"""Where a run's results go: the ``--out`` directory's checks and the state of a store already there.

Everything here reads; nothing writes.
"""

from __future__ import annotations

import json
import os
import sqlite3
from datetime import datetime
from pathlib import Path
from typing import Any

from implicitreg.config import ConfigError
from implicitreg.store import Store, bookkeeping_files
from implicitreg.studies.base import Study


NAME_MAX, PATH_MAX = 255, 4096  # bytes, where the file system does not say (Linux's limits)


def default_out(study: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / f"{study}-{stamp}"
    suffix = 1
    while path.exists():
        path = Path("runs") / f"{study}-{stamp}-{suffix}"
        suffix += 1
    return path


def check_out_path(out: Path, flag: str = "--out", parent_must_exist: bool = False) -> Path:
    """Check that ``out`` can be a results directory: names within the file system's limits, not a
    dangling link, its nearest existing ancestor a writable directory (its parent itself, if
    ``parent_must_exist``). Returns that ancestor."""
    if len(os.fsencode(str(out))) >= PATH_MAX:
        raise ConfigError(f"{flag}: the path is {len(os.fsencode(str(out)))} bytes long; at most {PATH_MAX - 1} "
                          "are allowed")
    for part in out.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise ConfigError(f"{flag}: the name {part[:24]}… is {len(os.fsencode(part))} bytes long; a file "
                              f"name may have at most {NAME_MAX}")
    if out.is_symlink() and not out.exists():
        raise ConfigError(f"{flag}: {out} is a symbolic link to {os.readlink(out)}, which does not exist")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        what = "exists and is not a directory" if existing == out else "is a file, not a directory"
        raise ConfigError(f"{flag}: {existing} {what}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag}: {existing} is not writable (a read-only file system, or no permission)")
    if parent_must_exist and not out.parent.exists():
        raise ConfigError(f"{flag}: the parent directory {out.parent} does not exist")
    return existing


def store_state(out: Path, study: Study, config: Any, resume: bool) -> bool:
    """Whether ``out`` holds results of this study and config to continue (True) or nothing (False);
    :class:`ConfigError` when it cannot take this run. Reads without writing."""
    stored = out / Store.FILENAME
    journals = {Store.FILENAME, Store.FILENAME + "-wal", Store.FILENAME + "-shm"}
    if stored.is_symlink() or stored.exists():
        try:
            meta, n_runs = Store.inspect(stored)
        except (sqlite3.Error, ValueError, OSError) as err:
            raise ConfigError(f"--out: {stored} cannot be read as a results store ({err}); choose another --out"
                              ) from None
        if meta.get("study") is not None or n_runs:
            if not resume:
                raise ConfigError(f"--out: {out} already holds results; pass --resume to continue them or choose "
                                  "another --out")
            if meta.get("study") != study.name or meta.get("config") != json.loads(config.model_dump_json()):
                raise ConfigError(f"--resume: {out} holds a different study or configuration "
                                  f"({meta.get('study')}); rerun with the same options or choose another --out")
            return True
        # a store whose creation never completed (no metadata, no runs) holds nothing: replaced
    if out.is_dir():
        extra = set(p.name for p in out.iterdir()) - journals - {p.name for p in bookkeeping_files(out)}
        if extra:
            raise ConfigError(f"--out: {out} exists and is not empty (and holds no results to resume)")
    return False
