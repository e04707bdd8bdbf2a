"""The SQLite store: runs and metrics round-trip, statuses, resume bookkeeping, WAL, errors."""

import json
import math
import sqlite3

import pytest

from implicitreg.store import Store
from implicitreg.train import MemberResult

PROVENANCE = {"threads": 1, "versions": {"torch": "x"}}


def record(run_id, arm="none", seed=0):
    return {"run_id": run_id, "study": "s", "arm": arm, "seed": seed, "config": {"lr": 0.1, "member": run_id}}


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / Store.FILENAME) as s:
        yield s


def test_start_then_finish_round_trip(store):
    store.start([record("a", seed=0), record("b", arm="wd", seed=1)], PROVENANCE)
    runs = store.runs()
    assert list(runs["run_id"]) == ["a", "b"] and set(runs["status"]) == {"running"}
    assert runs.loc[0, "config"] == {"lr": 0.1, "member": "a"}  # parsed back from JSON
    assert runs.loc[1, "provenance"] == PROVENANCE
    assert runs["ended_at"].isna().all() and store.finished_ids() == set()

    store.finish([
        MemberResult("a", "done", 20, 10, [(10, "train_acc", 0.5), (20, "train_acc", 1.0), (20, "l2_norm", 3.25)]),
        MemberResult("b", "diverged", 7, None, [(5, "train_acc", 0.25)]),
    ])
    runs = store.runs().set_index("run_id")
    assert (runs.loc["a", "status"], runs.loc["a", "final_step"], runs.loc["a", "target_step"]) == ("done", 20, 10)
    assert runs.loc["b", "status"] == "diverged" and runs.loc["b", "final_step"] == 7
    assert math.isnan(runs.loc["b", "target_step"])
    assert runs["ended_at"].notna().all()
    metrics = store.metrics()
    assert metrics.to_dict("records") == [
        {"run_id": "a", "step": 10, "name": "train_acc", "value": 0.5},
        {"run_id": "a", "step": 20, "name": "l2_norm", "value": 3.25},
        {"run_id": "a", "step": 20, "name": "train_acc", "value": 1.0},
        {"run_id": "b", "step": 5, "name": "train_acc", "value": 0.25},
    ]
    assert store.finished_ids() == {"a", "b"}  # diverged counts as finished: resume does not retry it


def test_fail_records_error_and_is_not_finished(store):
    store.start([record("a"), record("b")], PROVENANCE)
    store.fail(["a"], "RuntimeError: boom")
    runs = store.runs().set_index("run_id")
    assert runs.loc["a", "status"] == "failed" and runs.loc["a", "error"] == "RuntimeError: boom"
    assert runs.loc["b", "status"] == "running"
    assert store.finished_ids() == set()


def test_restart_replaces_the_earlier_attempt_and_its_metrics(store):
    store.start([record("a")], PROVENANCE)
    store.finish([MemberResult("a", "done", 10, None, [(10, "train_acc", 0.5), (10, "l2_norm", 1.0)])])
    store.start([record("a")], {"threads": 2})
    runs = store.runs()
    assert len(runs) == 1 and runs.loc[0, "status"] == "running" and runs.loc[0, "provenance"] == {"threads": 2}
    assert store.metrics().empty  # a rerun does not mix with the old attempt's metrics
    store.finish([MemberResult("a", "done", 10, None, [(10, "train_acc", 0.75)])])
    assert store.metrics()["value"].tolist() == [0.75]


def test_finish_with_unfinished_status_is_rejected_atomically(store):
    store.start([record("a"), record("b")], PROVENANCE)
    with pytest.raises(ValueError, match="running"):
        store.finish([MemberResult("a", "done", 1, None, [(1, "x", 1.0)]),
                      MemberResult("b", "running", 1, None, [])])
    # one transaction: a's metrics and status were rolled back with b's error
    assert store.metrics().empty and set(store.runs()["status"]) == {"running"}


def test_nan_is_stored_as_null_and_read_back_as_nan(store):
    store.start([record("a")], PROVENANCE)
    store.finish([MemberResult("a", "done", 1, None, [(1, "train_loss", float("nan")), (1, "train_acc", 0.5)])])
    raw = store.conn.execute("SELECT value IS NULL FROM metrics WHERE name = 'train_loss'").fetchone()
    assert raw == (1,)
    values = store.metrics().set_index("name")["value"]
    assert math.isnan(values["train_loss"]) and values["train_acc"] == 0.5
    assert store.metrics()["value"].dtype == float


def test_status_check_constraint_rejects_unknown_status(store):
    store.start([record("a")], PROVENANCE)
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        with store.conn:
            store.conn.execute("UPDATE runs SET status = 'finished' WHERE run_id = 'a'")
    assert store.runs().loc[0, "status"] == "running"


def test_wal_journal_mode_is_on(store, tmp_path):
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # persistent: a fresh connection to the file sees WAL too
    other = sqlite3.connect(tmp_path / Store.FILENAME)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        other.close()


def test_committed_results_are_visible_to_another_connection_at_once(store, tmp_path):
    store.start([record("a")], PROVENANCE)
    store.finish([MemberResult("a", "done", 1, None, [(1, "train_acc", 1.0)])])
    reader = sqlite3.connect(f"file:{tmp_path / Store.FILENAME}?mode=ro", uri=True)
    try:
        assert reader.execute("SELECT status FROM runs").fetchall() == [("done",)]
    finally:
        reader.close()


def test_meta_round_trip(store):
    store.set_meta(study="explicit-vs-implicit", config={"seeds": 2, "models": ["mlp"]}, quick=True)
    store.set_meta(quick=False)
    assert store.meta() == {"study": "explicit-vs-implicit", "config": {"seeds": 2, "models": ["mlp"]},
                            "quick": False}


def test_open_existing_on_empty_dir_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.sqlite"):
        Store.open_existing(tmp_path)
    assert list(tmp_path.iterdir()) == []  # nothing created while looking


def test_open_existing_on_missing_dir_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        Store.open_existing(tmp_path / "nope")


def test_open_existing_without_study_metadata_raises(tmp_path):
    Store(tmp_path / Store.FILENAME).close()
    with pytest.raises(FileNotFoundError, match="no study results"):
        Store.open_existing(tmp_path)


def test_open_existing_reads_what_was_written(tmp_path):
    with Store(tmp_path / Store.FILENAME) as s:
        s.set_meta(study="s")
        s.start([record("a")], PROVENANCE)
    with Store.open_existing(tmp_path) as s:
        assert list(s.runs()["run_id"]) == ["a"]


def test_a_sweep_whose_runs_all_failed_is_analyzed_as_inconclusive(tmp_path):
    from implicitreg.runner import write_outputs
    from implicitreg.studies.explicit_vs_implicit import STUDY

    config = STUDY.Config.model_validate({"models": ["mlp"], "seeds": 1})
    with Store(tmp_path / Store.FILENAME) as s:
        s.set_meta(study=STUDY.name, config=json.loads(config.model_dump_json()), quick=True, engine="population")
        ids = [f"mlp/{arm}/seed0" for arm in ("none", "weight_decay", "dropout", "weight_decay+dropout",
                                              "random_labels")]
        s.start([{**record(i), "study": STUDY.name, "arm": i.split("/")[1],
                  "config": {"member": {"tags": {"model": "mlp"}}}} for i in ids], PROVENANCE)
        s.fail(ids, "ValueError: data.n_train: digits has 1437 points besides the test set, got 5000")
    result = write_outputs(tmp_path)
    assert result.verdict == "inconclusive"
    runs = result.summary["runs"]
    assert runs.get("done", 0) == 0 and runs.get("failed", 0) >= 3  # (these ids are not all planned ones)


# -- creation is atomic: schema and metadata together ----------------------------------------------

def test_create_commits_schema_and_meta_together_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / Store.FILENAME
    with Store.create(path, study="s", config={"seeds": 2}, quick=True) as s:
        assert s.meta() == {"study": "s", "config": {"seeds": 2}, "quick": True}
        assert s.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        s.start([record("a")], PROVENANCE)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(Store.FILENAME)) == []
    assert Store.inspect(path) == ({"study": "s", "config": {"seeds": 2}, "quick": True}, 1)


def test_create_that_fails_leaves_no_store_and_no_temporary_file(tmp_path, monkeypatch):
    """A failure after the schema is written (here: the metadata's insert) leaves nothing behind."""
    path = tmp_path / Store.FILENAME

    class Unserializable:
        pass

    with pytest.raises(TypeError):
        Store.create(path, study="s", config=Unserializable())
    assert list(tmp_path.iterdir()) == []


def test_create_replaces_a_store_whose_creation_never_completed_and_its_journal(tmp_path):
    """An older version created the tables before the metadata; such a file holds nothing, and the
    new store must not inherit its write-ahead log."""
    path = tmp_path / Store.FILENAME
    Store(path).close()  # tables, no metadata: a creation killed in between
    assert Store.inspect(path) == ({}, 0)
    (tmp_path / (Store.FILENAME + "-wal")).write_bytes(b"stale")
    with Store.create(path, study="s") as s:
        assert s.meta() == {"study": "s"}
    wal = tmp_path / (Store.FILENAME + "-wal")
    assert not wal.exists() or not wal.read_bytes().startswith(b"stale")
    assert Store.inspect(path) == ({"study": "s"}, 0)


def test_inspect_refuses_a_file_that_is_not_a_database(tmp_path):
    path = tmp_path / Store.FILENAME
    path.write_text("not a database " * 100)
    with pytest.raises(sqlite3.DatabaseError):
        Store.inspect(path)
    assert path.read_text() == "not a database " * 100


@pytest.mark.parametrize("damage", ["not-a-database", "meta-not-json", "no-metrics-table", "no-meta-table"])
def test_open_existing_names_what_is_wrong_with_a_damaged_store(tmp_path, damage):
    path = tmp_path / Store.FILENAME
    if damage == "not-a-database":
        path.write_bytes(b"\x00garbage" * 512)
    else:
        with Store.create(path, study="s") as s:
            if damage == "meta-not-json":
                with s.conn:
                    s.conn.execute("UPDATE meta SET value = '{not json' WHERE key = 'study'")
            elif damage == "no-metrics-table":
                s.conn.execute("DROP TABLE metrics")
            else:
                s.conn.execute("DROP TABLE meta")
    with pytest.raises(FileNotFoundError) as caught:
        Store.open_existing(tmp_path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("error, kind", [
    (sqlite3.OperationalError("database or disk is full"), "full"),
    (sqlite3.OperationalError("disk I/O error"), "full"),
    (OSError(28, "No space left on device"), "full"),
    (OSError(27, "File too large"), "full"),
    (sqlite3.OperationalError("attempt to write a readonly database"), "not-writable"),
    (sqlite3.OperationalError("unable to open database file"), "not-writable"),
    (OSError(30, "Read-only file system"), "not-writable"),
    (PermissionError(13, "Permission denied"), "not-writable"),
    (sqlite3.OperationalError("no such table: runs"), None),
    (ValueError("x"), None),
])
def test_write_errors_are_classified(error, kind):
    from implicitreg.store import classify_write_error

    assert classify_write_error(error) == kind
