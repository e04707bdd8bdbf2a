"""SQLite store of a sweep: runs, metrics, study metadata. One file per output directory.

WAL mode and one transaction per finished population: a sweep killed at any point (Ctrl-C,
``kill -9``) keeps everything committed before, and ``--resume`` reruns only the rest. Only the
driver process writes; workers return results.
"""

from __future__ import annotations

import json
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
    def open_existing(cls, directory: str | Path) -> "Store":
        """Open a directory's store for reading; ``FileNotFoundError`` if it holds no results."""
        path = Path(directory) / cls.FILENAME
        if not path.is_file():
            raise FileNotFoundError(f"{directory}: no {cls.FILENAME} here (expected the --out directory of a run)")
        store = cls(path, readonly=True)
        try:
            meta = store.meta()
        except sqlite3.DatabaseError:
            meta = {}
        if meta.get("study") is None:
            store.close()
            raise FileNotFoundError(f"{path}: holds no study results")
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

    def fail(self, run_ids: Iterable[str], error: str) -> None:
        with self.conn:
            self.conn.executemany(
                "UPDATE runs SET status = 'failed', error = ?, ended_at = ? WHERE run_id = ?",
                [(error, now(), run_id) for run_id in run_ids],
            )

    # -- reading ---------------------------------------------------------------------------------
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
