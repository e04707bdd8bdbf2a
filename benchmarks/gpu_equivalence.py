"""On a GPU: the population engine (CUDA graphs, device-side batches and masks) ends where the
sequential torch.optim loop on the CPU ends, in float64; and TF32 stays off unless asked for.

Trains 8 members that differ in seed, learning rate, weight decay, dropout, label noise and init
scale (the equivalence tests' population) for 60 steps, the MLP and the CNN, and prints the largest
relative difference of the final train/test loss, ℓ2 norm and distance from init, how many graphs
were captured and whether capture fell back to the eager pass. Exit code 1 when a difference
exceeds 1e-9 (the CPU tests hold 1e-10; cuBLAS may sum in another order) or capture fell back.

Run:  python benchmarks/gpu_equivalence.py            (needs CUDA; exit code 2 without it)
"""

from __future__ import annotations

import importlib
import sys
import warnings

import torch

from implicitreg import graphs
from implicitreg.config import CNNConfig, DataConfig, MLPConfig, TrainConfig
from implicitreg.data import load_dataset
from implicitreg.plan import Group, Member
from implicitreg.sequential import train_sequential

TOLERANCE = 1e-9
# the module, not the flat API's train(): its loop looks GraphedLossAndGrad up at call time
train_module = importlib.import_module("implicitreg.train")


def members(n: int = 8) -> tuple[Member, ...]:
    return tuple(
        Member(f"m{i}", seed=i, lr=[0.05, 0.02, 0.1, 0.01][i % 4], weight_decay=[0.0, 1e-3, 5e-2][i % 3],
               dropout=[0.0, 0.3][i % 2], label_noise=[0.0, 0.5][(i // 2) % 2], init_scale=[1.0, 0.5][(i // 4) % 2])
        for i in range(n))


def final(results) -> dict[str, dict[str, float]]:
    return {r.run_id: {name: v for step, name, v in r.metrics if step == r.final_step} for r in results}


def compare(label: str, group: Group, data_config: DataConfig) -> bool:
    dataset = load_dataset(data_config)
    made: list[graphs.GraphedLossAndGrad] = []

    class Recorded(graphs.GraphedLossAndGrad):  # the loop's graphs, kept for their capture counts
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    train_module.GraphedLossAndGrad = Recorded
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gpu = train_module.train_population(group, dataset.tensors("cuda", torch.float64))
    finally:
        train_module.GraphedLossAndGrad = graphs.GraphedLossAndGrad
    cpu = train_sequential(group, dataset.tensors("cpu", torch.float64))
    worst = 0.0
    for run_id, values in final(gpu).items():
        for name in ("train_loss", "test_loss", "l2_norm", "dist_init"):
            a, b = values[name], final(cpu)[run_id][name]
            worst = max(worst, abs(a - b) / max(abs(b), 1e-300))
    captures = sum(g.captures for g in made)
    fallback = [g.fallback for g in made if g.fallback]
    ok = worst <= TOLERANCE and not fallback and captures >= 1
    print(f"{label:<5} max relative difference {worst:.2e} (limit {TOLERANCE:.0e}); graphs captured {captures}; "
          f"fallback {fallback or 'none'}; warnings {[str(w.message) for w in caught] or 'none'} -> "
          f"{'OK' if ok else 'FAIL'}")
    return ok


def main() -> int:
    if not torch.cuda.is_available():
        print("gpu_equivalence: no CUDA device", file=sys.stderr)
        return 2
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}; "
          f"matmul fp32 precision outside runs: {torch.backends.cuda.matmul.fp32_precision}")
    train = TrainConfig(optimizer="momentum", lr=0.05, max_steps=60, eval_every=20, batch_size=32, dtype="float64",
                        target_train_acc=None, schedule="cosine")
    ok = compare("mlp", Group("mlp", MLPConfig(hidden=[32, 32]), DataConfig(), train, members()),
                 DataConfig(name="digits", n_train=256, n_test=128))
    ok &= compare("cnn", Group("cnn", CNNConfig(channels=8), DataConfig(), train.model_copy(update={"max_steps": 30}),
                               members()), DataConfig(name="mnist1d", n_train=200, n_test=100))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
