"""The registry's applicability predicates (``MeasureInfo.refusal``) agree with the measures: on a zoo
of models, a measure that the predicate accepts computes without a ValueError, and a measure that
raises a ValueError on a model's structure is refused by the predicate first, with a reason — so that
a Tracker can refuse it before training instead of at its first measurement."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from implicitreg.measures import REGISTRY, compute
from implicitreg.models import CNN1D, MLP

D = torch.float64


class Tanh(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))

    def forward(self, x):
        return self.net(x)


def conv2d_bn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(4 * 2 * 2, 3))


def mlp_bn():
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def conv1d_pool():
    return nn.Sequential(nn.Conv1d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(), nn.Linear(12, 3))


ZOO = {  # name → (model factory, per-sample input shape)
    "mlp": (lambda: MLP(6, [8], 3), (6,)),
    "mlp_bn": (mlp_bn, (6,)),
    "cnn1d": (lambda: CNN1D(6, channels=4, layers=1, kernel_size=3, output_dim=3), (6,)),
    "conv1d_pool": (conv1d_pool, (1, 6)),
    "conv2d_bn": (conv2d_bn, (1, 4, 4)),
    "tanh": (Tanh, (6,)),
    "linear": (lambda: nn.Sequential(nn.Linear(6, 5, bias=False), nn.Linear(5, 3, bias=False)), (6,)),
}


def setting(kind):
    factory, shape = ZOO[kind]
    torch.manual_seed(0)
    model, init = factory().to(D), factory().to(D)
    g = torch.Generator().manual_seed(1)
    for module in model.modules():  # running statistics away from the identity, so folding matters
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(torch.randn(module.num_features, generator=g, dtype=D))
            module.running_var.copy_(torch.rand(module.num_features, generator=g, dtype=D) + 0.5)
    model.eval()
    x = torch.randn(16, *shape, generator=g, dtype=D)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, init, (x, y), shape


@pytest.mark.parametrize("kind", sorted(ZOO))
def test_refusal_agrees_with_the_measure(kind):
    model, init, data, shape = setting(kind)
    for name, info in sorted(REGISTRY.items()):
        reason = info.refusal(model, shape)
        try:
            value = compute([name], model, init=init, data=data, loss_fn=F.cross_entropy)[name]
        except ValueError as err:
            assert reason is not None, f"{name} on {kind} raised {err!r}, but its predicate accepted the model"
            continue
        if reason is None:
            assert value.shape == torch.Size([]), (name, kind)


EXPECTED = {  # (measure, model) → a phrase of the reason; measures that apply are None
    ("path_norm", "mlp"): None, ("path_norm", "mlp_bn"): None, ("path_norm", "cnn1d"): None,
    ("path_norm", "conv2d_bn"): "Conv2d", ("path_norm", "tanh"): "Tanh", ("path_norm", "conv1d_pool"): "MaxPool1d",
    ("spectral_product", "conv2d_bn"): "Conv2d", ("spectral_product", "mlp_bn"): None,
    ("spectral_product", "cnn1d"): None,
    ("nuclear_norm", "linear"): None, ("nuclear_norm", "mlp"): "linear", ("nuclear_norm", "conv2d_bn"): "Conv2d",
    ("top_hessian_eigenvalue", "conv2d_bn"): None, ("l2_norm", "conv2d_bn"): None,
}


@pytest.mark.parametrize("measure,kind", sorted(EXPECTED))
def test_refusal_names_the_reason(measure, kind):
    model, _, _, shape = setting(kind)
    reason = REGISTRY[measure].refusal(model, shape)
    if EXPECTED[measure, kind] is None:
        assert reason is None, reason
    else:
        assert reason is not None and EXPECTED[measure, kind] in reason, reason


def test_refusal_restores_training_flags():
    model = conv2d_bn()
    model.train()
    model[1].eval()  # a user's mix of modes stays as it was
    flags = [m.training for m in model.modules()]
    assert REGISTRY["path_norm"].refusal(model, (1, 4, 4)) is not None
    assert [m.training for m in model.modules()] == flags


def test_a_convolution_without_input_shape_is_refused_with_the_reason():
    model = nn.Sequential(nn.Conv1d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3))
    reason = REGISTRY["spectral_product"].refusal(model, None)
    assert reason is not None and "input shape" in reason
    assert REGISTRY["spectral_product"].refusal(model, (1, 10)) is None


@pytest.mark.parametrize("kind, module", [("tanh", "Tanh"), ("conv1d_pool", "MaxPool1d")])
def test_path_norm_called_directly_refuses_what_its_formula_does_not_cover(kind, module):
    # the one-pass formula would return a number for these (not their path norm): an error instead
    from implicitreg.measures import path_norm

    model, _, _, shape = setting(kind)
    with pytest.raises(ValueError, match=module):
        path_norm(model, input_shape=shape)
