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

Run:  OMP_NUM_THREADS=1 python benchmarks/backends.py            (400 steps; about 2 min on 2 busy cores)
      OMP_NUM_THREADS=1 python benchmarks/backends.py --quick    (100 steps, 16 tiny tasks)
      options: --steps N  --tiny N
Needs Ray (pip install -e ".[ray]"). Say whether the machine was quiet when you quote a figure:
the load average before and after is printed.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
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
    parser.add_argument("--quick", action="store_true", help="100 steps and 16 tiny tasks")
    parser.add_argument("--steps", type=int, default=None, help="steps per population (default 400; --quick 100)")
    parser.add_argument("--tiny", type=int, default=None, help="tiny tasks for the overhead (default 32; --quick 16)")
    args = parser.parse_args()
    steps = args.steps or (100 if args.quick else 400)
    n_tiny = args.tiny or (16 if args.quick else 32)

    import ray
    import torch

    import implicitreg
    from implicitreg.backends import LocalBackend, ray_backend

    torch.set_num_threads(1)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs; "
          f"torch {torch.__version__}, ray {ray.__version__}")
    source = sweep_dict(steps, WIDTHS, seeds=2, n_train=1000)
    tiny = sweep_dict(1, [[4 + i] for i in range(n_tiny)], seeds=1, n_train=100)
    with tempfile.TemporaryDirectory(prefix="ir-bench-") as tmp:
        root = Path(tmp)
        began = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        ray_start = time.perf_counter() - began
        remote = ray_backend()  # uses this process's Ray: the local instance of 2 CPUs
        try:
            walls: dict[str, float] = {}
            for name, backend in (("local", "local"), ("ray (cold workers)", "ray"), ("ray (warm workers)", "ray")):
                out = root / f"sweep-{len(walls)}"
                began = time.perf_counter()
                implicitreg.sweep(source, out, threads=1, device="cpu", progress=False, backend=backend)
                walls[name] = time.perf_counter() - began
                if name != "local" and metrics(out) != metrics(root / "sweep-0"):
                    raise SystemExit(f"{name}: metrics differ from the local backend's")
            tasks = tasks_of(source, root, "plan")
            local_s, local_runs = time_backend(LocalBackend(), tasks)
            ray_s, ray_runs = time_backend(remote, tasks)
            assert ray_runs == local_runs, "the backends' metrics differ"
            tiny_tasks = tasks_of(tiny, root, "tiny")
            time_backend(remote, tiny_tasks[:2])  # workers up and the tiny data set built on each
            tiny_local, tiny_local_runs = time_backend(LocalBackend(), tiny_tasks)
            tiny_ray, tiny_ray_runs = time_backend(remote, tiny_tasks)
            assert tiny_ray_runs == tiny_local_runs
        finally:
            remote.close()
            ray.shutdown()

    print(f"\nRay local instance start (2 CPUs): {ray_start:.1f} s\n")
    print(f"sweep of {len(tasks)} populations (8 widths x 2 seeds, MNIST-1D 1000 points, {steps} steps, "
          "one thread each); metrics equal bitwise between the backends")
    print(f"{'':40}{'wall s':>9}{'local / this':>14}")
    for name, wall in walls.items():
        print(f"{'implicitreg.sweep, ' + name:40}{wall:9.1f}{walls['local'] / wall:14.2f}")
    print(f"{'backend alone, local':40}{local_s:9.1f}{1.0:14.2f}")
    print(f"{'backend alone, ray (warm)':40}{ray_s:9.1f}{local_s / ray_s:14.2f}")
    per_local, per_ray = tiny_local / len(tiny_tasks), tiny_ray / len(tiny_tasks)
    print(f"\nRay's overhead per task: {len(tiny_tasks)} populations of 1 member, 1 step, 100 points "
          f"(backends alone, warm workers)")
    print(f"  local {per_local * 1e3:.1f} ms/task, ray {per_ray * 1e3:.1f} ms/task with 2 workers: "
          f"overhead {(per_ray - per_local) * 1e3:.1f} ms/task (wall, 2 workers)")
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
