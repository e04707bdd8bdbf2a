"""Population vs. sequential loop: training-step throughput of P small MLPs, measured in one run.

What is measured, per device, hidden width H and population size P (MLP 40-H-H-10, SGD, batch 128,
float32, synthetic MNIST-1D-sized data, 4000 x 40):

- ``sequential``  what a user writes: P separate ``nn.Module``s, each with its own ``torch.optim.SGD``;
  every step loops over the members: forward, ``F.cross_entropy``, ``zero_grad``, ``backward``, ``step``.
- ``vmap``        ``Population(..., kernel="vmap")``: ``torch.func`` vmap over ``functional_call``.
- ``population``  ``Population(...)`` with its default kernel (the hand-batched MLP kernel).

Both population rows time the per-step composition of ``implicitreg.train.train_population``
(evaluation excluded): per-member batch indices from ``BatchOrder``, gather, ``loss_and_grad``, the
finite-loss mask, ``make_optimizer(...).update`` and ``apply_updates``. The sequential loop draws its
batches from the same ``BatchOrder`` streams.

Reported: ms per population step (all P members advance one step), ms per member-step, speed-up
(sequential / this row), achieved GFLOP/s counting 6·B·Σ(in·out) flops per member-step (forward 2x,
backward 4x; bias and elementwise work not counted), and that rate as a fraction of the sgemm peak
measured in the same run (best of several large square float32 matmuls).

Timing: ``time.perf_counter`` after warm-up steps; ``--repeats`` runs of n steps each, n chosen so
that the whole measurement lasts >= ``--min-time`` seconds, and the best run's mean per step is
reported (best-of, like the peak: other load on the machine only ever adds time). Where one step is
so slow that this would exceed ``--max-time`` (the sequential loop at large P), only a few single
steps are timed, the best taken as the per-step time; such rows are marked ``*``. On CUDA the device
is synchronized around every timed run. The 1-minute load average is printed before and after: on
a shared machine, compare rows of one run only.

Run:  python benchmarks/population.py            (full: P in 1 8 64 256, H in 128 512, cpu [+ cuda])
      python benchmarks/population.py --quick    (P in 1 64, H 128, short timings; < 1 min on 2 cores)
      options: --device cpu|cuda|all  --sizes 1 8 64  --widths 128  --threads N  --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import torch
import torch.nn.functional as F

from implicitreg.config import MLPConfig, TrainConfig
from implicitreg.models import build_model
from implicitreg.optim import apply_updates, make_optimizer
from implicitreg.population import Population
from implicitreg.sampling import BatchOrder
from implicitreg.seeding import generator

IN_DIM, OUT_DIM, N_TRAIN, BATCH, LR = 40, 10, 4000, 128, 0.05
TARGET = (64, 128)  # (P, H) of the headline


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(step, device: str, warmup: int, min_time: float, max_time: float, repeats: int):
    """Seconds per call of ``step()`` (best of ``repeats`` runs of n calls), calls timed, capped?

    Best-of, like the sgemm peak, because other load on the machine only ever adds time.
    """
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    step()  # one call to size the runs
    sync(device)
    first = max(time.perf_counter() - t0, 1e-9)
    n = max(1, math.ceil(min_time / (repeats * first)))
    capped = repeats * n * first > max_time
    if capped:  # too slow for min_time within max_time: fewer single-step repeats
        repeats, n = max(2, min(repeats, int(max_time / first))), 1
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(n):
            step()
        sync(device)
        best = min(best, (time.perf_counter() - t0) / n)
    return best, repeats * n, capped


def sgemm_peak(device: str, quick: bool) -> float:
    """Best-of GFLOP/s of a large square float32 matmul on ``device``."""
    size = 2048 if device == "cpu" else 8192
    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    reps = 4 if quick else 10
    best = float("inf")
    for _ in range(reps + 1):  # the first call is a warm-up
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best / 1e9


def build_members(p: int, hidden: int) -> list[torch.nn.Module]:
    config = MLPConfig(hidden=[hidden, hidden])
    return [build_model("mlp", config, IN_DIM, OUT_DIM, generator(seed, "init")) for seed in range(p)]


def population_step(modules, x_all, y_all, device: str, kernel: str):
    """One step of train_population's loop (no evaluation), as a closure over its state."""
    p = len(modules)
    pop = Population(modules, loss="cross_entropy", device=device, dtype=torch.float32, kernel=kernel)
    cfg = TrainConfig(optimizer="sgd", lr=LR, batch_size=BATCH, max_steps=10**6, target_train_acc=None)
    lr = torch.full((p,), LR, device=device)
    wd = torch.zeros(p, device=device)
    optimizer = make_optimizer(cfg, lr, wd)
    orders = [BatchOrder(seed, N_TRAIN, BATCH) for seed in range(p)]
    box = {"state": optimizer.init(pop.params), "step": 0, "active": torch.ones(p, dtype=torch.bool, device=device)}
    labels = y_all.expand(p, N_TRAIN)

    def step() -> None:
        idx = torch.stack([o.next() for o in orders]).to(device)
        x, y = x_all[idx], labels.gather(1, idx)
        loss, grads = pop.loss_and_grad(x, y)
        box["active"] = box["active"] & torch.isfinite(loss)
        updates, box["state"] = optimizer.update(grads, box["state"], pop.params, box["step"])
        pop.params = apply_updates(pop.params, updates, box["active"])
        box["step"] += 1

    return step


def sequential_step(modules, x_all, y_all, device: str):
    """One step of the plain loop: every member does forward, loss, zero_grad, backward, SGD step."""
    models = [m.float().to(device) for m in modules]
    optimizers = [torch.optim.SGD(m.parameters(), lr=LR) for m in models]
    orders = [BatchOrder(seed, N_TRAIN, BATCH) for seed in range(len(models))]

    def step() -> None:
        for model, opt, order in zip(models, optimizers, orders):
            idx = order.next().to(device)
            loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()

    return step


def run_config(device: str, p: int, hidden: int, args, peak: float) -> list[dict]:
    data_gen = torch.Generator().manual_seed(0)
    x_all = torch.randn(N_TRAIN, IN_DIM, generator=data_gen).to(device)
    y_all = torch.randint(0, OUT_DIM, (N_TRAIN,), generator=data_gen).to(device)
    sizes = [IN_DIM, hidden, hidden, OUT_DIM]
    flops = 6 * BATCH * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))  # per member-step
    # Populations first: the sequential loop converts the (shared) modules to float32 in place.
    modules = build_members(p, hidden)
    steps = {
        "population": population_step(modules, x_all, y_all, device, "auto"),
        "vmap": population_step(modules, x_all, y_all, device, "vmap"),
        "sequential": sequential_step(modules, x_all, y_all, device),
    }
    rows = []
    for method in ("sequential", "vmap", "population"):
        warmup = 1 if method == "sequential" and p >= 64 else args.warmup
        sec, n, capped = timed(steps[method], device, warmup, args.min_time, args.max_time, args.repeats)
        gflops = flops * p / sec / 1e9
        rows.append(dict(device=device, hidden=hidden, P=p, method=method, ms_step=sec * 1e3,
                         ms_member_step=sec * 1e3 / p, gflops=gflops, peak_fraction=gflops / peak,
                         steps_timed=n, capped=capped))
        del steps[method]  # free this method's models before the next one runs
    for row in rows:
        row["speedup"] = rows[0]["ms_step"] / row["ms_step"]
    return rows


HEADER = (f"{'device':<6} {'H':>4} {'P':>4}  {'method':<10} {'ms/step':>10} {'ms/member':>10} "
          f"{'speed-up':>8} {'GFLOP/s':>8} {'% peak':>7} {'steps':>6}")


def format_row(r: dict) -> str:
    mark = "*" if r["capped"] else " "
    return (f"{r['device']:<6} {r['hidden']:>4} {r['P']:>4}  {r['method']:<10} {r['ms_step']:>10.2f} "
            f"{r['ms_member_step']:>10.3f} {r['speedup']:>7.2f}x {r['gflops']:>8.1f} "
            f"{100 * r['peak_fraction']:>6.1f}% {r['steps_timed']:>5}{mark}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="P in {1, 64}, H=128, short timings")
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                        help="all: cpu, plus cuda when available")
    parser.add_argument("--sizes", type=int, nargs="+", help="population sizes P (default 1 8 64 256)")
    parser.add_argument("--widths", type=int, nargs="+", help="hidden widths H (default 128 512)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                        help="torch intra-op threads (default: all available cores)")
    parser.add_argument("--min-time", type=float, help="seconds per measurement (default 0.5; quick 0.2)")
    parser.add_argument("--max-time", type=float, help="cap on seconds per measurement (default 6; quick 2)")
    parser.add_argument("--warmup", type=int, default=3, help="warm-up steps before timing")
    parser.add_argument("--repeats", type=int, help="timed runs per measurement, best taken (default 5; quick 3)")
    parser.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = parser.parse_args()
    args.sizes = args.sizes or ([1, 64] if args.quick else [1, 8, 64, 256])
    args.widths = args.widths or ([128] if args.quick else [128, 512])
    args.min_time = args.min_time or (0.2 if args.quick else 0.5)
    args.max_time = args.max_time or (2.0 if args.quick else 6.0)
    args.repeats = args.repeats or (3 if args.quick else 5)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    devices = {"cpu": ["cpu"], "cuda": ["cuda"], "all": ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])}
    torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; MLP {IN_DIM}-H-H-{OUT_DIM}, SGD, "
          f"batch {BATCH}, float32; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cpus")
    if os.getloadavg()[0] > 1.0 and args.threads > 1:
        print("warning: the machine is busy; with several threads, small ops stall on descheduled peers "
              "(try --threads 1)")
    rows, peaks = [], {}
    for device in devices[args.device]:
        peaks[device] = sgemm_peak(device, args.quick)
        name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
        print(f"{device} ({name}): measured sgemm peak {peaks[device]:.1f} GFLOP/s")
    print()
    print(HEADER)
    print("-" * len(HEADER))
    for device in devices[args.device]:
        for hidden in args.widths:
            for p in args.sizes:
                for row in run_config(device, p, hidden, args, peaks[device]):
                    rows.append(row)
                    print(format_row(row), flush=True)
                print()
    print("speed-up: sequential ms/step / this row's; GFLOP/s counts 6·B·Σ(in·out) per member-step;")
    print(f"% peak: of the measured sgemm peak; times: best of {args.repeats} runs totalling >= {args.min_time:g} s.")
    print(f"* = one step too slow for that within --max-time {args.max_time:g} s: best of the few single steps shown.")
    print(f"load average now {os.getloadavg()[0]:.2f} (a shared machine slows every row; ratios suffer less)")
    print()
    for device in devices[args.device]:
        hit = {r["method"]: r for r in rows if (r["device"], r["P"], r["hidden"]) == (device, *TARGET)}
        if "population" in hit:
            pop = hit["population"]
            print(f"[{device}] P={TARGET[0]}, H={TARGET[1]}, batch {BATCH}: population {pop['speedup']:.1f}× "
                  f"the sequential loop, {100 * pop['peak_fraction']:.0f}% of measured sgemm peak "
                  "(targets: ≥2×, ≥60%)")
        else:
            print(f"[{device}] target configuration P={TARGET[0]}, H={TARGET[1]} was not run")
    if args.json:
        meta = dict(torch=torch.__version__, threads=torch.get_num_threads(), batch=BATCH, sgemm_peak_gflops=peaks,
                    min_time=args.min_time, repeats=args.repeats, load_average=os.getloadavg()[0])
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)
        print(f"rows written to {args.json}")


if __name__ == "__main__":
    main()
