"""label-noise: the label-noise step and the models' derivatives against torch autograd in float64, the annealed
and noiseless paths against plain GD, the step's mean over the noise against the GD step (Monte Carlo), and the
study's analysis on fabricated runs (pass, fail, inconclusive, NaN and missing runs)."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from implicitreg.config import build_config
from implicitreg.dynamics.descent import descend, gd_update
from implicitreg.dynamics.label_noise import diagonal_net, label_noise_descent, relu_net
from implicitreg.studies import label_noise as ln
from implicitreg.studies.base import no_progress


def diag_point(members=2, n=6, d=4, seed=0):
    rng = np.random.default_rng(seed)
    return (diagonal_net(d), rng.standard_normal((members, 2 * d)), rng.standard_normal((members, n, d)),
            rng.standard_normal((members, n)))


def relu_point(members=2, n=7, d=3, width=5, seed=1):
    rng = np.random.default_rng(seed)
    return (relu_net(d, width), rng.standard_normal((members, width * (d + 1))), rng.standard_normal((members, n, d)),
            rng.standard_normal((members, n)))


def torch_predict(name, theta, x, d, width=None):
    """The two models written directly in torch, an independent reference for the numpy closed forms."""
    if name == "diagonal_net":
        u, v = theta[:d], theta[d:]
        return x @ (u * u - v * v)
    w, a = theta[:width * d].view(width, d), theta[width * d:]
    return torch.relu(x @ w.T) @ a


def torch_loss(name, theta, x, y, d, width=None):
    return 0.5 * ((torch_predict(name, theta, x, d, width) - y) ** 2).mean()


CASES = [("diagonal_net", diag_point, {}), ("relu_net", relu_point, {"width": 5})]


@pytest.mark.parametrize("name,point,extra", CASES)
def test_pullback_jacobian_and_hessian_trace_match_autograd(name, point, extra):
    model, theta, x, y = point()
    d = x.shape[2]
    r = model.predict(theta, x) - y
    for m in range(len(theta)):
        t, xm, ym = (torch.tensor(a[m], dtype=torch.float64) for a in (theta, x, y))
        f = lambda th: torch_predict(name, th, xm, d, extra.get("width"))  # noqa: E731
        np.testing.assert_allclose(model.predict(theta, x)[m], f(t).numpy(), rtol=0, atol=1e-12)
        jac = torch.autograd.functional.jacobian(f, t).numpy()
        np.testing.assert_allclose(model.jacobian(theta, x)[m], jac, rtol=0, atol=1e-12)
        np.testing.assert_allclose(model.pullback(theta, x, r)[m], jac.T @ r[m], rtol=0, atol=1e-12)
        # the dense Hessian of the clean loss, at a point that does not interpolate (r ≠ 0): the residual part
        # has zero trace (module docstring), so the closed form must hold here too
        hess = torch.autograd.functional.hessian(lambda th: torch_loss(name, th, xm, ym, d, extra.get("width")), t)
        assert model.hessian_trace(theta, x)[m] == pytest.approx(float(torch.trace(hess)), rel=1e-10, abs=1e-10)
        assert float(torch.trace(hess)) == pytest.approx(float((jac ** 2).sum()) / x.shape[1], rel=1e-10)


def test_hessian_trace_at_an_interpolating_point_is_the_gauss_newton_trace():
    """At a point with f = y the Hessian is JᵀJ/n exactly; the trace matches the dense one to 1e-10."""
    model, theta, x, _ = diag_point(members=1, n=5, d=8, seed=3)
    y = model.predict(theta, x)  # interpolating by construction
    t, xm, ym = (torch.tensor(a[0], dtype=torch.float64) for a in (theta, x, y))
    hess = torch.autograd.functional.hessian(lambda th: torch_loss("diagonal_net", th, xm, ym, 8), t).numpy()
    jac = model.jacobian(theta, x)[0]
    np.testing.assert_allclose(hess, jac.T @ jac / 5, rtol=0, atol=1e-12)
    assert model.hessian_trace(theta, x)[0] == pytest.approx(np.trace(hess), rel=1e-10)


@pytest.mark.parametrize("name,point,extra", CASES)
def test_no_noise_is_plain_gradient_descent(name, point, extra):
    model, theta, x, y = point()
    theta = 0.5 * theta
    d = x.shape[2]
    steps, lr = 200, 0.05
    zero = label_noise_descent(model, theta, x, y, lr, 0.0, steps, seed=1)
    annealed_at_start = label_noise_descent(model, theta, x, y, lr, 3.0, steps, noise_steps=0, seed=2)
    assert np.array_equal(zero.theta, annealed_at_start.theta)  # bitwise: r − 0·ε = r
    for m in range(len(theta)):  # an independent path: descend + gd_update on torch autograd's gradient
        xm, ym = torch.tensor(x[m]), torch.tensor(y[m])

        def loss_and_grad(params):
            th = params[0].detach().requires_grad_(True)
            value = torch_loss(name, th, xm, ym, d, extra.get("width"))
            return value.item(), list(torch.autograd.grad(value, th))

        ref = descend(loss_and_grad, [torch.tensor(theta[m]).clone()], steps, gd_update(lr)).params[0].numpy()
        np.testing.assert_allclose(zero.theta[m], ref, rtol=0, atol=1e-13 * max(1.0, np.abs(ref).max()))


@pytest.mark.parametrize("batch", [None, 2])
def test_mean_step_over_the_noise_is_the_gd_step(batch):
    """K members at the same point, one step each with its own noise (and minibatch): the mean update equals
    the full-batch GD update within 5 standard errors per coordinate (K = 40000; the noise term is linear in
    ε, so the mean is exact and the only error is Monte Carlo)."""
    model, theta, x, y = diag_point(members=1, n=5, d=3, seed=4)
    count, lr, delta = 40_000, 0.1, 0.7
    thetas, xs, ys = (np.repeat(a, count, axis=0) for a in (theta, x, y))
    run = label_noise_descent(model, thetas, xs, ys, lr, delta, 1, batch=batch, seed=5)
    steps = run.theta - thetas
    gd = -lr * model.pullback(theta, x, model.predict(theta, x) - y)[0] / x.shape[1]
    error = np.abs(steps.mean(axis=0) - gd)
    standard = steps.std(axis=0, ddof=1) / math.sqrt(count)
    assert np.all(error <= 5 * standard), (error, standard)
    assert np.all(standard > 0)  # the noise did act


@pytest.mark.parametrize("batch", [None, 3])
def test_per_member_seeds_make_a_members_path_independent_of_its_neighbours(batch):
    model, theta, x, y = diag_point(members=3, n=5, d=4, seed=6)
    together = label_noise_descent(model, 0.3 * theta, x, y, 0.05, 0.5, 50, batch=batch, seed=[7, 8, 9])
    alone = label_noise_descent(model, 0.3 * theta[1:2], x[1:2], y[1:2], 0.05, 0.5, 50, batch=batch, seed=[8])
    np.testing.assert_allclose(together.theta[1], alone.theta[0], rtol=0, atol=1e-14)
    other = label_noise_descent(model, 0.3 * theta, x, y, 0.05, 0.5, 50, batch=batch, seed=[7, 10, 9])
    assert not np.allclose(other.theta[1], together.theta[1])  # the seed does drive the noise
    with pytest.raises(ValueError, match="seed"):
        label_noise_descent(model, theta, x, y, 0.05, 0.5, 1, seed=[1, 2])


def test_label_noise_shrinks_the_diagonal_net_toward_the_sparse_solution():
    """The mechanism (HaoChen et al. 2021): from u = v = 1, GD keeps the dense min-ℓ2-like interpolant while
    label noise lowers Σ(u² + v²) ∝ tr ∇²L and the error to β*; a short run on a small problem."""
    rng = np.random.default_rng(0)
    n, d = 10, 20
    x = rng.standard_normal((n, d))
    beta = np.zeros(d)
    beta[[3, 11]] = [1.0, -1.0]
    model = diagonal_net(d)
    xs, ys = np.stack([x, x]), np.stack([x @ beta, x @ beta])
    run = label_noise_descent(model, np.ones((2, 2 * d)), xs, ys, 0.02, np.array([1.0, 0.0]), 60_000,
                              noise_steps=50_000, seed=0)
    final = run.theta[:, :d] ** 2 - run.theta[:, d:] ** 2
    assert run.loss[-1].max() < 1e-5  # the annealed phase ends near the interpolating manifold
    assert run.trace[-1, 0] < 0.5 * run.trace[-1, 1]
    assert np.linalg.norm(final[0] - beta) < 0.5 * np.linalg.norm(final[1] - beta)


def test_bad_inputs_name_the_field():
    model, theta, x, y = diag_point()
    blown = label_noise_descent(model, theta, x, y, np.array([1e3, 1e-3]), 0.0, 20)
    assert blown.diverged.tolist() == [True, False]  # reported per member, the other one unharmed
    with pytest.raises(ValueError, match="theta0"):
        label_noise_descent(model, theta[:, :3], x, y, 0.1, 0.0, 1)
    with pytest.raises(ValueError, match="batch"):
        label_noise_descent(model, theta, x, y, 0.1, 0.0, 1, batch=7)
    with pytest.raises(ValueError, match="noise"):
        label_noise_descent(model, theta, x, y, 0.1, -1.0, 1)


# --- the study: analysis on fabricated runs, the contract, a tiny solve ---------------------------------------

def fabricated(values, seeds=3, status=None, problems=("sparse", "relu")):
    """runs/metrics frames as the store returns them: values[(problem, arm)] = dict of final metrics (the same for
    every seed unless a per-seed list is given); an earlier recording precedes each final one."""
    runs, rows = [], []
    for problem in problems:
        for arm in ln.ARMS:
            for seed in range(seeds):
                finals = {k: (v[seed] if isinstance(v, list) else v) for k, v in values[(problem, arm)].items()}
                run_id = ln.run_id(problem, arm, seed)
                runs.append({"run_id": run_id, "study": ln.STUDY.name, "arm": arm, "seed": seed,
                             "config": {"problem": problem, "arm": arm, "lambda0": 1.0, "lr": 1.0},
                             "provenance": {}, "status": (status or {}).get(run_id, "done"), "final_step": 100,
                             "target_step": 100, "error": None, "started_at": "", "ended_at": ""})
                for name, value in finals.items():
                    rows += [{"run_id": run_id, "step": 10, "name": name, "value": 123.0},
                             {"run_id": run_id, "step": 100, "name": name, "value": value}]
    return pd.DataFrame(runs), pd.DataFrame(rows)


def good():
    return {("sparse", "label_noise"): {"relative_loss": 1e-7, "hessian_trace": 9.0, "test_error": 1e-3},
            ("sparse", "gd"): {"relative_loss": 1e-20, "hessian_trace": 800.0, "test_error": 0.55},
            ("relu", "label_noise"): {"relative_loss": 1e-7, "hessian_trace": 4.0, "test_error": 0.2,
                                      "hessian_trace_anneal_start": 3.0},
            ("relu", "gd"): {"relative_loss": 1e-20, "hessian_trace": 12.0, "test_error": 0.2,
                             "hessian_trace_anneal_start": 12.0}}


def verdict(values, config=None, **kwargs):
    config = config or ln.Config(seeds=3)
    result = ln.STUDY.analyze(config, *fabricated(values, **kwargs))
    return result, {c.name: c for c in result.checks}


def test_analysis_passes_with_every_ratio_below_its_threshold():
    result, checks = verdict(good())
    assert result.verdict == "pass"
    trace = checks["sparse (diagonal net): Hessian trace ratio at the end"]
    assert trace.value == pytest.approx(9.0 / 800.0)
    assert checks["sparse (diagonal net): test error ratio ‖β − β*‖²"].value == pytest.approx(1e-3 / 0.55)
    assert checks["relu (two-layer): Hessian trace ratio at the end"].value == pytest.approx(4.0 / 12.0)
    assert len(result.table) == 4


def test_analysis_fails_on_the_worst_seed_and_says_so_in_the_notes():
    values = good()
    values[("relu", "label_noise")]["hessian_trace"] = [4.0, 4.0, 7.0]  # seed 2: 7/12 > 0.5
    values[("sparse", "label_noise")]["test_error"] = [1e-3, 0.2, 1e-3]  # seed 1: 0.2/0.55 > 0.1
    result, checks = verdict(values)
    assert result.verdict == "fail"
    assert checks["relu (two-layer): Hessian trace ratio at the end"].value == pytest.approx(7.0 / 12.0)
    assert checks["relu (two-layer): Hessian trace ratio at the end"].passed is False
    assert checks["sparse (diagonal net): test error ratio ‖β − β*‖²"].passed is False
    assert checks["sparse (diagonal net): Hessian trace ratio at the end"].passed is True
    relu_note = next(note for note in result.notes if "does not reproduce" in note and note.startswith("relu"))
    assert "0.583 (seed 2)" in relu_note and "At the last noisy step the ratio was 0.25 (seed 2)" in relu_note


def test_a_seed_above_the_loss_tolerance_or_with_nan_is_not_judged():
    values = good()
    values[("relu", "label_noise")]["relative_loss"] = [1e-3, 1e-7, 1e-7]  # seed 0 not at equal train loss
    values[("relu", "gd")]["hessian_trace"] = [12.0, math.nan, 12.0]  # seed 1: NaN
    result, checks = verdict(values)
    relu = checks["relu (two-layer): Hessian trace ratio at the end"]
    assert relu.passed is None and "1 of 3" in relu.detail  # one judged seed of three: inconclusive
    assert "seed 0: relative train loss" in relu.detail and "seed 1: a value is missing" in relu.detail
    assert result.verdict == "inconclusive"


def test_missing_and_unfinished_runs_count_against_the_support():
    values = good()
    runs, metrics = fabricated(values, status={"sparse/gd/seed0": "failed", "relu/label_noise/seed2": "diverged"})
    runs = runs[runs["run_id"] != "sparse/label_noise/seed1"]
    metrics = metrics[metrics["run_id"] != "sparse/label_noise/seed1"]
    result = ln.STUDY.analyze(ln.Config(seeds=3), runs, metrics)
    sparse = {c.name: c for c in result.checks}["sparse (diagonal net): Hessian trace ratio at the end"]
    assert sparse.passed is None  # 1 of 3 seeds judged
    assert "seed 1: no label_noise run" in sparse.detail and "seed 0: a value is missing" in sparse.detail
    relu = {c.name: c for c in result.checks}["relu (two-layer): Hessian trace ratio at the end"]
    assert relu.passed is True and "seed 2: label_noise diverged" in relu.detail and "2 of 3" in relu.detail
    empty = ln.STUDY.analyze(ln.Config(seeds=3), runs.iloc[0:0], metrics.iloc[0:0])
    assert empty.verdict == "inconclusive" and all(c.value is None for c in empty.checks)


def test_config_refuses_a_noise_phase_without_annealing_and_a_large_batch():
    with pytest.raises(ValueError, match="relu_noise_steps"):
        ln.Config(relu_steps=10, relu_noise_steps=10)
    with pytest.raises(ValueError, match="batch"):
        ln.Config(batch=30)


def test_a_tiny_solve_stores_both_arms_of_every_seed_with_their_settings(tmp_path):
    config = build_config(ln.Config, {"seeds": 1, "n": 8, "d": 16, "k": 2, "sparse_steps": 300,
                                      "sparse_noise_steps": 200, "relu_n": 6, "relu_d": 2, "width": 4,
                                      "relu_steps": 300, "relu_noise_steps": 200, "test_points": 10}, {})
    solved = ln.STUDY.solve(config, None, no_progress)
    assert sorted(r.run_id for r in solved.runs) == sorted(ln.run_id(p, a, 0) for p in ("sparse", "relu")
                                                           for a in ln.ARMS)
    for run in solved.runs:
        names = {name for _, name, _ in run.metrics}
        assert {"relative_loss", "hessian_trace", "test_error"} <= names
        assert run.config["noise"] == (1.0 if run.arm == "label_noise" else 0.0)
    # both arms of a seed share η and λ₀ (same initialization)
    lrs = {(r.config["problem"], r.arm): r.config["lr"] for r in solved.runs}
    assert lrs[("sparse", "label_noise")] == lrs[("sparse", "gd")]
    assert "truth_seed0" in solved.arrays and "sparse_gd_seed0" in solved.arrays
    runs = pd.DataFrame([{"run_id": r.run_id, "arm": r.arm, "seed": r.seed, "config": r.config, "provenance": {},
                          "status": r.status, "final_step": r.final_step, "target_step": r.target_step}
                         for r in solved.runs])
    metrics = pd.DataFrame([{"run_id": r.run_id, "step": s, "name": n, "value": v} for r in solved.runs
                            for s, n, v in r.metrics])
    assert len(ln.STUDY.analyze(config, runs, metrics).checks) == 3
    assert len(ln.STUDY.figures(config, runs, metrics, solved.arrays, tmp_path)) == 3
    # seed 0 is the same run whether one or two seeds are solved (per-member noise generators)
    two = ln.STUDY.solve(config.model_copy(update={"seeds": 2}), None, no_progress)
    for label in ("sparse_label_noise_seed0", "relu_label_noise_seed0"):
        np.testing.assert_allclose(two.arrays[label], solved.arrays[label], rtol=0, atol=1e-14)
