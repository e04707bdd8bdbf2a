"""Population vs. sequential loop: training-step throughput of P small MLPs, measured in one run.

What is measured, per device, hidden width H and population size P (MLP 40-H-H-10, SGD, batch 128,
float32, synthetic MNIST-1D-sized data, 4000 x 40):

- ``sequential``  what a user writes: P separate ``nn.Module``s, each with its own ``torch.optim.SGD``;
  every step loops over the members: forward, ``F.cross_entropy``, ``zero_grad``, ``backward``, ``step``.
- ``vmap``        ``Population(..., kernel="vmap")``: ``torch.func`` vmap over ``functional_call``.
- ``population``  ``Population(...)`` with its default kernel (the hand-batched MLP kernel).

Both population rows time the per-step composition of ``implicitreg.train.train_population``
(evaluation excluded): per-member batch indices from ``BatchOrders``, gather, ``loss_and_grad``, the
finite-loss mask, ``make_optimizer(...).update`` and ``apply_updates``. The sequential loop draws its
batches from the same ``BatchOrders`` streams.

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

CNN rows (``--part cnn``, or after the MLP table): explicit-vs-implicit's CNN (64 channels, kernels 5-3-3,
input 40, momentum SGD, batch 128), P = 10 by default: ``sequential`` (the plain loop, momentum SGD), ``im2col``
(``Population``'s default CNNKernel), ``grouped`` (the members as the groups of one conv1d per layer, autograd)
and, with ``--compile``, ``torch.compile`` of the grouped and of a functional im2col forward (AOTAutograd compiles
the backward; a compiler failure falls back to eager and is reported). The compile time (first call) is shown
and added in the "3000-step" column: the speed-up over the study's quick run of 3000 steps. Inductor caches
compiled code on disk: for a cold compile time set TORCHINDUCTOR_FORCE_DISABLE_CACHES=1. Before timing, the
grouped and functional im2col variants are checked against CNNKernel's loss and gradients in float64.

Run:  python benchmarks/population.py            (full: P in 1 8 64 256, H in 128 512, cpu [+ cuda])
      python benchmarks/population.py --quick    (P in 1 64, H 128, short timings; < 1 min on 2 cores)
      python benchmarks/population.py --part cnn --compile --threads 1    (the CNN rows alone)
      options: --device cpu|cuda|all  --sizes 1 8 64  --widths 128  --threads N  --json out.json
               --baseline PATH (an earlier run's JSON, printed beside; default baselines/population-eb629a0.json)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from implicitreg.cnn_kernel import CNNKernel
from implicitreg.config import CNNConfig, MLPConfig, TrainConfig
from implicitreg.models import build_model
from implicitreg.optim import apply_updates, make_optimizer
from implicitreg.population import Population
from implicitreg.sampling import BatchOrders, DropoutMasks, gather_rows
from implicitreg.seeding import generator

IN_DIM, OUT_DIM, N_TRAIN, BATCH, LR = 40, 10, 4000, 128, 0.05
TARGET = (64, 128)  # (P, H) of the headline
BASELINE = Path(__file__).parent / "baselines" / "population-eb629a0.json"


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


def loop_step(pop: Population, cfg: TrainConfig, x_all, y_all, dropout: DropoutMasks | None = None):
    """One step of train_population's loop (no evaluation) on ``pop``, as a closure over its state."""
    p, device = pop.size, pop.device
    optimizer = make_optimizer(cfg, torch.full((p,), cfg.lr, device=device), torch.zeros(p, device=device))
    orders = BatchOrders(range(p), N_TRAIN, BATCH, device)
    box = {"state": optimizer.init(pop.params), "step": 0, "active": torch.ones(p, dtype=torch.bool, device=device)}
    labels = y_all.expand(p, N_TRAIN)

    def step() -> None:
        idx = orders.batch(box["step"])
        x, y = gather_rows(x_all, idx), labels.gather(1, idx)
        masks = dropout.masks(box["step"], BATCH, pop.dtype) if dropout is not None else None
        loss, grads = pop.loss_and_grad(x, y, masks)
        box["active"] = box["active"] & torch.isfinite(loss)
        updates, box["state"] = optimizer.update(grads, box["state"], pop.params, box["step"])
        pop.params = apply_updates(pop.params, updates, box["active"])
        box["step"] += 1

    return step


def population_step(modules, x_all, y_all, device: str, kernel: str):
    """One step of train_population's loop for the MLP population (SGD)."""
    pop = Population(modules, loss="cross_entropy", device=device, dtype=torch.float32, kernel=kernel)
    cfg = TrainConfig(optimizer="sgd", lr=LR, batch_size=BATCH, max_steps=10**6, target_train_acc=None)
    return loop_step(pop, cfg, x_all, y_all)


def sequential_step(modules, x_all, y_all, device: str):
    """One step of the plain loop: every member does forward, loss, zero_grad, backward, SGD step."""
    models = [m.float().to(device) for m in modules]
    optimizers = [torch.optim.SGD(m.parameters(), lr=LR) for m in models]
    orders = [BatchOrders([seed], N_TRAIN, BATCH, device) for seed in range(len(models))]  # P = 1 each
    box = {"step": 0}

    def step() -> None:
        for model, opt, order in zip(models, optimizers, orders):
            idx = order.batch(box["step"])[0]
            loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        box["step"] += 1

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


# ---------------------------------------------------------------------------------------------------------------
# CNN rows: the explicit-vs-implicit CNN (MNIST-1D length 40, 3 conv layers of 64 channels, kernels 5-3-3,
# stride 2, read-out 320 -> 10), momentum SGD as that study trains it, P members, batch 128.

CNN_CHANNELS, CNN_P, CNN_STUDY_STEPS = 64, 10, 3000  # explicit-vs-implicit: CNNConfig(channels=64); quick: 3000 steps
CNN_MOMENTUM = 0.9


def cnn_flops(p: int) -> int:
    """Flops of one population step: 2 per multiply-add; forward, weight gradient, input gradient (not of layer 0)."""
    model = build_model("cnn", CNNConfig(channels=CNN_CHANNELS), IN_DIM, OUT_DIM, generator(0, "init"))
    fwd, back, c_in = [], [], 1
    for conv, length in zip(model.convs, model.lengths):
        macs = length * conv.out_channels * c_in * conv.kernel_size[0]
        fwd.append(macs)
        c_in = conv.out_channels
    fwd.append(model.readout.in_features * OUT_DIM)
    back = [2 * m for m in fwd]
    back[0] -= fwd[0]  # no gradient of the input
    return 2 * BATCH * p * (sum(fwd) + sum(back))


class GroupedConvKernel:
    """The CNN with its P members as the groups of one ``conv1d`` per layer (input [B, P·C_in, L], weight
    [P·C_out, C_in, k], ``groups=P``), backward by autograd; the read-out is one ``baddbmm``. Kernel layout:
    the module's, with conv weights [P, C_out, C_in, k], read-out [P, C·L, out] (transposed) and biases."""

    def __init__(self, model, loss: str):
        self.n_layers, self.loss = len(model.convs), loss

    def to_kernel(self, params):
        out = {k: v.contiguous() for k, v in params.items()}
        out["readout.weight"] = params["readout.weight"].transpose(1, 2).contiguous()
        return out

    def to_module(self, params):
        return {**params, "readout.weight": params["readout.weight"].transpose(1, 2)}

    def logits(self, params, x):
        """x: [P, B, L] → logits [P, B, out]."""
        p, b = x.shape[:2]
        h = x.transpose(0, 1)  # [B, P·1, L]
        for i in range(self.n_layers):
            w = params[f"convs.{i}.weight"]
            h = torch.relu(F.conv1d(h, w.reshape(-1, *w.shape[2:]), params[f"convs.{i}.bias"].reshape(-1),
                                    stride=2, padding=1, groups=p))
        flat = h.reshape(b, p, -1).transpose(0, 1)  # [P, B, C·L], channel-major as the module flattens
        return torch.baddbmm(params["readout.bias"].unsqueeze(1), flat, params["readout.weight"])

    def loss_and_grad(self, params, x, y, masks):
        if masks is not None:
            raise ValueError("GroupedConvKernel: the benchmark trains without dropout masks")
        leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
        loss = F.cross_entropy(self.logits(leaves, x).flatten(0, 1), y.flatten(), reduction="none").view(y.shape)
        loss = loss.mean(1)
        grads = torch.autograd.grad(loss.sum(), list(leaves.values()))
        return loss.detach(), dict(zip(leaves, grads))

    def forward(self, params, x):
        return self.logits(params, x.unsqueeze(0).expand(params["readout.bias"].shape[0], -1, -1))


class CompiledKernel:
    """``torch.compile`` of a kernel's forward and loss (``kernel.logits``); AOTAutograd compiles the backward.

    Compilation happens at the first call (and again for every new P or batch shape); ``compile_seconds`` is the
    wall time of that first call. If compilation fails the step falls back to the eager kernel.
    """

    def __init__(self, kernel):
        self.eager = kernel
        self.compile_seconds = None
        self.failed = None

        def member_losses(params, x, y):
            out = kernel.logits(params, x)
            return F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)

        self._losses = torch.compile(member_losses, dynamic=False)

    def to_kernel(self, params):
        return self.eager.to_kernel(params)

    def to_module(self, params):
        return self.eager.to_module(params)

    def loss_and_grad(self, params, x, y, masks):
        if self.failed is not None:
            return self.eager.loss_and_grad(params, x, y, masks)
        leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
        t0 = time.perf_counter()
        try:
            loss = self._losses(leaves, x, y)
            grads = torch.autograd.grad(loss.sum(), list(leaves.values()))
        except Exception as error:  # noqa: BLE001 - any compiler failure: report it, run eagerly
            self.failed = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            print(f"torch.compile failed, falling back to eager: {self.failed}")
            return self.eager.loss_and_grad(params, x, y, masks)
        if self.compile_seconds is None:
            self.compile_seconds = time.perf_counter() - t0
        return loss.detach(), dict(zip(leaves, grads))


class Im2colFunctional:
    """The im2col convolution written functionally (strided window view, ``baddbmm``), for ``torch.compile``
    to differentiate and fuse: same kernel layout as :class:`~implicitreg.cnn_kernel.CNNKernel`."""

    def __init__(self, model, loss: str):
        self.reference = CNNKernel(model, loss)
        self.kernels, self.lengths = self.reference.kernels, self.reference.lengths

    def to_kernel(self, params):
        return self.reference.to_kernel(params)

    def to_module(self, params):
        return self.reference.to_module(params)

    def logits(self, params, x):
        p, b = x.shape[:2]
        h = x.unsqueeze(-1)  # [P, B, L, 1]
        for i, (k, length) in enumerate(zip(self.kernels, self.lengths)):
            padded = F.pad(h, (0, 0, 1, 1))
            c = padded.shape[-1]
            cols = padded.unfold(2, k, 2).transpose(-1, -2).reshape(p, b * length, k * c)  # [P, B·L_out, k·C]
            h = torch.relu(torch.baddbmm(params[f"convs.{i}.bias"], cols, params[f"convs.{i}.weight"]))
            h = h.view(p, b, length, -1)
        # read-out classes first, as CNNKernel lays it out: [P, out, L·C]·[P, L·C, B] → [P, B, out]
        return torch.baddbmm(params["readout.bias"], params["readout.weight"], h.reshape(p, b, -1).transpose(1, 2)
                             ).transpose(1, 2)


def cnn_population_step(modules, x_all, y_all, device: str, kernel=None, rates=None):
    """One step of train_population's loop for the CNN (momentum SGD); ``kernel`` replaces the default one;
    ``rates``: per-member dropout rates (masks for the members that drop, as the engine draws them)."""
    p = len(modules)
    dropout = DropoutMasks(range(p), rates or [0.0] * p, modules[0].hidden_shapes(), device)
    pop = Population(modules, loss="cross_entropy", device=device, dtype=torch.float32)
    if kernel is not None:
        pop.params = kernel.to_kernel(pop.kernel.to_module(pop.params))
        pop.kernel = kernel
    cfg = TrainConfig(optimizer="momentum", lr=LR, momentum=CNN_MOMENTUM, batch_size=BATCH, max_steps=10**6,
                      target_train_acc=None)
    return loop_step(pop, cfg, x_all, y_all, dropout)


def cnn_sequential_step(modules, x_all, y_all, device: str, rates=None):
    """The plain loop for the CNN: every member does forward, loss, zero_grad, backward, momentum-SGD step;
    ``rates``: per-member dropout rates (a member draws masks only if its rate is positive)."""
    models = [copy.deepcopy(m).float().to(device) for m in modules]
    dropouts = [DropoutMasks([seed], [rate], modules[0].hidden_shapes(), device)
                for seed, rate in enumerate(rates or [0.0] * len(models))]
    optimizers = [torch.optim.SGD(m.parameters(), lr=LR, momentum=CNN_MOMENTUM) for m in models]
    orders = [BatchOrders([seed], N_TRAIN, BATCH, device) for seed in range(len(models))]  # P = 1 each
    box = {"step": 0}

    def step() -> None:
        for model, opt, order, dropout in zip(models, optimizers, orders, dropouts):
            idx = order.batch(box["step"])[0]
            masks = dropout.masks(box["step"], BATCH, torch.float32)
            out = model(x_all[idx]) if masks is None else model(x_all[idx], [m[0] for m in masks])
            loss = F.cross_entropy(out, y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        box["step"] += 1

    return step


def run_cnn_config(device: str, p: int, args, peak: float) -> list[dict]:
    """Rows sequential, grouped, im2col (the default CNNKernel), with --compile the compiled variants, and
    sequential+dropout / im2col+dropout: the study's mix, 4 members in 10 at dropout 0.5 (their speed-up is
    against sequential+dropout)."""
    data_gen = torch.Generator().manual_seed(0)
    x_all = torch.randn(N_TRAIN, IN_DIM, generator=data_gen).to(device)
    y_all = torch.randint(0, OUT_DIM, (N_TRAIN,), generator=data_gen).to(device)
    config = CNNConfig(channels=CNN_CHANNELS)
    modules = [build_model("cnn", config, IN_DIM, OUT_DIM, generator(seed, "init")) for seed in range(p)]
    flops = cnn_flops(p)
    makers = {
        "im2col": lambda: cnn_population_step(modules, x_all, y_all, device),
        "grouped": lambda: cnn_population_step(modules, x_all, y_all, device, GroupedConvKernel(modules[0], "")),
    }
    compiled = {}
    if args.compile:
        for name, base in (("im2col+compile", Im2colFunctional), ("grouped+compile", GroupedConvKernel)):
            compiled[name] = CompiledKernel(base(modules[0], "cross_entropy"))
            makers[name] = (lambda k: lambda: cnn_population_step(modules, x_all, y_all, device, k))(compiled[name])
    rates = [0.0] * (p - p * 2 // 5) + [0.5] * (p * 2 // 5)  # explicit-vs-implicit: 2 dropout arms of 5
    makers["im2col+dropout"] = lambda: cnn_population_step(modules, x_all, y_all, device, rates=rates)
    makers["sequential"] = lambda: cnn_sequential_step(modules, x_all, y_all, device)
    makers["sequential+dropout"] = lambda: cnn_sequential_step(modules, x_all, y_all, device, rates=rates)
    steps = {name: make() for name, make in makers.items()}
    rows = []
    order = ["sequential", *[m for m in steps if "sequential" not in m and "dropout" not in m],
             "sequential+dropout", "im2col+dropout"]
    for method in order:
        if method in compiled:  # the first call compiles: timed alone, then the step is warm
            t0 = time.perf_counter()
            steps[method]()
            first = time.perf_counter() - t0
        sec, n, capped = timed(steps[method], device, args.warmup, args.min_time, args.max_time, args.repeats)
        row = dict(device=device, model=f"cnn{CNN_CHANNELS}", P=p, method=method, ms_step=sec * 1e3,
                   ms_member_step=sec * 1e3 / p, gflops=flops / sec / 1e9, peak_fraction=flops / sec / 1e9 / peak,
                   steps_timed=n, capped=capped, compile_s=None, load=os.getloadavg()[0])
        if method in compiled:
            row["compile_s"] = first
            row["fallback"] = compiled[method].failed
        rows.append(row)
        del steps[method]
    base = {r["method"]: r["ms_step"] for r in rows}
    for row in rows:
        reference = base["sequential+dropout" if "dropout" in row["method"] else "sequential"]
        row["speedup"] = reference / row["ms_step"]
        # over the study's steps, compile time included: (compile + steps·t) against sequential steps·t
        total = (row["compile_s"] or 0.0) + CNN_STUDY_STEPS * row["ms_step"] / 1e3
        row["amortized_speedup"] = CNN_STUDY_STEPS * reference / 1e3 / total
    return rows


def write_cnn_json(args, peaks: dict, cnn_rows: list[dict]) -> None:
    if args.json:
        meta = dict(torch=torch.__version__, threads=torch.get_num_threads(), batch=BATCH, sgemm_peak_gflops=peaks,
                    min_time=args.min_time, repeats=args.repeats, load_average=os.getloadavg()[0])
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": [], "cnn_rows": cnn_rows}, f, indent=1)
        print(f"rows written to {args.json}")


CNN_HEADER = (f"{'device':<6} {'model':<6} {'P':>3}  {'method':<18} {'ms/step':>8} {'speed-up':>8} "
              f"{'GFLOP/s':>8} {'% peak':>7} {'compile s':>9} {f'{CNN_STUDY_STEPS}-step':>10} {'load':>5}")


def format_cnn_row(r: dict) -> str:
    mark = "*" if r["capped"] else " "
    comp = f"{r['compile_s']:9.1f}" if r["compile_s"] is not None else f"{'-':>9}"
    return (f"{r['device']:<6} {r['model']:<6} {r['P']:>3}  {r['method']:<18} {r['ms_step']:>8.2f} "
            f"{r['speedup']:>7.2f}x {r['gflops']:>8.1f} {100 * r['peak_fraction']:>6.1f}% {comp} "
            f"{r['amortized_speedup']:>9.2f}x {r['load']:>5.2f}{mark}")


def check_cnn_variants() -> None:
    """The grouped and functional-im2col variants give CNNKernel's loss and gradients (float64, P=3, B=8)."""
    modules = [build_model("cnn", CNNConfig(channels=4), IN_DIM, OUT_DIM, generator(s, "init")) for s in range(3)]
    x, y = torch.randn(3, 8, IN_DIM, dtype=torch.float64), torch.randint(0, OUT_DIM, (3, 8))
    reference = Population(modules, dtype=torch.float64)
    loss, grads = reference.loss_and_grad(x, y)
    want = {k: v.clone() for k, v in reference.kernel.to_module(grads).items()}
    for variant in (GroupedConvKernel(modules[0], "cross_entropy"),
                    CompiledKernel(Im2colFunctional(modules[0], "cross_entropy")).eager):
        params = variant.to_kernel(reference.module_params())
        if isinstance(variant, Im2colFunctional):  # eager autograd of its logits
            leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
            got_loss = F.cross_entropy(variant.logits(leaves, x).flatten(0, 1), y.flatten(),
                                       reduction="none").view(y.shape).mean(1)
            got = dict(zip(leaves, torch.autograd.grad(got_loss.sum(), list(leaves.values()))))
        else:
            got_loss, got = variant.loss_and_grad(params, x, y, None)
        # float64, the same arithmetic up to summation order: 1e-10 is far above rounding (~1e-15)
        torch.testing.assert_close(got_loss, loss, rtol=1e-10, atol=1e-12)
        for k, v in variant.to_module(got).items():
            torch.testing.assert_close(v, want[k], rtol=1e-10, atol=1e-12, msg=lambda m: f"{type(variant)} {k}: {m}")


def run_cnn(args, devices: list[str], peaks: dict) -> list[dict]:
    """Print the CNN table; return its rows."""
    check_cnn_variants()
    print(f"CNN: explicit-vs-implicit's ({CNN_CHANNELS} channels, kernels 5-3-3, input {IN_DIM}), momentum SGD, "
          f"batch {BATCH}, float32")
    print(CNN_HEADER)
    print("-" * len(CNN_HEADER))
    rows = []
    for device in devices:
        for p in args.cnn_sizes:
            for row in run_cnn_config(device, p, args, peaks[device]):
                rows.append(row)
                print(format_cnn_row(row), flush=True)
            print()
    print(f"GFLOP/s counts forward, weight- and input-gradient multiply-adds of the convolutions and read-out; "
          f"{CNN_STUDY_STEPS}-step: speed-up over the study's {CNN_STUDY_STEPS} steps with the compile time added.")
    return rows


def print_beside_baseline(rows: list[dict], path: str) -> None:
    """This run's speed-ups and peak fractions beside those of an earlier run's matching rows.

    Each run's ratios are within that run (sequential and sgemm peak measured beside the rows), so
    they compare across runs better than times do; the earlier run's machine load is printed too.
    """
    try:
        with open(path) as f:
            earlier = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        print(f"baseline {path}: not read ({err})\n")
        return
    key = lambda r: (r["device"], r["hidden"], r["P"], r["method"])  # noqa: E731
    before = {key(r): r for r in earlier["rows"]}
    meta = earlier.get("meta", {})
    print(f"beside {path} (commit {meta.get('commit', '?')}, load {meta.get('load_average', float('nan')):.2f}, "
          f"sgemm peak {meta.get('sgemm_peak_gflops', {})}):")
    print(f"{'device':<6} {'H':>4} {'P':>4}  {'method':<10} {'speed-up before':>15} {'now':>6} "
          f"{'% peak before':>13} {'now':>6}")
    for r in rows:
        b = before.get(key(r))
        if b is not None and r["method"] != "sequential":
            print(f"{r['device']:<6} {r['hidden']:>4} {r['P']:>4}  {r['method']:<10} {b['speedup']:>14.2f}x "
                  f"{r['speedup']:>5.2f}x {100 * b['peak_fraction']:>12.1f}% {100 * r['peak_fraction']:>5.1f}%")
    print()


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
    parser.add_argument("--part", choices=["all", "mlp", "cnn"], default="all", help="which tables to run")
    parser.add_argument("--cnn-sizes", type=int, nargs="+", default=[CNN_P], help="CNN population sizes (default 10)")
    parser.add_argument("--compile", action="store_true", help="CNN: also time torch.compile'd variants")
    parser.add_argument("--baseline", metavar="PATH", default=str(BASELINE),
                        help="JSON of an earlier run whose MLP rows are printed beside this run's "
                             "(default: the engine before counter-based streams, commit eb629a0); '' for none")
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
    if args.part == "cnn":
        write_cnn_json(args, peaks, run_cnn(args, devices[args.device], peaks))
        return
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
    if args.baseline:
        print_beside_baseline(rows, args.baseline)
    for device in devices[args.device]:
        hit = {r["method"]: r for r in rows if (r["device"], r["P"], r["hidden"]) == (device, *TARGET)}
        if "population" in hit:
            pop = hit["population"]
            print(f"[{device}] P={TARGET[0]}, H={TARGET[1]}, batch {BATCH}: population {pop['speedup']:.1f}× "
                  f"the sequential loop, {100 * pop['peak_fraction']:.0f}% of measured sgemm peak "
                  "(targets: ≥2×, ≥60%)")
        else:
            print(f"[{device}] target configuration P={TARGET[0]}, H={TARGET[1]} was not run")
    cnn_rows = run_cnn(args, devices[args.device], peaks) if args.part == "all" else []
    if args.json:
        meta = dict(torch=torch.__version__, threads=torch.get_num_threads(), batch=BATCH, sgemm_peak_gflops=peaks,
                    min_time=args.min_time, repeats=args.repeats, load_average=os.getloadavg()[0])
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows, "cnn_rows": cnn_rows}, f, indent=1)
        print(f"rows written to {args.json}")


if __name__ == "__main__":
    main()
