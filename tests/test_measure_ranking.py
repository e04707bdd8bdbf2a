"""measure-ranking: the plan spans the hyperparameter grid; the ranking equals scipy's Kendall τ on
the models that reached the loss target, with each measure's orientation; a tiny sweep runs end to end."""

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from conftest import run_cli
from implicitreg.config import build_config
from implicitreg.studies.measure_ranking import HYPERPARAMETERS, MEASURES, STUDY, sign


def config(**overrides):
    return build_config(STUDY.Config, {}, overrides)


def test_plan_spans_the_grid_with_populations_per_architecture_and_batch():
    cfg = config()
    groups = STUDY.plan(cfg)
    members = [m for g in groups for m in g.members]
    grid = (len(cfg.widths) * len(cfg.depths) * len(cfg.lrs) * len(cfg.batch_sizes) * len(cfg.weight_decays)
            * len(cfg.dropouts) * cfg.seeds)
    assert len(members) == grid >= 100
    assert len({m.run_id for m in members}) == grid
    assert len(groups) == len(cfg.widths) * len(cfg.depths) * len(cfg.batch_sizes)
    for g in groups:
        assert g.train.track == list(MEASURES) and g.train.target_train_loss == 0.01
        assert g.train.track_every == g.train.track_expensive_every == g.train.max_steps  # measured at the end only
    assert {(m.lr, m.weight_decay, m.dropout) for m in members} == {
        (a, b, c) for a in cfg.lrs for b in cfg.weight_decays for c in cfg.dropouts}


def test_inapplicable_measures_are_rejected():
    with pytest.raises(ValueError, match="nuclear_norm"):
        config(measures=["nuclear_norm"])


def synthetic(n_per_cell=2, seed=0):
    """Runs and metrics of a fake sweep: path_norm = gap (τ = 1), margin = −gap (higher is simpler:
    oriented τ = 1), spectral_product random; one run per cell misses the target with a wild value."""
    rng = np.random.default_rng(seed)
    runs, metrics = [], []
    for i, (width, depth, lr) in enumerate([(w, d, lr) for w in (8, 16) for d in (1, 2) for lr in (0.1, 0.2)]):
        for s in range(n_per_cell + 1):
            run_id = f"r{i}/seed{s}"
            reached = s < n_per_cell
            gap = rng.uniform(0, 0.5)
            cfg = {"model": {"hidden": [width] * depth}, "train": {"batch_size": 32},
                   "member": {"lr": lr, "weight_decay": 0.0, "dropout": 0.0}}
            runs.append({"run_id": run_id, "study": "measure-ranking", "arm": f"r{i}", "seed": s, "config": cfg,
                         "status": "done", "final_step": 100, "target_step": 100 if reached else None,
                         "error": None, "provenance": {}, "started_at": "", "ended_at": ""})
            values = {"gap": gap, "path_norm": gap if reached else 1e6, "margin": -gap,
                      "spectral_product": rng.normal()}
            metrics += [{"run_id": run_id, "step": 100, "name": k, "value": v} for k, v in values.items()]
    return pd.DataFrame(runs), pd.DataFrame(metrics)


def test_ranking_is_kendall_tau_over_models_that_reached_the_target():
    runs, metrics = synthetic()
    cfg = config(measures=["path_norm", "margin", "spectral_product"], min_models=16)
    analysis = STUDY.analyze(cfg, runs, metrics)
    table = analysis.table.set_index("measure")
    assert table.loc["path_norm", "tau"] == pytest.approx(1.0) and table.loc["path_norm", "psi"] == pytest.approx(1.0)
    assert table.loc["margin", "tau"] == pytest.approx(1.0) and table.loc["margin", "sign"] == -1
    models = STUDY.models(cfg, runs, metrics)
    kept = models[models["reached"]]
    assert len(kept) == 16
    expected = stats.kendalltau(kept["spectral_product"], kept["gap"])[0]
    assert table.loc["spectral_product", "tau"] == pytest.approx(expected, abs=1e-12)
    assert list(analysis.table["measure"][:2]) != ["spectral_product"] and analysis.table["rank"].tolist() == [1, 2, 3]
    # no flatness measure was tracked: the claim cannot be judged, whatever the other checks say
    assert [c.passed for c in analysis.checks] == [True, True, None]
    assert "no flatness or sharpness measure" in analysis.checks[2].detail and analysis.verdict == "inconclusive"
    # Ψ over the three varied hyperparameters: the mean of per-hyperparameter means of group τs
    psi = [table.loc["spectral_product", f"psi_{h}"] for h in ("width", "depth", "lr")]
    assert table.loc["spectral_product", "psi"] == pytest.approx(np.nanmean(psi))


def claim_sweep(relation, seed=0):
    """A fake sweep with one flatness measure and one norm product: ``relation(gap, noise)`` gives
    (flatness, product) values, so the claim's answer is known."""
    runs, metrics = synthetic(n_per_cell=6, seed=seed)
    rng = np.random.default_rng(seed + 1)
    gaps = metrics[metrics["name"] == "gap"].set_index("run_id")["value"]
    extra = []
    for run_id, gap in gaps.items():
        flat, product = relation(gap, rng.normal(scale=0.05, size=2))
        extra += [{"run_id": run_id, "step": 100, "name": "hessian_trace", "value": flat},
                  {"run_id": run_id, "step": 100, "name": "frobenius_product", "value": product}]
    return runs, pd.concat([metrics, pd.DataFrame(extra)], ignore_index=True)


@pytest.mark.parametrize("relation, expected", [
    (lambda gap, e: (gap + e[0], -gap + e[1]), True),    # flatness predicts the gap, the product inverts it
    (lambda gap, e: (-gap + e[0], gap + e[1]), False),   # the reverse: the claim fails
    (lambda gap, e: (gap + e[0], gap + e[1]), None),     # both predict it equally: the interval holds 0
])
def test_the_claim_check_is_the_bootstrap_interval_of_the_family_difference(relation, expected):
    runs, metrics = claim_sweep(relation)
    cfg = config(measures=["hessian_trace", "frobenius_product"], min_models=16)
    analysis = STUDY.analyze(cfg, runs, metrics)
    claim = analysis.checks[2]
    table = analysis.table.set_index("measure")
    # the estimate is the difference of the families' Ψ in the table (one measure each here)
    assert claim.value == pytest.approx(table.loc["hessian_trace", "psi"] - table.loc["frobenius_product", "psi"])
    assert claim.passed is expected, claim
    assert "bootstrap interval" in claim.detail and "resamples" in claim.detail
    assert analysis.verdict == {True: "pass", False: "fail", None: "inconclusive"}[expected]


def test_values_that_did_not_converge_leave_the_ranking():
    runs, metrics = claim_sweep(lambda gap, e: (gap + e[0], -gap + e[1]))
    ids = sorted(set(runs.loc[runs["target_step"].notna(), "run_id"]))
    flags = [{"run_id": r, "step": 100, "name": "hessian_trace.converged", "value": float(i >= 40)}
             for i, r in enumerate(ids)]
    metrics = pd.concat([metrics, pd.DataFrame(flags)], ignore_index=True)
    analysis = STUDY.analyze(config(measures=["hessian_trace", "frobenius_product"], min_models=16), runs, metrics)
    row = analysis.table.set_index("measure").loc["hessian_trace"]
    assert row["unconverged"] == 40 and row["models"] == len(ids) - 40
    claim = analysis.checks[2]
    # 16 of 56 models left for the flatness side: fewer than half, so the claim is not judged
    assert claim.passed is None and f"{len(ids) - 40} of {len(ids)} models" in claim.detail


def test_too_few_models_fail_the_check():
    runs, metrics = synthetic()
    analysis = STUDY.analyze(config(measures=["path_norm"], min_models=100), runs, metrics)
    assert analysis.checks[0].passed is False and analysis.checks[0].value == 16
    assert analysis.verdict == "fail"


def test_orientation_follows_the_registry():
    assert sign("margin") == sign("pac_bayes_sigma") == -1
    assert sign("path_norm") == sign("param_count") == 1
    assert set(HYPERPARAMETERS) == {"width", "depth", "lr", "batch_size", "weight_decay", "dropout"}


def test_tiny_sweep_end_to_end(tmp_path):
    out = tmp_path / "mr"
    result = run_cli(["run", "measure-ranking", "--quick", "--threads", "1", "--out", out,
                      "--set", "widths=[16]", "--set", "depths=[1]", "--set", "dropouts=[0.0]",
                      "--set", "data.n_train=200", "--set", "data.n_test=100", "--set", "min_models=4",
                      "--set", "measures=[path_norm,margin,pac_bayes_sigma,pac_bayes_flatness,top_hessian_eigenvalue]",
                      "--set", "train.max_steps=1500", "--set", "train.track_every=1500",
                      "--set", "train.track_expensive_every=1500", "--set", "train.target_train_loss=0.05"])
    assert result.returncode == 0, result
    summary = json.loads((out / "summary.json").read_text())
    names = [row["measure"] for row in summary["table"]]
    assert sorted(names) == sorted(["path_norm", "margin", "pac_bayes_sigma", "pac_bayes_flatness",
                                    "top_hessian_eigenvalue"])
    assert summary["checks"][0]["name"] == "models trained to the loss target"
    # a quick sweep cannot judge this claim: the verdict says so whatever the checks gave
    assert summary["verdict"] == "smoke" and summary["notes"][0].startswith("verdict smoke: --quick cannot show")
    assert all(row["models"] >= 1 for row in summary["table"])
    assert all(row["tau"] is None or -1 <= row["tau"] <= 1 for row in summary["table"])
    assert not math.isnan(summary["checks"][0]["value"])
    assert (out / "figures" / "ranking.png").is_file() and (out / "figures" / "measure_vs_gap.png").is_file()


def test_the_default_ranking_is_a_fixed_list_that_new_measures_do_not_change():
    from implicitreg.measures import REGISTRY
    from implicitreg.studies.measure_ranking import APPLICABLE, MEASURES, Config

    assert set(MEASURES) <= set(APPLICABLE) <= set(REGISTRY)
    assert Config().measures == list(MEASURES) and len(MEASURES) == 22
    assert "top_ggn_eigenvalue" in APPLICABLE and "top_ggn_eigenvalue" not in MEASURES
    assert Config(measures=["top_ggn_eigenvalue"]).measures == ["top_ggn_eigenvalue"]  # still selectable
