"""Per-layer (block) Hessians against the dense block of the full dense float64 Hessian: the block
operator's columns (1e-12 relative: the same products, rounding only), each layer's top eigenvalue
(Lanczos at tol 1e-10 on ≤ 42 parameters: exact after at most n_B steps, 1e-9), each layer's exact
trace (1e-12), a stochastic trace within 4 standard errors, and a population against its members."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from implicitreg.config import CNNConfig, MLPConfig
from implicitreg.measures.curvature import hessian_operator, layer_hessians, operator_trace
from implicitreg.models import build_model
from implicitreg.population import Population
from implicitreg.seeding import generator

from conftest import dense_hessian

N, CLASSES = 30, 3


pytestmark = pytest.mark.usefixtures("one_thread")


def mlp(seed: int = 0):
    return build_model("mlp", MLPConfig(hidden=[6, 5]), 4, CLASSES, generator(seed, "init")).eval()  # 83 parameters


def cnn(seed: int = 0):
    return build_model("cnn", CNNConfig(channels=2, layers=2), 12, CLASSES, generator(seed, "init")).eval()


def data(d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, d, generator=g, dtype=torch.float64), torch.randint(0, CLASSES, (N,), generator=g)


def block_index(model, names) -> torch.Tensor:
    """Positions of the parameters ``names`` in the flat vector (named_parameters order)."""
    out, i = [], 0
    for name, p in model.named_parameters():
        if name in names:
            out.append(torch.arange(i, i + p.numel()))
        i += p.numel()
    return torch.cat(out)


def close(actual, expected, rtol):
    scale = float(torch.as_tensor(expected).abs().max())
    assert float((torch.as_tensor(actual) - expected).abs().max()) <= rtol * scale


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def case(request):
    model = mlp() if request.param == "mlp" else cnn()
    x, y = data(4 if request.param == "mlp" else 12)
    return model, x, y, dense_hessian(model, x, y)


def test_each_layer_block_equals_the_dense_block(case):
    model, x, y, H = case
    result = layer_hessians(model, F.cross_entropy, (x, y), tol=1e-10)
    layers = {}
    for name, _ in model.named_parameters():
        layers.setdefault(name.rpartition(".")[0], []).append(name)
    assert result.layers == tuple(layers)
    for i, (layer, names) in enumerate(layers.items()):
        idx = block_index(model, names)
        block = H[idx][:, idx]
        op = hessian_operator(model, F.cross_entropy, (x, y), params=layer)
        assert op.params == tuple(names) and op.dim == len(idx) == result.sizes[i]
        cols = op.matmat(torch.eye(op.dim, dtype=torch.float64)[None])[0]
        close(cols, block, 1e-12)
        close(result.top[i], torch.linalg.eigvalsh(block)[-1], 1e-9)
        assert bool(result.converged[i])
        assert result.exact[i]  # every block here has ≤ 99 parameters
        close(result.trace[i], block.trace(), 1e-12)
        assert float(result.stderr[i]) == 0.0


def test_non_contiguous_selection_and_a_stochastic_block_trace():
    model = mlp(1)
    x, y = data(4, 1)
    H = dense_hessian(model, x, y)
    names = ["layers.0.weight", "layers.2.bias"]  # not adjacent in the flat vector
    idx = block_index(model, names)
    op = hessian_operator(model, F.cross_entropy, (x, y), params=names)
    close(op.matmat(torch.eye(op.dim, dtype=torch.float64)[None])[0], H[idx][:, idx], 1e-12)
    # a stochastic trace of a 27-parameter block: within 4 standard errors (seed fixed: deterministic)
    est = operator_trace(op, "hutchinson", 12, seed=0)
    assert abs(float(est.value) - float(H[idx][:, idx].trace())) <= 4 * float(est.stderr)
    # layer_hessians falls back to the estimator when a block exceeds the budget
    result = layer_hessians(model, F.cross_entropy, (x, y), method="hutchinson", n_matvecs=10, tol=1e-10)
    assert result.exact == (False, False, False)  # 30, 35 and 18 parameters
    for i, layer in enumerate(result.layers):
        idx = block_index(model, [f"{layer}.weight", f"{layer}.bias"])
        assert abs(float(result.trace[i]) - float(H[idx][:, idx].trace())) <= 4 * float(result.stderr[i])
        assert float(result.stderr[i]) > 0


def test_population_blocks_equal_members():
    models = [mlp(seed) for seed in range(3)]
    x, y = data(4, 2)
    pop = Population(models, dtype=torch.float64)
    result = layer_hessians(pop, F.cross_entropy, (x, y), tol=1e-10)
    assert result.top.shape == (3, len(result.layers))
    for p, model in enumerate(models):
        single = layer_hessians(model, F.cross_entropy, (x, y), tol=1e-10)
        close(result.top[p], single.top, 1e-9)
        close(result.trace[p], single.trace, 1e-12)


def test_unknown_parameter_names_are_refused():
    model = mlp()
    x, y = data(4)
    with pytest.raises(ValueError, match="names no parameter"):
        hessian_operator(model, F.cross_entropy, (x, y), params="layers.9")
    with pytest.raises(ValueError, match="empty selection"):
        hessian_operator(model, F.cross_entropy, (x, y), params=[])
