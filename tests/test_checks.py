"""Check constructors decide from the value and the threshold, and never pass by accident: a
missing, NaN or infinite value, a value from fewer than half of the planned runs, or one resting
on something that did not converge is inconclusive (passed None), with the reason in the detail."""

import math

import numpy as np
import pandas as pd
import pytest

from implicitreg.studies.base import Analysis, Check, Support, final_values, mean_std, verdict_of, weakest


@pytest.mark.parametrize("check, passed, threshold", [
    (Check.at_most("x", 0.5, 1.0), True, "<= 1"),
    (Check.at_most("x", 1.0, 1.0), True, "<= 1"),
    (Check.at_most("x", 1.0, 1.0, strict=True), False, "< 1"),
    (Check.at_most("x", 1.5, 1.0), False, "<= 1"),
    (Check.at_least("x", 0.99, 0.99), True, ">= 0.99"),
    (Check.at_least("x", 0.98, 0.99), False, ">= 0.99"),
    (Check.at_least("x", 0.99, 0.99, strict=True), False, "> 0.99"),
    (Check.within("x", 1.08, 0.9, 1.08), True, "in [0.9, 1.08]"),
    (Check.within("x", 0.89, 0.9, 1.08), False, "in [0.9, 1.08]"),
    (Check.equals("x", 22, 22), True, "= 22"),
    (Check.equals("x", 21, 22), False, "= 22"),
    (Check.equals("x", 0.1 + 0.2, 0.3, tolerance=1e-12), True, "= 0.3 ± 1e-12"),
    (Check.at_most("x", 0.7, 1.0, strict=True, of="max sharpness·η/2"), True, "max sharpness·η/2 < 1"),
])
def test_passed_and_threshold_come_from_the_same_numbers(check, passed, threshold):
    assert check.passed is passed and check.threshold == threshold


@pytest.mark.parametrize("value", [None, math.nan, math.inf, -math.inf, "n/a", np.float64("nan")])
@pytest.mark.parametrize("make", [
    lambda v: Check.at_most("x", v, 1.0), lambda v: Check.at_least("x", v, 1.0),
    lambda v: Check.within("x", v, 0.0, 1.0), lambda v: Check.equals("x", v, 0.0),
])
def test_a_value_that_is_not_a_number_is_inconclusive(make, value):
    check = make(value)
    assert check.passed is None and check.value is None
    assert ("no value" if value is None else "the value is") in check.detail


def test_support_below_half_is_inconclusive_and_otherwise_named():
    assert Check.at_least("x", 1.0, 0.5, support=Support(2, 5, "seeds")).passed is None
    thin = Check.at_least("x", 1.0, 0.5, support=Support(2, 5, "seeds"))
    assert "2 of 5 seeds" in thin.detail and "fewer than half" in thin.detail
    partial = Check.at_least("x", 1.0, 0.5, support=Support(3, 5, "seeds"), detail="why")
    assert partial.passed is True and partial.detail == "computed from 3 of 5 seeds; why"
    assert Check.at_least("x", 1.0, 0.5, support=Support(5, 5)).detail == ""
    assert Check.at_least("x", 1.0, 0.5, support=Support(0, 0)).passed is None  # nothing planned ran
    assert weakest(Support(5, 5), None, Support(3, 5), Support(4, 5)) == Support(3, 5)
    assert Support.of(pd.Series([1.0, np.nan, np.inf, 2.0, None]), 5) == Support(2, 5)


def test_unreliable_value_is_inconclusive_even_when_it_would_pass():
    check = Check.at_most("x", 0.1, 1.0, unreliable="Lanczos did not converge for 1 of 4 runs")
    assert check.passed is None and check.value == 0.1 and "Lanczos did not converge" in check.detail


@pytest.mark.parametrize("low, high, passed", [(0.1, 0.3, True), (-0.3, -0.1, False), (-0.1, 0.2, None),
                                               (math.nan, 0.2, None)])
def test_interval_check(low, high, passed):
    check = Check.interval_above("d", 0.05, low, high, 0.0)
    assert check.passed is passed and check.threshold == "interval > 0"
    if passed is None:
        assert "contains 0" in check.detail or "no interval" in check.detail


def test_verdict_of_checks():
    ok, bad, unknown = Check.at_most("a", 0, 1), Check.at_most("b", 2, 1), Check.at_most("c", None, 1)
    assert verdict_of([ok, ok]) == "pass"
    assert verdict_of([ok, unknown]) == "inconclusive"
    assert verdict_of([ok, unknown, bad]) == "fail"
    assert verdict_of([]) == "inconclusive"
    assert Analysis(pd.DataFrame(), [ok, unknown]).verdict == "inconclusive"


def test_mean_std_and_final_values_leave_out_what_did_not_finish():
    assert mean_std(pd.Series([1.0, np.nan, 3.0, np.inf])) == (2.0, pytest.approx(math.sqrt(2)))
    assert all(math.isnan(v) for v in mean_std(pd.Series([np.nan])))
    runs = pd.DataFrame({"run_id": ["a", "b"], "status": ["done", "diverged"], "config": [{}, {}],
                         "provenance": [{}, {}]})
    metrics = pd.DataFrame({"run_id": ["a", "a", "b"], "step": [1, 2, 1], "name": ["acc"] * 3,
                            "value": [0.5, 0.9, 0.7]})
    final = final_values(runs, metrics).set_index("run_id")
    assert final.loc["a", "acc"] == 0.9 and math.isnan(final.loc["b", "acc"])  # the diverged run's value is stale
    assert final_values(runs, metrics, keep_diverged=True).set_index("run_id").loc["b", "acc"] == 0.7
