"""The inductive-bias study: its plan, its verdict on hand-made results with known answers, a tiny run."""

import math

import pandas as pd
import pytest

import implicitreg
from implicitreg.config import ConfigError, build_config
from implicitreg.studies import STUDIES
from implicitreg.studies.inductive_bias import (
    CHECK_MLP,
    CHECK_ORIGINAL,
    CHECK_SHUFFLED,
    MLP_CHANGE_MAX,
    MODELS,
    NOISE_SE,
    STUDY,
    VARIANTS,
)


@pytest.fixture
def registered(monkeypatch):
    """The study in the registry for this test only (the registry itself lives in studies/__init__.py)."""
    monkeypatch.setitem(STUDIES, STUDY.name, STUDY)
    return STUDY


def config(**overrides):
    return build_config(STUDY.Config, STUDY.defaults(False), overrides)


def test_plan_is_models_by_variants_by_matched_seeds():
    groups = STUDY.plan(config(seeds=3))
    members = [(g, m) for g in groups for m in g.members]
    ids = [m.run_id for _, m in members]
    assert len(ids) == len(set(ids)) == len(MODELS) * len(VARIANTS) * 3
    assert {(g.arch, g.data.inputs) for g in groups} == {(a, v) for a in MODELS for v in VARIANTS}
    for g, m in members:
        model, variant, seed = m.run_id.split("/")
        assert (g.arch, g.data.inputs, m.arm, f"seed{m.seed}", m.tags["model"]) == (model, variant, variant, seed, model)
        assert (m.weight_decay, m.dropout, m.label_noise) == (0.0, 0.0, 0.0)  # no explicit regularization
    # matched: every (model, variant) cell trains the same seeds; the variants differ only in data.inputs
    seeds = {(g.arch, g.data.inputs): sorted(m.seed for m in g.members) for g in groups}
    assert set(map(tuple, seeds.values())) == {(0, 1, 2)}
    datas = {g.data.model_dump_json() for g in groups}
    assert len(datas) == 2
    assert {g.data.model_copy(update={"inputs": "original"}).model_dump_json() for g in groups} == {
        config().data.model_dump_json()}
    for arch in MODELS:
        shared = {(g.model.model_dump_json(), g.train.model_dump_json()) for g in groups if g.arch == arch}
        assert len(shared) == 1


def test_defaults_follow_the_protocol_and_quick_is_smaller():
    full, quick = config(), build_config(STUDY.Config, STUDY.defaults(True), {})
    assert full.seeds >= 5 and full.train.target_train_acc == 1.0 and full.train.schedule == "cosine"
    assert full.train.optimizer == "momentum" and full.mlp.hidden == [256, 256] and full.cnn.channels == 25
    assert quick.seeds < full.seeds and quick.train.max_steps < full.train.max_steps


@pytest.mark.parametrize("overrides,field", [
    ({"data": {"inputs": "shuffled"}}, "data.inputs"),
    ({"data": "regression"}, "data"),
    ({"variants": ["shuffled", "shuffled"]}, "variants"),
    ({"models": ["cnn", "cnn"]}, "models"),
])
def test_config_rejects_what_the_plan_cannot_honour(overrides, field):
    with pytest.raises(ConfigError, match=field):
        config(**overrides)


def stored(test: dict[tuple[str, str], list[float]], train: float = 1.0,
           status: dict[tuple[str, str], str] | None = None):
    """runs/metrics frames as the store returns them, one run per listed test accuracy; each run also
    has an earlier evaluation that the analysis must ignore."""
    runs, rows = [], []
    for (model, variant), accuracies in test.items():
        for seed, acc in enumerate(accuracies):
            run_id, step = f"{model}/{variant}/seed{seed}", 500 + 100 * seed
            runs.append({"run_id": run_id, "study": STUDY.name, "arm": variant, "seed": seed,
                         "config": {"member": {"tags": {"model": model}}},
                         "provenance": {}, "status": (status or {}).get((model, variant), "done"),
                         "final_step": step, "target_step": step,
                         "error": None, "started_at": "", "ended_at": ""})
            for name, value in {"train_acc": train, "test_acc": acc, "gap": train - acc, "l2_norm": 20.0,
                                "dist_init": 15.0}.items():
                rows.append({"run_id": run_id, "step": 250, "name": name, "value": 0.1})
                rows.append({"run_id": run_id, "step": step, "name": name, "value": value})
    return pd.DataFrame(runs), pd.DataFrame(rows)


def outcome(cnn_original, cnn_shuffled, mlp_original, mlp_shuffled, seeds=None, status=None):
    """Analysis of four cells, each given as its list of per-seed test accuracies."""
    test = {("mlp", "original"): mlp_original, ("mlp", "shuffled"): mlp_shuffled,
            ("cnn", "original"): cnn_original, ("cnn", "shuffled"): cnn_shuffled}
    return STUDY.analyze(config(seeds=seeds or len(cnn_original)), *stored(test, status=status))


PAPER = dict(cnn_original=[0.93, 0.95], cnn_shuffled=[0.55, 0.57], mlp_original=[0.67, 0.69],
             mlp_shuffled=[0.68, 0.68])


def test_verdict_passes_on_the_papers_numbers():
    analysis = outcome(**PAPER)
    assert analysis.verdict == "pass"
    values = {c.name: c.value for c in analysis.checks}
    assert values[CHECK_ORIGINAL] == pytest.approx(0.94 - 0.68)
    assert values[CHECK_SHUFFLED] == pytest.approx(0.56 - 0.68)
    assert values[CHECK_MLP] == pytest.approx(0.0, abs=1e-12)
    table = analysis.table.set_index(["model", "variant"])
    assert table.loc[("cnn", "original"), "test_acc_mean"] == pytest.approx(0.94)
    assert table.loc[("cnn", "original"), "test_acc_std"] == pytest.approx(math.sqrt(2) * 0.01)
    assert table.loc[("mlp", "shuffled"), "paper_test"] == "68%"
    assert table.loc[("mlp", "original"), "reached_target"] == "2/2"
    assert table.loc[("mlp", "original"), "steps_mean"] == 550
    assert any("94%" in note and "56%" in note for note in analysis.notes)  # anchors beside the measurements


@pytest.mark.parametrize("change,failing", [
    (dict(cnn_original=[0.80, 0.80]), CHECK_ORIGINAL),  # CNN only 12 points ahead: no advantage to lose
    (dict(cnn_shuffled=[0.75, 0.75]), CHECK_SHUFFLED),  # 7 points of advantage survive the shuffle
    (dict(mlp_shuffled=[0.64, 0.64]), CHECK_MLP),  # the MLP moves 4 points: more than seed noise allows
])
def test_verdict_fails_on_the_check_that_fails(change, failing):
    analysis = outcome(**{**PAPER, **change})
    assert analysis.verdict == "fail"
    assert [c.name for c in analysis.checks if c.passed is False] == [failing]


def test_mlp_tolerance_widens_with_seed_noise_only():
    quiet = outcome(**{**PAPER, "mlp_original": [0.68, 0.68], "mlp_shuffled": [0.655, 0.655]})  # 2.5 points, SE 0
    noisy = outcome(**{**PAPER, "mlp_original": [0.60, 0.76], "mlp_shuffled": [0.655, 0.655]})
    se = 0.16 / math.sqrt(2) / math.sqrt(2)  # std of [0.60, 0.76] over sqrt(2) seeds; the other cell has std 0
    (q,), (n,) = ([c for c in a.checks if c.name == CHECK_MLP] for a in (quiet, noisy))
    assert q.passed is False and q.value == pytest.approx(0.025) and q.threshold == f"<= {MLP_CHANGE_MAX:g}"
    assert n.passed is True and n.threshold == f"<= {NOISE_SE * se:g}"
    assert f"SE {se:.4f}" in n.detail


def test_missing_cells_make_the_verdict_inconclusive():
    runs, metrics = stored({("mlp", "original"): [0.68], ("mlp", "shuffled"): [0.68]})
    analysis = STUDY.analyze(config(models=["mlp"], seeds=1), runs, metrics)
    assert analysis.verdict == "inconclusive"
    found = {c.name: c for c in analysis.checks}
    assert {name: c.passed for name, c in found.items()} == {CHECK_ORIGINAL: None, CHECK_SHUFFLED: None,
                                                              CHECK_MLP: True}
    assert "computed from 0 of 1 seeds" in found[CHECK_ORIGINAL].detail


def test_a_diverged_cell_is_inconclusive_not_a_pass_or_fail():
    # the shuffled CNN at a learning rate far too large: every seed diverged; its last records (before
    # the divergence) would otherwise be judged, and the advantage check would "pass"
    analysis = outcome(**PAPER, status={("cnn", "shuffled"): "diverged"})
    found = {c.name: c for c in analysis.checks}
    assert found[CHECK_SHUFFLED].passed is None and found[CHECK_SHUFFLED].value is None
    assert "computed from 0 of 2 seeds" in found[CHECK_SHUFFLED].detail
    assert found[CHECK_ORIGINAL].passed is True and found[CHECK_MLP].passed is True
    assert analysis.verdict == "inconclusive"


def test_a_cell_that_lost_seeds_says_so_and_under_half_is_inconclusive():
    five = {name: values + values[:1] * 3 for name, values in PAPER.items()}  # 5 seeds per cell
    lost_two = outcome(**{**five, "cnn_original": [0.93, 0.95, 0.94]}, seeds=5)
    original = {c.name: c for c in lost_two.checks}[CHECK_ORIGINAL]
    assert original.passed is True and "computed from 3 of 5 seeds" in original.detail
    assert original.value == pytest.approx(0.94 - 0.674)  # MLP seeds 0.67, 0.69, 0.67, 0.67, 0.67
    lost_three = outcome(**{**five, "cnn_original": [0.93, 0.95]}, seeds=5)
    assert {c.name: c for c in lost_three.checks}[CHECK_ORIGINAL].passed is None
    assert lost_three.verdict == "inconclusive"


def test_a_nan_test_accuracy_is_not_counted():
    runs, metrics = stored({("mlp", "original"): [0.67, 0.69], ("mlp", "shuffled"): [0.68, 0.68],
                            ("cnn", "original"): [0.93, math.nan], ("cnn", "shuffled"): [0.55, 0.57]})
    analysis = STUDY.analyze(config(seeds=2), runs, metrics)
    original = {c.name: c for c in analysis.checks}[CHECK_ORIGINAL]
    assert original.value == pytest.approx(0.93 - 0.68) and "computed from 1 of 2 seeds" in original.detail
    assert original.passed is True


TINY = {"mlp.hidden": [16], "cnn.channels": 4, "data.n_train": 200, "data.n_test": 100,
        "train.max_steps": 40, "train.eval_every": 20}


def test_tiny_end_to_end_run(registered, tmp_path):
    result = implicitreg.run("inductive-bias", quick=True, seeds=1, threads=1, out=tmp_path / "ib", **TINY)
    runs = result.runs()
    assert sorted(runs["run_id"]) == sorted(f"{m}/{v}/seed0" for m in MODELS for v in VARIANTS)
    assert set(runs["status"]) == {"done"}
    checks = result.summary["checks"]
    assert [c["name"] for c in checks] == [CHECK_ORIGINAL, CHECK_SHUFFLED, CHECK_MLP]
    # every check computed from what ran, from the stored final test accuracies
    metrics = result.metrics()
    final = metrics[metrics["name"] == "test_acc"].sort_values("step").groupby("run_id")["value"].last()
    assert checks[0]["value"] == pytest.approx(final["cnn/original/seed0"] - final["mlp/original/seed0"])
    assert checks[2]["value"] == pytest.approx(abs(final["mlp/original/seed0"] - final["mlp/shuffled/seed0"]))
    assert all(c["passed"] is not None for c in checks)
    assert result.verdict == ("pass" if all(c["passed"] for c in checks) else "fail")
    assert len(result.summary["table"]) == 4
    figures = {p.name for p in (result.out / "figures").iterdir()}
    assert {"accuracy_by_variant.png", "curves_test_acc.png", "by_variant.png"} <= figures
    assert (result.out / "report.html").stat().st_size > 0


def test_mlp_on_shuffled_inputs_is_the_mlp_on_original_inputs_from_a_permuted_init():
    """The reason for check 3: SGD (momentum) from first-layer weights W on permuted inputs follows SGD
    from W[:, P⁻¹] on the original inputs, step for step, so only the (equally distributed) init differs."""
    import copy

    import torch
    from torch import nn

    torch.manual_seed(0)
    x, y = torch.randn(64, 40, dtype=torch.float64), torch.randint(0, 10, (64,))
    perm = torch.randperm(40)  # shuffled input j is original position perm[j]
    shuffled_model = nn.Sequential(nn.Linear(40, 16), nn.ReLU(), nn.Linear(16, 10)).double()
    original_model = copy.deepcopy(shuffled_model)
    with torch.no_grad():
        original_model[0].weight[:, perm] = shuffled_model[0].weight.clone()
    runs = [(shuffled_model, x[:, perm]), (original_model, x)]
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9) for m, _ in runs]
    for step in range(30):
        batch = slice(16 * (step % 4), 16 * (step % 4) + 16)
        for (model, inputs), opt in zip(runs, optimizers):
            opt.zero_grad()
            nn.functional.cross_entropy(model(inputs[batch]), y[batch]).backward()
            opt.step()
    assert torch.allclose(original_model[0].weight[:, perm], shuffled_model[0].weight, rtol=0, atol=1e-12)
    assert torch.allclose(original_model(x), shuffled_model(x[:, perm]), rtol=0, atol=1e-12)
    assert not torch.allclose(original_model(x), shuffled_model(x), atol=1e-3)  # the shuffle does change inputs
