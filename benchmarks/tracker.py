"""The cost of a Tracker in a plain training loop: a ~100k-parameter Conv2d + BatchNorm network on
scikit-learn's digits, SGD with momentum, batch 64, float32, CPU.

What is measured (each configuration from the same initialization and minibatches; median of
``--repeats`` runs):

1. the loop alone;
2. the loop with a Tracker storing train/test loss and accuracy every ``--every`` steps (no measure);
3. the loop with a Tracker tracking ``top_hessian_eigenvalue`` every ``--every`` steps;
4. ``top_hessian_eigenvalue`` called directly on copies of the model at the steps the Tracker
   measured (same states, same data): what the measure itself costs;

and, beside the loop times, what closing the Tracker costs (report.html, summary.json, figures: once
per run). The Tracker measures on ``--points`` training points (and evaluates the 297 test points).

Run:  OMP_NUM_THREADS=1 python benchmarks/tracker.py            (1000 steps; about 4 min on 2 busy cores)
      OMP_NUM_THREADS=1 python benchmarks/tracker.py --quick    (200 steps)
      options: --steps N  --every N  --points N  --repeats N  --threads N (default 1)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from implicitreg import Tracker
from implicitreg.measures import top_hessian_eigenvalue


def model() -> nn.Module:
    """Conv(1→32) BN ReLU, Conv(32→64) BN ReLU, max-pool, Linear(1024→80) ReLU, Linear(80→10)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(64 * 4 * 4, 80), nn.ReLU(), nn.Linear(80, 10))


def direct(state: dict, sample) -> float:
    """Seconds of one direct call of the measure on a fresh model holding ``state`` (eval mode)."""
    net = model().eval()
    net.load_state_dict(state)
    start = time.perf_counter()
    top_hessian_eigenvalue(net, F.cross_entropy, sample)
    return time.perf_counter() - start


def loop(net: nn.Module, data, steps: int, tracker: Tracker | None = None, sample=None) -> tuple[float, float]:
    """Seconds for ``steps`` SGD steps (and the tracker's measurements among them); with ``sample``,
    the measure is also called directly on a copy of the model after each measured step — paired in
    time with the Tracker's call, so that the load of a busy machine affects both alike — and those
    seconds are returned second (and not counted in the first)."""
    (x, y), _ = data
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    start, paired = time.perf_counter(), 0.0
    for step in range(steps):
        net.train()
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = F.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if tracker is not None and tracker.step(net, step) and sample is not None:
            paired += direct(copy.deepcopy(net.state_dict()), sample)
    return time.perf_counter() - start - paired, paired


def tracked(data, steps: int, every: int, points: int, measures: list[str], out: Path) -> dict[str, float]:
    """Seconds of one loop with a Tracker: the loop, the Tracker's own measuring, closing it, and (with
    measures) the paired direct calls of the measure; and how many steps were measured."""
    (x, y), test = data
    net = model()
    sample = (x[:points], y[:points]) if measures else None
    tracker = Tracker(out, measures, every=every, train_data=sample or (x[:points], y[:points]), test_data=test,
                      model=net)
    with tracker:
        seconds, paired = loop(net, data, steps, tracker, sample)
        state = copy.deepcopy(net.state_dict())
        before = tracker.seconds
        closing = time.perf_counter()
    closed = time.perf_counter() - closing
    final = tracker.seconds - before  # the last step, measured at close (not due on the cadence)
    if sample is not None and final > 0:
        seconds, paired = seconds + final, paired + direct(state, sample)
    measured = len({s for s in range(steps) if s % every == 0} | {steps - 1})
    return {"loop": seconds, "inside": tracker.seconds, "close": closed - final, "direct": paired,
            "measured": measured}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--points", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.repeats = 200, 1
    torch.set_num_threads(args.threads)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(digits.target)
    data = ((x[:1500], y[:1500]), (x[1500:], y[1500:]))
    params = sum(p.numel() for p in model().parameters())

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            alone, _ = loop(model(), data, args.steps)
            evaluation = tracked(data, args.steps, args.every, args.points, [], Path(tmp) / f"eval{repeat}")
            hessian = tracked(data, args.steps, args.every, args.points, ["top_hessian_eigenvalue"],
                              Path(tmp) / f"hessian{repeat}")
            runs.append({"alone": alone, "eval": evaluation["loop"], "hessian": hessian["loop"],
                         "inside": hessian["inside"], "direct": hessian["direct"], "close": hessian["close"]})
    median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    measured = hessian["measured"]
    base = median["alone"]
    print(f"{params:,}-parameter Conv2d+BatchNorm net on digits; {args.steps} SGD steps of batch 64; "
          f"Tracker every {args.every} steps ({measured} measurements, the last at close) on {args.points} "
          f"training and 297 test points; {args.threads} thread(s); median of {args.repeats}")
    print(f"{'configuration':62s} {'seconds':>8s} {'vs loop':>8s}")
    table = [("loop alone", median["alone"]),
             ("loop + Tracker (loss, accuracy)", median["eval"]),
             ("loop + Tracker (loss, accuracy, top_hessian_eigenvalue)", median["hessian"]),
             ("  of which inside the Tracker's measurements", median["inside"]),
             (f"  the measure alone, called directly on the same {measured} states", median["direct"]),
             ("closing the Tracker (report.html, summary.json, figures)", median["close"])]
    for i, (label, seconds) in enumerate(table, 1):
        print(f"({i}) {label:58s} {seconds:8.2f} {seconds / base:7.2f}x")
    print(f"per measurement: {median['inside'] / measured:.2f} s in the Tracker (evaluation, measure, store), "
          f"{median['direct'] / measured:.2f} s for the measure alone")

if __name__ == "__main__":
    main()
