"""Structure measures (layer norms, path norm, margins, spectral complexity, rank) against
references: dense matrices, explicit path enumeration, hand computations, numpy; claimed
invariances; populations against a loop over their members. Everything in float64."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from implicitreg.config import CNNConfig, MLPConfig
from implicitreg.measures.core import REGISTRY
from implicitreg.measures.layers import (
    conv1d_operator_norms,
    frobenius_norms,
    frobenius_product,
    spectral_norms,
    spectral_product,
    sum_of_frobenius,
    sum_of_spectral,
    weight_layer_names,
)
from implicitreg.measures.margins import margin, normalized_margin, spectral_complexity
from implicitreg.measures.path_norm import path_norm
from implicitreg.measures.rank import (
    effective_rank,
    effective_ranks,
    end_to_end_matrix,
    nuclear_norm,
    nuclear_norms,
    stable_rank,
    stable_ranks,
)
from implicitreg.models import build_model
from implicitreg.population import Population
from implicitreg.seeding import generator

D = torch.float64


def mlp(hidden, d_in, d_out, seed=0):
    return build_model("mlp", MLPConfig(hidden=hidden), d_in, d_out, generator(seed, "init"))


def cnn(channels, layers, length, d_out, seed=0, kernel_size=5):
    return build_model("cnn", CNNConfig(channels=channels, layers=layers, kernel_size=kernel_size), length, d_out,
                       generator(seed, "init"))


def randomize_biases(model, seed):
    """Default inits may zero biases; make them nonzero so that the bias convention is exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def conv_dense(weight, conv, length):
    """The convolution as a dense matrix [C_out·L_out, C_in·L_in] (channel-major), by applying it to the identity basis."""
    c_in = weight.shape[1] * conv.groups
    eye = torch.eye(c_in * length, dtype=weight.dtype).reshape(-1, c_in, length)
    out = F.conv1d(eye, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    return out.reshape(c_in * length, -1).T


def dense_layers(model, length=None):
    """(W, b) per layer of an MLP or a CNN1D unrolled into fully connected layers."""
    if hasattr(model, "convs"):
        layers = []
        for conv, l_in, l_out in zip(model.convs, [length, *model.lengths[:-1]], model.lengths):
            W = conv_dense(conv.weight.detach(), conv, l_in)
            layers.append((W, conv.bias.detach().repeat_interleave(l_out)))
        return layers + [(model.readout.weight.detach(), model.readout.bias.detach())]
    return [(layer.weight.detach(), layer.bias.detach()) for layer in model.layers]


def enumerated_path_norm(layers, p):
    """(Σ over every path of Π |w|^p)^(1/p), by explicit enumeration. A path starts at an input unit
    (first layer) or at the constant-1 unit of a bias (any layer), and ends at an output unit."""
    sizes = [layers[0][0].shape[1]] + [W.shape[0] for W, _ in layers]
    total = 0.0
    for start, (W, b) in enumerate(layers):
        sources = [*range(W.shape[1]), "bias"] if start == 0 else ["bias"]
        for src in sources:
            for units in itertools.product(*[range(n) for n in sizes[start + 1:]]):
                first = b[units[0]] if src == "bias" else W[units[0], src]
                weights = [abs(float(first)) ** p]
                weights += [abs(float(W2[c, a])) ** p for (W2, _), a, c in zip(layers[start + 1:], units[:-1], units[1:])]
                total += math.prod(weights)
    return total ** (1 / p)


def population(modules):
    return Population(modules, dtype=D)


# ---------------------------------------------------------------- spectral and Frobenius norms


def test_linear_spectral_and_frobenius_norms_match_torch():
    model = mlp([16, 12], 10, 4)
    ref_sigma = torch.stack([torch.linalg.matrix_norm(layer.weight, ord=2) for layer in model.layers]).detach()
    ref_frob = torch.stack([layer.weight.norm() for layer in model.layers]).detach()
    assert weight_layer_names(model) == ["layers.0", "layers.1", "layers.2"]
    torch.testing.assert_close(spectral_norms(model), ref_sigma, rtol=1e-12, atol=0)
    torch.testing.assert_close(frobenius_norms(model), ref_frob, rtol=1e-12, atol=0)
    torch.testing.assert_close(spectral_product(model), ref_sigma.prod(), rtol=1e-12, atol=0)
    torch.testing.assert_close(sum_of_spectral(model), ref_sigma.sum(), rtol=1e-12, atol=0)
    torch.testing.assert_close(frobenius_product(model), ref_frob.prod(), rtol=1e-12, atol=0)
    torch.testing.assert_close(sum_of_frobenius(model), ref_frob.sum(), rtol=1e-12, atol=0)
    # biases are excluded: changing them changes nothing
    randomize_biases(model, 1)
    torch.testing.assert_close(spectral_norms(model), ref_sigma, rtol=1e-12, atol=0)


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("length", [9, 16])
def test_conv1d_operator_norm_matches_dense_matrix(kernel, length):
    conv = nn.Conv1d(3, 4, kernel, stride=2, padding=1).double()
    weights = torch.randn(3, 4, 3, kernel, dtype=D, generator=torch.Generator().manual_seed(kernel + length))
    got = conv1d_operator_norms(weights, conv, length)
    ref = torch.stack([torch.linalg.matrix_norm(conv_dense(w, conv, length), ord=2) for w in weights])
    torch.testing.assert_close(got, ref, rtol=1e-8, atol=0)
    # the kernel's own matrix norm is a different (wrong) number: the test can tell them apart
    assert not torch.allclose(ref, torch.linalg.matrix_norm(weights.flatten(2), ord=2), rtol=1e-3)


def test_conv1d_operator_norm_of_float32_kernels_is_the_exact_norm_rounded():
    # the top of a convolution's AᵀA is clustered (here λ2/λ1 > 0.9999 for three of four members),
    # tighter than float32's residual floor (~1e-5): the iteration runs in float64 and only the
    # result is rounded, so it is the exact norm to float32 precision, not an estimate of λ2
    conv = nn.Conv1d(8, 8, 5, padding=2)
    weights = torch.randn(4, 8, 8, 5, generator=torch.Generator().manual_seed(48))
    got = conv1d_operator_norms(weights, conv, 40, with_convergence=True)
    dense = [conv_dense(w.double(), conv, 40) for w in weights]
    gaps = torch.stack([(lambda e: e[-2] / e[-1])(torch.linalg.eigvalsh(A.T @ A)) for A in dense])
    assert int((gaps > 0.9999).sum()) == 3
    ref = torch.stack([torch.linalg.matrix_norm(A, ord=2) for A in dense])
    assert got.value.dtype == torch.float32 and bool(got.converged.all())
    torch.testing.assert_close(got.value.double(), ref, rtol=2 * torch.finfo(torch.float32).eps, atol=0)
    # members share the start vector: a population's norms are each member's own
    for i in range(4):
        torch.testing.assert_close(conv1d_operator_norms(weights[i : i + 1], conv, 40), got.value[i : i + 1],
                                   rtol=0, atol=0)


def test_cnn_spectral_norms_use_each_layers_input_length():
    length = 24
    model = cnn(3, 2, length, 4)
    got = spectral_norms(model, input_shape=(length,))
    dense = [W for W, _ in dense_layers(model, length)]
    ref = torch.stack([torch.linalg.matrix_norm(W, ord=2) for W in dense])
    assert got.shape == (3,)
    torch.testing.assert_close(got, ref, rtol=1e-8, atol=0)
    # the input length matters: 23 gives the same layer lengths but another first-layer operator
    other = spectral_norms(model, input_shape=23)
    assert model.lengths == cnn(3, 2, 23, 4).lengths
    assert abs(float(other[0] - got[0])) > 1e-6 * float(got[0])


def test_conv_input_length_comes_from_the_model_or_is_required():
    model = cnn(2, 2, 20, 3)
    torch.testing.assert_close(spectral_norms(model), spectral_norms(model, input_shape=20), rtol=0, atol=0)
    # a user's convolutional model does not say its input length: the caller must
    user = nn.Sequential(nn.Conv1d(1, 2, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(20, 3)).double()
    with pytest.raises(ValueError, match="input_shape"):
        spectral_norms(user)
    with pytest.raises(ValueError, match="input_shape"):
        path_norm(user)



def test_compute_takes_the_input_shape_the_error_asks_for_or_reads_it_from_data():
    from implicitreg.measures import compute

    user = nn.Sequential(nn.Conv1d(1, 2, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(20, 3)).double()
    names = ["path_norm", "spectral_product", "spectral_complexity"]
    with pytest.raises(ValueError, match=r"input_shape=\(L,\).*measures\.compute.*data="):
        compute(names, user)
    given = compute(names, user, input_shape=(1, 20))
    x = torch.randn(8, 1, 20, generator=torch.Generator().manual_seed(0), dtype=D)
    inferred = compute(names + ["normalized_margin"], user, data=(x, torch.arange(8) % 3))
    for name in names:
        assert given[name] == REGISTRY[name].fn(user, input_shape=(1, 20)) == inferred[name], name
    assert torch.isfinite(inferred["normalized_margin"])


# ---------------------------------------------------------------- path norm


@pytest.mark.parametrize("p", [1, 2, 3])
def test_path_norm_matches_enumeration_on_tiny_mlp(p):
    model = randomize_biases(mlp([4, 3], 3, 2, seed=3), seed=4)
    ref = enumerated_path_norm(dense_layers(model), p)
    assert path_norm(model, p=p).item() == pytest.approx(ref, rel=1e-12)
    # the bias paths are counted: without them the value differs
    no_bias = [(W, torch.zeros_like(b)) for W, b in dense_layers(model)]
    assert enumerated_path_norm(no_bias, p) < ref * (1 - 1e-3)


def test_path_norm_matches_enumeration_on_tiny_cnn():
    length = 7
    model = randomize_biases(cnn(2, 2, length, 2, seed=5, kernel_size=3), seed=6)
    ref = enumerated_path_norm(dense_layers(model, length), 2)
    assert path_norm(model, input_shape=(length,)).item() == pytest.approx(ref, rel=1e-12)


def test_path_norm_is_invariant_under_relu_rescaling():
    model = randomize_biases(mlp([5, 4], 3, 2, seed=7), seed=8)
    before = path_norm(model)
    c = 3.7
    with torch.no_grad():  # hidden unit 2 of the first hidden layer
        model.layers[0].weight[2] *= c
        model.layers[0].bias[2] *= c
        model.layers[1].weight[:, 2] /= c
    torch.testing.assert_close(path_norm(model), before, rtol=1e-10, atol=0)
    with torch.no_grad():  # rescaling without the compensation does change it
        model.layers[1].weight[:, 2] *= c
    assert path_norm(model) > before * 1.01


def test_path_norm_is_invariant_under_channel_rescaling_in_a_cnn():
    length = 12
    model = randomize_biases(cnn(3, 2, length, 2, seed=9, kernel_size=3), seed=10)
    before = path_norm(model, input_shape=(length,))
    with torch.no_grad():  # output channel 1 of the first convolution
        model.convs[0].weight[1] *= 0.3
        model.convs[0].bias[1] *= 0.3
        model.convs[1].weight[:, 1] /= 0.3
    torch.testing.assert_close(path_norm(model, input_shape=(length,)), before, rtol=1e-10, atol=0)


# ---------------------------------------------------------------- margins and spectral complexity


def identity_classifier(scale=1.0):
    model = nn.Sequential(nn.Linear(3, 3)).double()
    with torch.no_grad():
        model[0].weight.copy_(scale * torch.eye(3, dtype=D))
        model[0].bias.zero_()
    return model


MARGIN_DATA = (torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 5.0], [1.0, 1.0, 1.0], [2.0, -1.0, 4.0]], dtype=D),
               torch.tensor([0, 1, 2, 2]))
# by hand: margins 3−1 = 2, 2−5 = −3, 1−1 = 0, 4−2 = 2 → sorted [−3, 0, 2, 2]


@pytest.mark.parametrize(("q", "expected"), [(0.0, -3.0), (1 / 3, 0.0), (0.5, 1.0), (1.0, 2.0), (0.1, -2.1)])
def test_margin_quantiles_match_hand_computation(q, expected):
    assert margin(identity_classifier(), MARGIN_DATA, q=q).item() == pytest.approx(expected, abs=1e-12)


def test_margin_of_a_population_and_bad_data():
    pop = population([identity_classifier(1.0), identity_classifier(2.0)])
    torch.testing.assert_close(margin(pop, MARGIN_DATA, q=0.5), torch.tensor([1.0, 2.0], dtype=D))
    # per-member labels [P, N] (label noise): member 1 sees point 0 labelled 1, margin 2·(1−3) = −4, so its
    # sorted margins are [−6, −4, 0, 4] (shared labels: [−6, 0, 4, 4]); member 0 keeps [−3, 0, 2, 2]
    per_member = torch.stack([MARGIN_DATA[1], torch.tensor([1, 1, 2, 2])])
    torch.testing.assert_close(margin(pop, (MARGIN_DATA[0], per_member), q=1 / 3), torch.tensor([0.0, -4.0], dtype=D))
    with pytest.raises(ValueError, match="labels"):
        margin(identity_classifier(), (MARGIN_DATA[0], torch.tensor([0, 1, 3, 2])))
    with pytest.raises(ValueError, match="pair"):
        margin(identity_classifier(), MARGIN_DATA[0])


def numpy_spectral_complexity(matrices, sigmas=None):
    """Bartlett et al. (2017) with M_i = 0, from numpy: matrices [out, in], σ_i = ‖W_i‖₂ unless given."""
    sigmas = [np.linalg.norm(W, 2) for W in matrices] if sigmas is None else sigmas
    group = [np.linalg.norm(W, axis=1).sum() for W in matrices]  # ‖Wᵀ‖_{2,1}: ℓ2 of rows of W, summed
    return np.prod(sigmas) * sum((a / s) ** (2 / 3) for a, s in zip(group, sigmas)) ** 1.5


def test_spectral_complexity_matches_numpy():
    model = mlp([6, 4], 5, 3, seed=11)
    ref = numpy_spectral_complexity([layer.weight.detach().numpy() for layer in model.layers])
    assert spectral_complexity(model).item() == pytest.approx(ref, rel=1e-12)


def test_spectral_complexity_of_a_cnn_matches_numpy():
    length = 15
    model = cnn(3, 2, length, 4, seed=12)
    dense = [W.numpy() for W, _ in dense_layers(model, length)]
    sigmas = [np.linalg.norm(W, 2) for W in dense]  # operator norms of the unrolled convolutions
    kernels = [conv.weight.detach().numpy().reshape(conv.out_channels, -1) for conv in model.convs]
    ref = numpy_spectral_complexity([*kernels, model.readout.weight.detach().numpy()], sigmas)
    assert spectral_complexity(model, input_shape=(length,)).item() == pytest.approx(ref, rel=1e-8)


def classification_data(d_in, n=30, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g, dtype=D), torch.randint(classes, (n,), generator=g)


def test_normalized_margin_is_margin_over_complexity_and_layer_rescaling_invariant():
    model = randomize_biases(mlp([6, 5], 4, 3, seed=13), seed=14)
    data = classification_data(4)
    value = normalized_margin(model, data)
    torch.testing.assert_close(value, margin(model, data) / spectral_complexity(model), rtol=1e-14, atol=0)
    with torch.no_grad():  # layer 1 (weight and bias) × c, layer 2 × 1/c: same function
        model.layers[0].weight *= 2.5
        model.layers[0].bias *= 2.5
        model.layers[1].weight /= 2.5
    torch.testing.assert_close(normalized_margin(model, data), value, rtol=1e-10, atol=0)


def test_margin_is_unit_rescaling_invariant_but_normalized_margin_is_not():
    # Bartlett's complexity depends on spectral norms, which a single unit's rescaling changes
    model = randomize_biases(mlp([6, 5], 4, 3, seed=15), seed=16)
    data = classification_data(4, seed=1)
    m, nm = margin(model, data), normalized_margin(model, data)
    with torch.no_grad():
        model.layers[0].weight[1] *= 4.0
        model.layers[0].bias[1] *= 4.0
        model.layers[1].weight[:, 1] /= 4.0
    torch.testing.assert_close(margin(model, data), m, rtol=1e-10, atol=1e-12)
    assert abs(float(normalized_margin(model, data) / nm) - 1) > 1e-4


# ---------------------------------------------------------------- rank


def linear_model(*matrices):
    layers = [nn.Linear(W.shape[1], W.shape[0], bias=False).double() for W in matrices]
    with torch.no_grad():
        for layer, W in zip(layers, matrices):
            layer.weight.copy_(torch.as_tensor(W, dtype=D))
    return nn.Sequential(*layers)


def test_effective_and_stable_rank_of_known_singular_values():
    diag = linear_model(torch.diag(torch.tensor([1.0, 1.0, 0.0])))
    assert effective_rank(diag).item() == pytest.approx(2.0, rel=1e-12)
    assert stable_rank(diag).item() == pytest.approx(2.0, rel=1e-12)
    q, _ = torch.linalg.qr(torch.randn(4, 4, dtype=D, generator=torch.Generator().manual_seed(0)))
    equal = linear_model(3 * q)  # four singular values equal to 3
    assert effective_rank(equal).item() == pytest.approx(4.0, rel=1e-12)
    assert nuclear_norm(equal).item() == pytest.approx(12.0, rel=1e-12)
    two = linear_model(q[:, :2] @ torch.diag(torch.tensor([3.0, 1.0], dtype=D)) @ q[:2, :])  # σ = (3, 1, 0, 0)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert effective_rank(two).item() == pytest.approx(math.exp(entropy), rel=1e-12)
    assert stable_rank(two).item() == pytest.approx(10 / 9, rel=1e-12)
    assert nuclear_norm(two).item() == pytest.approx(4.0, rel=1e-12)
    zero = linear_model(torch.zeros(3, 3))
    assert effective_rank(zero).item() == 0.0 and stable_rank(zero).item() == 0.0


def test_end_to_end_rank_of_a_factorized_model():
    g = torch.Generator().manual_seed(1)
    W1, W2 = torch.randn(7, 5, generator=g, dtype=D), torch.randn(4, 7, generator=g, dtype=D)
    model = linear_model(W1, W2)
    torch.testing.assert_close(end_to_end_matrix(model), W2 @ W1, rtol=1e-14, atol=0)
    svals = torch.linalg.svdvals(W2 @ W1)
    assert nuclear_norm(model).item() == pytest.approx(float(svals.sum()), rel=1e-12)
    assert stable_rank(model).item() == pytest.approx(float((svals**2).sum() / svals[0] ** 2), rel=1e-12)
    p = svals / svals.sum()
    assert effective_rank(model).item() == pytest.approx(float(torch.exp(-(p * p.log()).sum())), rel=1e-12)
    # per layer, on each factor
    for fn, ref in [(nuclear_norms, lambda s: s.sum()), (stable_ranks, lambda s: (s**2).sum() / s[0] ** 2)]:
        expected = torch.stack([ref(torch.linalg.svdvals(W)) for W in (W1, W2)])
        torch.testing.assert_close(fn(model), expected, rtol=1e-12, atol=0)
    assert effective_ranks(model).shape == (2,)


class HiddenRelu(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_end_to_end_rank_refuses_nonlinear_models():
    with pytest.raises(ValueError, match="ReLU"):
        nuclear_norm(mlp([4], 3, 2))
    with pytest.raises(ValueError, match="ReLU"):
        effective_rank(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double())
    with pytest.raises(ValueError, match="not the product"):
        stable_rank(HiddenRelu().double())
    with pytest.raises(ValueError, match="convolutions"):
        nuclear_norm(cnn(2, 1, 10, 2))


# ---------------------------------------------------------------- populations and registry

SCALARS = ["spectral_product", "frobenius_product", "sum_of_spectral", "sum_of_frobenius", "path_norm",
           "spectral_complexity"]


def _call(name, model, kwargs):
    return REGISTRY[name].fn(model, **kwargs)


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_population_equals_loop_over_members(arch):
    length = 14
    members = ([randomize_biases(mlp([5, 4], 6, 3, seed=s), seed=s) for s in range(3)] if arch == "mlp"
               else [randomize_biases(cnn(2, 2, length, 3, seed=s), seed=s) for s in range(3)])
    pop = population(members)
    shape = {"input_shape": (length,)} if arch == "cnn" else {}
    data = classification_data(length if arch == "cnn" else 6, seed=2)
    for name in SCALARS:
        kwargs = {} if name in ("frobenius_product", "sum_of_frobenius") else shape
        got = _call(name, pop, kwargs)
        assert got.shape == (3,), name
        torch.testing.assert_close(got, torch.stack([_call(name, m, kwargs) for m in members]), rtol=1e-10, atol=0,
                                   msg=name)
    for fn, kwargs in [(margin, {}), (normalized_margin, shape)]:
        torch.testing.assert_close(fn(pop, data, **kwargs), torch.stack([fn(m, data, **kwargs) for m in members]),
                                   rtol=1e-10, atol=1e-12)
    for fn, kwargs in [(spectral_norms, shape), (frobenius_norms, {}), (nuclear_norms, {}), (effective_ranks, {}),
                       (stable_ranks, {})]:
        got = fn(pop, **kwargs)
        assert got.shape == (3, 3)
        torch.testing.assert_close(got, torch.stack([fn(m, **kwargs) for m in members]), rtol=1e-10, atol=0)


def test_population_of_linear_models_equals_loop():
    g = torch.Generator().manual_seed(3)
    members = [linear_model(torch.randn(7, 5, generator=g, dtype=D), torch.randn(4, 7, generator=g, dtype=D))
               for _ in range(3)]
    pop = population(members)
    for fn in (nuclear_norm, effective_rank, stable_rank):
        torch.testing.assert_close(fn(pop), torch.stack([fn(m) for m in members]), rtol=1e-10, atol=0)


def test_registry_entries():
    expected = {"spectral_product": True, "frobenius_product": True, "sum_of_spectral": True,
                "sum_of_frobenius": True, "path_norm": True, "margin": False, "spectral_complexity": True,
                "normalized_margin": False, "nuclear_norm": True, "effective_rank": True, "stable_rank": True}
    for name, lower in expected.items():
        info = REGISTRY[name]
        assert info.lower_is_simpler is lower, name
        assert info.summary, name
    assert REGISTRY["margin"].needs == ("params", "data") and REGISTRY["margin"].cost == "forward"
