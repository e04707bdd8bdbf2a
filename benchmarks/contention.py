"""A run beside another CPU-bound process: the default thread count against all cores, in one run.

The workload is one study run as a user starts it (``implicitreg run STUDY --quick``, default
``width``: small MLP populations on MNIST-1D), timed as a subprocess, wall clock:

- ``quiet``                   nothing else running; the default threads (all cores, as nobody is busy);
- ``beside, all cores``       a competitor running; ``--threads`` = every core (PyTorch's own default,
                              and this package's before the polite default);
- ``beside, polite default``  a competitor running; no ``--threads``: the cores the competitor leaves
                              (``implicitreg.runner.threads``).

The competitor is what a shared machine holds: a single-threaded float32 matmul loop (a second
user's job, another test run), started before the timed run and stopped after it, by this script.
The ratio to ``quiet`` is the slowdown; with one competitor on 2 cores its fair share alone makes
the run up to 2× slower, and oversubscribed threads make it slower still. Target: the polite default
≤ 2.2× quiet. Each row is the best of ``--repeats`` (other load only ever adds time); the machine
must otherwise be quiet (the script prints the load before it starts).

Run:  python benchmarks/contention.py [--study width] [--repeats 1] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from implicitreg.runner.threads import available_threads, busy_cores

COMPETITOR = ("import torch\ntorch.set_num_threads(1)\na = torch.randn(1024, 1024)\n"
              "while True:\n    a = torch.tanh(a @ a)\n")


def timed_run(study: str, sets: list[str], threads: int | None, directory: Path) -> float:
    """Seconds of ``implicitreg run STUDY --quick`` (a fresh output directory each time)."""
    out = Path(tempfile.mkdtemp(dir=directory))
    command = [sys.executable, "-m", "implicitreg", "run", study, "--quick", "--out", str(out / "run")]
    command += [arg for s in sets for arg in ("--set", s)]
    if threads is not None:
        command += ["--threads", str(threads)]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - started


def best(study: str, sets: list[str], threads: int | None, directory: Path, repeats: int,
         competitor: bool) -> float:
    times = []
    for _ in range(repeats):
        other = subprocess.Popen([sys.executable, "-c", COMPETITOR]) if competitor else None
        try:
            if other is not None:
                time.sleep(1.0)  # running before the run decides its threads, as a real competitor is
            times.append(timed_run(study, sets, threads, directory))
        finally:
            if other is not None:
                other.kill()
                other.wait()
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default="width")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="passed on to implicitreg run")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    cores = available_threads()
    print(f"cores: {cores}; busy before starting: {busy_cores():.0f} (should be 0: run this alone); "
          f"load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        timed_run(args.study, args.sets, None, directory)  # warm-up: the data cache, imports from disk
        rows = [("quiet", best(args.study, args.sets, None, directory, args.repeats, competitor=False)),
                (f"beside, all cores (--threads {cores})",
                 best(args.study, args.sets, cores, directory, args.repeats, competitor=True)),
                ("beside, polite default", best(args.study, args.sets, None, directory, args.repeats, competitor=True))]
    quiet = rows[0][1]
    print(f"\n`implicitreg run {args.study} --quick`, one competitor (a single-threaded matmul loop)\n")
    print(f"| {'configuration':<34} | {'wall s':>7} | {'vs quiet':>8} |")
    print(f"|{'-' * 36}|{'-' * 9}|{'-' * 10}|")
    for name, seconds in rows:
        print(f"| {name:<34} | {seconds:7.1f} | {seconds / quiet:7.2f}× |")
    print(f"\ntarget: polite default ≤ 2.2× quiet: {'met' if rows[2][1] / quiet <= 2.2 else 'NOT met'}")


if __name__ == "__main__":
    main()
