"""The catapult study: the paper's uv-model critical rates in its phase classification, the phase rules, the
data, the analysis on fabricated runs (pass, fail, inconclusive; NaN, missing runs, failed brackets), and a
tiny run through the CLI."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from implicitreg.config import build_config
from implicitreg.dynamics.two_layer import init_two_layer, max_stable_rate, ntk_top, train
from implicitreg.studies import catapult as cat
from implicitreg.studies.catapult import analysis
from implicitreg.studies.catapult.phases import DIVERGE, FIT, classify, expected, summarize
from implicitreg.studies.catapult.problem import digits_problem, standardized

from conftest import assert_user_error, invoke_cli, read_store

UV_WIDTH = 4096


def uv_phases(rates, seeds, steps=1000):
    """The phase of the paper's uv model f = v·u x/√n on one point (x = 1, y = 0) at each rate c = η·λ₀,
    per seed: GD by dynamics.two_layer, classified by the study's rules."""
    x, y = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    members = [(c, s) for c in rates for s in seeds]
    net = init_two_layer([s for _, s in members], UV_WIDTH, 1, "linear")
    lam0 = ntk_top(net, x)
    run = train(net, x, y, torch.tensor([c for c, _ in members]) / lam0, steps, measure=range(0, steps, 50),
                diverge=DIVERGE)
    phases = {}
    for b, (c, s) in enumerate(members):
        phases.setdefault(c, []).append(classify(summarize(run, b)))
    return phases


def test_the_uv_models_critical_rates_2_and_4_separate_the_phases():
    # Lewkowycz et al. (2020), Section 2: for f = v·u x/√n on one point, λ_{t+1} − λ_t = (ηf_t²/n)(ηλ_t − 4):
    # below ηλ₀ = 2 GD converges with λ constant up to O(1/n) (lazy); between 2 and 4 the loss grows until λ has
    # fallen below 2/η, then converges (catapult); above 4, λ grows with the loss (divergent). Just either side
    # of each critical rate, every seed at width 4096 must land in the phase the analysis gives.
    phases = uv_phases([1.9, 2.1, 3.9, 4.1], range(4))
    assert phases == {1.9: ["lazy"] * 4, 2.1: ["catapult"] * 4, 3.9: ["catapult"] * 4, 4.1: ["divergent"] * 4}


def test_the_uv_models_maximal_rate_by_bisection_is_4():
    # the same model: the bisection's bracket (width 0.0625 after 7 halvings of [1.5, 9.5]) holds 4/λ₀ up to
    # the finite-width shift, which the rates above bound to (3.9, 4.1)
    x, y = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    result = max_stable_rate(lambda: init_two_layer(range(4), UV_WIDTH, 1, "linear"), x, y, 1000, low=1.5,
                             high=9.5, iterations=7, diverge=DIVERGE, fit=FIT)
    assert result.bracketed.all()
    assert (result.low > 3.9).all() and (result.high < 4.1).all() and (result.high - result.low == 0.0625).all()


@pytest.mark.parametrize("values,phase", [
    ({"diverged": 1.0}, "divergent"),
    ({"diverged": 0.0, "max_loss_ratio": 1.0, "final_loss_ratio": 1e-3, "loss_increases": 0, "lambda_end_ratio": 1.05,
      "eta_lambda_end": 1.6}, "lazy"),
    ({"diverged": 0.0, "max_loss_ratio": 80.0, "final_loss_ratio": 1e-3, "loss_increases": 5, "lambda_end_ratio": 0.2,
      "eta_lambda_end": 0.6}, "catapult"),
    # the loss rose and fell, but the curvature did not end below 2/η: not a catapult
    ({"diverged": 0.0, "max_loss_ratio": 80.0, "final_loss_ratio": 1e-3, "loss_increases": 300,
      "lambda_end_ratio": 0.7, "eta_lambda_end": 2.1}, "other"),
    # a stalled loss (every ReLU unit off): it fell below L₀ but not to FIT·L₀
    ({"diverged": 0.0, "max_loss_ratio": 500.0, "final_loss_ratio": 0.3, "loss_increases": 2, "lambda_end_ratio": 0.0,
      "eta_lambda_end": 0.0}, "other"),
    # monotone and fitted, but the curvature moved by more than DRIFT: not lazy (and no rise: not a catapult)
    ({"diverged": 0.0, "max_loss_ratio": 1.0, "final_loss_ratio": 1e-3, "loss_increases": 0, "lambda_end_ratio": 1.2,
      "eta_lambda_end": 1.8}, "other"),
    # one step above rounding breaks monotonicity
    ({"diverged": 0.0, "max_loss_ratio": 1.0, "final_loss_ratio": 1e-3, "loss_increases": 1, "lambda_end_ratio": 1.0,
      "eta_lambda_end": 1.5}, "other"),
    ({"diverged": 0.0, "max_loss_ratio": 1.0, "final_loss_ratio": math.nan, "loss_increases": 0,
      "lambda_end_ratio": 1.0, "eta_lambda_end": 1.5}, None),
    ({"diverged": 0.0, "max_loss_ratio": 1.0}, None),
    ({}, None),
])
def test_classify_follows_the_definitions(values, phase):
    assert classify(values) == phase


def test_expected_phases_follow_the_papers_bands():
    bands = analysis.PAPER_ETA_MAX
    assert [expected("linear", c, bands) for c in (1.5, 3, 6, 2, 4)] == ["lazy", "catapult", "divergent", None, None]
    assert [expected("relu", c, bands) for c in (1.5, 3, 6, 18)] == ["lazy", "catapult", "catapult", "divergent"]


def test_digits_are_standardized_per_image_with_even_odd_targets():
    problem = digits_problem(40, 3)
    assert problem.x.shape == (40, 64) and problem.y.shape == (40,)
    np.testing.assert_allclose(problem.x.mean(axis=1), 0, atol=1e-12)
    np.testing.assert_allclose((problem.x ** 2).sum(axis=1), 64, rtol=1e-12)
    assert set(np.unique(problem.y)) == {-1.0, 1.0}
    np.testing.assert_array_equal(digits_problem(40, 3).x, problem.x)
    assert not np.array_equal(digits_problem(40, 4).x, problem.x)
    with pytest.raises(ValueError, match="rows \\[1\\]"):
        standardized(np.array([[1.0, 2.0], [3.0, 3.0]]))
    with pytest.raises(ValueError, match="points: expected 1 … 1437"):
        digits_problem(2000, 0)


# --- the analysis on fabricated runs -----------------------------------------------------------------------

LAZY = {"diverged": 0.0, "max_loss_ratio": 1.0, "final_loss_ratio": 2e-3, "loss_increases": 0.0,
        "lambda_end_ratio": 1.03, "eta_lambda_end": 1.55}
CATAPULT = {"diverged": 0.0, "max_loss_ratio": 60.0, "final_loss_ratio": 2e-3, "loss_increases": 5.0,
            "lambda_end_ratio": 0.15, "eta_lambda_end": 0.45}
DIVERGENT = {"diverged": 1.0, "max_loss_ratio": math.inf, "final_loss_ratio": math.inf, "loss_increases": 5.0}
PASSING = {("linear", 1.5): LAZY, ("linear", 3.0): CATAPULT, ("linear", 6.0): DIVERGENT,
           ("relu", 1.5): LAZY, ("relu", 3.0): CATAPULT, ("relu", 6.0): CATAPULT}
BRACKETS = {"linear": (4.0, 4.125), "relu": (10.0, 10.125)}


def fabricated(phases=PASSING, brackets=BRACKETS, seeds=4, edit=None, config=None):
    """runs and metrics frames as the store returns them: every (model, rate, seed) with the summary
    ``phases[(model, rate)]`` at its last step (a divergent run at step 7, status diverged), and every seed's
    bisection bracket; ``edit(model, rate_or_None, seed, values)`` may change or drop (return None) a run."""
    config = config or build_config(cat.Config, {}, {"seeds": seeds})
    runs, rows = [], []
    for model in config.models:
        for rate in config.rates:
            for seed in range(seeds):
                values = dict(phases[(model, rate)])
                values = edit(model, rate, seed, values) if edit else values
                if values is None:
                    continue
                last = 7 if values.get("diverged") == 1.0 else config.steps
                run_id = f"run-{len(runs)}"  # opaque ids: the analysis must read the settings from the configs
                runs.append({"run_id": run_id, "study": "catapult", "arm": model, "seed": seed,
                             "config": {"kind": "phase", "model": model, "rate": rate},
                             "provenance": {}, "status": "diverged" if last == 7 else "done", "final_step": last,
                             "target_step": config.steps})
                rows += [(run_id, 0, "loss", 1.0)] + [(run_id, last, k, v) for k, v in values.items()]
        for seed in range(seeds):
            low, high = brackets[model]
            values = {"eta_max_low": low, "eta_max_high": high, "bracket_low_ok": 1.0,
                      "bracket_high_ok": 1.0 if math.isfinite(high) else 0.0}
            values = edit(model, None, seed, values) if edit else values
            if values is None:
                continue
            run_id = f"run-{len(runs)}"
            runs.append({"run_id": run_id, "study": "catapult", "arm": f"{model}-bisection", "seed": seed,
                         "config": {"kind": "bisection", "model": model, "low": config.bisection_low,
                                    "high": config.bisection_high},
                         "provenance": {}, "status": "done", "final_step": config.steps,
                         "target_step": config.steps})
            rows += [(run_id, config.steps, k, v) for k, v in values.items()]
    return config, pd.DataFrame(runs), pd.DataFrame(rows, columns=["run_id", "step", "name", "value"])


def judged(**kwargs):
    config, runs, metrics = fabricated(**kwargs)
    return cat.STUDY.analyze(config, runs, metrics, {})


def test_the_verdict_passes_when_every_phase_and_maximal_rate_is_the_papers():
    result = judged()
    assert result.verdict == "pass", [c for c in result.checks if not c.passed]
    names = [c.name for c in result.checks]
    assert names == ["linear: η·λ₀ = 1.5 is lazy", "linear: η·λ₀ = 3 is catapult", "linear: η·λ₀ = 6 is divergent",
                     "linear: η_max·λ₀ by bisection", "relu: η·λ₀ = 1.5 is lazy", "relu: η·λ₀ = 3 is catapult",
                     "relu: η·λ₀ = 6 is catapult", "relu: η_max·λ₀ by bisection"]
    assert result.checks[3].value == pytest.approx(4.0625) and result.checks[7].value == pytest.approx(10.0625)
    table = result.table
    assert table.loc[(table["model"] == "linear") & (table["eta_lambda0"] == "3"), "phases"].item() == "catapult 4"
    assert table.loc[(table["model"] == "relu") & (table["eta_lambda0"] == "η_max"), "eta_max_mean"].item() == 10.0625


def test_a_wrong_phase_in_most_seeds_fails_and_in_one_seed_passes():
    def lazy_catapult(seeds):
        return lambda model, rate, seed, values: (dict(LAZY) if model == "linear" and rate == 3.0 and seed in seeds
                                                  else values)
    result = judged(edit=lazy_catapult({0, 1}))  # half the seeds lazy at 3: below the 3/4 majority
    failed = [c for c in result.checks if c.passed is False]
    assert result.verdict == "fail" and [c.name for c in failed] == ["linear: η·λ₀ = 3 is catapult"]
    assert failed[0].value == 0.5 and "catapult 2" in failed[0].detail and "lazy 2" in failed[0].detail
    assert judged(edit=lazy_catapult({0})).verdict == "pass"  # 3 of 4


def test_an_eta_max_outside_the_band_fails_and_says_so_in_the_notes():
    assert not any("does not reproduce" in note for note in judged().notes)
    result = judged(brackets={"linear": (4.0, 4.125), "relu": (22.0, 22.125)},
                    edit=lambda model, rate, seed, values: {**values, "active_units": 0.5} if model == "relu" and rate
                    else values)
    assert result.verdict == "fail" and [c.name for c in result.checks if c.passed is False] == \
        ["relu: η_max·λ₀ by bisection"]
    note = result.notes[0]
    assert note.startswith("relu: the claim does not reproduce here — η_max·λ₀ = 22.1")
    assert "0.50 at η·λ₀ = 6" in note


def test_missing_or_nan_runs_make_their_checks_inconclusive():
    # 3 of 4 seeds without a value at 1.5 (NaN final loss, or no run): fewer than half judged
    def drop(model, rate, seed, values):
        if model == "linear" and rate == 1.5 and seed > 0:
            return None if seed == 1 else {**values, "final_loss_ratio": math.nan}
        return values
    result = judged(edit=drop)
    check = result.checks[0]
    assert check.passed is None and "1 of 4 seeds" in check.detail and result.verdict == "inconclusive"
    assert all(c.passed for c in result.checks[1:])
    # no runs at all
    config = build_config(cat.Config, {}, {})
    empty = cat.STUDY.analyze(config, pd.DataFrame(), pd.DataFrame(columns=["run_id", "step", "name", "value"]), {})
    assert empty.verdict == "inconclusive" and all(c.passed is None for c in empty.checks)


def test_a_failed_bracket_is_a_bound_that_decides_only_beyond_the_band():
    # relu: one seed's upper end (33.5) was stable. With the others at 10.06 the mean over all seeds is at least
    # (3·10.06 + 33.5)/4 = 15.9 > 12: a certain failure
    def upper_stable(model, rate, seed, values):
        if rate is None and model == "relu" and seed == 3:
            return {**values, "eta_max_low": 1.5, "eta_max_high": math.inf, "bracket_high_ok": 0.0}
        return values
    check = judged(edit=upper_stable).checks[7]
    assert check.passed is False and check.value == pytest.approx((3 * 10.0625 + 33.5) / 4)
    assert "a lower bound" in check.detail and "upper end 33.5 was stable" in check.detail
    # linear: one seed's lower end (1.5) was not stable, so its η_max·λ₀ is below 1.5 and the mean over all
    # seeds at most (3·4.06 + 1.5)/4 = 3.42 < 3.6: a certain failure as well
    def lower_unstable(model, rate, seed, values):
        if rate is None and model == "linear" and seed == 0:
            return {**values, "bracket_low_ok": 0.0}
        return values
    check = judged(edit=lower_unstable).checks[3]
    assert check.passed is False and check.value == pytest.approx((3 * 4.0625 + 1.5) / 4)
    # a bound that does not leave the band decides nothing: inconclusive
    def mild(model, rate, seed, values):
        if rate is None and model == "relu" and seed == 3:
            return {**values, "eta_max_high": math.inf, "bracket_high_ok": 0.0}
        return values
    check = judged(brackets={"linear": (4.0, 4.125), "relu": (4.0, 4.125)}, edit=mild).checks[7]
    assert check.passed is None and "1 seed(s) without a bracket" in check.detail


def test_rates_reach_the_analysis_from_the_run_configs():
    config, runs, metrics = fabricated()
    # without the stored settings, no run can be matched to the plan: every check inconclusive
    bare = cat.STUDY.analyze(config, runs.assign(config=[{}] * len(runs)), metrics, {})
    assert bare.verdict == "inconclusive" and all(c.passed is None for c in bare.checks)


# --- the study through the CLI -----------------------------------------------------------------------------


def test_a_tiny_run_stores_every_run_and_judges_it(tmp_path):
    out = tmp_path / "tiny"
    result = invoke_cli(["run", "catapult", "--threads", "1", "--seeds", "2", "--set", "width=64", "--set",
                         "steps=150", "--set", "bisection_iterations=2", "--set", "points=12", "--out", out])
    assert result.returncode == 0, result
    summary = json.loads((out / "summary.json").read_text())
    checks = summary["checks"]
    assert len(checks) == 8
    # the verdict is the one its stored checks imply, and every decided check has a finite value
    passed = [c["passed"] for c in checks]
    assert summary["verdict"] == ("fail" if False in passed else "inconclusive" if None in passed else "pass")
    assert all(isinstance(c["value"], (int, float)) for c in checks if c["passed"] is not None)
    runs, metrics = read_store(out)
    phase = runs[runs["run_id"].str.contains("/rate")]
    assert len(phase) == 2 * 3 * 2 and len(runs) == len(phase) + 2 * 2
    # the linear network at 6/λ₀ diverges, and is stored so, at the step it stopped
    diverged = phase[phase["run_id"].str.startswith("linear/rate6/")]
    assert (diverged["status"] == "diverged").all() and (diverged["final_step"] < 150).all()
    names = set(metrics.loc[metrics["run_id"] == "relu/rate1.5/seed0", "name"])
    assert {"loss", "ntk_lambda", "max_loss_ratio", "eta_lambda_end", "active_units", "hessian_end",
            "lanczos_converged"} <= names
    lam = metrics[(metrics["run_id"] == "relu/rate1.5/seed0") & (metrics["name"] == "ntk_lambda")]
    assert lam["step"].min() == 0 and lam["step"].max() == 150
    for name in ("trajectories_linear.png", "trajectories_relu.png", "final_curvature.png"):
        assert (out / "figures" / name).exists()


def test_invalid_settings_are_one_line_errors(tmp_path):
    out = tmp_path / "bad"
    assert_user_error(invoke_cli(["run", "catapult", "--set", "rates=[1.5,1.5]", "--out", out]),
                      ["rates must be distinct positive values"], out)
    assert_user_error(invoke_cli(["run", "catapult", "--set", "bisection_low=5", "--set", "bisection_high=4",
                                  "--out", out]), ["bisection_low must be below bisection_high"], out)
    assert_user_error(invoke_cli(["run", "catapult", "--set", "models=[tanh]", "--out", out]), ["models"], out)
