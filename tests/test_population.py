"""Population kernels against autograd on each member's own nn.Module (float64 references)."""

import pytest
import torch

from implicitreg.config import CNNConfig, MLPConfig
from implicitreg.kernels import log_softmax_last
from implicitreg.models import build_model
from implicitreg.population import Population
from implicitreg.seeding import generator

from conftest import autograd_reference

P, B = 5, 12


def modules(arch, config, input_dim=40, out=10):
    return [build_model(arch, config, input_dim, out, generator(seed, "init")) for seed in range(P)]


@pytest.mark.parametrize("arch,config,kernel", [
    ("mlp", MLPConfig(hidden=[16, 8]), "auto"),   # hand-written backward
    ("mlp", MLPConfig(hidden=[16, 8]), "vmap"),
    ("cnn", CNNConfig(channels=4), "auto"),       # hand-written im2col + col2im
    ("cnn", CNNConfig(channels=3, layers=2, kernel_size=4), "auto"),
    ("cnn", CNNConfig(channels=4, layers=2, kernel_size=4), "vmap"),
])
@pytest.mark.parametrize("with_masks", [False, True])
def test_loss_and_grad_match_autograd(arch, config, kernel, with_masks):
    torch.manual_seed(0)
    mods = modules(arch, config)
    pop = Population(mods, device="cpu", dtype=torch.float64, kernel=kernel)
    x = torch.randn(P, B, 40, dtype=torch.float64)
    y = torch.randint(0, 10, (P, B))
    masks = None
    if with_masks:
        masks = [(torch.rand(P, B, *s, dtype=torch.float64) > 0.3).double() / 0.7 for s in mods[0].hidden_shapes()]
    loss, grads = pop.loss_and_grad(x, y, masks)
    ref_loss, ref_grads = autograd_reference(mods, x, y, masks, "cross_entropy")
    as_module = pop.kernel.to_module(grads)
    # float64, identical math up to summation order: agreement to ~1e-15 relative, 1e-12 is ample.
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-14)
    for i in range(P):
        for name, g in ref_grads[i].items():
            torch.testing.assert_close(as_module[name][i], g, rtol=1e-12, atol=1e-14)


def test_mse_loss_matches_autograd():
    mods = modules("mlp", MLPConfig(hidden=[8]), input_dim=6, out=1)
    pop = Population(mods, loss="mse", dtype=torch.float64)
    x, y = torch.randn(P, B, 6, dtype=torch.float64), torch.randn(P, B, dtype=torch.float64)
    loss, grads = pop.loss_and_grad(x, y)
    ref_loss, ref_grads = autograd_reference(mods, x, y, None, "mse")
    torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-14)
    for i in range(P):
        for name, g in ref_grads[i].items():
            torch.testing.assert_close(pop.kernel.to_module(grads)[name][i], g, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("arch,config", [("mlp", MLPConfig(hidden=[16, 8])), ("cnn", CNNConfig(channels=4))])
def test_forward_and_member_roundtrip(arch, config):
    mods = modules(arch, config)
    pop = Population(mods, dtype=torch.float64)
    x = torch.randn(30, 40, dtype=torch.float64)
    out = pop.forward(x, chunk=7)  # chunking must not change the result
    for i, m in enumerate(mods):
        torch.testing.assert_close(out[i], m(x), rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(pop.member(i)(x), m(x), rtol=0, atol=0)


def test_select_keeps_chosen_members():
    mods = modules("mlp", MLPConfig(hidden=[8]))
    pop = Population(mods, dtype=torch.float64)
    pop.select(torch.tensor([3, 1]))
    x = torch.randn(4, 40, dtype=torch.float64)
    assert pop.size == 2
    torch.testing.assert_close(pop.forward(x)[0], mods[3](x), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(pop.forward(x)[1], mods[1](x), rtol=1e-12, atol=1e-13)


def test_log_softmax_last_matches_torch():
    logits = torch.randn(3, 50, 10, dtype=torch.float64) * 30
    torch.testing.assert_close(log_softmax_last(logits), torch.log_softmax(logits, -1), rtol=0, atol=1e-12)


def test_bad_population_input_is_rejected():
    with pytest.raises(ValueError, match="at least one module"):
        Population([])
    with pytest.raises(ValueError, match="loss"):
        Population(modules("mlp", MLPConfig(hidden=[4])), loss="hinge")
