"""Convergence travels with the value: iterative measures report per-member flags (``with_convergence``),
``measures.compute`` returns them on request, and a tracked value is stored with ``NAME.converged``."""

import dataclasses
import functools
import warnings

import pytest
import torch

from implicitreg.config import CNNConfig, DataConfig, MLPConfig, TrainConfig
from implicitreg.data import DeviceData, load_dataset
from implicitreg.measures import REGISTRY, compute, layers
from implicitreg.measures.flatness import pac_bayes_sigma
from implicitreg.measures.layers import spectral_product
from implicitreg.measures.margins import normalized_margin, spectral_complexity
from implicitreg.hooks import MeasureHook
from implicitreg.models import build_model
from implicitreg.plan import Group, Member
from implicitreg.population import Population
from implicitreg.seeding import generator
from implicitreg.sequential import train_sequential
from implicitreg.train import LoopContext, train_population

ITERATIVE = {"top_hessian_eigenvalue", "pac_bayes_sigma", "pac_bayes_flatness", "pac_bayes_orig", "pac_bayes_init",
             "pac_bayes_mag_flatness", "pac_bayes_mag_init", "pac_bayes_mag_orig", "spectral_product",
             "sum_of_spectral", "spectral_complexity", "normalized_margin", "top_ggn_eigenvalue"}


def test_the_iterative_measures_are_the_ones_that_report_convergence():
    assert {name for name, info in REGISTRY.items() if info.iterative} == ITERATIVE


def live_and_dead():
    """Two members: a ReLU MLP, and one whose hidden units are all dead — its Hessian is the
    rank-1 Hessian of the output bias, which Lanczos resolves exactly in 2 products."""
    live = build_model("mlp", MLPConfig(hidden=[6]), 4, 2, generator(0, "init"))
    dead = build_model("mlp", MLPConfig(hidden=[6]), 4, 2, generator(1, "init"))
    with torch.no_grad():
        dead.layers[0].bias.fill_(-100.0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 4, generator=g, dtype=torch.float64), torch.randint(0, 2, (20,), generator=g)
    return Population([live, dead], dtype=torch.float64), x, y


def with_budget(monkeypatch, name, **kwargs):
    info = REGISTRY[name]
    monkeypatch.setitem(REGISTRY, name, dataclasses.replace(info, fn=functools.partial(info.fn, **kwargs)))


@pytest.mark.parametrize("max_hvp,expected", [(2, [0.0, 1.0]), (200, [1.0, 1.0])])
def test_the_hook_stores_each_members_converged_flag(monkeypatch, max_hvp, expected):
    with_budget(monkeypatch, "top_hessian_eigenvalue", max_hvp=max_hvp)
    pop, x, y = live_and_dead()
    data = DeviceData(x, y, x, y, 2)
    context = LoopContext(data, y.expand(2, -1), {k: v.clone() for k, v in pop.module_params().items()}, step=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the flag is the report: no warning besides it
        out = MeasureHook(REGISTRY["top_hessian_eigenvalue"], every=1)(pop, context)
    assert set(out) == {"top_hessian_eigenvalue", "top_hessian_eigenvalue.converged"}
    assert out["top_hessian_eigenvalue.converged"].tolist() == expected
    assert out["top_hessian_eigenvalue"].shape == (2,)


@pytest.mark.parametrize("engine", [train_population, train_sequential])
@pytest.mark.parametrize("max_hvp,flag", [(2, 0.0), (200, 1.0)])
def test_training_stores_converged_beside_every_tracked_value(monkeypatch, engine, max_hvp, flag):
    with_budget(monkeypatch, "top_hessian_eigenvalue", max_hvp=max_hvp)
    data = load_dataset(DataConfig(name="digits", n_train=64, n_test=32)).tensors("cpu", torch.float64)
    train = TrainConfig(optimizer="sgd", lr=0.1, max_steps=6, eval_every=3, batch_size=32, dtype="float64",
                        target_train_acc=None, track=["top_hessian_eigenvalue", "l2_norm"], track_every=3,
                        track_expensive_every=3)
    group = Group("mlp", MLPConfig(hidden=[4]), DataConfig(), train, (Member("a", 0, 0.1), Member("b", 1, 0.1)))
    for result in engine(group, data):
        values = {step for step, name, _ in result.metrics if name == "top_hessian_eigenvalue"}
        flags = {step: v for step, name, v in result.metrics if name == "top_hessian_eigenvalue.converged"}
        assert values == set(flags) == {3, 6}
        assert set(flags.values()) == {flag}
        assert not any(name == "l2_norm.converged" for _, name, _ in result.metrics)  # closed form: no flag


def test_compute_returns_flags_for_the_iterative_measures_only():
    pop, x, y = live_and_dead()
    plain = compute(["top_hessian_eigenvalue", "l2_norm", "pac_bayes_sigma"], pop, data=(x, y))
    values, converged = compute(["top_hessian_eigenvalue", "l2_norm", "pac_bayes_sigma"], pop, data=(x, y),
                                with_convergence=True)
    assert set(converged) == {"top_hessian_eigenvalue", "pac_bayes_sigma"}
    assert all(flags.dtype == torch.bool and flags.shape == (2,) for flags in converged.values())
    for name in plain:
        torch.testing.assert_close(values[name], plain[name], rtol=0, atol=0)


def test_pac_bayes_search_cut_short_reports_not_converged():
    pop, x, y = live_and_dead()
    model = pop.member(0)
    short = pac_bayes_sigma(model, (x, y), n_samples=8, max_iter=1, with_convergence=True)
    full = pac_bayes_sigma(model, (x, y), n_samples=8, with_convergence=True)
    assert short.converged.shape == () and not bool(short.converged) and bool(full.converged)
    with pytest.warns(RuntimeWarning, match="did not converge"):
        pac_bayes_sigma(model, (x, y), n_samples=8, max_iter=1)


def test_conv_spectral_norms_report_their_lanczos():
    """A CNN's spectral norms are Lanczos iterations: cut short, every measure built on them says so."""
    model = build_model("cnn", CNNConfig(channels=3, layers=2), 16, 3, generator(0, "init"))
    g = torch.Generator().manual_seed(1)
    data = (torch.randn(10, 16, generator=g, dtype=torch.float64), torch.randint(0, 3, (10,), generator=g))
    measures = [spectral_product, spectral_complexity, lambda m, **kw: normalized_margin(m, data, **kw)]
    assert all(bool(fn(model, with_convergence=True).converged) for fn in measures)
    short = functools.partial(layers.conv1d_operator_norms, max_iter=2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(layers, "conv1d_operator_norms", short)
        assert not any(bool(fn(model, with_convergence=True).converged) for fn in measures)
        with pytest.warns(RuntimeWarning, match="did not converge"):
            spectral_product(model)
    mlp = build_model("mlp", MLPConfig(hidden=[5]), 4, 3, generator(0, "init"))
    assert bool(spectral_product(mlp, with_convergence=True).converged)  # an SVD: exact
