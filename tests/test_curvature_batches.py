"""Hessian products on mini-batches (a DataLoader or a list of (x, y) batches) against the same
products on the full batch and against the dense float64 Hessian: the operator of batches is
Σ_b N_b H_b / Σ_b N_b, which for a mean loss is the full-batch Hessian exactly, so the two agree to
rounding (1e-12 relative in float64: a handful of additions of O(1) terms, ~1e-15 each)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from implicitreg.config import MLPConfig
from implicitreg.measures.curvature import hessian_eigenvalues, hessian_operator, hessian_trace
from implicitreg.models import build_model
from implicitreg.population import Population
from implicitreg.seeding import generator

from conftest import dense_hessian

N, D, CLASSES = 40, 4, 3
SIZES = (7, 13, 20)  # uneven batches: the weights N_b / N matter


pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(seed: int = 0, out: int = CLASSES):
    return build_model("mlp", MLPConfig(hidden=[6]), D, out, generator(seed, "init")).eval()


def data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, D, generator=g, dtype=torch.float64), torch.randint(0, CLASSES, (N,), generator=g)


def split(x, y, sizes=SIZES):
    return list(zip(x.split(list(sizes)), y.split(list(sizes))))


def columns(op) -> torch.Tensor:
    eye = torch.eye(op.dim, dtype=torch.float64).expand(op.size, -1, -1)
    return op.matmat(eye)


def close(actual, expected, rtol=1e-12):
    scale = float(expected.abs().max())
    assert float((actual - expected).abs().max()) <= rtol * scale, float((actual - expected).abs().max()) / scale


def test_batches_equal_the_full_batch_and_the_dense_hessian():
    model = mlp()
    x, y = data()
    H = dense_hessian(model, x, y)
    full = hessian_operator(model, F.cross_entropy, (x, y))
    batched = hessian_operator(model, F.cross_entropy, split(x, y))
    close(columns(full)[0], H, 1e-12)
    close(columns(batched)[0], H, 1e-12)
    v = torch.randn(1, full.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    close(batched.matvec(v), full.matvec(v))
    V = torch.randn(1, 9, full.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    close(batched.matmat(V), full.matmat(V))
    close(batched.matmat(V, block=4), full.matmat(V, block=1))  # how probes are grouped changes nothing


def test_a_dataloader_and_the_solvers_on_it():
    model = mlp(1)
    x, y = data(1)
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)  # 16, 16, 8
    H = dense_hessian(model, x, y)
    op = hessian_operator(model, F.cross_entropy, loader)
    close(columns(op)[0], H, 1e-12)
    top = hessian_eigenvalues(model, F.cross_entropy, loader, k=2, tol=1e-10)
    close(top.values, torch.linalg.eigvalsh(H).flip(0)[:2], 1e-9)  # Lanczos at tol 1e-10 on 51 parameters
    full = hessian_trace(model, F.cross_entropy, (x, y), n_matvecs=20, seed=3)
    batches = hessian_trace(model, F.cross_entropy, loader, n_matvecs=20, seed=3)
    close(batches.value, full.value)  # the same probes through the same matrix


@pytest.mark.parametrize("vmap_members", [True, False])
def test_population_with_per_member_labels_on_batches(vmap_members, monkeypatch):
    """Both ways of building a population's gradient graph: one vmap over members, or P branches."""
    import implicitreg.measures.hessian as hessian

    monkeypatch.setattr(hessian, "VMAP_MEMBERS_UP_TO", 1 << 40 if vmap_members else 0)
    models = [mlp(seed) for seed in range(3)]
    x, y = data(2)
    labels = torch.stack([y, torch.roll(y, 1), (y + 1) % CLASSES])  # [P, N]
    pop = Population(models, dtype=torch.float64)
    batches = [(xb, labels[:, a : a + n]) for xb, a, n in zip(x.split(list(SIZES)), (0, 7, 20), SIZES)]
    op = hessian_operator(pop, F.cross_entropy, batches)
    cols = columns(op)
    for p, model in enumerate(models):
        close(cols[p], dense_hessian(model, x, labels[p]), 1e-12)


def test_squared_loss_on_batches():
    model = mlp(out=2)
    x, _ = data()
    t = torch.randn(N, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    H = dense_hessian(model, x, t, F.mse_loss)
    close(columns(hessian_operator(model, F.mse_loss, split(x, t)))[0], H, 1e-12)


def test_a_one_shot_iterator_or_nothing_is_refused():
    model = mlp()
    x, y = data()
    with pytest.raises(TypeError, match="re-iterable"):
        hessian_operator(model, F.cross_entropy, iter(split(x, y)))
    with pytest.raises(TypeError, match="pair"):
        hessian_operator(model, F.cross_entropy, 3)
    op = hessian_operator(model, F.cross_entropy, [])
    with pytest.raises(ValueError, match="no data point"):
        op.matvec(torch.zeros(1, op.dim, dtype=torch.float64))
