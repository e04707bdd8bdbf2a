"""The written-out ReLU-MLP Hessian (measures.mlp_hessian) against the dense float64 Hessian by
autograd (conftest.dense_hessian) and against the operator's autograd path.

Tolerances: products and quadratic forms in float64 agree with the dense Hessian to 1e-12 of its
largest entry (sums of a few hundred O(1) terms, ~1e-16 each; observed ≤ 1e-14). In float32 the
products agree with float64's to 1e-4 of the largest entry (float32's 6e-8 over sums of N = 64 terms
per layer, and the float32 forward itself).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from implicitreg.config import CNNConfig
from implicitreg.measures.curvature import hessian_operator, hessian_trace
from implicitreg.measures.mlp_hessian import MLPHessian, mean_squared_error, mlp_hessian, relu_mlp_layers
from implicitreg.models import build_model
from implicitreg.models.mlp import MLP
from implicitreg.population import Population
from implicitreg.seeding import generator

from conftest import dense_hessian

pytestmark = pytest.mark.usefixtures("one_thread")

N, D, C = 64, 5, 4


def mlp(seed: int, hidden=(7, 6), out: int = C) -> MLP:
    torch.manual_seed(seed)
    return MLP(D, list(hidden), out).double().eval()


def data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, D, generator=g, dtype=torch.float64), torch.randint(0, C, (N,), generator=g)


def columns(op) -> torch.Tensor:
    eye = torch.eye(op.dim, dtype=op.flat.dtype).expand(op.size, -1, -1)
    return op.matmat(eye)


def close(actual, expected, rtol=1e-12):
    scale = float(expected.abs().max())
    err = float((actual - expected).abs().max())
    assert err <= rtol * scale, err / scale


@pytest.mark.parametrize("hidden", [(), (7,), (7, 6), (5, 6, 4)])
def test_products_and_forms_equal_the_dense_hessian(hidden):
    """Every depth, down to no hidden layer (multinomial logistic regression)."""
    models = [mlp(seed, hidden) for seed in range(3)]
    x, y = data()
    op = hessian_operator(Population(models, dtype=torch.float64), F.cross_entropy, (x, y))
    assert op.forms is not None  # the written-out path
    H = torch.stack([dense_hessian(m, x, y) for m in models])
    close(columns(op), H)
    V = torch.randn(3, 5, op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    close(op.quadratic_forms(V), torch.einsum("psi,pij,psj->ps", V, H, V))
    close(op.quadratic_forms(V, block=2), op.quadratic_forms(V, block=5))
    with pytest.raises(ValueError, match="block: expected a positive number of vectors per pass or None, got 0"):
        op.quadratic_forms(V, block=0)
    with pytest.raises(ValueError, match=r"V: expected shape \[3, S, \d+\]"):
        op.quadratic_forms(V[0])


def test_per_member_labels_and_the_squared_error():
    models = [mlp(seed, out=1) for seed in range(3)]
    x, _ = data()
    t = torch.randn(3, N, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    op = hessian_operator(Population(models, dtype=torch.float64), mean_squared_error, (x, t))
    assert op.forms is not None
    for p, m in enumerate(models):
        H = dense_hessian(m, x, t[p], mean_squared_error)
        close(columns(op)[p], H)
        v = torch.randn(op.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(p))
        V = torch.zeros(3, 1, op.dim, dtype=torch.float64)
        V[p, 0] = v
        close(op.quadratic_forms(V)[p, 0], v @ H @ v)


def test_a_sequential_and_a_single_module():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(D, 6), nn.ReLU(), nn.Linear(6, C)).double().eval()
    x, y = data(3)
    op = hessian_operator(model, F.cross_entropy, (x, y))
    assert op.forms is not None and op.size == 1
    close(columns(op)[0], dense_hessian(model, x, y))


@pytest.mark.parametrize("vmap_members", [True, False])
def test_the_written_out_path_equals_autograds_on_a_population(vmap_members, monkeypatch):
    """The same operator both ways, with per-member labels, and ReLU kinks hit exactly: zero inputs
    and zero biases give pre-activations exactly 0, where both take ReLU's derivative to be 0."""
    import implicitreg.measures.hessian as hessian

    monkeypatch.setattr(hessian, "VMAP_MEMBERS_UP_TO", 1 << 40 if vmap_members else 0)
    models = [mlp(seed) for seed in range(4)]
    for m in models:
        with torch.no_grad():
            m.layers[0].bias[:3] = 0.0
    x, y = data(4)
    x[:5] = 0.0
    labels = torch.stack([y, torch.roll(y, 1), (y + 1) % C, y])
    pop = Population(models, dtype=torch.float64)
    written = hessian_operator(pop, F.cross_entropy, (x, labels))
    autograd = hessian_operator(pop, F.cross_entropy, (x, labels), autograd=True)
    assert written.forms is not None and autograd.forms is None
    close(columns(written), columns(autograd))
    # Hutchinson's estimate from quadratic forms equals the one from products (the same probes)
    a = hessian_trace(pop, F.cross_entropy, (x, labels), n_matvecs=30, seed=5)
    sub = written.members([1, 3])  # a restricted operator is written out too
    assert sub.forms is not None
    close(columns(sub), columns(autograd)[[1, 3]])
    from implicitreg.measures.curvature import operator_trace
    b = operator_trace(autograd, n_matvecs=30, seed=5)
    close(a.value, b.value)
    close(a.stderr, b.stderr, 1e-10)  # a standard deviation of nearly equal draws: more rounding


def test_float32_products_agree_with_float64():
    models = [mlp(seed) for seed in range(2)]
    x, y = data(5)
    exact = columns(hessian_operator(Population(models, dtype=torch.float64), F.cross_entropy, (x, y)))
    single = hessian_operator(Population([m.float() for m in models], dtype=torch.float32), F.cross_entropy, (x, y))
    assert single.flat.dtype == torch.float32 and single.forms is not None
    close(columns(single).double(), exact, 1e-4)


def test_where_it_does_not_apply_autograd_takes_over():
    x, y = data()
    model = mlp(0)
    assert hessian_operator(model, F.cross_entropy, (x, y), params="layers.0").forms is None  # a block
    assert hessian_operator(model, lambda o, t: F.cross_entropy(o, t), (x, y)).forms is None  # an unknown loss
    assert hessian_operator(mlp(0, out=1), F.mse_loss, (x, x[:, 0:1])).forms is None
    tanh = nn.Sequential(nn.Linear(D, 6), nn.Tanh(), nn.Linear(6, C)).double().eval()
    no_bias = nn.Sequential(nn.Linear(D, 6, bias=False), nn.ReLU(), nn.Linear(6, C)).double().eval()
    for other in (tanh, no_bias):
        assert relu_mlp_layers(other) is None
        op = hessian_operator(other, F.cross_entropy, (x, y))
        assert op.forms is None
        close(columns(op)[0], dense_hessian(other, x, y))
    cnn = build_model("cnn", CNNConfig(channels=3, layers=1, kernel_size=3), 8, C, generator(0, "init")).double().eval()
    assert relu_mlp_layers(cnn) is None
    params = {k: v.detach()[None] for k, v in model.named_parameters()}
    assert mlp_hessian(model, params, F.cross_entropy, x, y.double()) is None  # real targets for cross-entropy
    assert mlp_hessian(model, params, mean_squared_error, x, x[:, 0]) is None  # C outputs for a 1-output loss
    assert mlp_hessian(model, params, F.cross_entropy, x[:, :3], y) is None  # inputs of the wrong width
    assert mlp_hessian(model, params, F.cross_entropy, x, y.int()) is None  # int32 labels: autograd's error
    ignored = y.clone()
    ignored[:7] = -100  # F.cross_entropy's ignore_index: autograd's path leaves them out of the mean
    assert mlp_hessian(model, params, F.cross_entropy, x, ignored) is None
    op = hessian_operator(model, F.cross_entropy, (x, ignored))
    close(columns(op)[0], dense_hessian(model, x[7:], y[7:]))
    assert isinstance(mlp_hessian(model, params, F.cross_entropy, x, y), MLPHessian)


def test_an_unknown_loss_name_is_refused():
    model = mlp(0)
    x, y = data()
    w = [model.layers[i].weight.detach()[None] for i in range(3)]
    b = [model.layers[i].bias.detach()[None] for i in range(3)]
    with pytest.raises(ValueError, match="loss: expected 'cross_entropy' or 'squared_error', got 'hinge'"):
        MLPHessian(w, b, x, y, "hinge")


def test_some_members_are_a_slice_of_the_cached_pass():
    """MLPHessian.members slices what the gradient's pass cached; it equals a Hessian built from
    those members alone (to rounding: the same arithmetic in batches of another size)."""
    models = [mlp(seed) for seed in range(5)]
    x, y = data(6)
    labels = torch.stack([torch.roll(y, p) for p in range(5)])
    params = {k: torch.stack([dict(m.named_parameters())[k].detach() for m in models]) for k, _ in
              models[0].named_parameters()}
    whole = mlp_hessian(models[0], params, F.cross_entropy, x, labels)
    idx = torch.tensor([0, 3, 4])
    alone = mlp_hessian(models[0], {k: v[idx] for k, v in params.items()}, F.cross_entropy, x, labels[idx])
    V = torch.randn(3, 2, sum(whole.numels), dtype=torch.float64,
                    generator=torch.Generator().manual_seed(7))
    close(whole.members(idx).matmat(V), alone.matmat(V), 1e-14)
    close(whole.members(idx).quadratic(V), alone.quadratic(V), 1e-14)


def test_batches_are_written_out_batch_by_batch():
    """A DataLoader of uneven batches: Σ_b N_b H_b / N, the full batch's Hessian (1e-12), both for
    products and quadratic forms; a batch whose labels the written-out sums do not handle (an
    ignored label) goes through autograd in the same operator."""
    from torch.utils.data import DataLoader, TensorDataset

    models = [mlp(seed) for seed in range(3)]
    pop = Population(models, dtype=torch.float64)
    x, y = data(8)
    loader = DataLoader(TensorDataset(x, y), batch_size=24, shuffle=False)  # 24, 24, 16
    full = hessian_operator(pop, F.cross_entropy, (x, y))
    batched = hessian_operator(pop, F.cross_entropy, loader)
    assert batched.forms is not None
    close(columns(batched), columns(full))
    V = torch.randn(3, 4, full.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    close(batched.quadratic_forms(V), full.quadratic_forms(V))
    ignored = y.clone()
    ignored[-3:] = -100
    mixed = hessian_operator(pop, F.cross_entropy, [(x[:32], ignored[:32]), (x[32:], ignored[32:])])
    reference = hessian_operator(pop, F.cross_entropy, [(x[:32], ignored[:32]), (x[32:], ignored[32:])],
                                 autograd=True)
    close(columns(mixed), columns(reference))
    close(mixed.quadratic_forms(V), (V * reference.matmat(V)).sum(-1))


def three_members(loss: str, seed: int):
    """A population of 3 MLPs with per-member targets: (population, x, targets, loss_fn)."""
    models = [mlp(s, out=C if loss == "cross_entropy" else 1) for s in range(3)]
    x, y = data(seed)
    if loss == "cross_entropy":
        return Population(models, dtype=torch.float64), x, torch.stack([y, torch.roll(y, 2), (y + 3) % C]), \
            F.cross_entropy
    targets = torch.randn(3, N, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return Population(models, dtype=torch.float64), x, targets, mean_squared_error


def same_operator(written, reference, seed: int) -> None:
    """Written-out and autograd operators agree: products, quadratic forms, a restriction, the kind."""
    assert written.forms is not None and reference.forms is None and written.kind == reference.kind
    close(columns(written), columns(reference))
    V = torch.randn(3, 5, written.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    close(written.quadratic_forms(V), (V * reference.matmat(V)).sum(-1))
    sub = written.members([0, 2])
    assert sub.kind == reference.kind
    close(columns(sub), columns(reference)[[0, 2]])


@pytest.mark.parametrize("loss", ["cross_entropy", "squared_error"])
def test_the_written_out_ggn_equals_jvp_and_vjp(loss):
    """The Gauss–Newton passes (no δ terms) against the GGN of jvp and vjp (ggn_operator's autograd
    path; tests/test_ggn.py holds both to the dense JᵀH_FJ), products and forms, per-member targets."""
    from implicitreg.measures.ggn import ggn_operator

    pop, x, targets, loss_fn = three_members(loss, 10)
    written = ggn_operator(pop, loss_fn, (x, targets))
    assert written.kind == "ggn"
    same_operator(written, ggn_operator(pop, loss_fn, (x, targets), autograd=True), 12)
    hessian = columns(hessian_operator(pop, loss_fn, (x, targets)))
    assert float((columns(written) - hessian).abs().max()) > 1e-6 * float(hessian.abs().max())  # not H


@pytest.mark.parametrize("kind, loss", [("empirical", "cross_entropy"), ("mc", "cross_entropy"),
                                        ("empirical", "squared_error")])
def test_the_written_out_fishers_equal_jvp_and_vjp(kind, loss):
    """Empirical and Monte-Carlo Fishers through the Gauss–Newton passes with Σ_j r_j r_jᵀ / R at the
    outputs, against fisher_operator's jvp/vjp path (tests/test_ggn.py holds both to dense references)."""
    from implicitreg.measures.ggn import fisher_operator

    pop, x, targets, loss_fn = three_members(loss, 13)
    options = {"kind": kind, "mc_samples": 3, "seed": 4}
    same_operator(fisher_operator(pop, loss_fn, (x, targets), **options),
                  fisher_operator(pop, loss_fn, (x, targets), **options, autograd=True), 15)
