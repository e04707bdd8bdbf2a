"""The adaptive-eos study: its measurements against torch.optim trajectories and dense eigenvalues, its verdict
logic on fabricated runs (pass, fail, inconclusive; NaN, unconverged, missing, cut and diverged runs), and the
CLI contract at a tiny size. The update rules and the preconditioned sharpness themselves are tested in
test_dynamics_adaptive.py."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from implicitreg.config import build_config
from implicitreg.dynamics.network import build_mlp, half_mse
from implicitreg.runner import read_solutions
from implicitreg.studies import adaptive_eos as aeos
from implicitreg.studies.edge_of_stability import teacher_data

from conftest import assert_user_error, dense_hessian, invoke_cli, run_cli


def recorded(rows, step):
    return {name: value for s, name, value in rows if s == step}


TINY = dict(n=30, d=4, hidden=[5], seed=2)  # 31 parameters: Lanczos with 31 products is exact


def tiny_problem():
    x, y = (torch.tensor(a) for a in teacher_data(TINY["n"], TINY["d"], 3, TINY["seed"]))
    return x, y, lambda: build_mlp(TINY["d"], TINY["hidden"], 1, TINY["seed"])


def test_momentum_records_the_sharpness_of_torch_sgds_trajectory_and_its_ratio_to_the_threshold():
    # reference: torch.optim.SGD(momentum) on a copy for k steps, then eigvalsh of the dense Hessian
    x, y, make = tiny_problem()
    lr, beta = 0.3, 0.9
    rows, last = aeos.run_momentum(make(), x, y, lr, beta, steps=20, measure_every=10, tol=1e-10, max_hvp=31)
    assert last == 20
    reference = make()
    optimizer = torch.optim.SGD(reference.parameters(), lr=lr, momentum=beta, dampening=0)
    for step in range(21):
        if step % 10 == 0:
            top = np.linalg.eigvalsh(dense_hessian(reference, x, y, half_mse).numpy())[-1]
            m = recorded(rows, step)
            assert m["sharpness"] == pytest.approx(top, rel=1e-9)
            assert m["over_threshold"] == pytest.approx(top * lr / (2 + 2 * beta), rel=1e-9)
            assert m["lanczos_converged"] == 1.0 and "loss" in m
        optimizer.zero_grad()
        half_mse(reference(x), y).backward()
        optimizer.step()


def test_adam_records_lambda_max_of_p_inverse_h_with_the_p_of_the_next_torch_adam_step():
    # reference: torch.optim.Adam on a copy for k steps; at that point P = (1 − β₁ᵗ)(√(v/(1 − β₂ᵗ)) + ε) with
    # t = k + 1 and v = β₂·exp_avg_sq + (1 − β₂)g² (the step about to be taken), and the largest real
    # eigenvalue of the dense P⁻¹H (numpy's general eigvals)
    x, y, make = tiny_problem()
    lr, (b1, b2), eps = 0.02, (0.9, 0.999), 1e-8
    rows, _ = aeos.run_adam(make(), x, y, lr, (b1, b2), eps, steps=20, measure_every=10, tol=1e-10, max_hvp=31)
    reference = make()
    optimizer = torch.optim.Adam(reference.parameters(), lr=lr, betas=(b1, b2), eps=eps)
    for step in range(21):
        grads = torch.autograd.grad(half_mse(reference(x), y), list(reference.parameters()))
        if step % 10 == 0:
            t = step + 1
            state = [optimizer.state.get(p, {}) for p in reference.parameters()]
            v = torch.cat([((b2 * s["exp_avg_sq"] if s else 0) + (1 - b2) * g ** 2).reshape(-1)
                           for s, g in zip(state, grads)])
            p = ((1 - b1 ** t) * ((v / (1 - b2 ** t)).sqrt() + eps)).numpy()
            h = dense_hessian(reference, x, y, half_mse).numpy()
            top = np.linalg.eigvals(h / p[:, None]).real.max()
            m = recorded(rows, step)
            assert m["preconditioned_sharpness"] == pytest.approx(top, rel=1e-8)
            assert m["over_threshold"] == pytest.approx(top * (1 - b1) * lr / (2 + 2 * b1), rel=1e-8)
            assert m["sharpness"] == pytest.approx(np.linalg.eigvalsh(h)[-1], rel=1e-8)
            assert m["lanczos_converged"] == 1.0 and m["sharpness_converged"] == 1.0
        optimizer.zero_grad()
        half_mse(reference(x), y).backward()
        optimizer.step()


# --- the analysis on fabricated runs: every 10 steps, 100 steps ------------------------------------------

MOMENTUM = [0.4, 0.7, 0.85, 0.95, 1.02, 0.7, 0.9, 0.97, 1.0, 0.99, 0.98]  # crosses 0.9 at step 30
ADAM = [3.0, 0.2, 0.5, 0.92, 0.99, 1.03, 0.85, 0.97, 1.0, 0.98, 1.01]  # above 1 at step 0, crosses at step 30
KEYS = [("momentum", 0.8), ("momentum", 0.7), ("adam", 0.01), ("adam", 0.003)]
PASSING = {("momentum", 0.8): MOMENTUM, ("momentum", 0.7): MOMENTUM, ("adam", 0.01): ADAM, ("adam", 0.003): ADAM}


def config(**overrides):
    return build_config(aeos.Config, {}, {"steps": 100, "measure_every": 10, **overrides})


def fabricated(ratios, nonconverged=None, losses=None, diverged=()):
    """Runs and metrics whose ratio follows ``ratios[(optimizer, lr)]`` every 10 steps; ``nonconverged``:
    indices of measurements whose Lanczos did not converge; loss 0.5 → 1e-4 unless ``losses`` says otherwise."""
    rows = []
    for (optimizer, lr), series in ratios.items():
        label = aeos.run_label(optimizer, lr)
        quantity = "sharpness" if optimizer == "momentum" else "preconditioned_sharpness"
        for i, r in enumerate(series):
            converged = 0.0 if i in (nonconverged or {}).get((optimizer, lr), set()) else 1.0
            rows += [(label, 10 * i, "over_threshold", r), (label, 10 * i, quantity, 5.0 * r),
                     (label, 10 * i, "lanczos_converged", converged)]
            if optimizer == "adam":
                rows.append((label, 10 * i, "sharpness", 2.0 + 0.1 * i))
        start, end = (losses or {}).get((optimizer, lr), (0.5, 1e-4))
        last = 10 * (len(series) - 1)
        rows += [(label, 0, "loss", start), (label, last, "loss", end), (label, last, "loss_increases", 4.0),
                 (label, last, "diverged", 1.0 if (optimizer, lr) in diverged else 0.0)]
    runs = pd.DataFrame({"run_id": [aeos.run_label(o, lr) for o, lr in KEYS],
                         "config": [{"optimizer": o, "lr": lr, "beta": 0.9} for o, lr in KEYS]})
    return runs, pd.DataFrame(rows, columns=["run_id", "step", "name", "value"])


def judged(ratios=PASSING, **kwargs):
    runs, metrics = fabricated(ratios, **kwargs)
    return aeos.STUDY.analyze(config(), runs, metrics, {})


def by_name(analysis):
    return {c.name.split(":")[0] + (" band" if "median" in c.name else " loss"): c for c in analysis.checks}


def test_the_median_after_the_upward_crossing_decides_and_the_table_reports_the_window():
    analysis = judged()
    assert analysis.verdict == "pass" and len(analysis.checks) == 8
    checks = by_name(analysis)
    # heavy-ball: window from step 30 (0.95) on; a drop to 0.7 inside it does not fail the median (0.97)
    band = checks["heavy-ball η=0.8 band"]
    assert band.value == pytest.approx(float(np.median(MOMENTUM[3:]))) and "sharpened at step 30" in band.detail
    # Adam: the 3.0 at step 0 (before the dip) is not the sharpening; the window starts at the crossing, step 30
    band = checks["Adam η=0.01 band"]
    assert band.value == pytest.approx(float(np.median(ADAM[3:]))) and "sharpened at step 30" in band.detail
    assert band.threshold == "median after sharpening in [0.9, 1.1]"
    table = analysis.table.set_index(["optimizer", "lr"])
    row = table.loc[("momentum", 0.8)]
    assert row["sharpened_at_step"] == 30 and row["measurements_after_sharpening"] == 8
    assert row["fraction_in_band"] == pytest.approx(7 / 8) and row["min_after_sharpening"] == pytest.approx(0.7)
    assert row["threshold"] == pytest.approx(3.8 / 0.8) and math.isnan(row["final_sharpness"])
    row = table.loc[("adam", 0.003)]
    assert row["threshold"] == pytest.approx(38 / 0.003) and row["initial_ratio"] == 3.0
    # Adam's unpreconditioned sharpness at the start of the window (step 30) and at the end
    assert row["sharpness_at_sharpening"] == pytest.approx(2.3) and row["final_sharpness"] == pytest.approx(3.0)
    assert row["max_sharpness_after"] == pytest.approx(3.0)
    assert "Adam η=0.003: unpreconditioned sharpness 2.3 where the window starts, at most 3 after, 3 at the end." \
        in analysis.notes


@pytest.mark.parametrize("series,median", [
    ([0.4, 0.7, 0.95, 1.05, 1.15, 1.2, 1.25, 1.3, 1.3, 1.35, 1.4], 1.25),  # sharpens through the edge
    ([0.4, 0.7, 0.95, 0.8, 0.8, 0.82, 0.8, 0.8, 0.81, 0.8, 0.8], 0.8),  # crossed once, settles below
])
def test_a_median_outside_the_band_fails(series, median):
    analysis = judged({**PASSING, ("adam", 0.01): series})
    band = by_name(analysis)["Adam η=0.01 band"]
    assert band.passed is False and band.value == pytest.approx(median) and analysis.verdict == "fail"
    assert [c.passed for c in analysis.checks].count(False) == 1


def test_never_sharpening_fails_on_its_peak_after_the_dip():
    analysis = judged({**PASSING, ("adam", 0.003): [3.0, 0.2, 0.4, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.88]})
    band = by_name(analysis)["Adam η=0.003 band"]
    assert band.passed is False and band.value == pytest.approx(0.88) and "never sharpened" in band.detail


def test_a_diverged_run_fails_its_loss_check():
    analysis = judged(losses={("momentum", 0.7): (0.5, math.inf)}, diverged={("momentum", 0.7)})
    loss = by_name(analysis)["heavy-ball η=0.7 loss"]
    assert loss.passed is False and "diverged" in loss.detail and analysis.verdict == "fail"


def test_nan_unconverged_short_missing_and_cut_runs_are_inconclusive():
    nan = judged({**PASSING, ("momentum", 0.8): MOMENTUM[:6] + [math.nan] + MOMENTUM[7:]})
    band = by_name(nan)["heavy-ball η=0.8 band"]
    assert band.passed is None and "NaN" in band.detail and nan.verdict == "inconclusive"
    assert math.isnan(nan.table.set_index(["optimizer", "lr"]).loc[("momentum", 0.8), "median_after_sharpening"])
    # a measurement in the window that did not converge is a lower bound: the median may lie higher
    lower = judged(nonconverged={("adam", 0.01): {6}})
    assert by_name(lower)["Adam η=0.01 band"].passed is None and "did not converge" in lower.checks[4].detail
    # ... unless the median of the lower bounds is already above the band
    above = [0.4, 0.7, 0.95, 1.2, 1.2, 1.25, 1.3, 1.3, 1.3, 1.35, 1.4]
    assert by_name(judged({**PASSING, ("adam", 0.01): above}, nonconverged={("adam", 0.01): {5}}))[
        "Adam η=0.01 band"].passed is False
    # sharpened at the very end: 3 measurements after, too few to tell where it settles
    late = judged({**PASSING, ("momentum", 0.7): [0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.88, 0.95, 1.0, 1.0]})
    band = by_name(late)["heavy-ball η=0.7 band"]
    assert band.passed is None and "fewer than 5" in band.detail
    # a missing run leaves both its checks inconclusive, the others decided
    runs, metrics = fabricated(PASSING)
    gone = aeos.STUDY.analyze(config(), runs, metrics[metrics["run_id"] != aeos.run_label("adam", 0.003)], {})
    assert [c.passed for c in gone.checks] == [True] * 6 + [None, None] and gone.verdict == "inconclusive"
    # runs whose records stop before the last step (without diverging) are not judged on what is left
    cut = aeos.STUDY.analyze(config(), runs, metrics[metrics["step"] <= 70], {})
    assert all(c.passed is None for c in cut.checks[::2]) and "not 100" in cut.checks[0].detail


def test_runs_are_matched_to_the_plan_by_their_stored_settings_not_their_ids():
    runs, metrics = fabricated(PASSING)
    renamed = {run_id: f"run{i}" for i, run_id in enumerate(runs["run_id"])}
    analysis = aeos.STUDY.analyze(config(), runs.assign(run_id=runs["run_id"].map(renamed)),
                                  metrics.assign(run_id=metrics["run_id"].map(renamed)), {})
    assert analysis.verdict == "pass"
    assert list(zip(analysis.table["optimizer"], analysis.table["lr"])) == KEYS
    # stored with another β than the configured one: not this plan's run, so inconclusive rather than misjudged
    other = runs.assign(config=[{**c, "beta": 0.5} for c in runs["config"]])
    assert aeos.STUDY.analyze(config(), other, metrics, {}).verdict == "inconclusive"
    bare = aeos.STUDY.analyze(config(), runs.assign(config=[{}] * 4), metrics, {})
    assert bare.verdict == "inconclusive" and "no sharpness was measured" in bare.checks[0].detail
    empty = pd.DataFrame(columns=["run_id", "step", "name", "value"])
    assert aeos.STUDY.analyze(config(), pd.DataFrame(), empty, {}).verdict == "inconclusive"


def test_config_rejects_repeated_or_nonpositive_step_sizes():
    with pytest.raises(ValueError, match="adam_lrs must be distinct positive"):
        config(adam_lrs=[0.01, 0.01])
    with pytest.raises(ValueError, match="momentum_lrs must be distinct positive"):
        config(momentum_lrs=[0.8, -0.1])
    with pytest.raises(ValueError):
        config(momentum_lrs=[0.8])  # at least two step sizes per optimizer


def test_a_tiny_run_writes_its_checks_figures_and_solutions_and_bad_data_exits_2(tmp_path):
    # a size far too small to sharpen (the checks fail or are inconclusive): the contract, not the claim
    out = tmp_path / "tiny"
    result = run_cli(["run", "adaptive-eos", "--quick", "--threads", "1", "--out", out, "--set", "n_points=60",
                      "--set", "hidden=[8]", "--set", "steps=40", "--set", "measure_every=20"])
    assert result.returncode == 0, result
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["checks"]) == 8 and summary["verdict"] in ("fail", "inconclusive")
    assert {"edges.png", "loss_and_sharpness.png"} <= {p.name for p in (out / "figures").iterdir()}
    solutions = read_solutions(out)
    labels = [aeos.run_label(o, lr) for o, lr in KEYS]
    assert set(labels) | {"ref_stability_threshold"} == set(solutions)
    assert all(solutions[label].shape == (20 * 8 + 8 + 8 + 1,) for label in labels)
    np.testing.assert_allclose(solutions["ref_stability_threshold"], [3.8 / 0.8, 3.8 / 0.7, 38 / 0.01, 38 / 0.003])
    np.savez(tmp_path / "constant.npz", X=np.ones((10, 3)), y=np.full(10, 2.0))
    bad = invoke_cli(["run", "adaptive-eos", "--quick", "--data", tmp_path / "constant.npz", "--out", tmp_path / "bad"])
    assert_user_error(bad, ["y is constant", "constant.npz"], tmp_path / "bad")
