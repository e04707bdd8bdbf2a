"""The igr study: modified flows against closed forms, GD/SGD against the flows on fresh data, the CLI contract."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.linalg import expm

from implicitreg.config import build_config
from implicitreg.dynamics import flat
from implicitreg.references import modified_flows as flows
from implicitreg.runner import read_solutions
from implicitreg.studies import igr

from conftest import run_cli_many, invoke_cli, assert_user_error



def quadratic(a: np.ndarray, b: np.ndarray):
    """L(θ) = ½θᵀAθ − bᵀθ as a torch loss."""
    at, bt = torch.tensor(a), torch.tensor(b)
    return lambda theta: 0.5 * theta @ at @ theta - bt @ theta


def spd(rng, p: int) -> np.ndarray:
    m = rng.standard_normal((p, p))
    return m @ m.T / p + 0.1 * np.eye(p)


@pytest.mark.parametrize("seed,p", [(0, 2), (1, 5), (2, 9)])
def test_flows_match_matrix_exponentials_on_quadratics(seed, p):
    # θ' = −M θ + c has θ(t) = θ* + e^{−tM}(θ0 − θ*), θ* = M⁻¹c. The integrator runs at rtol = atol = 1e-12,
    # so 1e-9 leaves room for the error accumulated over T = 3 on these O(1) problems.
    rng = np.random.default_rng(seed)
    theta0, end, h = rng.standard_normal(p), 3.0, 0.2
    a, b = spd(rng, p), rng.standard_normal(p)

    def closed(m, c):
        star = np.linalg.solve(m, c)
        return star + expm(-end * m) @ (theta0 - star)

    np.testing.assert_allclose(flows.gradient_flow(quadratic(a, b), theta0, end).end, closed(a, b), atol=1e-9)
    # L̃ = L + (h/4)‖Aθ − b‖²: ∇L̃ = (A + (h/2)A²)θ − (b + (h/2)Ab)
    np.testing.assert_allclose(flows.igr_flow(quadratic(a, b), theta0, end, h).end,
                               closed(a + h / 2 * a @ a, b + h / 2 * a @ b), atol=1e-9)
    batch = [(spd(rng, p), rng.standard_normal(p)) for _ in range(3)]
    m_sgd = np.mean([ak + h / 2 * ak @ ak for ak, _ in batch], axis=0)
    c_sgd = np.mean([bk + h / 2 * ak @ bk for ak, bk in batch], axis=0)
    np.testing.assert_allclose(flows.sgd_flow([quadratic(ak, bk) for ak, bk in batch], theta0, end, h).end,
                               closed(m_sgd, c_sgd), atol=1e-9)


def test_integrator_failure_is_an_error():
    with pytest.raises(RuntimeError, match="not finite"):  # √θ at θ < 0: NaN gradient
        flows.gradient_flow(lambda theta: torch.sqrt(theta).sum(), -np.ones(2), 1.0)


def distances(model, x, y, hs, end):
    loss = flat.squared_loss(model, torch.tensor(x), torch.tensor(y))
    plain = flows.gradient_flow(loss, model.theta0, end).end
    out = []
    for h in hs:
        final, _ = flat.gd(loss, model.theta0, h, round(end / h))
        out.append((np.linalg.norm(final - plain), np.linalg.norm(final - flows.igr_flow(loss, model.theta0, end, h).end)))
    return np.array(out)


@pytest.mark.parametrize("seed,n,d,width", [(1, 8, 2, 4), (2, 12, 3, 6), (3, 16, 5, 5)])
def test_gd_is_second_order_close_to_the_modified_flow_on_fresh_data(seed, n, d, width):
    # the claim on data the study never saw: per halving of h (0.05 → 0.025 → 0.0125), the error to the
    # flow of L shrinks ≈2× (O(h)) and to the flow of L + (h/4)‖∇L‖² ≈4× (O(h²)); the bands are the issue's
    x, y = igr.generated_data(n, d, seed)
    for model in (flat.two_param_model(d - 1, [1.2, -0.4]), flat.mlp_model(d, width, seed)):
        dist = distances(model, x, y, [0.05, 0.025, 0.0125], end=1.0)
        plain_shrink, modified_shrink = (dist[:-1] / dist[1:]).T
        assert np.all((plain_shrink > 1.7) & (plain_shrink < 2.3)), (model.name, plain_shrink)
        assert np.all((modified_shrink > 3.5) & (modified_shrink < 4.5)), (model.name, modified_shrink)
        assert np.all(dist[:, 1] < dist[:, 0])


def test_mean_sgd_epoch_follows_the_sgd_modified_flow():
    # RR-SGD averaged over all orders of m = 3 batches: O(h³) from the flow of L̃_SGD, O(h²) from L̃_IGR
    # (the dropped variance term); checked on fresh data as shrink factors near 8 and 4
    x, y = igr.generated_data(12, 3, 7)
    model = flat.mlp_model(3, 5, 7)
    xt, yt = torch.tensor(x), torch.tensor(y)
    batches = [flat.squared_loss(model, xt[idx], yt[idx]) for idx in flat.partition(12, 3, 7)]
    loss = flat.squared_loss(model, xt, yt)
    to_sgd, to_igr = [], []
    for h in (0.02, 0.01, 0.005):
        mean, _, orders = flat.sgd_epoch_mean(batches, model.theta0, h)
        assert orders == 6
        to_sgd.append(np.linalg.norm(mean - flows.sgd_flow(batches, model.theta0, 3 * h, h).end))
        to_igr.append(np.linalg.norm(mean - flows.igr_flow(loss, model.theta0, 3 * h, h).end))
    to_sgd, to_igr = np.array(to_sgd), np.array(to_igr)
    assert np.all(to_sgd < to_igr)
    assert np.all(to_sgd[:-1] / to_sgd[1:] > 6.0), to_sgd
    assert np.all(np.abs(to_igr[:-1] / to_igr[1:] - 4.0) < 0.5), to_igr


def test_default_quick_run_passes_and_data_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 2))
    y = np.sin(x[:, 0]) + 0.5 * x[:, 1]
    np.savez(tmp_path / "mine.npz", X=x, y=y)
    # --threads 1: these problems are tiny, and two processes share the test machine's 2 cores
    default, mine = run_cli_many([["run", "igr", "--quick", "--threads", "1", "--out", tmp_path / "default"],
                                  ["run", "igr", "--quick", "--threads", "1", "--data", tmp_path / "mine.npz",
                                   "--set", "feature=1", "--out", tmp_path / "mine"]])
    assert default.returncode == 0, default
    summary = json.loads((tmp_path / "default" / "summary.json").read_text())
    assert summary["verdict"] == "pass", summary["checks"]
    assert len(summary["checks"]) == 5
    assert (tmp_path / "default" / "figures" / "distance_vs_h.png").exists()
    assert mine.returncode == 0, mine
    summary = json.loads((tmp_path / "mine" / "summary.json").read_text())
    # the orders hold on the user's 8 points too: ×4 to the modified flow, ×2 to the plain one, per halving
    assert summary["verdict"] == "pass", summary["checks"]
    values = [c["value"] for c in summary["checks"]]
    assert len(values) == 5 and all(3.5 <= v <= 4.5 for v in values[0:4:2]) and all(1.7 <= v <= 2.3 for v in values[1:4:2])
    assert values[4] < 1
    assert summary["config"]["data_file"] == str((tmp_path / "mine.npz").resolve())
    solutions = read_solutions(tmp_path / "mine")
    hs = ["h_0.1", "h_0.05", "h_0.025"]  # --quick: two halvings
    expected = {"ref_two_param_flow", "ref_mlp_flow"}
    for h in hs:
        expected |= {f"two_param_gd_{h}", f"mlp_gd_{h}", f"ref_two_param_modified_{h}", f"ref_mlp_modified_{h}",
                     f"mlp_sgd_mean_{h}", f"ref_mlp_sgd_flow_{h}", f"ref_mlp_igr_epoch_{h}"}
    assert expected <= set(solutions) and "mlp_gd_h_0.0125" not in solutions
    assert solutions["two_param_gd_h_0.1"].shape == (2,)
    assert solutions["mlp_gd_h_0.1"].shape == (2 * 6 + 2 * 6 + 1,)
    # the stored plain flow is the gradient flow of the user's data, for the two-parameter model on column 1
    model = flat.two_param_model(1, [1.5, 0.3])
    loss = flat.squared_loss(model, torch.tensor(x), torch.tensor(y))
    np.testing.assert_allclose(solutions["ref_two_param_flow"], flows.gradient_flow(loss, model.theta0, 2.0).end,
                               atol=1e-10)


def test_malformed_files_exit_2_with_one_line_and_write_nothing(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 3))
    y = x[:, 0]
    nan = x.copy()
    nan[2, 1] = np.nan
    cases = {
        "missing": ({"X": x}, "missing array"),
        "shape": ({"X": x, "y": y[:5]}, "y must have shape (8,)"),
        "nan": ({"X": nan, "y": y}, "NaN"),
        "batches": ({"X": x[:6], "y": y[:6]}, "multiple of 4"),
        "column": ({"X": x[:, :1] * 0 + x[:, :1], "y": y}, "feature"),
    }
    commands = []
    for name, (arrays, _) in cases.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        extra = ["--set", "feature=2"] if name == "column" else []
        commands.append(["run", "igr", "--quick", "--data", tmp_path / f"{name}.npz", *extra, "--out", tmp_path / name])
    results = [invoke_cli(command) for command in commands]
    for (name, (_, expected)), result in zip(cases.items(), results):
        assert_user_error(result, [expected, f"{name}.npz"], tmp_path / name)


# -- the analysis on hand-made distances -----------------------------------------------------------------

def distances_at(config, modified, plain, sgd_ratios, skip=()):
    """solutions.npz arrays whose GD distances at h, h/2, … are ``modified[i]`` / ``plain[i]`` (both models)
    and whose SGD distance ratio is ``sgd_ratios[i]``; the keys in ``skip`` are left out."""
    arrays = {}
    for model in igr.MODELS:
        arrays[f"ref_{model}_flow"] = np.zeros(2)
        for h, a, b in zip(config.step_sizes, plain, modified):
            arrays[f"{model}_gd_{igr.h_label(h)}"] = np.array([a, 0.0])  # |learned − flow| = a
            arrays[f"ref_{model}_modified_{igr.h_label(h)}"] = np.array([a, b])  # |learned − modified| = b
    for h, r in zip(config.step_sizes, sgd_ratios):
        arrays[f"mlp_sgd_mean_{igr.h_label(h)}"] = np.zeros(2)
        arrays[f"ref_mlp_sgd_flow_{igr.h_label(h)}"] = np.array([r, 0.0])
        arrays[f"ref_mlp_igr_epoch_{igr.h_label(h)}"] = np.array([1.0, 0.0])
    return {k: v for k, v in arrays.items() if k not in skip}


QUICK = build_config(igr.Config, {"halvings": 2}, {})
ORDER_2, ORDER_1 = [1.0, 1 / 4, 1 / 16], [1.0, 1 / 2, 1 / 4]


def analyze(solutions):
    return igr.STUDY.analyze(QUICK, pd.DataFrame(), pd.DataFrame(), solutions)


def test_checks_judge_every_halving_and_say_the_worst():
    analysis = analyze(distances_at(QUICK, ORDER_2, ORDER_1, [0.5, 0.3, 0.2]))
    assert analysis.verdict == "pass" and [c.value for c in analysis.checks] == pytest.approx([4, 2, 4, 2, 0.5])
    # 3.52 and 4.52: 3.52 is farther from 4 in log, but 4.52 is the one outside [3.5, 4.5]; the value shown
    # must be outside the band exactly when the check fails
    analysis = analyze(distances_at(QUICK, [1.0, 1 / 3.52, 1 / (3.52 * 4.52)], ORDER_1, [0.5, 0.3, 0.2]))
    first = analysis.checks[0]
    assert first.passed is False and first.value == pytest.approx(4.52)


def test_a_nan_or_a_missing_step_size_is_inconclusive():
    # a NaN SGD distance: np.all(ratio < 1) was False, so the check failed
    broken = distances_at(QUICK, ORDER_2, ORDER_1, [0.5, math.nan, 0.2])
    analysis = analyze(broken)
    assert analysis.checks[4].passed is None and "2 of 3 step sizes" in analysis.checks[4].detail
    assert analysis.verdict == "inconclusive" and all(c.passed for c in analysis.checks[:4])
    # ... unless a finite ratio already reaches 1
    assert analyze(distances_at(QUICK, ORDER_2, ORDER_1, [1.2, math.nan, 0.2])).checks[4].passed is False
    # h/2 missing: no shrink factor spans the gap h → h/4 (it read 16 for the modified flow)
    gap = analyze(distances_at(QUICK, ORDER_2, ORDER_1, [0.5, 0.3, 0.2], skip={"two_param_gd_h_0.05"}))
    assert [c.passed for c in gap.checks] == [None, None, True, True, True] and gap.verdict == "inconclusive"
    rows = gap.table[(gap.table["model"] == "two_param")]
    assert rows["h"].tolist() == [0.1, 0.025] and rows["dist_modified_shrink"].isna().all()
