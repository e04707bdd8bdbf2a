"""The study toolkit's readers of a solved study's stored runs: run_config, with_settings,
problem_source, final_value and fmt (studies/base.py), on hand-made runs frames."""

import math

import numpy as np
import pandas as pd

from implicitreg.studies.base import final_value, fmt, problem_source, run_config, with_settings

RUNS = pd.DataFrame({
    "run_id": ["depth_1", "depth_3", "razin"],
    "config": [{"depth": 1, "problem": "wilson", "n": 4, "d": 9},
               {"depth": 3, "problem": "gaussian", "n": 20, "d": 100}, "not a mapping"],
})


def test_run_config_is_the_stored_mapping_or_empty():
    assert run_config(RUNS, "depth_3") == {"depth": 3, "problem": "gaussian", "n": 20, "d": 100}
    assert run_config(RUNS, "razin") == {}  # a malformed config reads as no settings
    assert run_config(RUNS, "depth_7") == {}
    assert run_config(pd.DataFrame(), "depth_1") == {}  # nothing stored


def test_with_settings_adds_config_columns_by_run_not_by_row_order():
    frame = pd.DataFrame({"run_id": ["razin", "depth_3", "depth_1", "missing"], "loss": [0.5, 0.1, 0.2, 0.3]})
    out = with_settings(frame, RUNS, ("depth", "n"))
    assert out["run_id"].tolist() == frame["run_id"].tolist() and out["loss"].tolist() == frame["loss"].tolist()
    assert out["depth"].tolist()[1:3] == [3, 1] and out["n"].tolist()[1:3] == [20, 4]
    assert math.isnan(out["depth"].iloc[0]) and math.isnan(out["depth"].iloc[3])  # no setting: NaN
    # a column the frame already has is kept, not duplicated
    assert with_settings(out, RUNS, ("depth",)).columns.tolist() == out.columns.tolist()
    assert with_settings(frame, pd.DataFrame(columns=["run_id", "config"]), ("depth",))["depth"].isna().all()


def test_problem_source_skips_excluded_problems():
    assert problem_source(RUNS) == "wilson (n=4, d=9)"
    assert problem_source(RUNS, exclude=("wilson",)) == "gaussian (n=20, d=100)"
    assert problem_source(RUNS, exclude=("wilson", "gaussian")) == "unknown"
    assert problem_source(pd.DataFrame()) == "unknown"


def test_final_value_tells_missing_from_nan():
    final = pd.DataFrame({"run_id": ["a", "b"], "loss": [0.25, np.nan], "steps": [10, 12]})
    assert final_value(final, "a", "loss") == 0.25 and final_value(final, "b", "steps") == 12.0
    assert math.isnan(final_value(final, "b", "loss"))  # a NaN reaches the check, which reports it
    assert final_value(final, "c", "loss") is None and final_value(final, "a", "accuracy") is None
    assert final_value(final.rename(columns={"run_id": "run"}), "a", "loss", key="run") == 0.25
    assert final_value(pd.DataFrame(), "a", "loss") is None


def test_fmt():
    assert fmt(None) == "n/a" and fmt(0.000123456) == "0.000123" and fmt(12345.0) == "1.23e+04"
    assert fmt(0.5, ".2e") == "5.00e-01" and fmt(math.nan) == "nan"
