"""The empirical NTK (measures/ntk.py) against J Jᵀ of a dense float64 Jacobian, and the kernel
movement against the same dense computation, on modules, populations and along training."""

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian
from torch.func import functional_call

from implicitreg.config import DataConfig, MLPConfig, TrainConfig
from implicitreg.data import load_dataset
from implicitreg.measures import REGISTRY, compute, empirical_ntk, kernel_distance
from implicitreg.plan import Group, Member
from implicitreg.population import Population
from implicitreg.train import train_population

D = torch.float64


def mlp(seed, out=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, out)).to(D)


def inputs(n=7):
    return torch.randn(n, 4, generator=torch.Generator().manual_seed(3), dtype=D)


def dense_jacobian(model, x):
    """∂ vec(f(x)) / ∂θ [N·C, n] by torch.autograd.functional.jacobian of the flattened outputs."""
    names = [name for name, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    theta = torch.cat([p.detach().flatten() for p in model.parameters()])

    def f(t):
        params, i = {}, 0
        for name, shape in zip(names, shapes):
            params[name] = t[i:i + shape.numel()].view(shape)
            i += shape.numel()
        return functional_call(model, params, (x,)).reshape(-1)  # sample-major: row i·C + c

    return jacobian(f, theta)


def test_ntk_equals_j_jt_of_the_dense_jacobian():
    model, x = mlp(0), inputs()
    jac = dense_jacobian(model, x)
    kernel = empirical_ntk(model, x)
    assert kernel.shape == (7 * 3, 7 * 3)
    torch.testing.assert_close(kernel, jac @ jac.T, rtol=0, atol=1e-10)
    traced = (jac.reshape(7, 3, -1).permute(1, 0, 2) @ jac.reshape(7, 3, -1).permute(1, 2, 0)).sum(0)
    torch.testing.assert_close(empirical_ntk(model, x, trace_outputs=True), traced, rtol=0, atol=1e-10)
    torch.testing.assert_close(empirical_ntk(model, x, chunk_size=2), kernel, rtol=0, atol=1e-12)


def test_scalar_outputs_give_an_n_by_n_kernel():
    model, x = mlp(1, out=1), inputs(5)
    jac = dense_jacobian(model, x)
    kernel = empirical_ntk(model, x)
    assert kernel.shape == (5, 5)
    torch.testing.assert_close(kernel, jac @ jac.T, rtol=0, atol=1e-10)


def test_population_members_get_their_own_kernels():
    models, x = [mlp(i) for i in range(3)], inputs()
    kernels = empirical_ntk(Population(models, dtype=D), x)
    assert kernels.shape == (3, 21, 21)
    for member, model in enumerate(models):
        jac = dense_jacobian(model, x)
        torch.testing.assert_close(kernels[member], jac @ jac.T, rtol=0, atol=1e-10)


def test_kernel_movement_equals_the_dense_computation():
    models, inits, x = [mlp(i) for i in range(3)], [mlp(10 + i) for i in range(3)], inputs()
    expected = []
    for model, init in zip(models, inits):
        j, j0 = dense_jacobian(model, x), dense_jacobian(init, x)
        expected.append(torch.linalg.norm(j @ j.T - j0 @ j0.T) / torch.linalg.norm(j0 @ j0.T))
    expected = torch.stack(expected)
    single = kernel_distance(models[0], inits[0], x)
    assert single.shape == ()
    torch.testing.assert_close(single, expected[0], rtol=1e-12, atol=0)
    population = kernel_distance(Population(models, dtype=D), Population(inits, dtype=D), x)
    torch.testing.assert_close(population, expected, rtol=1e-12, atol=0)
    # the registered measure: the first n_samples = 32 training inputs (here all 7)
    y = torch.zeros(7, dtype=torch.long)
    registered = compute(["kernel_movement"], Population(models, dtype=D), init=Population(inits, dtype=D),
                         data=(x, y))["kernel_movement"]
    torch.testing.assert_close(registered, expected, rtol=1e-12, atol=0)
    assert REGISTRY["kernel_movement"].needs == ("params", "init", "data")
    assert kernel_distance(models[0], models[0], x) == 0


def test_mismatched_init_is_refused():
    with pytest.raises(ValueError, match="init has"):
        kernel_distance(mlp(0), nn.Linear(4, 3).to(D), inputs())


def test_kernel_movement_is_tracked_along_training():
    """Tracked at its cadence; zero movement needs zero steps, so it grows from step 5 to step 30,
    and a 20× larger learning rate moves the kernel further (same seed, same data)."""
    data = load_dataset(DataConfig(name="digits", n_train=64, n_test=32)).tensors("cpu", D)
    train = TrainConfig(optimizer="gd", lr=0.1, max_steps=30, eval_every=10, dtype="float64",
                        target_train_acc=None, track=["kernel_movement"], track_every=5)
    group = Group("mlp", MLPConfig(hidden=[8]), DataConfig(), train,
                  (Member("small", 0, 0.01), Member("large", 0, 0.2)))
    small, large = train_population(group, data)
    series = {}
    for result in (small, large):
        series[result.run_id] = {step: v for step, name, v in result.metrics if name == "kernel_movement"}
        assert sorted(series[result.run_id]) == [5, 10, 15, 20, 25, 30]
        values = list(series[result.run_id].values())
        assert all(v > 0 for v in values) and values[-1] > values[0]
    assert series["large"][30] > series["small"][30]
