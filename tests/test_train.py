"""The training loop's contracts: hooks at their cadence, per-member labels, schedules, grouping."""

import math

import pytest
import torch

from implicitreg.config import CNNConfig, DataConfig, MLPConfig, TrainConfig
from implicitreg.data import load_dataset
from implicitreg.measures.size import params_l2
from implicitreg.optim import schedule_fn
from implicitreg.plan import Group, Member, group_runs
from implicitreg.train import eval_steps, train_population


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(name="digits", n_train=128, n_test=64)).tensors("cpu", torch.float64)


class NormHook:
    """Records each member's ℓ2 norm every ``every`` steps (a stand-in for a user's measure)."""

    name = "norm_hook"

    def __init__(self, every):
        self.every = every
        self.calls = []

    def __call__(self, population, context):
        self.calls.append(context.step)
        return {"hook_norm": params_l2(population.module_params())}


def test_hooks_run_at_their_cadence_and_are_recorded(digits):
    train = TrainConfig(optimizer="sgd", lr=0.05, max_steps=30, eval_every=10, batch_size=32, dtype="float64",
                        target_train_acc=None)
    hook = NormHook(every=5)
    group = Group("mlp", MLPConfig(hidden=[8]), DataConfig(), train, (Member("a", 0, 0.05), Member("b", 1, 0.05)))
    results = train_population(group, digits, hooks=(hook,))
    assert hook.calls == [5, 10, 15, 20, 25, 30]
    for r in results:
        hooked = {s: v for s, n, v in r.metrics if n == "hook_norm"}
        evaluated = {s: v for s, n, v in r.metrics if n == "l2_norm"}
        assert sorted(hooked) == [5, 10, 15, 20, 25, 30]
        assert sorted(evaluated) == [10, 20, 30]
        # where both ran, the hook saw the same weights the evaluation saw
        assert all(hooked[s] == evaluated[s] for s in evaluated)
        assert len(set(hooked.values())) == 6, "weights must change between hook calls"


def test_label_noise_is_per_member_and_fixed_by_seed(digits):
    train = TrainConfig(optimizer="sgd", lr=1e-9, max_steps=1, eval_every=1, batch_size=32, dtype="float64",
                        target_train_acc=None)
    members = (Member("clean", 0, 1e-9), Member("noisy", 0, 1e-9, label_noise=1.0),
               Member("noisy-again", 0, 1e-9, label_noise=1.0), Member("noisy-seed1", 1, 1e-9, label_noise=1.0))
    results = train_population(Group("mlp", MLPConfig(hidden=[8]), DataConfig(), train, members), digits)
    train_acc = {r.run_id: next(v for s, n, v in r.metrics if n == "train_acc") for r in results}
    test_acc = {r.run_id: next(v for s, n, v in r.metrics if n == "test_acc") for r in results}
    # same seed, same init and same corrupted labels → identical; other seed → other labels
    assert train_acc["noisy"] == train_acc["noisy-again"]
    assert train_acc["noisy"] != train_acc["clean"]
    # test labels are never corrupted: identical init (seed 0) gives identical test accuracy
    assert test_acc["noisy"] == test_acc["clean"]


def test_eval_steps_include_the_last():
    assert eval_steps(25, 10) == {10, 20, 25}
    assert eval_steps(20, 10) == {10, 20}


@pytest.mark.parametrize("name,expected", [("constant", [1.0, 1.0, 1.0]), ("linear", [1.0, 0.5, 0.0]),
                                           ("cosine", [1.0, 0.5, 0.0])])
def test_schedules_against_closed_form(name, expected):
    f = schedule_fn(name, 10)
    assert [f(0), f(5), f(10)] == pytest.approx(expected, abs=1e-15)
    if name == "cosine":
        assert f(2) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.2)))


def test_group_runs_groups_by_everything_but_the_member():
    data, train = DataConfig(), TrainConfig()
    runs = [("mlp", MLPConfig(), data, train, Member("a", 0, 0.1)),
            ("cnn", CNNConfig(), data, train, Member("b", 0, 0.1)),
            ("mlp", MLPConfig(), data, train, Member("c", 1, 0.2, dropout=0.5)),
            ("mlp", MLPConfig(hidden=[3]), data, train, Member("d", 0, 0.1))]
    groups = group_runs(runs)
    assert [[m.run_id for m in g.members] for g in groups] == [["a", "c"], ["b"], ["d"]]
    assert [[m.run_id for m in c.members] for c in groups[0].chunks(1)] == [["a"], ["c"]]
    with pytest.raises(ValueError, match="unique"):
        group_runs(runs + [("mlp", MLPConfig(), data, train, Member("a", 5, 0.1))])


@pytest.mark.parametrize("field,value", [("lr", 0.0), ("weight_decay", -1.0), ("dropout", 1.0),
                                         ("label_noise", 1.5), ("init_scale", 0.0)])
def test_member_rejects_out_of_range_hyperparameters(field, value):
    kwargs = {"run_id": "x", "seed": 0, "lr": 0.1, field: value}
    with pytest.raises(ValueError, match=field):
        Member(**kwargs)
