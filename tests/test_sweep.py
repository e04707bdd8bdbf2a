"""Sweep files (``implicitreg sweep FILE.toml``, ``implicitreg.sweep``): the examples validate, the tiny
one runs end to end with a table and a ranking checked against direct computations (pandas, scipy),
a killed sweep resumes only its unfinished runs, a user's module trains as a population equal to the
sequential engine's runs, a BatchNorm module falls back to the sequential engine and says so (and is
evaluated with its running statistics, as a plain PyTorch loop does), and every mistake in a file is
one line with exit code 2 before anything is written."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import implicitreg
from conftest import assert_user_error, invoke_cli, read_store
from implicitreg.backends import LocalBackend
from implicitreg.runner import execute
from implicitreg.studies import STUDIES, get_study
from implicitreg.sweep import SweepOptions, load_config, prepare_sweep

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = EXAMPLES / "sweep-tiny.toml"

# Two populations (width 8 and 24) of 4 runs each (2 learning rates × 2 seeds): each trains in well
# under a second; no accuracy target, so every run trains all 30 steps.
SMALL = """
name = "small"
seeds = 2
data = { name = "mnist1d", n_train = 120, n_test = 60 }
model = { arch = "mlp", hidden = [8] }
[train]
lr = 0.05
batch_size = 40
max_steps = 30
eval_every = 10
target_train_acc = 0.999
track = ["path_norm"]
track_every = 10
[grid]
"model.hidden" = [[8], [24]]
"train.lr" = [0.02, 0.1]
"""

MODELS = """
import torch
from torch import nn


def small(input_dim, n_classes):
    return nn.Sequential(nn.Linear(input_dim, 12), nn.Tanh(), nn.Linear(12, 12), nn.ReLU(), nn.Linear(12, n_classes))


def batchnorm(input_dim, n_classes):
    return nn.Sequential(nn.Linear(input_dim, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, n_classes))


def wrong_outputs(input_dim, n_classes):
    return nn.Linear(input_dim, n_classes + 1)


def not_a_module(input_dim, n_classes):
    return 3
"""


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()  # training sets it to --threads
    yield
    torch.set_num_threads(threads)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def module_sweep(directory: Path, module: str, factory: str) -> Path:
    """A sweep of the user's module ``module.factory`` (the module written beside the file), in float64."""
    write(directory / f"{module}.py", MODELS)
    return write(directory / "sweep.toml", f"""
seeds = 2
data = {{ name = "mnist1d", n_train = 100, n_test = 50 }}
model = {{ arch = "module", factory = "{module}:{factory}" }}
[train]
lr = 0.05
batch_size = 25
max_steps = 20
eval_every = 10
target_train_acc = 0.999
dtype = "float64"
track = ["l2_norm", "distance_from_init"]
track_every = 10
[grid]
"member.weight_decay" = [0.0, 0.001]
""")


# -- the examples ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name, points, runs, populations", [("sweep-tiny.toml", 4, 8, 2),
                                                             ("width-and-lr.toml", 24, 48, 3)])
def test_both_examples_validate(tmp_path, name, points, runs, populations):
    out = tmp_path / "out"
    for quick in (False, True):
        prepared, notices = prepare_sweep(SweepOptions(EXAMPLES / name, out=out, quick=quick))
        groups = prepared.study.plan(prepared.config)
        assert prepared.study.name == "sweep" and notices == []
        assert len(groups) == populations
        assert sum(len(g.members) for g in groups) == (points if quick else runs)
    assert not out.exists()  # validating writes nothing


def test_quick_takes_a_tenth_of_the_steps_and_cadences_and_one_seed(tmp_path):
    _, full, _ = load_config(TINY)
    _, quick, _ = load_config(TINY, quick=True)
    assert (full.seeds, full.train.max_steps, full.train.eval_every, full.train.track_every) == (2, 200, 50, 50)
    assert (quick.seeds, quick.train.max_steps, quick.train.eval_every, quick.train.track_every) == (1, 20, 5, 5)
    # a grid over the steps is divided too; a tenth is at least one step
    raw = tomllib.loads(SMALL)
    raw["grid"]["train.max_steps"] = [100, 5]
    _, config, _ = load_config(raw, quick=True)
    assert config.grid["train.max_steps"] == [10, 1] and config.train.track_expensive_every == 100


def test_the_sweep_study_is_resolvable_but_not_listed():
    assert get_study("sweep").claim is None and "sweep" not in STUDIES
    listed = invoke_cli(["list"])
    assert listed.returncode == 0 and not [line for line in listed.stdout.splitlines() if line.startswith("sweep ")]
    keys = {row["key"] for row in json.loads(invoke_cli(["config", "sweep", "--json"]).stdout)}
    assert {"grid", "seeds", "model.factory", "member.label_noise", "train.lr", "data.n_train"} <= keys


# -- a sweep end to end -----------------------------------------------------------------------------


def final_rows(out: Path) -> pd.DataFrame:
    """One row per run with its values at its last stored step, read from the store with sqlite3."""
    runs, metrics = read_store(out)
    last = metrics[metrics["step"] == metrics.groupby("run_id")["step"].transform("max")]
    wide = last.pivot(index="run_id", columns="name", values="value").reset_index()
    return runs[["run_id", "arm", "status", "provenance"]].merge(wide, on="run_id")


def kendall(x, y) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(x, y)[0])


def test_the_tiny_example_runs_with_its_table_and_ranking_as_computed_directly(tmp_path):
    out = tmp_path / "tiny"
    result = invoke_cli(["sweep", TINY, "--out", out, "--threads", "1", "--strict"])
    assert result.returncode == 0, result
    assert "tiny-width-and-lr" in result.stdout and "no claim" in result.stdout
    assert "sequential" not in result.stderr  # an MLP trains as populations, without a notice
    summary = json.loads((out / "summary.json").read_text())
    assert summary["study"] == "sweep" and summary["name"] == "tiny-width-and-lr" and summary["verdict"] is None
    assert summary["description"].startswith("Two widths") and summary["checks"] == []
    assert summary["runs"] == {"planned": 8, "done": 8, "diverged": 0, "failed": 0, "missing": 0}

    # the table: mean ± std over the 2 seeds of each grid point, as pandas computes them from the store
    final = final_rows(out)
    assert {json.loads(p)["engine"] for p in final["provenance"]} == {"population"}
    table = pd.DataFrame(summary["table"])
    assert len(table) == 4 and list(table["done"]) == ["2/2"] * 4
    assert list(zip(table["hidden"], table["lr"])) == [("[16]", 0.02), ("[16]", 0.1), ("[128]", 0.02),
                                                       ("[128]", 0.1)]
    for row in table.to_dict("records"):
        part = final[final["arm"] == f"hidden={row['hidden']},lr={row['lr']:g}"]
        assert len(part) == 2
        for name in ("train_acc", "test_acc", "gap", "path_norm", "distance_from_init"):
            assert row[f"{name}_mean"] == pytest.approx(part[name].mean(), abs=1e-12), name
            assert row[f"{name}_std"] == pytest.approx(part[name].std(ddof=1), abs=1e-12), name

    # the ranking: Kendall τ over the 8 runs and Ψ over the two axes, each τ from scipy
    final["hidden"] = [arm.split(",")[0] for arm in final["arm"]]
    final["lr"] = [arm.split(",")[1] for arm in final["arm"]]
    ranking = {row["measure"]: row for row in summary["ranking"]}
    assert set(ranking) == {"path_norm", "distance_from_init"}
    for name, row in ranking.items():
        assert row["models"] == 8
        assert row["tau"] == pytest.approx(kendall(final[name], final["gap"]), abs=1e-12)
        psi = {axis: np.mean([kendall(g[name], g["gap"]) for _, g in final.groupby(other)])
               for axis, other in (("model.hidden", "lr"), ("train.lr", "hidden"))}
        assert row["psi_model.hidden"] == pytest.approx(psi["model.hidden"], abs=1e-12)
        assert row["psi_train.lr"] == pytest.approx(psi["train.lr"], abs=1e-12)
        assert row["psi"] == pytest.approx(np.mean(list(psi.values())), abs=1e-12)
    assert [r["rank"] for r in summary["ranking"]] == [1, 2] and \
        summary["ranking"][0]["psi"] >= summary["ranking"][1]["psi"]

    figures = {p.name for p in (out / "figures").iterdir()}
    assert {"steps_test_acc.png", "steps_path_norm.png", "steps_distance_from_init.png",
            "final_vs_model_hidden.png", "final_vs_train_lr.png", "ranking.png"} <= figures
    page = (out / "report.html").read_text()
    assert "sweep: tiny-width-and-lr" in page and "Measure ranking" in page and "open experiment" in page
    shown = invoke_cli(["show", out])
    assert shown.returncode == 0 and "tiny-width-and-lr" in shown.stdout and "distance_from_init" in shown.stdout
    assert invoke_cli(["report", out]).returncode == 0

    quick = invoke_cli(["sweep", TINY, "--quick", "--out", tmp_path / "quick", "--threads", "1", "--json"])
    assert quick.returncode == 0, quick
    quick_summary = json.loads(quick.stdout)
    assert quick_summary["runs"]["done"] == 4 and any(n.startswith("--quick: a tenth") for n in quick_summary["notes"])
    assert read_store(tmp_path / "quick")[0]["final_step"].max() <= 20


def test_a_killed_sweep_resumes_only_its_unfinished_runs(tmp_path):
    """Killed (``os._exit``, no clean-up: as ``kill -9``) right after its first population is stored;
    ``--resume`` trains the other population alone and ends where an uninterrupted sweep ends."""
    settings = tomllib.loads(SMALL)
    out = tmp_path / "killed"
    prepared, _ = prepare_sweep(SweepOptions(settings, out=out, threads=1))
    pid = os.fork()
    if pid == 0:  # the child: dies as soon as one population's runs are committed
        try:
            execute(prepared, on_outcome=lambda outcome: os._exit(9))
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 9
    at_kill, metrics_at_kill = read_store(out)
    done = set(at_kill.loc[at_kill["status"] == "done", "run_id"])
    unfinished = set(at_kill["run_id"]) - done
    assert len(done) == 4 and len(unfinished) == 4 and set(at_kill.loc[~at_kill["run_id"].isin(done), "status"]) \
        == {"running"}

    refused = invoke_cli(["sweep", write(tmp_path / "small.toml", SMALL), "--out", out])
    assert refused.returncode == 2 and "--resume" in refused.stderr

    class Recording:
        trained: list[str] = []

        def run(self, tasks, *args, **kwargs):  # the backend protocol's arguments, passed through
            tasks = list(tasks)
            Recording.trained = [m.run_id for task in tasks for m in task.group.members]
            yield from LocalBackend().run(tasks, *args, **kwargs)

    resumed = execute(prepare_sweep(SweepOptions(settings, out=out, resume=True, threads=1))[0], backend=Recording())
    assert set(Recording.trained) == unfinished and resumed.summary["runs"]["done"] == 8
    runs, metrics = read_store(out)
    assert set(runs["status"]) == {"done"}
    before = at_kill.set_index("run_id").loc[sorted(done), "started_at"]
    assert (runs.set_index("run_id").loc[sorted(done), "started_at"] == before).all()  # not started again
    kept = metrics[metrics["run_id"].isin(done)].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, metrics_at_kill[metrics_at_kill["run_id"].isin(done)].reset_index(drop=True))

    reference = execute(prepare_sweep(SweepOptions(settings, out=tmp_path / "whole", threads=1))[0])
    assert reference.summary["runs"]["done"] == 8
    pd.testing.assert_frame_equal(metrics, read_store(tmp_path / "whole")[1])  # bitwise: same threads, same runs


# -- a user's own module ------------------------------------------------------------------------------


def test_a_module_factory_trains_as_a_population_equal_to_the_sequential_engine(tmp_path):
    path = module_sweep(tmp_path, "sweep_models_vmap", "small")
    results = {engine: implicitreg.sweep(path, out=tmp_path / engine, engine=engine, threads=1, progress=False)
               for engine in ("population", "sequential")}
    runs = {engine: read_store(tmp_path / engine)[0] for engine in results}
    assert {json.loads(p)["engine"] for p in runs["population"]["provenance"]} == {"population"}
    assert not any("engine_reason" in json.loads(p) for p in runs["population"]["provenance"])
    assert results["population"].summary["runs"]["done"] == 4
    metrics = {engine: read_store(tmp_path / engine)[1] for engine in results}
    assert len(metrics["population"]) == len(metrics["sequential"]) > 0
    # float64: the vmapped population and four plain torch.optim loops agree to rounding
    assert np.allclose(metrics["population"]["value"], metrics["sequential"]["value"], rtol=1e-9, atol=1e-11)
    assert (metrics["population"][["run_id", "step", "name"]] == metrics["sequential"][["run_id", "step", "name"]]
            ).all().all()


def test_a_batchnorm_factory_falls_back_to_the_sequential_engine_and_says_so(tmp_path):
    path = module_sweep(tmp_path, "sweep_models_bn", "batchnorm")
    out = tmp_path / "bn"
    result = invoke_cli(["sweep", path, "--out", out, "--threads", "1"])
    assert result.returncode == 0, result
    notices = [line for line in result.stderr.splitlines() if "sequential engine" in line]
    assert len(notices) == 1 and "buffers" in notices[0] and "sweep_models_bn:batchnorm" in notices[0]
    runs, _ = read_store(out)
    provenance = [json.loads(p) for p in runs["provenance"]]
    assert {p["engine"] for p in provenance} == {"sequential"} and all("running_mean" in p["engine_reason"]
                                                                       for p in provenance)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"]["done"] == 4 and any("trained on the sequential engine" in n for n in summary["notes"])


def test_the_sequential_engine_evaluates_a_batchnorm_module_with_its_running_statistics(tmp_path, monkeypatch):
    """Against a plain PyTorch loop: train mode for the steps, eval mode for the evaluation."""
    import torch.nn.functional as F

    from implicitreg.backends.local import cached_dataset
    from implicitreg.config import DataConfig, TrainConfig
    from implicitreg.models.factory import ModuleConfig
    from implicitreg.plan import Group, Member
    from implicitreg.sampling import BatchOrders
    from implicitreg.sequential import train_sequential
    from implicitreg.train import build_members

    write(tmp_path / "sweep_models_reference.py", MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    group = Group("module", ModuleConfig(factory="sweep_models_reference:batchnorm"),
                  DataConfig(n_train=100, n_test=50),
                  TrainConfig(optimizer="sgd", lr=0.1, batch_size=20, max_steps=3, eval_every=3, target_train_acc=None,
                              dtype="float64"), (Member("bn/seed0", seed=0, lr=0.1),))
    data = cached_dataset(group.data).tensors("cpu", torch.float64)
    [result] = train_sequential(group, data)
    stored = {name: value for step, name, value in result.metrics if step == 3}

    model = build_members(group, data)[0]  # the same initial module (the member's init stream)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    orders = BatchOrders([0], 100, 20)
    model.train()
    for step in range(3):
        idx = orders.batch(step)[0]
        optimizer.zero_grad()
        F.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        out = model(data.x_test)
    assert stored["test_loss"] == pytest.approx(float(F.cross_entropy(out, data.y_test)), abs=1e-12)
    assert stored["test_acc"] == pytest.approx(float((out.argmax(1) == data.y_test).double().mean()), abs=1e-12)
    with torch.no_grad():  # batch statistics give another number: the comparison above can tell them apart
        assert abs(float(F.cross_entropy(model.train()(data.x_test), data.y_test)) - stored["test_loss"]) > 1e-6


# -- one line and exit code 2 for every mistake, before anything is written ---------------------------


BASE = """
data = { name = "mnist1d", n_train = 60, n_test = 30 }
model = { arch = "mlp", hidden = [8] }
train = { max_steps = 5 }
"""

MISTAKES = {
    "unknown key": (BASE + "colour = 1\n", ["colour", "unknown key"]),
    "unknown nested key": (BASE.replace("max_steps = 5", "max_steps = 5, lrr = 1"), ["train.lrr", "unknown key"]),
    "grid key not a config path": (BASE + '[grid]\n"model.width" = [1, 2]\n', ["model.width", "not a config path"]),
    "seeds as an axis": (BASE + '[grid]\nseeds = [1, 2]\n', ["'seeds' is not a config path"]),
    "empty list": (BASE + '[grid]\n"train.lr" = []\n', ["grid", "train.lr", "non-empty list"]),
    "repeated value": (BASE + '[grid]\n"train.lr" = [0.1, 0.1]\n', ["0.1 appear more than once"]),
    "a grid value out of range": (BASE + '[grid]\n"train.lr" = [0.1, -1.0]\n',
                                  ["grid point lr=-1.0", "train.lr", "greater than 0"]),
    "a key of another arch": (BASE.replace('arch = "mlp"', 'arch = "cnn"'), ["hidden applies to arch = 'mlp'"]),
    "not TOML": (BASE + "grid = [\n", ["not valid TOML"]),
    "unimportable factory": (BASE.replace('arch = "mlp", hidden = [8]', 'arch = "module", factory = "no_such_pkg.x:f"'),
                             ["model.factory", "cannot import 'no_such_pkg.x'", "ModuleNotFoundError"]),
    "misspelt factory": (BASE.replace('arch = "mlp", hidden = [8]', 'arch = "module", factory = "no colon"'),
                         ["model.factory", "package.module:function"]),
    "factory without the function": (BASE.replace('arch = "mlp", hidden = [8]',
                                                  'arch = "module", factory = "sweep_models_bad:missing"'),
                                     ["sweep_models_bad", "has no 'missing'"]),
    "factory returning no module": (BASE.replace('arch = "mlp", hidden = [8]',
                                                 'arch = "module", factory = "sweep_models_bad:not_a_module"'),
                                    ["returned a int, not an nn.Module"]),
    "factory with the wrong outputs": (BASE.replace('arch = "mlp", hidden = [8]',
                                                    'arch = "module", factory = "sweep_models_bad:wrong_outputs"'),
                                       ["expected outputs of shape [batch, 10]", "got [2, 11]"]),
    "dropout on a module": (BASE.replace('arch = "mlp", hidden = [8]',
                                         'arch = "module", factory = "sweep_models_bad:small"')
                            + "member = { dropout = 0.1 }\n", ["member.dropout", "set member.dropout = 0"]),
    "a measure that does not apply": (BASE.replace("max_steps = 5", 'max_steps = 5, track = ["nuclear_norm"]'),
                                      ["train.track", "nuclear_norm does not apply to the mlp model"]),
    "an unknown measure": (BASE.replace("max_steps = 5", 'max_steps = 5, track = ["sharpnes"]'),
                           ["train.track", "unknown measure"]),
}


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_each_mistake_is_one_line_and_exit_code_2(tmp_path, mistake):
    text, expected = MISTAKES[mistake]
    write(tmp_path / "sweep_models_bad.py", MODELS)
    path = write(tmp_path / "bad.toml", text)
    out = tmp_path / "out"
    assert_user_error(invoke_cli(["sweep", path, "--out", out]), [str(path), *expected], out)


def test_a_missing_file_and_a_dict_are_named_in_the_error(tmp_path):
    out = tmp_path / "out"
    assert_user_error(invoke_cli(["sweep", tmp_path / "nope.toml", "--out", out]), ["nope.toml", "no such file"], out)
    with pytest.raises(implicitreg.ConfigError, match=r"^sweep: grid: 'train.lrs' is not a config path"):
        implicitreg.sweep({"grid": {"train.lrs": [0.1]}}, out=out)
    assert not out.exists()


def test_the_readme_shows_the_tiny_example_as_it_is():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("## Your own sweep")[1].split("```toml")[1].split("```")[0]
    assert tomllib.loads(block) == tomllib.loads(TINY.read_text())
