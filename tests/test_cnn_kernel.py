"""The hand-batched CNN kernel against autograd on each member's own CNN1D (float64 references)."""

import pytest
import torch
import torch.nn.functional as F

from implicitreg.cnn_kernel import CNNKernel
from implicitreg.kernels import output_grad
from implicitreg.config import CNNConfig
from implicitreg.models import build_model
from implicitreg.population import Population
from implicitreg.seeding import generator

from conftest import autograd_reference

P, B = 4, 9


def members(config: CNNConfig, input_len: int, out: int = 10):
    return [build_model("cnn", config, input_len, out, generator(seed, "init")) for seed in range(P)]


# the explicit-vs-implicit CNN (narrower), odd lengths (39 → 19 → 9 → 4, where the last taps reach the
# right padding), a wide first kernel, a one-wide one, and a regression read-out
CASES = [
    (CNNConfig(channels=6), 40, "cross_entropy"),
    (CNNConfig(channels=5, layers=3, kernel_size=5), 39, "cross_entropy"),
    (CNNConfig(channels=3, layers=2, kernel_size=7), 23, "cross_entropy"),
    (CNNConfig(channels=4, layers=2, kernel_size=1), 16, "cross_entropy"),
    (CNNConfig(channels=4, layers=3, kernel_size=3), 40, "mse"),
]


@pytest.mark.parametrize("config,input_len,loss", CASES)
@pytest.mark.parametrize("with_masks", [False, True])
def test_loss_and_grad_match_per_member_autograd(config, input_len, loss, with_masks):
    torch.manual_seed(0)
    mods = members(config, input_len, out=10 if loss == "cross_entropy" else 1)
    pop = Population(mods, loss=loss, dtype=torch.float64)
    assert isinstance(pop.kernel, CNNKernel)
    x = torch.randn(P, B, input_len, dtype=torch.float64)
    y = torch.randint(0, 10, (P, B)) if loss == "cross_entropy" else torch.randn(P, B, dtype=torch.float64)
    masks = None
    if with_masks:  # inverted dropout at rate 0.4, as DropoutMasks makes them: [P, B, C, L_i]
        masks = [(torch.rand(P, B, *s, dtype=torch.float64) > 0.4).double() / 0.6 for s in mods[0].hidden_shapes()]
    ref_loss, ref_grads = autograd_reference(mods, x, y, masks, loss)
    for _ in range(2):  # the second call reuses the first one's buffers: it must not see stale values
        value, grads = pop.loss_and_grad(x, y, masks)
        as_module = pop.kernel.to_module(grads)
        # float64, the same arithmetic in another summation order: rounding is ~1e-16 relative, 1e-10 is
        # far above it and far below any real error (a wrong tap or mask moves gradients by O(1e-2))
        torch.testing.assert_close(value, ref_loss, rtol=1e-10, atol=1e-12)
        for i in range(P):
            for name, g in ref_grads[i].items():
                torch.testing.assert_close(as_module[name][i], g, rtol=1e-10, atol=1e-12, msg=name)


def test_buffers_follow_a_shrinking_population():
    """After members leave (select), the buffers are reallocated for the smaller P, and the results
    are still those of the members kept."""
    mods = members(CNNConfig(channels=4), 40)
    pop = Population(mods, dtype=torch.float64)
    x, y = torch.randn(P, B, 40, dtype=torch.float64), torch.randint(0, 10, (P, B))
    pop.loss_and_grad(x, y)
    keep = torch.tensor([2, 0])
    pop.select(keep)
    value, grads = pop.loss_and_grad(x[keep], y[keep])
    ref_loss, ref_grads = autograd_reference([mods[2], mods[0]], x[keep], y[keep], None, "cross_entropy")
    torch.testing.assert_close(value, ref_loss, rtol=1e-10, atol=1e-12)
    for i in range(2):
        for name, g in ref_grads[i].items():
            torch.testing.assert_close(pop.kernel.to_module(grads)[name][i], g, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("input_len", [40, 39, 7])
def test_forward_matches_modules_and_layouts_roundtrip(input_len):
    mods = members(CNNConfig(channels=5), input_len)
    pop = Population(mods, dtype=torch.float64)
    x = torch.randn(11, input_len, dtype=torch.float64)
    out = pop.forward(x, chunk=4)
    for i, m in enumerate(mods):
        torch.testing.assert_close(out[i], m(x), rtol=1e-12, atol=1e-13)
    module = pop.module_params()
    back = pop.kernel.to_module(pop.kernel.to_kernel({k: v.clone() for k, v in module.items()}))
    for name, value in module.items():
        assert torch.equal(back[name], value), name


def test_output_grad_matches_autograd_classes_first():
    """Loss and d loss / d logits for logits [P, C, B] against autograd of F.cross_entropy / squared error."""
    logits = torch.randn(3, 7, 5, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 7, (3, 5))
    value, grad = output_grad(logits.detach().clone(), y, "cross_entropy")
    want = torch.stack([F.cross_entropy(logits[i].T, y[i]) for i in range(3)])
    torch.testing.assert_close(value, want.detach(), rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(grad, torch.autograd.grad(want.sum(), logits)[0], rtol=1e-12, atol=1e-14)
    out = torch.randn(3, 1, 5, dtype=torch.float64, requires_grad=True)
    target = torch.randn(3, 5, dtype=torch.float64)
    value, grad = output_grad(out.detach().clone(), target, "mse")
    want = ((out.squeeze(1) - target) ** 2).mean(1)
    torch.testing.assert_close(value, want.detach(), rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(grad, torch.autograd.grad(want.sum(), out)[0], rtol=1e-12, atol=1e-14)
