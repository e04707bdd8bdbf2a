"""The Python API: implicitreg.run returns the verdict, summary and stored tables."""

import json

import pandas as pd
import pytest

import implicitreg
from implicitreg.config import ConfigError

TINY = {"models": ["mlp"], "mlp.hidden": [16], "data.n_train": 200, "data.n_test": 100,
        "train.max_steps": 40, "train.eval_every": 20, "train.dtype": "float64"}


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    base = tmp_path_factory.mktemp("api")
    return {engine: implicitreg.run("explicit-vs-implicit", quick=True, seeds=1, engine=engine, threads=1,
                                    out=base / engine, **TINY)
            for engine in ("population", "sequential")}


def test_result_exposes_verdict_summary_and_tables(engines):
    result = engines["population"]
    # 40 steps do not fit MNIST-1D: the unregularized train-accuracy check fails, and so the verdict
    assert result.verdict == "fail" and result.summary["checks"][0]["passed"] is False
    assert result.summary == json.loads((result.out / "summary.json").read_text())
    runs, metrics = result.runs(), result.metrics()
    assert isinstance(runs, pd.DataFrame) and isinstance(metrics, pd.DataFrame)
    assert sorted(runs["arm"]) == sorted(["none", "wd", "dropout", "wd+dropout", "random_labels"])
    assert set(runs["status"]) == {"done"}
    assert {"train_acc", "test_acc", "gap", "l2_norm", "dist_init"} <= set(metrics["name"])
    assert set(metrics["step"]) == {20, 40}


def test_sequential_engine_stores_what_the_population_stores(engines):
    """End to end through runner and store: the two engines agree to 1e-10 in float64."""
    pop, seq = (engines[e].metrics().set_index(["run_id", "step", "name"])["value"] for e in engines)
    assert pop.index.equals(seq.index)
    accuracy = pop.index.get_level_values("name").str.endswith("acc") | (pop.index.get_level_values("name") == "gap")
    # accuracies are counts over 200/100 points: equal exactly; losses and norms to rounding
    assert (pop[accuracy] == seq[accuracy]).all()
    assert ((pop[~accuracy] - seq[~accuracy]).abs() <= 1e-10 * seq[~accuracy].abs()).all()


def test_nested_override_and_bad_key():
    with pytest.raises(ConfigError, match="train.lrr"):
        implicitreg.run("explicit-vs-implicit", quick=True, **{"train.lrr": 0.1})
    with pytest.raises(ConfigError, match="unknown study"):
        implicitreg.run("no-such-study")
