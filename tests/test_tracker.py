"""implicitreg.Tracker: our measures inside a plain PyTorch loop — a Conv2d + BatchNorm network on
scikit-learn's digits (8×8 images).

References: the stored accuracy and loss equal a direct forward pass; ‖θ‖₂ and ‖θ − θ₀‖₂ equal sums
over the parameters in float64; the top Hessian eigenvalue equals the measure called directly on a
copy of the model at that step. A measurement leaves the model, its gradients and the random
streams bit-identical, so a loop trains the same with or without a Tracker.
"""

from __future__ import annotations

import copy
import json
import sqlite3
import warnings

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from conftest import invoke_cli, read_store
from implicitreg import Tracker
from implicitreg.measures import top_hessian_eigenvalue

MEASURES = ["l2_norm", "distance_from_init", "top_hessian_eigenvalue"]


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16  # [1797, 1, 8, 8]
    y = torch.tensor(data.target)
    return (x[:200], y[:200]), (x[1500:1700], y[1500:1700]), (x[:1500], y[:1500])


def net(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Dropout(0.1), nn.Linear(6 * 16, 10)).to(dtype)


def train(model, pool, tracker=None, steps=range(31), seed=1, fail_at=None):
    """A plain loop: minibatch SGD with momentum; ``tracker.step`` after each update."""
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    x, y = pool
    dtype = next(model.parameters()).dtype
    for step in steps:
        model.train()
        idx = torch.randint(0, len(x), (32,), generator=g)
        loss = F.cross_entropy(model(x[idx].to(dtype)), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == fail_at:
            raise RuntimeError(f"boom at step {step}")
        if tracker is not None:
            tracker.step(model, step)
    return model


def stored(directory, run="run"):
    runs, metrics = read_store(directory)
    values = metrics[metrics["run_id"] == run].pivot(index="step", columns="name", values="value")
    return runs.set_index("run_id"), values


def reference(model, init, train_data, test_data):
    """What the Tracker should store at this step, computed here without it."""
    model = copy.deepcopy(model).eval()
    dtype = next(model.parameters()).dtype
    out = {}
    with torch.no_grad():
        for split, (x, y) in (("train", train_data), ("test", test_data)):
            logits = model(x.to(dtype))
            out[f"{split}_loss"] = float(F.cross_entropy(logits, y))
            out[f"{split}_acc"] = float((logits.argmax(1) == y).double().mean())
        params = dict(model.named_parameters())
        out["l2_norm"] = float(torch.sqrt(sum((p.double() ** 2).sum() for p in params.values())))
        out["distance_from_init"] = float(torch.sqrt(sum(((params[k].double() - v.double()) ** 2).sum()
                                                         for k, v in init.items())))
    x, y = train_data
    out["top_hessian_eigenvalue"] = float(top_hessian_eigenvalue(model, F.cross_entropy, (x.to(dtype), y)))
    out["gap"] = out["train_acc"] - out["test_acc"]
    return out


class Recording(Tracker):
    """A Tracker that also computes the reference at each step it measures (the model at that step)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.expected = {}

    def step(self, model, step):
        values = super().step(model, step)
        if values:
            self.expected[step] = reference(model, self.initial, self._train, self._test)
        return values


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stored_values_equal_the_reference(tmp_path, digits, dtype):
    train_data, test_data, pool = digits
    model = net(dtype)
    tracker = Recording(tmp_path / "run", MEASURES, every=10, train_data=train_data, test_data=test_data,
                        config={"optimizer": "sgd", "lr": 0.05}, model=model)
    tracker.initial = {k: v.detach().clone() for k, v in model.named_parameters()}
    with tracker:
        train(model, pool, tracker)
    runs, values = stored(tmp_path / "run")
    assert list(values.index) == [0, 10, 20, 30] == sorted(tracker.expected)
    assert runs.loc["run", "status"] == "done" and runs.loc["run", "final_step"] == 30
    assert (values["top_hessian_eigenvalue.converged"] == 1.0).all()
    # Forward passes and the Lanczos run are the same arithmetic as the reference (equal, measured); the
    # norms are float32 sums in the measure and float64 sums here: ~eps32 = 1.2e-7 apart (measured 6e-8),
    # so 1e-6 in float32; float64 leaves rounding alone: 1e-12
    rtol = 1e-6 if dtype == torch.float32 else 1e-12
    for step, expected in tracker.expected.items():
        for name, value in expected.items():
            assert values.loc[step, name] == pytest.approx(value, rel=rtol, abs=rtol), (step, name)
    assert values.loc[30, "train_acc"] > 0.5  # it learned: the values are not those of an untrained net


def test_a_measurement_leaves_the_model_its_gradients_and_the_random_streams_as_they_were(tmp_path, digits):
    train_data, test_data, pool = digits
    model = net()
    train(model, pool, steps=range(3))  # running statistics away from their start, gradients set
    model.train()
    model[1].eval()  # a mix of modes stays a mix
    flags = [m.training for m in model.modules()]
    state = copy.deepcopy(model.state_dict())
    grads = [p.grad.clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    with Tracker(tmp_path / "run", MEASURES, every=1, train_data=train_data, test_data=test_data, model=model) as t:
        assert t.step(model, 0)  # due: measured
    assert [m.training for m in model.modules()] == flags
    after = model.state_dict()
    for key, value in state.items():  # running_mean, running_var, num_batches_tracked and the parameters
        assert torch.equal(after[key], value), key
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_loop_trains_the_same_with_or_without_a_tracker(tmp_path, digits):
    train_data, test_data, pool = digits
    plain = train(net(), pool, steps=range(12))
    tracked = net()
    with Tracker(tmp_path / "run", MEASURES, every=4, train_data=train_data, test_data=test_data,
                 model=tracked) as tracker:
        train(tracked, pool, tracker, steps=range(12))
    for (name, a), b in zip(plain.state_dict().items(), tracked.state_dict().values()):
        assert torch.equal(a, b), name  # dropout masks and minibatches drawn as without it


def test_show_and_report_read_the_directory_of_two_trackers(tmp_path, digits):
    train_data, test_data, pool = digits
    out = tmp_path / "compare"
    for name, seed in (("sgd", 0), ("sgd-seed1", 1)):
        model = net(seed=seed)
        with Tracker(out, MEASURES, every=10, train_data=train_data, test_data=test_data, name=name,
                     config={"optimizer": "sgd", "seed": seed}, model=model) as tracker:
            train(model, pool, tracker, steps=range(21))
    runs, values = stored(out, "sgd-seed1")
    shown = invoke_cli(["show", out])
    assert shown.returncode == 0, shown
    text = shown.stdout
    for header in ("distance_from_init", "top_hessian_eigenvalue", "‖θ‖₂", "optimizer"):
        assert header in text, header
    row = next(line for line in text.splitlines() if line.startswith("sgd-seed1 "))
    for name in MEASURES:
        assert f"{values.loc[20, name]:.3f}" in row, name
    assert "no claim" in text and "2 planned: 2 done" in text

    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert figures == ["accuracy.png", "distance_from_init.png", "l2_norm.png", "loss.png",
                       "top_hessian_eigenvalue.png"]
    (out / "report.html").unlink()
    reported = invoke_cli(["report", out])
    assert reported.returncode == 0, reported
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64") == len(figures) and "open experiment" in html
    summary = json.loads((out / "summary.json").read_text())
    assert summary["study"] == "tracker" and summary["verdict"] is None
    assert [r["run"] for r in summary["table"]] == ["sgd", "sgd-seed1"]
    assert summary["table"][1]["top_hessian_eigenvalue"] == pytest.approx(values.loc[20, "top_hessian_eigenvalue"])


def test_a_measure_that_does_not_apply_is_refused_when_the_tracker_is_made(tmp_path, digits):
    train_data, test_data, _ = digits
    with pytest.raises(ValueError) as err:
        Tracker(tmp_path / "run", ["l2_norm", "path_norm", "spectral_product"], train_data=train_data,
                test_data=test_data, model=net())
    message = str(err.value)
    assert "path_norm" in message and "spectral_product" in message and "Conv2d" in message
    assert "measures=['l2_norm']" in message  # what can be tracked instead
    assert not (tmp_path / "run").exists()


def test_without_model_the_refusal_comes_at_the_first_step(tmp_path, digits):
    train_data, _, _ = digits
    tracker = Tracker(tmp_path / "run", ["path_norm"], train_data=train_data)
    with pytest.raises(ValueError, match="Conv2d"):
        tracker.step(net(), 0)


def test_unknown_measures_are_refused_with_their_close_matches(tmp_path, digits):
    with pytest.raises(ValueError, match=r"unknown measure 'l2norm' \(did you mean l2_norm"):
        Tracker(tmp_path / "run", ["l2norm"], train_data=digits[0])
    with pytest.raises(ValueError, match="unknown measure 'zzz' \\(expected any of .*top_hessian_eigenvalue"):
        Tracker(tmp_path / "run", ["zzz"], train_data=digits[0])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kwargs,field", [
    ({"every": 0}, "every"), ({"train_data": (torch.zeros(3, 4), torch.zeros(2))}, "train_data"),
    ({"name": "a/b"}, "name"), ({"config": {"f": object()}}, "config"), ({"measures": "l2_norm"}, "measures"),
    ({"test_data": (torch.zeros(3, 5), torch.zeros(3, dtype=torch.long))}, "test_data"),
])
def test_malformed_arguments_name_their_field(tmp_path, kwargs, field):
    args = {"train_data": (torch.zeros(3, 4), torch.zeros(3, dtype=torch.long)), "measures": ["l2_norm"], **kwargs}
    with pytest.raises(ValueError, match=f"^{field}: "):
        Tracker(tmp_path / "run", **args)


def test_a_reopened_run_continues_after_its_last_step(tmp_path, digits):
    train_data, test_data, pool = digits
    out = tmp_path / "run"
    model = net()
    initial = {k: v.detach().clone() for k, v in model.named_parameters()}
    settings = dict(every=10, train_data=train_data, test_data=test_data, config={"lr": 0.05})
    with Tracker(out, MEASURES, model=model, **settings) as tracker:
        train(model, pool, tracker, steps=range(0, 21))
    checkpoint = copy.deepcopy(model)
    # the loop resumes (from its checkpoint, in a new process say): θ₀ is the stored one, with or without
    # model= (so no warning that θ₀ would be taken at the first step)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tracker = Tracker(out, MEASURES, **settings)
    assert not [w for w in caught if "θ₀" in str(w.message)]
    with tracker:
        with pytest.raises(ValueError, match="steps up to 20 stored"):
            tracker.step(model, 20)
        train(model, pool, tracker, steps=range(21, 41), seed=2)
    runs, values = stored(out)
    assert list(values.index) == [0, 10, 20, 30, 40] and runs.loc["run", "status"] == "done"
    with torch.no_grad():
        expected = torch.sqrt(sum(((p.double() - initial[k].double()) ** 2).sum() for k, p in model.named_parameters()))
    assert values.loc[40, "distance_from_init"] == pytest.approx(float(expected), rel=1e-5)

    with pytest.raises(ValueError, match="other settings.*every: stored 10, given 5"):
        Tracker(out, MEASURES, model=model, **{**settings, "every": 5})

    # overwrite from the checkpoint at step 20: steps 0-20 stay, 21 on are replaced
    with Tracker(out, MEASURES, model=checkpoint, overwrite=True, **settings) as tracker:
        train(checkpoint, pool, tracker, steps=range(21, 36), seed=3)
    runs, again = stored(out)
    assert list(again.index) == [0, 10, 20, 30, 35]
    assert again.loc[20].equals(values.loc[20]) and again.loc[30, "l2_norm"] != values.loc[30, "l2_norm"]

    # overwrite from the start, with other settings: a new run under the same name
    fresh = net(seed=5)
    with Tracker(out, ["l2_norm"], model=fresh, overwrite=True, **{**settings, "every": 7}) as tracker:
        train(fresh, pool, tracker, steps=range(0, 8))
    runs, replaced = stored(out)
    assert list(replaced.index) == [0, 7] and "distance_from_init" not in replaced
    assert runs.loc["run", "config"] and json.loads(runs.loc["run", "config"])["every"] == 7


def test_an_exception_in_the_loop_marks_the_run_failed_keeps_what_was_measured_and_is_raised(tmp_path, digits):
    train_data, test_data, pool = digits
    model = net()
    with pytest.raises(RuntimeError, match="boom at step 15"):
        with Tracker(tmp_path / "run", MEASURES, every=5, train_data=train_data, test_data=test_data,
                     model=model) as tracker:
            train(model, pool, tracker, steps=range(40), fail_at=15)
    runs, values = stored(tmp_path / "run")
    assert runs.loc["run", "status"] == "failed" and "RuntimeError: boom at step 15" in runs.loc["run", "error"]
    assert list(values.index) == [0, 5, 10]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert any("run run failed: RuntimeError: boom" in note for note in summary["notes"])
    assert any("Reopen their Tracker" in note for note in summary["notes"])
    assert (tmp_path / "run" / "report.html").exists()


def test_without_model_init_is_the_first_step_and_the_report_says_so(tmp_path, digits):
    train_data, test_data, pool = digits
    model = net()
    with pytest.warns(UserWarning, match="θ₀ is the model at the first step"):
        tracker = Tracker(tmp_path / "run", MEASURES, every=10, train_data=train_data, test_data=test_data)
    with tracker:
        train(model, pool, tracker, steps=range(11))
    _, values = stored(tmp_path / "run")
    assert values.loc[0, "distance_from_init"] == 0.0
    notes = json.loads((tmp_path / "run" / "summary.json").read_text())["notes"]
    assert any("θ₀ of its init measures is the model at its first step()" in note for note in notes)


def test_the_last_step_is_measured_when_the_tracker_closes(tmp_path, digits):
    train_data, _, pool = digits
    model = net()
    with Tracker(tmp_path / "run", ["l2_norm"], every=10, train_data=train_data, model=model) as tracker:
        train(model, pool, tracker, steps=range(13))
    _, values = stored(tmp_path / "run")
    assert list(values.index) == [0, 10, 12]
    with torch.no_grad():
        norm = float(torch.sqrt(sum((p.double() ** 2).sum() for p in model.parameters())))
    assert values.loc[12, "l2_norm"] == pytest.approx(norm, rel=1e-6)  # float32 sums vs float64 (eps32 apart)
    assert "test_acc" not in values  # no test data: train values only


def test_one_run_is_written_by_one_tracker_at_a_time(tmp_path, digits):
    train_data = digits[0]
    with Tracker(tmp_path / "run", ["l2_norm"], train_data=train_data, model=net()):
        with pytest.raises(ValueError, match="being tracked by another Tracker"):
            Tracker(tmp_path / "run", ["l2_norm"], train_data=train_data, model=net()).open()
        with Tracker(tmp_path / "run", ["l2_norm"], train_data=train_data, model=net(), name="other") as other:
            other.step(net(), 0)


def test_a_directory_that_holds_something_else_is_refused(tmp_path, digits):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("my own files")
    with pytest.raises(ValueError, match="not empty and holds no tracker results"):
        Tracker(tmp_path / "mine", ["l2_norm"], train_data=digits[0])
    from implicitreg.store import Store

    (tmp_path / "study").mkdir()
    Store.create(tmp_path / "study" / Store.FILENAME, study="width", config={}).close()
    with pytest.raises(ValueError, match="holds results of the study 'width'"):
        Tracker(tmp_path / "study", ["l2_norm"], train_data=digits[0])


def test_regression_targets_store_losses_and_no_accuracy(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1)).double()
    with Tracker(tmp_path / "run", ["l2_norm"], every=1, train_data=(x[:48], y[:48]), test_data=(x[48:], y[48:]),
                 model=model) as tracker:
        tracker.step(model, 0)
    _, values = stored(tmp_path / "run")
    with torch.no_grad():
        train_mse = float(F.mse_loss(model(x[:48]).squeeze(-1), y[:48]))
        test_mse = float(F.mse_loss(model(x[48:]).squeeze(-1), y[48:]))
    assert values.loc[0, "train_loss"] == pytest.approx(train_mse, rel=1e-12)
    assert values.loc[0, "gap"] == pytest.approx(test_mse - train_mse, rel=1e-10)
    assert "train_acc" not in values


def test_store_is_readable_while_a_tracker_writes(tmp_path, digits):
    train_data, _, pool = digits
    model = net()
    with Tracker(tmp_path / "run", ["l2_norm"], every=1, train_data=train_data, model=model) as tracker:
        train(model, pool, tracker, steps=range(3))
        conn = sqlite3.connect(f"file:{tmp_path / 'run' / 'results.sqlite'}?mode=ro", uri=True)
        status, = conn.execute("SELECT status FROM runs WHERE run_id = 'run'").fetchone()
        n, = conn.execute("SELECT count(DISTINCT step) FROM metrics").fetchone()
        conn.close()
        assert (status, n) == ("running", 3)  # each measurement is committed as it is taken


def test_the_readme_example_runs(tmp_path, monkeypatch):
    """The README's "Your own training loop" example as written, with 21 steps in place of 1000."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = text.split("## Your own training loop")[1].split("```python")[1].split("```")[0]
    assert "range(1000)" in block
    monkeypatch.chdir(tmp_path)
    exec(compile(block.replace("range(1000)", "range(21)"), "README.md", "exec"), {})  # noqa: S102 - our own docs
    runs, values = stored(tmp_path / "runs" / "digits", "adam")
    assert sorted(runs.index) == ["adam", "sgd"] and set(runs["status"]) == {"done"}
    assert list(values.index) == [0, 20] and values.loc[20, "top_hessian_eigenvalue"] > 0
    shown = invoke_cli(["show", tmp_path / "runs" / "digits"])
    assert shown.returncode == 0 and "adam" in shown.stdout and "sgd" in shown.stdout, shown
