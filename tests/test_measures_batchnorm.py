"""BatchNorm and training mode: an eval-mode BatchNorm network is measured as its folded twin (the
same function, the scale in the weights); a network in training mode is refused with one clear error."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from implicitreg.measures import compute
from implicitreg.measures.layers import fold_batchnorm, frobenius_product, spectral_product
from implicitreg.measures.margins import normalized_margin, spectral_complexity
from implicitreg.measures.path_norm import path_norm
from implicitreg.measures.rank import effective_rank

D = torch.float64
FOLDED = ["path_norm", "spectral_complexity", "normalized_margin", "spectral_product", "sum_of_spectral",
          "frobenius_product", "sum_of_frobenius", "margin"]


def randomize_norm(norm: nn.modules.batchnorm._BatchNorm, g: torch.Generator) -> None:
    """Running statistics and affine parameters far from the identity, so that folding matters."""
    c = norm.num_features
    with torch.no_grad():
        norm.running_mean.copy_(torch.randn(c, generator=g, dtype=D))
        norm.running_var.copy_(torch.rand(c, generator=g, dtype=D) * 3 + 0.2)
        if norm.affine:
            norm.weight.copy_(torch.randn(c, generator=g, dtype=D))
            norm.bias.copy_(torch.randn(c, generator=g, dtype=D))


def hand_folded(layer: nn.Module, norm: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """layer followed by norm (eval mode) as one layer: W' = diag(s) W, b' = s (b − μ) + β."""
    s = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    twin = type(layer)(*((layer.in_features, layer.out_features) if isinstance(layer, nn.Linear) else
                         (layer.in_channels, layer.out_channels, layer.kernel_size[0])),
                       **({} if isinstance(layer, nn.Linear) else {"stride": layer.stride, "padding": layer.padding})).double()
    bias = layer.bias if layer.bias is not None else torch.zeros_like(s)
    with torch.no_grad():
        twin.weight.copy_(layer.weight * s.reshape(-1, *[1] * (layer.weight.dim() - 1)))
        twin.bias.copy_((bias - norm.running_mean) * s + norm.bias)
    return twin


def mlp_pair():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    net = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.ReLU(), nn.Linear(7, 6, bias=False),
                        nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()
    randomize_norm(net[1], g)
    randomize_norm(net[4], g)
    net.eval()
    twin = nn.Sequential(hand_folded(net[0], net[1]), nn.ReLU(), hand_folded(net[3], net[4]), nn.ReLU(),
                         nn.Linear(6, 3).double())
    twin[4].load_state_dict(net[6].state_dict())
    x = torch.randn(40, 5, generator=g, dtype=D)
    return net, twin, x


def cnn_pair():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2)
    net = nn.Sequential(nn.Conv1d(1, 3, 3, stride=2, padding=1, bias=False), nn.BatchNorm1d(3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(3 * 6, 4)).double()
    randomize_norm(net[1], g)
    net.eval()
    twin = nn.Sequential(hand_folded(net[0], net[1]), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6, 4).double())
    twin[3].load_state_dict(net[4].state_dict())
    x = torch.randn(40, 1, 12, generator=g, dtype=D)
    return net, twin, x


@pytest.mark.parametrize("pair", [mlp_pair, cnn_pair])
def test_a_batchnorm_network_measures_as_its_folded_twin(pair):
    net, twin, x = pair()
    with torch.no_grad():
        y = net(x).argmax(1)
        torch.testing.assert_close(net(x), twin(x), rtol=1e-12, atol=1e-12)  # the twin is the same function
    got = compute(FOLDED, net, data=(x, y), loss_fn=F.cross_entropy)
    want = compute(FOLDED, twin, data=(x, y), loss_fn=F.cross_entropy)
    for name in FOLDED:
        torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-12, msg=name)
    # the same with the functions called directly (input shape from the model or given)
    shape = {"input_shape": tuple(x.shape[1:])}
    for fn in (path_norm, spectral_complexity, spectral_product, frobenius_product):
        torch.testing.assert_close(fn(net, **shape), fn(twin, **shape), rtol=1e-6, atol=0)
    torch.testing.assert_close(normalized_margin(net, (x, y)), normalized_margin(twin, (x, y)), rtol=1e-6, atol=0)
    # and fold_batchnorm gives back a module equal to the hand-folded twin
    folded = fold_batchnorm(net, tuple(x.shape[1:]))
    assert not any(isinstance(m, nn.BatchNorm1d) for m in folded.modules())
    torch.testing.assert_close(folded(x), twin(x), rtol=1e-12, atol=1e-12)


def test_batchnorm_that_cannot_be_folded_is_refused():
    after_relu = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.BatchNorm1d(5), nn.Linear(5, 3)).double().eval()
    with pytest.raises(ValueError, match="does not directly follow"):
        path_norm(after_relu)

    class Skip(nn.Module):  # the layer's output also bypasses the BatchNorm
        def __init__(self):
            super().__init__()
            self.fc, self.bn, self.out = nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)

        def forward(self, x):
            h = self.fc(x)
            return self.out(torch.relu(self.bn(h)) + h)

    skip = Skip().double().eval()
    randomize_norm(skip.bn, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="changed the model's outputs"):
        spectral_complexity(skip)
    no_stats = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5, track_running_stats=False), nn.Linear(5, 3))
    with pytest.raises(ValueError, match="running statistics"):
        spectral_product(no_stats.double().eval())
    # measures that read raw weight matrices say so, rather than ignore the BatchNorm
    net, _, _ = mlp_pair()
    with pytest.raises(ValueError, match="BatchNorm"):
        effective_rank(net)


@pytest.mark.parametrize("layer", [nn.BatchNorm1d(6), nn.Dropout(0.2)])
def test_a_model_in_training_mode_is_refused_with_one_clear_error(layer):
    net = nn.Sequential(nn.Linear(4, 6), layer, nn.ReLU(), nn.Linear(6, 3)).double()
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(0), dtype=D)
    with torch.no_grad():
        y = net.eval()(x).argmax(1)  # labels the model fits: every measure below is finite
    net.train()
    # every measure that runs the model; BatchNorm is folded first, so the norm measures need eval() too
    names = ["path_norm", "normalized_margin", "margin", "top_hessian_eigenvalue", "pac_bayes_sigma",
             "epsilon_sharpness"] + (["spectral_complexity"] if isinstance(layer, nn.BatchNorm1d) else [])
    for name in names:
        with pytest.raises(ValueError, match=r"training mode.*call model\.eval\(\)"):
            compute([name], net, data=(x, y))
    net.eval()
    values = compute(names, net, data=(x, y))
    assert all(bool(torch.isfinite(v)) for v in values.values()), values
