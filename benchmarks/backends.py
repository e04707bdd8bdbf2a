"""The local backend against Ray with two single-CPU workers, on the same sweeps, in one run.

1. **A sweep of 8 populations** (8 MLP widths × 2 seeds on MNIST-1D, one thread per population):
   the whole ``implicitreg.sweep`` (plan, train, store, analysis, figures, report) through the local
   backend and through Ray, and the backends alone on the same tasks (``backend.run``: training,
   no store, no report). Ray runs it twice: the first pays for starting its worker processes
   (each imports torch and implicitreg), the second finds them idle.
2. **Ray's overhead per task**: ``--tiny`` populations of one member trained for one step, through
   both backends alone: (Ray's wall time − the local wall time) / tasks, with two workers.

Ray runs as a local instance of two CPUs (``ray.init(num_cpus=2)``: two workers of one CPU each);
its start-up is timed apart. Metrics of every run are checked equal between the backends (bitwise).

Run:  OMP_NUM_THREADS=1 python benchmarks/backends.py            (2000 steps, 3 repeats; about 4 min on 2 busy cores)
      OMP_NUM_THREADS=1 python benchmarks/backends.py --quick    (200 steps, 16 tiny tasks, 1 repeat)
      options: --steps N  --tiny N  --repeats N (local and Ray alternated; medians)
Needs Ray (pip install -e ".[ray]"). Say whether the machine was quiet when you quote a figure:
the load average before and after is printed.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

WIDTHS = [[16], [32], [48], [64], [96], [128], [192], [256]]


def sweep_dict(steps: int, widths: list[list[int]], seeds: int, n_train: int) -> dict[str, Any]:
    return {"name": "backends-benchmark", "seeds": seeds,
            "data": {"name": "mnist1d", "n_train": n_train, "n_test": 500},
            "model": {"arch": "mlp", "hidden": widths[0]},
            "train": {"optimizer": "momentum", "lr": 0.05, "batch_size": 64, "max_steps": steps,
                      "eval_every": max(1, steps // 2), "target_train_acc": None, "track": []},
            "grid": {"model.hidden": widths}}


def metrics(out: Path) -> list[tuple]:
    conn = sqlite3.connect(f"file:{out / 'results.sqlite'}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT run_id, step, name, value FROM metrics ORDER BY run_id, step, name").fetchall()
    finally:
        conn.close()


def tasks_of(source: dict[str, Any], root: Path, name: str) -> list:
    """The sweep's population chunks as the driver builds them (one thread each, on CPU)."""
    from implicitreg.backends import Task
    from implicitreg.runner import chunk_size
    from implicitreg.sweep import SweepOptions, prepare_sweep

    prepared, _ = prepare_sweep(SweepOptions(source, root / name, threads=1, device="cpu"))
    return [Task(chunk, "population", "cpu", 1) for group in prepared.study.plan(prepared.config)
            for chunk in group.chunks(chunk_size(group, "population", prepared.device))]


def time_backend(backend, tasks) -> tuple[float, list]:
    began = time.perf_counter()
    outcomes = list(backend.run(tasks))
    seconds = time.perf_counter() - began
    failed = [o.error for o in outcomes if o.error is not None]
    if failed:
        raise RuntimeError(f"{len(failed)} task(s) failed: {failed[0]}")
    return seconds, sorted((r.run_id, r.metrics) for o in outcomes for r in o.results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 steps, 16 tiny tasks, one repeat")
    parser.add_argument("--steps", type=int, default=None, help="steps per population (default 2000; --quick 200)")
    parser.add_argument("--tiny", type=int, default=None, help="tiny tasks for the overhead (default 32; --quick 16)")
    parser.add_argument("--repeats", type=int, default=None, help="local and Ray alternated, medians (default 3)")
    args = parser.parse_args()
    steps = args.steps or (200 if args.quick else 2000)
    n_tiny = args.tiny or (16 if args.quick else 32)
    repeats = args.repeats or (1 if args.quick else 3)

    import ray
    import torch

    import implicitreg
    from implicitreg.backends import LocalBackend, ray_backend
    from implicitreg.backends.ray import local_instance_options

    torch.set_num_threads(1)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs; "
          f"torch {torch.__version__}, ray {ray.__version__}")
    source = sweep_dict(steps, WIDTHS, seeds=2, n_train=1000)
    tiny = sweep_dict(1, [[4 + i] for i in range(n_tiny)], seeds=1, n_train=100)
    walls: dict[str, list[float]] = {"local": [], "ray (cold workers)": [], "ray (warm workers)": []}
    alone: dict[str, list[float]] = {"local": [], "ray": []}
    per_task: dict[str, list[float]] = {"local": [], "ray": []}
    with tempfile.TemporaryDirectory(prefix="ir-bench-") as tmp:
        root = Path(tmp)
        began = time.perf_counter()
        # as the Ray backend starts a local instance: workers at this process's priority
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                 **local_instance_options())
        ray_start = time.perf_counter() - began
        remote = ray_backend()  # uses this process's Ray: the local instance of 2 CPUs
        try:
            def sweep(name: str, backend: str) -> None:
                out = root / f"sweep-{sum(map(len, walls.values()))}"
                began = time.perf_counter()
                implicitreg.sweep(source, out, threads=1, device="cpu", progress=False, backend=backend)
                walls[name].append(time.perf_counter() - began)
                if name == "local":
                    sweep.reference = metrics(out)
                elif metrics(out) != sweep.reference:
                    raise SystemExit(f"{name}: metrics differ from the local backend's")

            sweep("local", "local")
            sweep("ray (cold workers)", "ray")
            for _ in range(repeats):  # alternated, so that a change of the machine's load hits both
                sweep("ray (warm workers)", "ray")
                sweep("local", "local")
            tasks, tiny_tasks = tasks_of(source, root, "plan"), tasks_of(tiny, root, "tiny")
            time_backend(remote, tiny_tasks[:2])  # the tiny data set built on each worker
            for _ in range(repeats):
                for name, backend in (("local", LocalBackend()), ("ray", remote)):
                    seconds, runs = time_backend(backend, tasks)
                    alone[name].append(seconds)
                    assert runs == time_backend.__dict__.setdefault("reference", runs), "the backends' metrics differ"
                    seconds, _ = time_backend(backend, tiny_tasks)
                    per_task[name].append(seconds / len(tiny_tasks))
        finally:
            remote.close()
            ray.shutdown()

    med = {k: statistics.median(v) for k, v in walls.items()}
    print(f"\nRay local instance start (2 CPUs): {ray_start:.1f} s")
    print(f"\nsweep of {len(tasks)} populations (8 widths x 2 seeds, MNIST-1D 1000 points, {steps} steps, one "
          f"thread each), medians of {repeats} alternated runs; metrics equal bitwise between the backends")
    print(f"{'':40}{'wall s':>9}{'local / this':>14}")
    for name, wall in med.items():
        print(f"{'implicitreg.sweep, ' + name:40}{wall:9.1f}{med['local'] / wall:14.2f}")
    a_local, a_ray = statistics.median(alone["local"]), statistics.median(alone["ray"])
    print(f"{'backend alone, local':40}{a_local:9.1f}{1.0:14.2f}")
    print(f"{'backend alone, ray (warm workers)':40}{a_ray:9.1f}{a_local / a_ray:14.2f}")
    t_local, t_ray = statistics.median(per_task["local"]), statistics.median(per_task["ray"])
    print(f"\nRay's overhead per task: {len(tiny_tasks)} populations of 1 member, 1 step, 100 points (backends "
          "alone, warm workers)")
    print(f"  local {t_local * 1e3:.1f} ms/task, ray {t_ray * 1e3:.1f} ms/task with 2 workers: overhead "
          f"{(t_ray - t_local) * 1e3:.1f} ms/task (wall, 2 workers)")
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
