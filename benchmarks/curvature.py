"""Curvature against the peers: PyHessian, curvlinops and hessian-eigenthings on the same trained
MNIST-1D MLP and the same batch, with a dense float64 reference, in one run.

What is measured (float64 throughout; the model is trained in float32 and measured in float64):

1. A 40-32-32-10 ReLU MLP (2,698 parameters; ``--hidden``) trained on MNIST-1D (SGD with momentum,
   batch 128), measured on N training points (``--n``, default 2000) as one batch.
2. Reference: the dense Hessian (``torch.func.jacfwd`` of ``torch.func.grad``, forward-over-reverse:
   not the reverse-over-reverse products the tools use) and its ``eigvalsh`` spectrum and trace.
3. One HVP: the cost of a product in each tool (ms; ours one at a time and batched per probe, by
   the written-out ReLU-MLP products that ``hessian_operator`` uses for this model and by autograd,
   and one quadratic form vᵀHv, which is all Hutchinson's trace needs), beside a plain gradient
   (one forward and backward) for scale; 15 interleaved rounds.
4. Top eigenvalue to 1e-3 and top-5 to 1e-3, each tool with its own stopping rule at 1e-3:
   ours Lanczos (residual bound), PyHessian power iteration (relative change), hessian-eigenthings
   Lanczos (fixed steps: the fewest of 5, 10, 15, … whose own residual test passes; the
   timing is of that run alone), curvlinops through scipy's ``eigsh`` (ARPACK, ``tol=1e-3``).
5. The trace at 100 products: Hutchinson in every tool (PyHessian with tol 0 so that it runs all
   100; ours from 100 quadratic forms vᵀHv, the others from 100 HVPs), and Hutch++ at 99 where a
   tool has it (ours, curvlinops, hessian-eigenthings); median error over ``--seeds`` probe seeds.
6. A population of ``--population`` models (random inits of the same MLP, the same batch): λ1 to
   1e-3 and the Hutchinson trace at 100 products of all of them in one population call, against a
   loop over the models of each peer's single-model call (hessian-eigenthings with each model's
   own fewest steps, found untimed); the ratio to the fastest loop is the headline
   (``--population-only`` runs this part alone, without training or the dense reference).

Every wall time includes building the tool's operator (ours and PyHessian compute the gradient
graph there) and is the median of ``--repeats`` runs after one untimed warm-up run, interleaved across tools so that the load
of a shared machine falls on all of them alike; ratios are peer / ours in the same run. HVPs are
counted by wrapping each tool's product function. A peer that does not import is skipped, said so.

Install the peers with ``pip install -e ".[peers]"``.

Run:  python benchmarks/curvature.py              (N = 2000, 3 repeats, 3 trace seeds; ~2 min on 2 cores)
      python benchmarks/curvature.py --quick      (N = 500, 1 repeat, 1 seed)
      python benchmarks/curvature.py --population-only   (item 6 alone)
      options: --n N  --hidden 32 32  --repeats R  --seeds S  --population P  --threads T (default 1)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

from implicitreg.config import MLPConfig
from implicitreg.data import load_mnist1d
from implicitreg.measures.curvature import hessian_eigenvalues, hessian_operator, hessian_trace, operator_eigenvalues
from implicitreg.measures.density import hessian_density
from implicitreg.models import build_model
from implicitreg.population import Population
from implicitreg.seeding import generator

TOL = 1e-3


def train(x: torch.Tensor, y: torch.Tensor, hidden: list[int], steps: int, seed: int = 0) -> nn.Module:
    """SGD with momentum, batch 128, float32; returned in float64, eval mode."""
    model = build_model("mlp", MLPConfig(hidden=hidden), 40, 10, generator(seed, "init")).float()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=g)
        loss = F.cross_entropy(model(x[idx].float()), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.double().eval()


def dense_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[n, n] Hessian of the mean cross-entropy by forward-over-reverse, 64 columns at a time."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(theta):
        params = {n: c.view(s) for n, c, s in zip(names, theta.split(sizes), shapes)}
        return F.cross_entropy(functional_call(model, params, (x,)), y)

    eye = torch.eye(flat.numel(), dtype=flat.dtype)
    H = vmap(lambda e: jvp(grad(loss), (flat,), (e,))[1], chunk_size=64)(eye)
    return (H + H.T) / 2


def clear_grads(model: nn.Module) -> None:
    """PyHessian calls ``loss.backward(create_graph=True)``: a gradient left in ``.grad`` by an
    earlier run would be added to the new one, and with it its graph (a doubled Hessian)."""
    for p in model.parameters():
        p.grad = None


class Counter:
    """Counts products through a wrapped function: ``columns(args)`` says how many each call made."""

    def __init__(self):
        self.n = 0

    def wrap(self, fn: Callable, columns: Callable = lambda *a: 1) -> Callable:
        def counted(*args, **kwargs):
            self.n += columns(*args)
            return fn(*args, **kwargs)
        return counted


# ---------------------------------------------------------------------------------- tools
# Each task function returns (value, products); value: float or a [k] array (largest first).


def ours_top(model, x, y, k):
    r = hessian_eigenvalues(model, F.cross_entropy, (x, y), k=k, tol=TOL, max_hvp=300)
    return r.values.numpy(), r.n_hvp


def ours_trace(model, x, y, method, m, seed):
    r = hessian_trace(model, F.cross_entropy, (x, y), method=method, n_matvecs=m, seed=seed)
    return float(r.value), r.n_hvp


def ours_density(model, x, y, probes, steps):
    r = hessian_density(model, F.cross_entropy, (x, y), n_probes=probes, n_iter=steps)
    return r.nodes.numpy(), r.weights.numpy(), r.n_hvp


def pyhessian_tools():
    import sys

    import pyhessian.utils as phu  # (the package __init__ rebinds the name pyhessian.hessian to the class)

    ph = sys.modules["pyhessian.hessian"]

    def make(model, x, y):
        clear_grads(model)
        counter = Counter()
        ph.hessian_vector_product = counter.wrap(phu.hessian_vector_product)
        return ph.hessian(model, nn.CrossEntropyLoss(), data=(x, y), cuda=False), counter

    def top(model, x, y, k):
        h, c = make(model, x, y)
        values, _ = h.eigenvalues(maxIter=300, tol=TOL, top_n=k)
        return np.sort(np.array(values))[::-1], c.n

    def trace(model, x, y, method, m, seed):
        torch.manual_seed(seed)
        h, c = make(model, x, y)
        return float(np.mean(h.trace(maxIter=m, tol=0.0))), c.n

    def hvp(model, x, y):
        h, _ = make(model, x, y)
        v = [torch.randn_like(p) for p in h.params]
        return lambda: phu.hessian_vector_product(h.gradsH, h.params, v)

    def density(model, x, y, probes, steps):
        h, c = make(model, x, y)
        nodes, weights = h.density(iter=steps, n_v=probes)
        return np.ravel(nodes), np.ravel(weights) / probes, c.n

    return {"top": top, "trace": trace, "hvp": hvp, "density": density, "methods": ("hutchinson",)}


def eigenthings_tools():
    import hessian_eigenthings as he

    def make(model, x, y):
        op = he.HessianOperator(model, [(x, y)], he.supervised_loss(F.cross_entropy))
        counter = Counter()
        op.matvec = counter.wrap(op.matvec)
        return op, counter

    def top(model, x, y, k):
        # fixed-step Lanczos: the fewest steps (multiples of 5) whose own residual test passes at TOL,
        # found beforehand; that run alone is timed (see top_steps)
        op, c = make(model, x, y)
        r = he.lanczos(op, k=k, max_iter=top_steps[id(model), k], tol=TOL, which="LA", seed=0)
        return r.eigenvalues.numpy(), c.n

    top_steps: dict[tuple[int, int], int] = {}  # (id(model), k) → steps

    def find_steps(model, x, y, k):
        for m in range(max(5, 2 * k), 301, 5):
            op, _ = make(model, x, y)
            if bool(he.lanczos(op, k=k, max_iter=m, tol=TOL, which="LA", seed=0).converged.all()):
                top_steps[id(model), k] = m
                return m
        top_steps[id(model), k] = 300
        return 300

    def trace(model, x, y, method, m, seed):
        op, c = make(model, x, y)
        fn = he.hutchinson(op, num_samples=m, seed=seed) if method == "hutchinson" else \
            he.hutch_plus_plus(op, num_matvecs=m, seed=seed)
        return float(fn.estimate), c.n

    def hvp(model, x, y):
        op, _ = make(model, x, y)
        v = torch.randn(op.size, dtype=torch.float64)
        return lambda: op.matvec(v)

    def density(model, x, y, probes, steps):
        op, c = make(model, x, y)
        r = he.spectral_density(op, num_runs=probes, lanczos_steps=steps, seed=0)
        return np.ravel(r.raw_eigenvalues), np.ravel(r.raw_weights) / probes, c.n

    return {"top": top, "trace": trace, "hvp": hvp, "density": density, "prepare": find_steps,
            "methods": ("hutchinson", "hutchpp")}


def curvlinops_tools():
    import curvlinops as cl
    from scipy.sparse.linalg import eigsh

    def make(model, x, y):
        params = [p for p in model.parameters() if p.requires_grad]
        op = cl.HessianLinearOperator(model, nn.CrossEntropyLoss(), params, [(x, y)], check_deterministic=False)
        counter = Counter()
        op._matmat_batch = counter.wrap(op._matmat_batch, lambda X, y, M: M[0].shape[-1])
        return op, counter

    def top(model, x, y, k):
        op, c = make(model, x, y)
        values = eigsh(op.to_scipy(), k=k, which="LA", tol=TOL, v0=np.random.default_rng(0).standard_normal(op.shape[0]),
                       return_eigenvectors=False)
        return np.sort(values)[::-1], c.n

    def trace(model, x, y, method, m, seed):
        torch.manual_seed(seed)
        op, c = make(model, x, y)
        fn = cl.hutchinson_trace if method == "hutchinson" else cl.hutchpp_trace
        return float(fn(op, m)), c.n

    def hvp(model, x, y):
        op, _ = make(model, x, y)
        v = torch.randn(op.shape[1], dtype=torch.float64)
        return lambda: op @ v

    def density(model, x, y, probes, steps):
        # Papyan's LanczosApproxSpec returns a smoothed density on a grid (no quadrature nodes): its
        # measure is the grid weighted by density · spacing, normalized
        op, c = make(model, x, y)
        grid, values = cl.lanczos_approximate_spectrum(op, ncv=steps, num_repeats=probes)
        weights = np.asarray(values, dtype=np.float64) * float(grid[1] - grid[0])
        return np.asarray(grid, dtype=np.float64), weights / weights.sum(), c.n

    return {"top": top, "trace": trace, "hvp": hvp, "density": density, "methods": ("hutchinson", "hutchpp")}


PEERS = {"PyHessian": pyhessian_tools, "hessian-eigenthings": eigenthings_tools, "curvlinops": curvlinops_tools}


# ---------------------------------------------------------------------------------- timing


def timed(fn: Callable) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def rel(value, ref) -> float:
    value, ref = np.atleast_1d(np.asarray(value, dtype=np.float64)), np.atleast_1d(np.asarray(ref, dtype=np.float64))
    return float(np.max(np.abs(value - ref) / np.abs(ref)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N = 500, 1 repeat, 1 trace seed")
    ap.add_argument("--n", type=int, default=None, help="training points in the batch (default 2000)")
    ap.add_argument("--hidden", type=int, nargs="+", default=[32, 32])
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--seeds", type=int, default=None, help="probe seeds of the trace estimates")
    ap.add_argument("--steps", type=int, default=3000, help="SGD steps of training")
    ap.add_argument("--population", type=int, default=16, help="models of the population comparison (1: skip it)")
    ap.add_argument("--population-only", action="store_true",
                    help="only the population comparison (no training, no dense reference, no single-model tasks)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: the machine is shared; compare tools on equal terms)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n = args.n or (500 if args.quick else 2000)
    repeats = args.repeats or (1 if args.quick else 3)
    seeds = args.seeds or (1 if args.quick else 3)

    peers, skipped = {}, {}
    for name, load in PEERS.items():
        try:
            peers[name] = load()
        except Exception as e:  # an uninstalled or broken peer is reported, not fatal
            skipped[name] = f"{type(e).__name__}: {e}"
    versions = {}
    for dist in ("pyhessian", "curvlinops-for-pytorch", "hessian-eigenthings"):
        try:
            from importlib.metadata import version
            versions[dist] = version(dist)
        except Exception:
            versions[dist] = "not installed"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.2f}; "
          + ", ".join(f"{k} {v}" for k, v in versions.items()))
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")

    data = load_mnist1d(n_train=max(n, 1000), n_test=100)
    xa, ya = torch.as_tensor(data.x_train), torch.as_tensor(data.y_train)
    if args.population_only:
        torch.set_default_dtype(torch.float64)  # PyHessian draws its vectors in the default dtype
        headline = population(peers, xa[:n].double(), ya[:n], args.hidden, args.population, repeats)
        report(headline)
        return
    t0 = time.perf_counter()
    model = train(xa, ya, args.hidden, args.steps)
    x, y = xa[:n].double(), ya[:n]
    torch.set_default_dtype(torch.float64)  # PyHessian draws its vectors in the default dtype
    with torch.no_grad():
        out = model(x)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"MLP 40-{'-'.join(map(str, args.hidden))}-10, {n_params} parameters, trained {args.steps} steps "
          f"({time.perf_counter() - t0:.1f} s); batch N = {n}: loss {float(F.cross_entropy(out, y)):.4f}, "
          f"accuracy {float((out.argmax(1) == y).double().mean()):.3f}")

    t_dense, H = timed(lambda: dense_hessian(model, x, y))
    evals = torch.linalg.eigvalsh(H).flip(0).numpy()
    tr = float(H.trace())
    print(f"reference (dense float64, {t_dense:.1f} s): λ1..5 = {np.array2string(evals[:5], precision=5)}, "
          f"λmin = {evals[-1]:.4g}, tr = {tr:.6g}")

    # --- one product --------------------------------------------------------------------------
    op = hessian_operator(model, F.cross_entropy, (x, y))
    v = torch.randn(1, op.dim, generator=torch.Generator().manual_seed(0))
    V = torch.randn(1, 20, op.dim, generator=torch.Generator().manual_seed(1))
    params = list(model.parameters())

    def plain_gradient():
        return torch.autograd.grad(F.cross_entropy(model(x), y), params)

    by_autograd = hessian_operator(model, F.cross_entropy, (x, y), autograd=True)
    one = {"plain gradient (forward + backward)": plain_gradient,
           "ours, one product": lambda: op.matvec(v),
           "ours, 20 probes batched (per probe)": lambda: op.matmat(V),
           "ours, one quadratic form vᵀHv": lambda: op.quadratic_forms(v[:, None]),
           "ours by autograd, one product": lambda: by_autograd.matvec(v),
           "ours by autograd, 20 probes (per probe)": lambda: by_autograd.matmat(V)}
    for name, tools in peers.items():
        one[f"{name}, one product"] = tools["hvp"](model, x, y)
    per_hvp: dict[str, list[float]] = {name: [] for name in one}
    for fn in one.values():
        fn()  # warm-up
    for _ in range(15):  # interleaved rounds: the load of a shared machine falls on all alike
        for name, fn in one.items():
            per_hvp[name].append(timed(fn)[0] / (20 if "20 probes" in name else 1))
    print()
    print(f"{'one HVP (15 interleaved rounds)':<44}{'median ms':>10}{'min ms':>8}{'/ gradient':>11}")
    grad_med = statistics.median(per_hvp["plain gradient (forward + backward)"])
    for name, ts in per_hvp.items():
        print(f"  {name:<42}{1e3 * statistics.median(ts):>10.2f}{1e3 * min(ts):>8.2f}"
              f"{statistics.median(ts) / grad_med:>10.2f}x")

    # --- tasks --------------------------------------------------------------------------------
    tasks = []  # (task, tool, run(seed) → (value, hvps), reference); eigenvalue runs ignore the seed
    for k, label in ((1, "λ1 to 1e-3"), (5, "top-5 to 1e-3")):
        ref = evals[:k]
        tasks.append((label, "ours (Lanczos)", lambda s, k=k: ours_top(model, x, y, k), ref))
        for name, tools in peers.items():
            if "prepare" in tools:
                tools["prepare"](model, x, y, k)
            rule = {"PyHessian": "power", "hessian-eigenthings": "Lanczos", "curvlinops": "eigsh"}[name]
            tasks.append((label, f"{name} ({rule})", lambda s, t=tools, k=k: t["top"](model, x, y, k), ref))
    for method, m in (("hutchinson", 100), ("hutchpp", 99)):
        label = f"trace, {method} {m}"
        tasks.append((label, "ours", lambda s, method=method, m=m: ours_trace(model, x, y, method, m, s), tr))
        for name, tools in peers.items():
            if method in tools["methods"]:
                tasks.append((label, name, lambda s, t=tools, method=method, m=m: t["trace"](model, x, y, method, m, s),
                              tr))

    times: dict[int, list[float]] = {i: [] for i in range(len(tasks))}
    results: dict[int, tuple] = {}
    for _, _, run, _ in tasks:  # warm-up, untimed: first calls pay for lazy initialisation (vmap, allocator)
        run(0)
    for _ in range(repeats):  # interleaved: every tool sees the same load
        for i, (_, _, run, _) in enumerate(tasks):
            t, results[i] = timed(lambda: run(0))
            times[i].append(t)
    errors: dict[int, float] = {}
    for i, (label, _, run, ref) in enumerate(tasks):
        errs = [rel(results[i][0], ref)]
        if label.startswith("trace"):  # the median error over probe seeds
            errs += [rel(run(s)[0], ref) for s in range(1, seeds)]
        errors[i] = statistics.median(errs)

    print()
    print(f"{'task':<24}{'tool':<32}{'HVPs':>6}{'wall ms':>10}{'rel. error':>12}{'peer/ours':>11}")
    headline = []
    for i, (label, tool, _, _) in enumerate(tasks):
        ours_i = next(j for j, t in enumerate(tasks) if t[0] == label and t[1].startswith("ours"))
        wall = statistics.median(times[i])
        ratio = wall / statistics.median(times[ours_i])
        hvps = results[i][1]
        print(f"{label:<24}{tool:<32}{int(hvps):>6}{1e3 * wall:>10.1f}{errors[i]:>12.1e}"
              f"{'' if i == ours_i else f'{ratio:>10.2f}x':>11}")
        if i != ours_i:
            headline.append((label, tool, ratio))
    err_note = f"trace errors: median over {seeds} probe seed(s)" if seeds > 1 else "trace errors: one probe seed"
    print(f"(wall: median of {repeats} interleaved run(s), operator build included; {err_note}; "
          f"eigenvalue errors: max over the k values, relative to the dense reference)")
    # --- the spectral density ------------------------------------------------------------------
    # Wasserstein-1 distance between each tool's spectral measure and the dense spectrum, over the
    # spectral range (the reference test's criterion: ≤ 0.01); a peer that fails is reported
    from scipy.stats import wasserstein_distance

    probes, steps = (3, 60) if args.quick else (10, 100)
    spread = float(evals[0] - evals[-1])
    density_tools = {"ours (SLQ)": lambda: ours_density(model, x, y, probes, steps)}
    for name, tools in peers.items():
        if "density" in tools:
            density_tools[name] = lambda t=tools: t["density"](model, x, y, probes, steps)
    print()
    print(f"spectral density, {probes} probes × {steps} Lanczos steps: W1 to the dense spectrum / (λmax − λmin)")
    print(f"{'tool':<32}{'HVPs':>6}{'wall ms':>10}{'W1 / range':>12}{'peer/ours':>11}")
    ours_wall = None
    for name, fn in density_tools.items():
        try:
            fn()  # warm-up
            walls = []
            for _ in range(repeats):
                wall, (nodes, weights, hvps) = timed(fn)
                walls.append(wall)
        except Exception as e:  # a peer's density that does not run on this torch is reported
            print(f"{name:<32}  fails: {type(e).__name__}: {str(e).splitlines()[0][:70]}")
            continue
        wall = statistics.median(walls)
        ours_wall = wall if ours_wall is None else ours_wall
        keep = np.asarray(weights) > 0
        w1 = wasserstein_distance(np.asarray(nodes)[keep], evals, u_weights=np.asarray(weights)[keep]) / spread
        ratio = "" if wall == ours_wall else f"{wall / ours_wall:>10.2f}x"
        print(f"{name:<32}{int(np.sum(hvps)):>6}{1e3 * wall:>10.1f}{w1:>12.1e}{ratio:>11}")

    if args.population > 1:
        headline += population(peers, x, y, args.hidden, args.population, repeats)
    report(headline)


def report(headline: list[tuple[str, str, float]]) -> None:
    """One line: where a peer was faster, and where the two were level (within ±5%: repeated runs
    on this machine move a ratio by that much, so a 1.02× is not called a win)."""
    slower = [f"{tool} on {label} ({r:.2f}x)" for label, tool, r in headline if r < 0.95]
    level = [f"{tool} on {label} ({r:.2f}x)" for label, tool, r in headline if 0.95 <= r < 1.05]
    print()
    if slower:
        print("headline: a peer was faster on: " + "; ".join(slower))
    else:
        print("headline: ours is faster than every peer on every task"
              + (", except level (within ±5%) with " + "; ".join(level) if level else ""))
    print(f"load average now {os.getloadavg()[0]:.2f}")


def population(peers: dict, x: torch.Tensor, y: torch.Tensor, hidden: list[int], P: int,
               repeats: int) -> list[tuple[str, str, float]]:
    """λ1 to 1e-3 and the Hutchinson trace at 100 products of P random inits: one population call
    against a loop of every peer's single-model calls; prints the table, returns the headline rows
    (task, the fastest peer's loop, loop / ours)."""
    members = [build_model("mlp", MLPConfig(hidden=hidden), 40, 10, generator(s, "init")).double().eval()
               for s in range(1, P + 1)]
    pop = Population(members, dtype=torch.float64)

    def pop_trace():  # [P, 2]: value, products (every member's 100 run in the same passes)
        r = hessian_trace(pop, F.cross_entropy, (x, y), n_matvecs=100, seed=0)
        return np.stack([r.value.numpy(), np.full(P, r.n_hvp)], 1)

    computed: list[int] = []  # member-HVPs the population's λ1 computed, counted through its operator

    def counted(op):
        def matvec(v):
            computed[-1] += v.shape[0]
            return op.matvec(v)
        return dataclasses.replace(op, matvec=matvec, restrict=lambda idx: counted(op.members(idx)))

    def pop_top():  # [P, 2]: value, products the member's result used (computed: ``computed``)
        computed.append(0)
        r = operator_eigenvalues(counted(hessian_operator(pop, F.cross_entropy, (x, y))), k=1, tol=TOL, max_hvp=300)
        return np.stack([r.values[:, 0].numpy(), r.n_hvp.numpy()], 1)

    tasks = {"λ1 to 1e-3": pop_top, "trace, Hutchinson 100": pop_trace}
    jobs: dict[tuple[str, str], Callable] = {}
    for task, ours in tasks.items():
        jobs[task, "ours, one population call"] = ours
        for name, tools in peers.items():
            if task.startswith("λ1"):
                if "prepare" in tools:  # untimed: each model's own fewest steps
                    for m in members:
                        tools["prepare"](m, x, y, 1)
                jobs[task, f"{name}, loop over {P} models"] = lambda t=tools: np.array(
                    [(r[0][0], r[1]) for r in (t["top"](m, x, y, 1) for m in members)])
            else:
                jobs[task, f"{name}, loop over {P} models"] = lambda t=tools: np.array(
                    [t["trace"](m, x, y, "hutchinson", 100, 0) for m in members])
    times: dict[tuple[str, str], list[float]] = {key: [] for key in jobs}
    values = {key: fn() for key, fn in jobs.items()}  # warm-up
    for _ in range(max(1, repeats - 1)):  # interleaved: every tool sees the same load
        for key, fn in jobs.items():
            times[key].append(timed(fn)[0])
    wall = {key: statistics.median(ts) for key, ts in times.items()}
    print()
    print(f"P = {P} models (random inits, same batch of N = {x.shape[0]}): one population call vs a loop of "
          "each peer's single-model calls")
    print(f"{'task':<24}{'tool':<40}{'HVPs':>6}{'wall ms':>10}{'loop/ours':>11}")
    headline = []
    for task in tasks:
        ours_key = (task, "ours, one population call")
        loops = [key for key in jobs if key[0] == task and key != ours_key]
        for key in [ours_key] + loops:
            ratio = wall[key] / wall[ours_key]
            hvps = computed[0] if key == ("λ1 to 1e-3", "ours, one population call") else int(values[key][:, 1].sum())
            print(f"{task:<24}{key[1]:<40}{hvps:>6}{1e3 * wall[key]:>10.1f}"
                  f"{'' if key == ours_key else f'{ratio:>10.2f}x':>11}")
        if loops:
            best = min(loops, key=wall.get)
            ratio = wall[best] / wall[ours_key]
            print(f"{'':<24}{'-> the fastest peer: ' + best[1].split(',')[0]:<56}{f'{ratio:>10.2f}x':>11}"
                  f"  (target ≥ 2x: {'met' if ratio >= 2 else 'not met'})")
            headline.append((f"P = {P}: {task}", best[1], ratio))
    if ("trace, Hutchinson 100", f"PyHessian, loop over {P} models") in values:
        ours_tr = values["trace, Hutchinson 100", "ours, one population call"][:, 0]
        ph_tr, ph_hvps = values["trace, Hutchinson 100", f"PyHessian, loop over {P} models"].T
        agree = np.abs(ours_tr - ph_tr) <= 1e-8 * np.abs(ours_tr)
        print(f"(the same Rademacher probes: {int(agree.sum())} of {P} traces equal PyHessian's to 1e-8; ours "
              f"{'from quadratic forms vᵀHv, ' if hessian_operator(pop, F.cross_entropy, (x, y)).forms else ''}PyHessian "
              f"spent {int(ph_hvps.sum())} HVPs for {100 * P}"
              + ("" if agree.all() else
                 f" — it stopped model(s) {np.flatnonzero(ph_hvps < 100).tolist()} after "
                 f"{ph_hvps[ph_hvps < 100].astype(int).tolist()} probes: its relative-change test divides by "
                 "(running mean + 1e-6), not its absolute value, so a negative running mean passes any tol ≥ 0")
              + ")")
    used = int(values["λ1 to 1e-3", "ours, one population call"][:, 1].sum())
    print(f"(λ1: each tool to its own rule at {TOL:g} (ours: Lanczos' residual bound); ours' HVPs are the "
          f"member-products computed, {computed[0]}, for {used} that the members' results used "
          f"(without leaving converged members out: {P} × {int(values['λ1 to 1e-3', 'ours, one population call'][:, 1].max())}): "
          "a converged member leaves the batch, and an operator of only those still running is made once "
          "that pays (the written-out MLP Hessian's slices its cached gradient pass: from 4/5 of the members "
          "left; autograd's builds a new gradient graph: from 1/2))")
    return headline


if __name__ == "__main__":
    main()
