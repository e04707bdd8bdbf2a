"""The grokking study: the modular-addition data set, the embedding's Fourier concentration against a direct
DFT sum, the engine's full-batch AdamW against torch.optim.AdamW on a plain module, the analysis on fabricated
runs (pass, fail, inconclusive; NaN and missing runs), and a tiny run through the CLI."""

import itertools

import numpy as np
import pytest

from implicitreg.config import DataConfig
from implicitreg.data import load_dataset, modular
from implicitreg.data.modular import pairs



# --- the data set -------------------------------------------------------------------------------------------

def test_modular_labels_every_pair_once_with_its_sum_mod_p():
    p = 7
    data = modular(p=p, train_fraction=0.4, seed=3)
    assert data.n_classes == p and data.x_train.shape == (round(0.4 * 49), 2 * p)
    assert len(data.x_train) + len(data.x_test) == p * p
    # each row is two one-hot blocks; the label is (a + b) mod p, checked against an explicit enumeration
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        assert set(np.unique(x)) == {0.0, 1.0} and (x[:, :p].sum(1) == 1).all() and (x[:, p:].sum(1) == 1).all()
        a, b = pairs(x, p)
        assert (y == (a + b) % p).all() and y.dtype == np.int64
    seen = list(zip(*pairs(np.concatenate([data.x_train, data.x_test]), p)))
    assert sorted(seen) == list(itertools.product(range(p), range(p)))  # a partition of Z_p × Z_p


def test_modular_is_deterministic_in_p_fraction_and_seed():
    first, again = modular(11, 0.3, seed=5), modular(11, 0.3, seed=5)
    other = modular(11, 0.3, seed=6)
    assert np.array_equal(first.x_train, again.x_train) and np.array_equal(first.y_test, again.y_test)
    assert not np.array_equal(first.x_train, other.x_train)
    assert len(modular(11, 0.5, seed=5).y_train) == round(0.5 * 121)


def test_modular_through_the_data_config():
    # data.dim is the modulus, data.n_train the number of train pairs, n_test a prefix of the rest
    data = load_dataset(DataConfig(name="modular", dim=13, n_train=60, n_test=50, seed=2))
    direct = modular(13, seed=2, n_train=60, n_test=50)
    assert data.x_train.shape == (60, 26) and data.x_test.shape == (50, 26)
    assert np.array_equal(data.x_train, direct.x_train) and np.array_equal(data.y_test, direct.y_test)
    assert np.array_equal(load_dataset(DataConfig(name="modular", dim=13, seed=2)).y_train,
                          modular(13, seed=2).y_train)


@pytest.mark.parametrize("kwargs,field", [
    ({"p": 1}, "p (data.dim)"), ({"p": 5, "train_fraction": 1.0}, "train_fraction"),
    ({"p": 5, "n_train": 25}, "n_train"), ({"p": 5, "n_train": 20, "n_test": 6}, "n_test"),
])
def test_modular_rejects_bad_sizes_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field.replace("(", r"\(").replace(")", r"\)")):
        modular(**kwargs)


# --- the embedding's spectrum -------------------------------------------------------------------------------

def direct_power(weight, p):
    """Σ_h |Σ_a W[h, a] e^{-2πika/p}|² per k = 1 … ⌊p/2⌋, both operand blocks summed: plain float64 sums."""
    out = np.zeros(p // 2)
    for block in (weight[:, :p], weight[:, p:]):
        for k in range(1, p // 2 + 1):
            angle = 2 * np.pi * k * np.arange(p) / p
            re, im = block @ np.cos(angle), -(block @ np.sin(angle))
            out[k - 1] += (re ** 2 + im ** 2).sum()
    return out


@pytest.mark.parametrize("p", [17, 20])
def test_frequency_power_matches_a_direct_dft_sum(p):
    import torch
    from implicitreg.studies.grokking.fourier import frequency_power, top_fraction

    rng = np.random.default_rng(p)
    weights = rng.normal(size=(3, 5, 2 * p))
    power = frequency_power(torch.tensor(weights), p).numpy()
    # float64 FFT against the O(p²) sum: agreement to rounding (relative 1e-10 is far above it, far below any signal)
    for member in range(3):
        np.testing.assert_allclose(power[member], direct_power(weights[member], p), rtol=1e-10)
        reference = np.sort(direct_power(weights[member], p))[::-1]
        assert top_fraction(torch.tensor(power[member])).item() == pytest.approx(reference[:6].sum() / reference.sum(),
                                                                                rel=1e-10)


def test_unit_concentration_matches_per_unit_direct_sums():
    import torch
    from implicitreg.studies.grokking.fourier import unit_concentration, unit_power

    p, rng = 19, np.random.default_rng(0)
    weights = rng.normal(size=(2, 4, 2 * p))
    power = unit_power(torch.tensor(weights), p).numpy()
    for member in range(2):
        rows = np.array([direct_power(weights[member, j:j + 1], p) for j in range(4)])
        np.testing.assert_allclose(power[member], rows, rtol=1e-10)
        expected = rows.max(1).sum() / rows.sum()
        assert unit_concentration(torch.tensor(weights), p)[member].item() == pytest.approx(expected, rel=1e-10)


def test_an_embedding_on_two_frequencies_has_all_its_power_there():
    # Gromov's analytic solution: each hidden unit reads cos(2πk(a)/p + φ) of one frequency; the top-6 share is 1
    import torch
    from implicitreg.studies.grokking.fourier import frequency_power, top_fraction

    p, tokens = 23, np.arange(23)
    rows = [np.concatenate([np.cos(2 * np.pi * k * tokens / p + phi), np.sin(2 * np.pi * k * tokens / p + phi)])
            for k, phi in ((3, 0.1), (7, 1.3), (3, 2.0))]
    power = frequency_power(torch.tensor(np.array(rows)), p)
    assert set(torch.nonzero(power > 1e-9 * power.max()).flatten().tolist()) == {2, 6}  # k = 3 and 7
    assert top_fraction(power).item() == pytest.approx(1.0, abs=1e-12)
    # one frequency per unit: each unit's own strongest frequency holds all of its power
    from implicitreg.studies.grokking.fourier import unit_concentration
    assert unit_concentration(torch.tensor(np.array(rows)), p).item() == pytest.approx(1.0, abs=1e-12)


# --- training: the engine's population against a plain torch.optim.AdamW loop per member ------------------

def tiny_config(**changes):
    from implicitreg.config import build_config
    from implicitreg.studies import grokking

    settings = {"p": 17, "train_fraction": 0.5, "width": 8, "seeds": 2, "steps": 12, "eval_every": 4, "lr": 0.01,
                "weight_decay": 0.5, "small_init_scale": 0.3, **changes}
    return build_config(grokking.Config, settings, {})


@pytest.mark.parametrize("activation", ["quadratic", "relu"])
def test_the_population_matches_torch_adamw_member_by_member(activation):
    import torch
    from implicitreg.studies.base import no_progress
    from implicitreg.studies.grokking.fourier import frequency_power, top_fraction, unit_concentration
    from implicitreg.studies.grokking.training import TOP_NAME, UNIT_NAME, group, power_name, train_arms
    from implicitreg.train import build_members

    config = tiny_config(activation=activation)
    data = load_dataset(config.data())
    runs = {r.run_id: r for r in train_arms(config, data, no_progress)}
    plan = group(config)
    tensors = data.tensors("cpu", torch.float32)
    x, y = tensors.x_train, tensors.y_train
    for member, module in zip(plan.members, build_members(plan, tensors)):
        module = module.float()
        optimizer = torch.optim.AdamW(module.parameters(), lr=config.lr, betas=config.betas, eps=1e-8,
                                      weight_decay=member.weight_decay)
        recorded = {(s, n): v for s, n, v in runs[member.run_id].metrics}
        for step in range(1, config.steps + 1):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(module(x), y)
            loss.backward()
            optimizer.step()
            if step % config.eval_every:
                continue
            with torch.no_grad():
                norm = torch.sqrt(sum((p.double() ** 2).sum() for p in module.parameters())).item()
                train_loss = torch.nn.functional.cross_entropy(module(x), y).item()
                power = frequency_power(module.layers[0].weight[None], config.p)[0]
            # float32 training on both sides, a dozen steps: agreement to 1e-4 relative (rounding grows slowly)
            assert recorded[(step, "l2_norm")] == pytest.approx(norm, rel=1e-4)
            assert recorded[(step, "train_loss")] == pytest.approx(train_loss, rel=1e-4)
            assert recorded[(step, TOP_NAME)] == pytest.approx(top_fraction(power).item(), rel=1e-4)
            assert recorded[(step, UNIT_NAME)] == pytest.approx(
                unit_concentration(module.layers[0].weight[None], config.p).item(), rel=1e-4)
        for k in range(1, config.p // 2 + 1):
            assert recorded[(config.steps, power_name(k))] == pytest.approx(power[k - 1].item(), rel=1e-3)
        assert runs[member.run_id].config["weight_decay"] == member.weight_decay
    assert {r.config["arm"] for r in runs.values()} == {"decay", "no-decay", "small-init"}
    assert {r.config["init_scale"] for r in runs.values() if r.config["arm"] == "small-init"} == {0.3}


# --- the analysis on fabricated runs ------------------------------------------------------------------------

import math  # noqa: E402

import pandas as pd  # noqa: E402

STEPS, EVERY = 1000, 50
SETTINGS = {"decay": (1.0, 1.0), "no-decay": (0.0, 1.0), "small-init": (0.0, 0.1)}


def curve(start, level, at):
    """A metric at every evaluation: ``start`` until step ``at`` (None: never), ``level`` from there on."""
    return {s: (level if at is not None and s >= at else start) for s in range(EVERY, STEPS + 1, EVERY)}


def behaviour(arm, seed):
    """A passing run: decay memorizes at 100 and generalizes at 600 (ratio 6) as its norm falls 50 → 30 and its
    embedding concentrates; no-decay memorizes and never generalizes; small-init generalizes at 200."""
    if arm == "decay":
        return {"train_acc": curve(0.2, 1.0, 100), "test_acc": curve(0.01, 0.98, 600),
                "l2_norm": {s: 50.0 if s < 600 else 30.0 for s in range(EVERY, STEPS + 1, EVERY)},
                "fourier_top6": curve(0.15, 0.8, 600)}
    if arm == "no-decay":
        return {"train_acc": curve(0.2, 1.0, 100), "test_acc": curve(0.01, 0.01, None),
                "l2_norm": curve(60.0, 60.0, None), "fourier_top6": curve(0.15, 0.2, 600)}
    return {"train_acc": curve(0.2, 1.0, 150), "test_acc": curve(0.01, 0.97, 200),
            "l2_norm": curve(40.0, 40.0, None), "fourier_top6": curve(0.15, 0.7, 200)}


def fabricated(seeds=3, edit=None):
    """runs and metrics frames as the store returns them (opaque run ids: settings only in the configs);
    ``edit(arm, seed, values)`` may change the metric curves, or drop the run (return None)."""
    config = tiny_config(p=97, seeds=seeds, steps=STEPS, eval_every=EVERY)
    runs, rows = [], []
    for arm, (decay, scale) in SETTINGS.items():
        for seed in range(seeds):
            values = behaviour(arm, seed)
            values = edit(arm, seed, values) if edit else values
            if values is None:
                continue
            run_id = f"run-{len(runs)}"
            status = values.pop("status", "done")
            runs.append({"run_id": run_id, "study": "grokking", "arm": arm, "seed": seed, "provenance": {},
                         "config": {"arm": arm, "seed": seed, "weight_decay": decay, "init_scale": scale,
                                    "eval_every": EVERY},
                         "status": status, "final_step": STEPS, "target_step": None})
            rows += [(run_id, s, name, v) for name, series in values.items() for s, v in series.items()]
            rows.append((run_id, EVERY, "fourier_top6_init", 0.15))
    return config, pd.DataFrame(runs), pd.DataFrame(rows, columns=["run_id", "step", "name", "value"])


def judged(**kwargs):
    from implicitreg.studies import grokking

    config, runs, metrics = fabricated(**kwargs)
    return grokking.STUDY.analyze(config, runs, metrics, {})


def test_a_grokking_population_passes_every_check_with_the_numbers_it_read():
    analysis = judged()
    assert analysis.verdict == "pass", [(c.name, c.value, c.detail) for c in analysis.checks]
    groks, plain, small, norm, fourier = analysis.checks
    assert groks.value == 1.0 and "delay ratios [6, 6, 6]" in groks.detail
    assert plain.value == 0.0 and small.value == 1.0
    assert norm.value == pytest.approx(30.0 / 50.0)
    assert fourier.value == pytest.approx(0.8) and "at initialization 0.150" in fourier.detail
    row = analysis.table.set_index("arm").loc["decay"]
    assert row["delay_mean"] == 6.0 and row["train_step_mean"] == 100 and row["grokked"] == "3/3"


def test_a_fast_generalization_is_not_grokking():
    # test ≥ 95% at step 200 after train at 100: ratio 2 < 5 in every seed → the first check fails
    def fast(arm, seed, values):
        if arm == "decay":
            values["test_acc"] = curve(0.01, 0.98, 200)
        return values

    analysis = judged(edit=fast)
    assert analysis.checks[0].passed is False and analysis.checks[0].value == 0.0
    assert analysis.verdict == "fail"
    # the norm check rests on grokking seeds only: none left, so it cannot be judged
    assert analysis.checks[3].passed is None


def test_generalizing_without_decay_fails_and_a_rising_norm_fails():
    def bad(arm, seed, values):
        if arm == "no-decay" and seed < 2:
            values["test_acc"] = curve(0.01, 0.99, 700)
        if arm == "decay":
            values["l2_norm"] = {s: 50.0 if s < 600 else 55.0 for s in range(EVERY, STEPS + 1, EVERY)}
        return values

    analysis = judged(edit=bad)
    assert analysis.checks[1].passed is False and analysis.checks[1].value == pytest.approx(2 / 3)
    assert analysis.checks[3].passed is False and analysis.checks[3].value == pytest.approx(1.1)
    assert "did not reproduce" in analysis.notes[-1]


def test_missing_and_nan_runs_make_the_checks_inconclusive():
    # two of three decay seeds missing, one small-init seed unfinished and another dropped: fewer than half
    def drop(arm, seed, values):
        if arm == "decay" and seed > 0:
            return None
        if arm == "small-init" and seed == 0:
            values["status"] = "failed"
        if arm == "small-init" and seed == 1:
            return None
        if arm == "no-decay":
            values["test_acc"] = {s: math.nan for s in values["test_acc"]}
        return values

    analysis = judged(edit=drop)
    groks, plain, small, norm, fourier = analysis.checks
    assert groks.passed is None and "1 of 3" in groks.detail
    assert small.passed is None and norm.passed is None and fourier.passed is None
    # a run whose test accuracy is NaN is not judged "did not generalize": it is missing
    assert plain.passed is None and "0 of 3" in plain.detail
    assert analysis.verdict == "inconclusive"


def test_no_runs_at_all_is_inconclusive():
    from implicitreg.studies import grokking

    config = tiny_config()
    empty = grokking.STUDY.analyze(config, pd.DataFrame(), pd.DataFrame(columns=["run_id", "step", "name", "value"]),
                                   {})
    assert empty.verdict == "inconclusive" and all(c.passed is None for c in empty.checks)
    assert list(empty.table["arm"]) == ["decay", "no-decay", "small-init"]


def test_gromovs_network_squares_the_sum_of_two_embedding_columns():
    import torch
    from implicitreg.studies.grokking import model

    net = getattr(model, "quadratic_w5")(2 * 7, 7).double()
    assert [tuple(p.shape) for p in net.parameters()] == [(5, 14), (7, 5)]  # no biases
    x = torch.tensor(modular(7, seed=0).x_train[:4])
    u, w = net.layers[0].weight, net.layers[1].weight
    a, b = (torch.as_tensor(v) for v in pairs(x.numpy(), 7))
    expected = ((u[:, a] + u[:, 7 + b]) ** 2).T @ w.T  # W₂ (u_a + v_b)², written out
    torch.testing.assert_close(net(x), expected, rtol=1e-12, atol=1e-12)
    with pytest.raises(AttributeError):
        getattr(model, "quadratic_w0")


# --- through the CLI ------------------------------------------------------------------------------------------

def test_a_tiny_run_through_the_cli_stores_every_arm_and_its_spectrum(tmp_path):
    import json

    from conftest import invoke_cli, read_store

    out = tmp_path / "grok"
    result = invoke_cli(["run", "grokking", "--threads", "1", "--seeds", "1", "--set", "p=17", "--set", "width=8",
                         "--set", "steps=20", "--set", "eval_every=5", "--out", out])
    assert result.returncode == 0, result
    summary = json.loads((out / "summary.json").read_text())
    checks = summary["checks"]
    assert len(checks) == 5
    # the verdict is the one its stored checks imply, and every decided check has a finite value
    passed = [c["passed"] for c in checks]
    assert summary["verdict"] == ("fail" if False in passed else "inconclusive" if None in passed else "pass")
    assert all(isinstance(c["value"], (int, float)) for c in checks if c["passed"] is not None)
    runs, metrics = read_store(out)
    assert len(runs) == 3 and set(runs["status"]) == {"done"}
    names = set(metrics["name"])
    assert {"train_acc", "test_acc", "l2_norm", "fourier_top6", "fourier_top6_init", "fourier_unit_top1", "power_k1",
            "power_k8"} <= names
    assert (out / "figures" / "accuracy.png").exists() or any(out.rglob("accuracy.png"))


def test_a_modulus_too_small_for_the_spectrum_is_refused(tmp_path):
    from conftest import assert_user_error, invoke_cli

    out = tmp_path / "bad"
    assert_user_error(invoke_cli(["run", "grokking", "--set", "p=11", "--out", out]), ["p:", "17"], out)
