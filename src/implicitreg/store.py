"""SQLite store of a sweep: runs, metrics, study metadata. One file per output directory.

A store comes into existence whole (:meth:`Store.create`: schema and metadata are committed in a
temporary file that is then renamed into place), so a process killed while creating it leaves
either no ``results.sqlite`` or a complete one. After that, WAL mode and one transaction per
finished population: a sweep killed at any point (Ctrl-C, ``kill -9``, a full disk) keeps
everything committed before, and ``--resume`` reruns only the rest. Only the driver process
writes, and only one driver per directory (:class:`DirectoryLock`); workers return results.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sqlite3
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

FINISHED = ("done", "diverged")
STATUSES = ("running", "done", "failed", "diverged")

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    study TEXT NOT NULL,
    arm TEXT NOT NULL,
    seed INTEGER NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN {STATUSES}),
    final_step INTEGER,
    target_step INTEGER,
    error TEXT,
    provenance TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    step INTEGER NOT NULL,
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, step, name)
);
"""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


LOCK_FILENAME = ".implicitreg.lock"
TMP_PREFIX = ".results.sqlite.creating-"  # a store being created; a leftover is a dead attempt's


class DirectoryBusy(RuntimeError):
    """Another process holds the directory's lock: it is writing results there now."""


class DirectoryLock:
    """An advisory lock (``flock``) on ``DIRECTORY/.implicitreg.lock``, held while a driver writes.

    The kernel releases it when the process ends, however it ends (``kill -9`` included), so a
    stale lock file never blocks a later run. The file itself stays (deleting it would race with
    a process about to lock it).
    """

    def __init__(self, directory: str | Path):
        self.path = Path(directory) / LOCK_FILENAME
        self._fd: int | None = None

    def acquire(self) -> "DirectoryLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise DirectoryBusy(f"{self.path.parent}: another implicitreg process is writing results "
                                    "there now; wait for it to finish (then --resume) or choose another --out") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    @staticmethod
    def is_held(directory: str | Path) -> bool:
        """Whether some process holds the lock of ``directory`` now (creates nothing)."""
        path = Path(directory) / LOCK_FILENAME
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)  # also drops the shared lock just taken
        return False


class StorageFault(RuntimeError):
    """Writing results failed for a reason of the machine, not of the command (a full disk, a
    file-size limit, an I/O error). What was committed before stays stored."""


NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def classify_write_error(err: BaseException) -> str | None:
    """``"full"`` (no space, quota or file-size limit; I/O error), ``"not-writable"`` (read-only file
    system, permissions) or None (not a storage problem) for an error raised while writing."""
    if isinstance(err, sqlite3.OperationalError):
        text = str(err).lower()
        if "full" in text or "i/o error" in text:
            return "full"
        if "readonly" in text or "read-only" in text or "unable to open" in text or "permission" in text:
            return "not-writable"
        return None
    if isinstance(err, OSError):
        if err.errno in FULL or err.errno == errno.EIO:
            return "full"
        if err.errno in NOT_WRITABLE:
            return "not-writable"
    return None


def describe_write_error(err: BaseException) -> str:
    """The reason of a storage error in a few words (``strerror: filename`` for an ``OSError``)."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror + (f": {err.filename}" if err.filename else "")
    return str(err)


def bookkeeping_files(directory: str | Path) -> list[Path]:
    """Files of the directory that hold no results: the lock file and dead creation attempts."""
    directory = Path(directory)
    return [p for p in directory.iterdir() if p.name == LOCK_FILENAME or p.name.startswith(TMP_PREFIX)]


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Store:
    """The results of one output directory (``results.sqlite``)."""

    FILENAME = "results.sqlite"

    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = Path(path)
        if readonly:
            self.conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)
            return
        self.conn = sqlite3.connect(self.path, timeout=30.0)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(SCHEMA)

    @classmethod
    def create(cls, path: str | Path, **meta: Any) -> "Store":
        """A new store at ``path`` holding the schema and ``meta``, which appear together or not at all.

        Both are committed in one transaction to a temporary file of the same directory, which is
        then renamed to ``path`` (atomic): a process killed at any step leaves no ``path`` (at most
        a ``.results.sqlite.creating-*`` file, which holds no results) or a complete store.
        An existing ``path`` is replaced: the caller checked that it holds no results.
        """
        path = Path(path)
        tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}")
        try:
            tmp.unlink(missing_ok=True)
            conn = sqlite3.connect(tmp, timeout=30.0, isolation_level=None)
            try:
                conn.execute("BEGIN")
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                                 [(k, json.dumps(v)) for k, v in meta.items()])
                conn.execute("COMMIT")
                conn.execute("PRAGMA journal_mode=WAL")  # persistent: recorded in the file's header
            finally:
                conn.close()
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            for stale in ("-wal", "-shm"):  # a replaced store's journal must not be applied to this one
                path.with_name(path.name + stale).unlink(missing_ok=True)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_directory(path.parent)
        return cls(path)

    @classmethod
    def inspect(cls, path: str | Path) -> tuple[dict[str, Any], int]:
        """The metadata and number of runs of the store file ``path``, read without writing anything.

        ``(meta, 0)`` with an empty ``meta`` is a store whose creation never completed (an older
        version created the tables before the metadata). Raises ``sqlite3.DatabaseError`` if the
        file is not a SQLite database, ``ValueError`` if its metadata is not JSON.
        """
        conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True, timeout=30.0)
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            meta = ({k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}
                    if "meta" in tables else {})
            n_runs = conn.execute("SELECT count(*) FROM runs").fetchone()[0] if "runs" in tables else 0
        finally:
            conn.close()
        return meta, n_runs

    @classmethod
    def open_existing(cls, directory: str | Path) -> "Store":
        """Open a directory's store for reading; ``FileNotFoundError`` if it holds no results (or
        no readable ones: not a database, metadata that is not JSON, tables missing)."""
        path = Path(directory) / cls.FILENAME
        if not path.is_file():
            raise FileNotFoundError(f"{directory}: no {cls.FILENAME} here (expected the --out directory of a run)")
        try:
            store = cls(path, readonly=True)
        except sqlite3.Error as err:
            raise FileNotFoundError(f"{path}: cannot be opened ({err})") from None
        try:
            try:
                tables = {row[0] for row in store.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            except sqlite3.DatabaseError as err:
                raise FileNotFoundError(f"{path}: cannot be read as a results store ({err})") from None
            try:
                meta = store.meta() if "meta" in tables else {}
            except (ValueError, sqlite3.DatabaseError) as err:
                raise FileNotFoundError(f"{path}: its metadata is unreadable ({err})") from None
            if meta.get("study") is None:
                raise FileNotFoundError(f"{path}: holds no study results")
            missing = [t for t in ("runs", "metrics") if t not in tables]
            if missing:
                raise FileNotFoundError(f"{path}: the {' and '.join(missing)} table(s) are missing; "
                                        "this is not a complete results store")
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- metadata --------------------------------------------------------------------------------
    def set_meta(self, **values: Any) -> None:
        with self.conn:
            self.conn.executemany(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                [(k, json.dumps(v)) for k, v in values.items()],
            )

    def meta(self) -> dict[str, Any]:
        with closing(self.conn.execute("SELECT key, value FROM meta")) as cur:
            return {k: json.loads(v) for k, v in cur.fetchall()}

    # -- runs ------------------------------------------------------------------------------------
    def finished_ids(self) -> set[str]:
        """Runs that ended (``done`` or ``diverged``): what ``--resume`` skips."""
        with closing(self.conn.execute(f"SELECT run_id FROM runs WHERE status IN {FINISHED}")) as cur:
            return {row[0] for row in cur.fetchall()}

    def start(self, runs: Iterable[dict[str, Any]], provenance: dict[str, Any]) -> None:
        """Mark runs ``running`` (replacing any earlier attempt and its metrics), in one transaction.

        Each run dict has run_id, study, arm, seed and config (JSON-serializable).
        """
        started, prov = now(), json.dumps(provenance, sort_keys=True)
        rows = [(r["run_id"], r["study"], r["arm"], r["seed"], json.dumps(r["config"], sort_keys=True), prov, started)
                for r in runs]
        with self.conn:
            self.conn.executemany("DELETE FROM metrics WHERE run_id = ?", [(r[0],) for r in rows])
            self.conn.executemany(
                "INSERT OR REPLACE INTO runs (run_id, study, arm, seed, config, status, provenance, started_at)"
                " VALUES (?, ?, ?, ?, ?, 'running', ?, ?)",
                rows,
            )

    def finish(self, results: Iterable[Any]) -> None:
        """Write the metrics and final status of finished runs (``MemberResult``s), atomically."""
        ended = now()
        with self.conn:
            for r in results:
                if r.status not in FINISHED:
                    raise ValueError(f"run {r.run_id}: cannot finish with status {r.status!r}")
                self.conn.executemany(
                    "INSERT OR REPLACE INTO metrics (run_id, step, name, value) VALUES (?, ?, ?, ?)",
                    [(r.run_id, step, name, value) for step, name, value in r.metrics],
                )
                self.conn.execute(
                    "UPDATE runs SET status = ?, final_step = ?, target_step = ?, ended_at = ?, error = NULL"
                    " WHERE run_id = ?",
                    (r.status, r.final_step, r.target_step, ended, r.run_id),
                )

    def record(self, run_id: str, rows: Iterable[tuple[int, str, float]]) -> None:
        """Add metrics ``(step, name, value)`` of a run that is still ``running`` (a tracked training
        loop stores each measurement as it is taken, so that a killed loop keeps them), in one
        transaction; the run's ``final_step`` becomes its last recorded step."""
        rows = [(run_id, int(step), name, value) for step, name, value in rows]
        with self.conn:
            self.conn.executemany("INSERT OR REPLACE INTO metrics (run_id, step, name, value) VALUES (?, ?, ?, ?)",
                                  rows)
            self.conn.execute("UPDATE runs SET final_step = (SELECT max(step) FROM metrics WHERE run_id = ?)"
                              " WHERE run_id = ?", (run_id, run_id))

    def reopen(self, run_id: str, from_step: int | None = None) -> None:
        """Mark a stored run ``running`` again to continue it, keeping its metrics — except those at
        ``from_step`` and after, when given (a loop restarted from an earlier checkpoint replaces them)."""
        with self.conn:
            if from_step is not None:
                self.conn.execute("DELETE FROM metrics WHERE run_id = ? AND step >= ?", (run_id, int(from_step)))
            self.conn.execute("UPDATE runs SET status = 'running', error = NULL, ended_at = NULL,"
                              " final_step = (SELECT max(step) FROM metrics WHERE run_id = ?) WHERE run_id = ?",
                              (run_id, run_id))

    def fail(self, run_ids: Iterable[str], error: str) -> None:
        with self.conn:
            self.conn.executemany(
                "UPDATE runs SET status = 'failed', error = ?, ended_at = ? WHERE run_id = ?",
                [(error, now(), run_id) for run_id in run_ids],
            )

    # -- reading ---------------------------------------------------------------------------------
    def step_range(self, run_id: str) -> tuple[int | None, int | None]:
        """The first and last step with metrics of run ``run_id`` ((None, None): none stored)."""
        with closing(self.conn.execute("SELECT min(step), max(step) FROM metrics WHERE run_id = ?", (run_id,))) as cur:
            first, last = cur.fetchone()
        return first, last

    def runs(self) -> pd.DataFrame:
        """One row per run; ``config`` and ``provenance`` parsed from JSON."""
        frame = pd.read_sql_query("SELECT * FROM runs ORDER BY rowid", self.conn)
        for column in ("config", "provenance"):
            frame[column] = frame[column].map(json.loads)
        return frame

    def metrics(self) -> pd.DataFrame:
        """Long format: run_id, step, name, value (NaN is stored as NULL and read back as NaN; ±inf stays)."""
        frame = pd.read_sql_query("SELECT run_id, step, name, value FROM metrics ORDER BY run_id, step, name",
                                  self.conn)
        frame["value"] = frame["value"].astype(float)
        return frame
