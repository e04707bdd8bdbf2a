"""Per-sample gradients and their statistics (measures/gradients.py) against an autograd loop,
the sample covariance, and the closed form of the noise scale for linear regression."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from implicitreg.measures import (
    REGISTRY,
    compute,
    gradient_noise_scale,
    gradient_statistics,
    per_sample_gradients,
)
from implicitreg.population import Population

D = torch.float64


def mlp(seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 7), nn.Tanh(), nn.Linear(7, 3)).to(D)


def data(n=10):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=g, dtype=D), torch.randint(0, 3, (n,), generator=g)


def autograd_loop(model, x, y, loss_fn=F.cross_entropy):
    rows = []
    for i in range(x.shape[0]):
        model.zero_grad()
        loss_fn(model(x[i:i + 1]), y[i:i + 1]).backward()
        rows.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    return torch.stack(rows)


def test_per_sample_gradients_equal_an_autograd_loop():
    model, (x, y) = mlp(0), data()
    g = per_sample_gradients(model, F.cross_entropy, (x, y))
    assert g.shape == (10, sum(p.numel() for p in model.parameters()))
    torch.testing.assert_close(g, autograd_loop(model, x, y), rtol=0, atol=1e-12)
    torch.testing.assert_close(per_sample_gradients(model, F.cross_entropy, (x, y), chunk_size=3), g, rtol=0, atol=0)


def test_population_members_equal_the_autograd_loop_with_shared_and_own_labels():
    models, (x, y) = [mlp(i) for i in range(3)], data()
    population = Population(models, dtype=D)
    g = per_sample_gradients(population, F.cross_entropy, (x, y))
    assert g.shape[:2] == (3, 10)
    for member, model in enumerate(models):
        torch.testing.assert_close(g[member], autograd_loop(model, x, y), rtol=0, atol=1e-12)
    own = torch.stack([y, (y + 1) % 3, (y + 2) % 3])  # [P, N]: per-member labels
    g = per_sample_gradients(population, F.cross_entropy, (x, own))
    for member, model in enumerate(models):
        torch.testing.assert_close(g[member], autograd_loop(model, x, own[member]), rtol=0, atol=1e-12)


def test_statistics_equal_their_definitions_from_the_gradients():
    """tr Σ̂ is the trace of torch.cov (unbiased); |Ĝ|² = ‖ḡ‖² − tr Σ̂/N; diversity and GSNR from
    their definitions on the explicit per-sample gradients; chunking changes nothing but rounding."""
    model, (x, _) = mlp(2), data(40)
    with torch.no_grad():
        y = model(x).argmax(1)  # labels it already fits: their gradients agree, |G|² is resolved
    g = autograd_loop(model, x, y)
    n = g.shape[0]
    stats = gradient_statistics(model, F.cross_entropy, (x, y))
    trace = torch.trace(torch.cov(g.T))
    mean = g.mean(0)
    torch.testing.assert_close(stats.trace_cov, trace, rtol=1e-10, atol=0)
    torch.testing.assert_close(stats.grad_norm2, mean.pow(2).sum() - trace / n, rtol=1e-10, atol=1e-14)
    assert stats.grad_norm2 > 0
    torch.testing.assert_close(stats.noise_scale, trace / (mean.pow(2).sum() - trace / n), rtol=1e-9, atol=0)
    torch.testing.assert_close(stats.diversity, g.pow(2).sum() / g.sum(0).pow(2).sum(), rtol=1e-10, atol=0)
    var = g.var(0)
    torch.testing.assert_close(stats.snr, (mean[var > 0].pow(2) / var[var > 0]).mean(), rtol=1e-9, atol=0)
    chunked = gradient_statistics(model, F.cross_entropy, (x, y), chunk_size=7)
    torch.testing.assert_close(chunked.noise_scale, stats.noise_scale, rtol=1e-10, atol=0)


@pytest.mark.parametrize("noise", [0.0, 0.25, 1.0])
def test_noise_scale_of_linear_regression_is_its_closed_form(noise):
    """Linear regression y = xᵀw* + ε, x ~ N(0, I_d), ε ~ N(0, s²), loss ℓ = (xᵀw − y)² (mse_loss on
    one sample). At w = w* + Δ the per-sample gradient is g = 2x(xᵀΔ − ε), so
        G = E[g] = 2 E[x xᵀ] Δ = 2Δ,
        E[g gᵀ] = 4 (E[x xᵀ Δ Δᵀ x xᵀ] + s² E[x xᵀ]) = 4 (‖Δ‖² I + 2 Δ Δᵀ + s² I)   (Isserlis),
        Σ = E[g gᵀ] − G Gᵀ = 4 ((‖Δ‖² + s²) I + Δ Δᵀ),   tr Σ = 4 ((d + 1)‖Δ‖² + d s²),
    hence B_simple = tr Σ / |G|² = ((d + 1)‖Δ‖² + d s²)/‖Δ‖². With d = 5, ‖Δ‖ = 1, N = 100000 samples
    the estimate's relative error over seeds 0–19 is at most 1.3% (s² = 0.25): 5% leaves ~4×."""
    d, n = 5, 100_000
    g = torch.Generator().manual_seed(11)
    w_star = torch.randn(d, generator=g, dtype=D)
    delta = torch.randn(d, generator=g, dtype=D)
    delta /= delta.norm()
    x = torch.randn(n, d, generator=g, dtype=D)
    y = x @ w_star + noise ** 0.5 * torch.randn(n, generator=g, dtype=D)
    model = nn.Linear(d, 1, bias=False).to(D)
    with torch.no_grad():
        model.weight.copy_((w_star + delta)[None])
    value = gradient_noise_scale(model, lambda out, t: F.mse_loss(out.squeeze(-1), t), (x, y))
    closed = (d + 1) + d * noise
    assert abs(value.item() / closed - 1) <= 0.05


def test_unresolved_gradient_gives_an_infinite_noise_scale():
    """At the least-squares solution of noisy data the full-batch gradient vanishes: |Ĝ|² < 0."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=g, dtype=D)
    y = x @ torch.ones(3, dtype=D) + torch.randn(50, generator=g, dtype=D)
    model = nn.Linear(3, 1, bias=False).to(D)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y[:, None]).solution.T)
    stats = gradient_statistics(model, lambda out, t: F.mse_loss(out.squeeze(-1), t), (x, y))
    assert stats.grad_norm2 < 0 and stats.noise_scale == float("inf")


def test_registered_on_modules_and_populations():
    models, (x, y) = [mlp(i) for i in range(3)], data(20)
    names = ["gradient_noise_scale", "gradient_diversity", "gradient_snr"]
    population = compute(names, Population(models, dtype=D), data=(x, y), loss_fn=F.cross_entropy)
    for name in names:
        assert REGISTRY[name].needs == ("params", "data", "loss")
        loop = torch.stack([compute([name], m, data=(x, y), loss_fn=F.cross_entropy)[name] for m in models])
        torch.testing.assert_close(population[name], loop, rtol=1e-10, atol=0)


def test_one_sample_is_refused():
    model, (x, y) = mlp(0), data(1)
    with pytest.raises(ValueError, match="N ≥ 2"):
        gradient_statistics(model, F.cross_entropy, (x, y))


def test_statistics_are_tracked_along_training_with_per_member_labels():
    """train.track takes them at their cadence; a member with corrupted labels gets its own labels
    (the hook passes y [P, N]): its statistics differ from its clean twin's (same seed, same init)."""
    from implicitreg.config import DataConfig, MLPConfig, TrainConfig
    from implicitreg.data import load_dataset
    from implicitreg.plan import Group, Member
    from implicitreg.train import train_population

    data = load_dataset(DataConfig(name="digits", n_train=64, n_test=32)).tensors("cpu", D)
    names = ["gradient_noise_scale", "gradient_diversity", "gradient_snr"]
    train = TrainConfig(optimizer="gd", lr=0.2, max_steps=20, eval_every=10, dtype="float64",
                        target_train_acc=None, track=names, track_every=10)
    group = Group("mlp", MLPConfig(hidden=[8]), DataConfig(), train,
                  (Member("clean", 0, 0.2), Member("noisy", 0, 0.2, label_noise=1.0)))
    series = {}
    for result in train_population(group, data):
        for step, name, value in result.metrics:
            if name in names:
                series.setdefault(result.run_id, {}).setdefault(name, {})[step] = value
    for run in ("clean", "noisy"):
        assert sorted(series[run]) == sorted(names)
        for name in names:
            assert sorted(series[run][name]) == [10, 20]
        assert all(v > 0 for v in series[run]["gradient_diversity"].values())
    assert series["clean"]["gradient_diversity"][10] != series["noisy"]["gradient_diversity"][10]
