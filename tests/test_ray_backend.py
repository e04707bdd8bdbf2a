"""The Ray backend on a local cluster of two nodes on one machine (one CPU each).

(a) A study (width, three populations), a solved study (min-norm) and a small sweep give metrics
    equal bitwise to the local backend's for the same plan, threads and device; the populations
    ran on both nodes; the tasks fed the driver's progress.
(b) A worker process killed (SIGKILL, by its pid) while it trains a population: Ray retries the
    task, and every run ends exactly once, done, with the metrics of an uninterrupted run. With
    ``retries=0`` the chunk is recorded failed with its error, the others finish, and ``--resume``
    reruns that chunk alone.
(c) The driver SIGKILLed mid-run (the real CLI, ``--ray-address``): resuming ends with every run
    done once and the metrics of an uninterrupted run.

The cluster is started with ``ray start`` in a temporary directory (its session files, sockets and
logs) with the dashboard off, and stopped at the end by the pids of its own processes (``ray stop``
would stop every Ray cluster of the machine). Tests that need Ray skip where it is not installed;
the one that checks the message for a missing Ray runs everywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import assert_user_error, invoke_cli, read_store, start_cli
from implicitreg.config import ConfigError, build_config, parse_sets
from implicitreg.runner import RunOptions, execute, prepare
from implicitreg.studies.width import STUDY as WIDTH

needs_ray = pytest.mark.skipif(find_spec("ray") is None, reason="Ray is not installed (pip install -e \".[ray]\")")

# Three populations (one per width) of two seeds, 600 steps each (~1-2 s a population here), no
# early stop: on two single-CPU nodes two populations train at once and the third after them, so a
# kill as soon as one run is done lands while another trains. --threads 1: a task per node's CPU.
SETS = ["widths=[8,16,32]", "seeds=2", "data.n_train=200", "data.n_test=100", "train.max_steps=600",
        "train.eval_every=200", "train.track_every=300", "train.target_train_acc=null"]
CLI = ["run", "width", "--threads", "1", *[arg for s in SETS for arg in ("--set", s)]]
RUN_COLUMNS = ["run_id", "study", "arm", "seed", "config", "status", "final_step", "target_step"]


def options(out: Path, **extra) -> RunOptions:
    return RunOptions("width", overrides=parse_sets(SETS), threads=1, out=out, **extra)


def planned_ids() -> set[str]:
    config = build_config(WIDTH.Config, WIDTH.defaults(False), parse_sets(SETS))
    return {m.run_id for group in WIDTH.plan(config) for m in group.members}


# -- the cluster -----------------------------------------------------------------------------------

def _processes() -> dict[int, tuple[int, bytes]]:
    """pid → (parent pid, command line) of every process."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                cmdline = handle.read()
            with open(f"/proc/{name}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        found[int(name)] = (parent, cmdline)
    return found


@dataclass
class Cluster:
    address: str
    root: Path

    def pids(self) -> set[int]:
        """This cluster's processes: those started with its temporary directory, and their children."""
        table = _processes()
        pids = {pid for pid, (_, cmdline) in table.items() if str(self.root).encode() in cmdline}
        grown = True
        while grown:
            children = {pid for pid, (parent, _) in table.items() if parent in pids} - pids
            pids |= children
            grown = bool(children)
        return pids - {os.getpid()}

    def task_worker(self, title: bytes) -> int | None:
        """The pid of a worker of this cluster executing a task whose name starts ``title`` (Ray
        titles a worker ``ray::<task name>`` while it runs the task), None if none does now."""
        mine = self.pids()
        for pid, (_, cmdline) in _processes().items():
            if pid in mine and cmdline.startswith(b"ray::" + title):
                return pid
        return None

    def stop(self) -> None:
        pids = self.pids()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 5
            while sig == signal.SIGTERM and time.monotonic() < deadline and any(Path(f"/proc/{p}").exists()
                                                                               for p in pids):
                time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(data_cache):
    """``ray start --head`` and a second ``ray start --address``, one CPU each, on this machine; this
    process connected as a driver (the in-process tests) and the environment set for the CLI's."""
    if find_spec("ray") is None:
        pytest.skip("Ray is not installed")
    import ray

    ray_cli = Path(sys.executable).with_name("ray")
    ray_cli = str(ray_cli) if ray_cli.exists() else shutil.which("ray")
    # a short path: Ray's unix sockets live under it (at most 107 bytes)
    root = Path(tempfile.mkdtemp(prefix="ir-ray-", dir="/tmp"))
    address = f"127.0.0.1:{_free_port()}"
    env = pytest.MonkeyPatch()
    # no token authentication (Ray >= 2.5x turns it on for a new cluster where ~/.ray holds a token,
    # and a driver without the token is refused) and no usage statistics: a private test cluster
    env.setenv("RAY_AUTH_MODE", "disabled")
    env.setenv("RAY_USAGE_STATS_ENABLED", "0")
    common = ["--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--temp-dir", str(root), "--disable-usage-stats",
              "--object-store-memory", str(100 << 20)]
    made = Cluster(address, root)
    try:
        for args in (["--head", "--port", address.split(":")[1], "--include-dashboard=false"], ["--address", address]):
            started = subprocess.run([ray_cli, "start", *args, *common], capture_output=True, text=True, timeout=180)
            if started.returncode != 0:
                pytest.fail(f"ray start {' '.join(args)} failed:\n{started.stdout[-2000:]}\n{started.stderr[-2000:]}")
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        deadline = time.monotonic() + 60
        while sum(n["Alive"] for n in ray.nodes()) < 2:
            if time.monotonic() > deadline:
                pytest.fail(f"the second node did not join: {ray.nodes()}")
            time.sleep(0.2)
        yield made
    finally:
        if ray.is_initialized():
            ray.shutdown()
        made.stop()
        env.undo()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The plan through the local backend: runs and metrics."""
    out = tmp_path_factory.mktemp("local") / "width"
    result = execute(prepare(options(out)))
    assert not result.failures
    return frames(out)


def frames(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs, metrics = read_store(out)
    return runs[RUN_COLUMNS].reset_index(drop=True), metrics.reset_index(drop=True)


def assert_like_reference(out: Path, reference) -> None:
    """Every planned run stored once, done, with the local backend's metrics bitwise."""
    runs, metrics = frames(out)
    assert sorted(runs["run_id"]) == sorted(planned_ids())
    assert set(runs["status"]) == {"done"}, runs
    pd.testing.assert_frame_equal(metrics, reference[1], check_exact=True)
    pd.testing.assert_frame_equal(runs, reference[0], check_exact=True)


def _kill_when_running(cluster: Cluster, title: bytes, killed: list, timeout: float = 90) -> None:
    """SIGKILL the worker running the task ``title`` as soon as it runs; record (pid, its title)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = cluster.task_worker(title)
        if pid is not None:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    running = handle.read()  # still that task's worker, a moment before the kill
                os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                continue
            killed.append((pid, running))
            return
        time.sleep(0.02)


# -- (a) the same metrics as the local backend -----------------------------------------------------

@needs_ray
def test_a_study_on_two_nodes_equals_the_local_backend(cluster, reference, tmp_path):
    out = tmp_path / "ray"
    advanced = {}

    def progress(task):
        key = str(task.group.model.hidden)
        advanced[key] = 0

        def advance(step, total):
            advanced[key] += 1
        return advance

    result = execute(prepare(options(out, backend="ray", ray_address=cluster.address)), progress=progress)
    assert not result.failures
    assert_like_reference(out, reference)
    # the tasks fed the driver's bars: every step of each population (no member stops early)
    assert advanced == {"[8]": 600, "[16]": 600, "[32]": 600}
    with open(out / "summary.json") as handle:
        summary = json.load(handle)
    assert summary["provenance"]["backend"] == "ray" and summary["provenance"]["threads"] == 1
    runs, _ = read_store(out)
    assert {json.loads(p)["backend"] for p in runs["provenance"]} == {"ray"}
    from implicitreg.store import Store

    with Store.open_existing(out) as store:
        workers = store.meta()["sessions"][-1]["workers"]
    # two populations at once need both single-CPU nodes
    assert len({w["node_id"] for w in workers}) == 2 and sum(w["tasks"] for w in workers) == 3, workers
    assert {w["device"] for w in workers} == {"cpu"} and {w["threads"] for w in workers} == {1}


@pytest.fixture(scope="module")
def min_norm_local(tmp_path_factory):
    """min-norm --quick (a solved study) through the local backend: its store and solutions."""
    from implicitreg.runner import read_solutions

    out = tmp_path_factory.mktemp("local") / "min-norm"
    result = execute(prepare(RunOptions("min-norm", quick=True, threads=1, out=out)))
    assert result.verdict == "pass" and not result.failures
    return read_store(out), read_solutions(out)


def assert_like_min_norm(out: Path, min_norm_local) -> None:
    from implicitreg.runner import read_solutions

    (runs_l, metrics_l), arrays_l = min_norm_local
    runs_r, metrics_r = read_store(out)
    arrays_r = read_solutions(out)
    pd.testing.assert_frame_equal(metrics_r, metrics_l, check_exact=True)
    assert list(runs_r["run_id"]) == list(runs_l["run_id"]) and set(runs_r["status"]) == {"done"}
    assert arrays_r.keys() == arrays_l.keys()
    assert all(np.array_equal(arrays_r[k], arrays_l[k]) for k in arrays_l)


@needs_ray
def test_a_solved_study_on_ray_equals_the_local_backend(cluster, min_norm_local, tmp_path):
    out = tmp_path / "ray"
    result = execute(prepare(RunOptions("min-norm", quick=True, threads=1, out=out, backend="ray",
                                        ray_address=cluster.address)))
    assert result.verdict == "pass" and not result.failures
    assert_like_min_norm(out, min_norm_local)


@needs_ray
def test_studies_run_together_each_into_its_own_directory(cluster, reference, min_norm_local, tmp_path):
    """`run all` on a cluster: execute_all submits every study's tasks on one backend; each
    directory ends as if its study had run alone."""
    from implicitreg.runner import execute_all

    prepared = [prepare(options(tmp_path / "width", backend="ray", ray_address=cluster.address)),
                prepare(RunOptions("min-norm", quick=True, threads=1, out=tmp_path / "min-norm", backend="ray",
                                   ray_address=cluster.address))]
    results = execute_all(prepared)
    assert [r.out for r in results] == [tmp_path / "width", tmp_path / "min-norm"]
    assert not any(r.failures for r in results) and results[1].verdict == "pass"
    assert_like_reference(tmp_path / "width", reference)
    assert_like_min_norm(tmp_path / "min-norm", min_norm_local)
    assert all((tmp_path / name / "report.html").exists() for name in ("width", "min-norm"))


@needs_ray
def test_a_sweep_on_ray_equals_the_local_backend(cluster, tmp_path):
    import implicitreg

    sweep = Path(__file__).resolve().parents[1] / "examples" / "sweep-tiny.toml"
    out = {}
    for backend in ("local", "ray"):
        out[backend] = tmp_path / backend
        result = implicitreg.sweep(sweep, out[backend], quick=True, threads=1, progress=False, backend=backend,
                                   ray_address=cluster.address if backend == "ray" else None)
        assert not result.failures
    (runs_l, metrics_l), (runs_r, metrics_r) = frames(out["local"]), frames(out["ray"])
    assert len(runs_l) == 4 and set(runs_r["status"]) == {"done"}  # --quick: one seed, 2 widths × 2 lr
    pd.testing.assert_frame_equal(metrics_r, metrics_l, check_exact=True)
    pd.testing.assert_frame_equal(runs_r, runs_l, check_exact=True)


MODELS = """
from torch import nn


def small(input_dim, n_classes):
    return nn.Sequential(nn.Linear(input_dim, 12), nn.Tanh(), nn.Linear(12, n_classes))


def batchnorm(input_dim, n_classes):
    return nn.Sequential(nn.Linear(input_dim, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, n_classes))
"""


@needs_ray
def test_a_sweep_of_modules_beside_its_file_trains_on_the_workers(cluster, tmp_path):
    """The workers import the user's module from the sweep file's directory (they share this disk);
    one factory trains as a population, the BatchNorm one on the sequential engine."""
    import implicitreg

    (tmp_path / "ray_sweep_models.py").write_text(MODELS)
    sweep = tmp_path / "sweep.toml"
    sweep.write_text("""
seeds = 2
data = { name = "mnist1d", n_train = 100, n_test = 50 }
model = { arch = "module", factory = "ray_sweep_models:small" }
[train]
lr = 0.05
batch_size = 25
max_steps = 20
eval_every = 10
target_train_acc = 0.999
dtype = "float64"
[grid]
"model.factory" = ["ray_sweep_models:small", "ray_sweep_models:batchnorm"]
""")
    for backend in ("local", "ray"):
        result = implicitreg.sweep(sweep, tmp_path / backend, threads=1, progress=False, backend=backend,
                                   ray_address=cluster.address if backend == "ray" else None)
        assert not result.failures, result.failures
    (runs_l, metrics_l), (runs_r, metrics_r) = frames(tmp_path / "local"), frames(tmp_path / "ray")
    assert len(runs_r) == 4 and set(runs_r["status"]) == {"done"}
    pd.testing.assert_frame_equal(metrics_r, metrics_l, check_exact=True)
    pd.testing.assert_frame_equal(runs_r, runs_l, check_exact=True)
    engines = {json.loads(p)["engine"] for p in read_store(tmp_path / "ray")[0]["provenance"]}
    assert engines == {"population", "sequential"}


@needs_ray
def test_the_cluster_is_checked_before_anything_is_written(cluster, tmp_path):
    out = tmp_path / "refused"
    with pytest.raises(ConfigError, match=r"--threads: each task asks for 2 CPUs.*largest node.*has 1"):
        execute(prepare(RunOptions("width", quick=True, threads=2, out=out, backend="ray")))
    with pytest.raises(ConfigError, match="--device cuda: the Ray cluster has no GPU"):
        execute(prepare(RunOptions("width", quick=True, threads=1, device="cuda", out=out, backend="ray")))
    assert not out.exists()


# -- (b) a worker killed mid-task --------------------------------------------------------------------

@needs_ray
def test_a_worker_killed_mid_task_is_retried_and_every_run_ends_once(cluster, reference, tmp_path):
    out = tmp_path / "killed-worker"
    prepared = prepare(options(out, backend="ray", ray_address=cluster.address))
    killed: list = []
    killer = threading.Thread(target=_kill_when_running, args=(cluster, b"implicitreg mlp w16/", killed))
    killer.start()
    try:
        result = execute(prepared)
    finally:
        killer.join()
    assert killed and killed[0][1].startswith(b"ray::implicitreg mlp w16/seed0"), killed
    assert not result.failures
    assert_like_reference(out, reference)


@needs_ray
def test_a_task_whose_worker_dies_every_time_is_recorded_failed_and_resumed(cluster, reference, tmp_path):
    out = tmp_path / "no-retries"
    prepared = prepare(options(out, backend="ray", ray_address=cluster.address, retries=0))
    killed: list = []
    killer = threading.Thread(target=_kill_when_running, args=(cluster, b"implicitreg mlp w8/", killed))
    killer.start()
    try:
        result = execute(prepared)
    finally:
        killer.join()
    assert killed, "the worker of the w8 population was never seen running"
    assert len(result.failures) == 1 and "died" in result.failures[0], result.failures
    runs, _ = read_store(out)
    status = dict(zip(runs["run_id"], runs["status"]))
    assert {k for k, v in status.items() if v == "failed"} == {"w8/seed0", "w8/seed1"}, status
    assert {v for k, v in status.items() if not k.startswith("w8/")} == {"done"}  # the sweep went on
    errors = runs.set_index("run_id")["error"]
    assert "WorkerCrashedError" in errors["w8/seed0"] or "died" in errors["w8/seed0"]
    done_before = runs[runs["status"] == "done"].set_index("run_id")[["started_at", "ended_at"]]

    resumed = execute(prepare(options(out, backend="ray", ray_address=cluster.address, resume=True)))
    assert not resumed.failures
    assert_like_reference(out, reference)
    after = read_store(out)[0].set_index("run_id")[["started_at", "ended_at"]]
    pd.testing.assert_frame_equal(after.loc[done_before.index], done_before)  # only the failed chunk reran


# -- (c) the driver killed ---------------------------------------------------------------------------

def _statuses(out: Path) -> dict[str, str] | None:
    import sqlite3

    path = out / "results.sqlite"
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
        try:
            return dict(conn.execute("SELECT run_id, status FROM runs").fetchall())
        finally:
            conn.close()
    except sqlite3.Error:
        return None


@needs_ray
def test_a_driver_killed_mid_run_resumes_to_the_uninterrupted_metrics(cluster, reference, tmp_path):
    command = [*CLI, "--backend", "ray", "--ray-address", cluster.address]
    at_kill = None
    for attempt in range(2):  # the kill lands too late only if the machine stalls; retry once
        out = tmp_path / f"killed-driver-{attempt}"
        log = tmp_path / f"driver-{attempt}.log"
        proc = start_cli([*command, "--out", str(out)], log)
        try:
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline and proc.poll() is None:
                seen = _statuses(out)
                if seen and "done" in seen.values():
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    at_kill = _statuses(out)
                    break
                time.sleep(0.05)
            else:
                if proc.poll() is not None and proc.returncode != 0:
                    pytest.fail(f"the run to be killed exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if at_kill is not None and set(at_kill.values()) != {"done"}:
            break
    else:
        pytest.skip("both attempts finished every run before the kill landed")
    assert set(at_kill) == planned_ids() and "running" in at_kill.values(), at_kill
    assert "started" in log.read_text()  # the CLI's progress lines, fed by the tasks
    # resumed in this process (its Ray workers are up: the CLI would start a job's workers again)
    resumed = execute(prepare(options(out, backend="ray", ray_address=cluster.address, resume=True)))
    assert not resumed.failures
    assert_like_reference(out, reference)


# -- options and a missing Ray -------------------------------------------------------------------------

def test_backend_ray_without_ray_says_how_to_install_it(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.") or m == "implicitreg.backends.ray"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError, as where it is not installed
    out = tmp_path / "o"
    result = invoke_cli(["run", "width", "--quick", "--backend", "ray", "--out", out])
    assert_user_error(result, ["--backend ray", "Ray is not installed", 'pip install -e ".[ray]"'], out)


def test_backend_options_are_checked_before_anything_is_written(tmp_path):
    out = tmp_path / "o"
    assert_user_error(invoke_cli(["run", "width", "--quick", "--backend", "dask", "--out", out]),
                      ["--backend", "local, ray", "'dask'"], out)
    assert_user_error(invoke_cli(["run", "width", "--quick", "--ray-address", "auto", "--out", out]),
                      ["--ray-address", "--backend ray"], out)
    assert_user_error(invoke_cli(["run", "width", "--quick", "--backend", "ray", "--retries", "-1", "--out", out]),
                      ["--retries", ">= 0", "-1"], out)
    sweep = Path(__file__).resolve().parents[1] / "examples" / "sweep-tiny.toml"
    assert_user_error(invoke_cli(["sweep", sweep, "--backend", "dask", "--out", out]), ["--backend", "'dask'"], out)


@needs_ray
def test_progress_messages_are_few_a_second_and_the_last_one_arrives():
    from implicitreg.backends.ray import REPORTS_PER_SECOND, _Reporter

    class Queue:
        def __init__(self):
            self.messages = []

        def put_nowait(self, item):
            self.messages.append((time.monotonic(), item))

    queue = Queue()
    report = _Reporter(queue, key=(1, 7))
    began = time.monotonic()
    for step in range(1, 30001):
        report("", step, 30000)
        if step % 1000 == 0:
            time.sleep(0.03)
    report.flush()
    seconds = time.monotonic() - began
    sent = queue.messages
    assert len(sent) <= REPORTS_PER_SECOND * seconds + 2, (len(sent), seconds)
    assert sent[-1][1] == ((1, 7), {"": (30000, 30000)})  # the last value always goes
    gaps = np.diff([t for t, _ in sent[:-1]])
    assert (gaps >= 1 / REPORTS_PER_SECOND - 1e-3).all()
