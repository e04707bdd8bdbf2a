"""Contract over every registered measure: shapes, a population equals a loop over its members,
determinism, and a finite value — on a tiny ReLU MLP, or on a deep linear model for the measures
that apply only to linear maps."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from implicitreg.config import MLPConfig
from implicitreg.measures import REGISTRY, compute
from implicitreg.models import build_model
from implicitreg.population import Population
from implicitreg.seeding import generator

P = 3


def relu_mlps(seed_offset):
    return [build_model("mlp", MLPConfig(hidden=[6]), 4, 3, generator(seed_offset + i, "init")) for i in range(P)]


def linear_models(seed_offset):
    models = []
    for i in range(P):
        torch.manual_seed(seed_offset + i)
        models.append(nn.Sequential(nn.Linear(4, 5, bias=False), nn.Linear(5, 3, bias=False)).double())
    return models


def setting(kind):
    trained, init = (relu_mlps(0), relu_mlps(100)) if kind == "mlp" else (linear_models(0), linear_models(100))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 4, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = trained[0](x).argmax(1)  # labels the first member fits, so margins and accuracies are non-trivial
    return trained, init, (x, y)


def evaluate(name, model, init, data):
    return compute([name], model, init=init, data=data, loss_fn=F.cross_entropy)[name]


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_measure_contract(name):
    kind = "mlp"
    trained, init, data = setting(kind)
    try:
        single = evaluate(name, trained[0], init[0], data)
    except ValueError as err:
        if "linear" not in str(err):
            raise
        kind = "linear"
        trained, init, data = setting(kind)
        single = evaluate(name, trained[0], init[0], data)
    assert single.shape == torch.Size([]) and torch.isfinite(single)  # member 0 fits the labels
    population = Population(trained, dtype=torch.float64, kernel="auto" if kind == "mlp" else "vmap")
    initial = Population(init, dtype=torch.float64, kernel="auto" if kind == "mlp" else "vmap")
    stacked = evaluate(name, population, initial, data)
    assert stacked.shape == torch.Size([P])
    loop = torch.stack([evaluate(name, m, m0, data) for m, m0 in zip(trained, init)])
    # the same arithmetic batched or not: float64 rounding only (Monte-Carlo measures draw
    # each member's noise from its own stream, so they agree too)
    # (members 1 and 2 are at chance on these labels: some flatness terms are NaN there, in both)
    torch.testing.assert_close(stacked, loop.to(stacked.dtype), rtol=1e-6, atol=1e-9, equal_nan=True)
    again = evaluate(name, population, initial, data)
    torch.testing.assert_close(again, stacked, rtol=0, atol=0, equal_nan=True, msg="not deterministic")
