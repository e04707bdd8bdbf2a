"""Measures tracked along training: cadence, storage, agreement with the loop's own evaluation."""

import pytest
import torch

from implicitreg.config import ConfigError, DataConfig, MLPConfig, TrainConfig, build_config
from implicitreg.data import load_dataset
from implicitreg.plan import Group, Member
from implicitreg.studies.explicit_vs_implicit import Config
from implicitreg.train import train_population


def test_tracked_measures_are_recorded_at_their_cadence():
    data = load_dataset(DataConfig(name="digits", n_train=128, n_test=64)).tensors("cpu", torch.float64)
    train = TrainConfig(optimizer="sgd", lr=0.1, max_steps=30, eval_every=10, batch_size=32, dtype="float64",
                        target_train_acc=None, track=["distance_from_init", "l1_norm"], track_every=5)
    group = Group("mlp", MLPConfig(hidden=[8]), DataConfig(), train,
                  (Member("a", 0, 0.1), Member("b", 1, 0.1, label_noise=1.0)))
    for result in train_population(group, data):
        by_name = {}
        for step, name, value in result.metrics:
            by_name.setdefault(name, {})[step] = value
        assert sorted(by_name["l1_norm"]) == [5, 10, 15, 20, 25, 30]
        assert sorted(by_name["dist_init"]) == [10, 20, 30]
        # the registered measure and the loop's built-in evaluation are separate code paths
        for step, value in by_name["dist_init"].items():
            assert by_name["distance_from_init"][step] == pytest.approx(value, rel=1e-12)


def test_unknown_tracked_measure_is_a_config_error():
    with pytest.raises(ConfigError, match="track: unknown measure"):
        build_config(Config, {}, {"train": {"track": ["no_such_measure"]}})


def test_tracked_measures_are_taken_at_each_runs_last_step():
    """A member that reaches its target between two tracking steps still gets its final values."""
    data = load_dataset(DataConfig(name="digits", n_train=128, n_test=64)).tensors("cpu", torch.float64)
    train = TrainConfig(optimizer="momentum", lr=0.1, max_steps=300, eval_every=10, batch_size=32, dtype="float64",
                        target_train_acc=0.9, track=["distance_from_init"], track_every=1000)
    group = Group("mlp", MLPConfig(hidden=[16]), DataConfig(), train,
                  (Member("slow", 1, 0.002), Member("fast", 0, 0.2), Member("slower", 2, 0.001)))
    slow, fast, slower = train_population(group, data)
    assert fast.target_step is not None and fast.final_step < slow.final_step == 300
    for result in (fast, slow, slower):
        tracked = {step: v for step, name, v in result.metrics if name == "distance_from_init"}
        assert list(tracked) == [result.final_step]
        # measured on the finishing member's own weights and initialization (not a neighbour's)
        evaluated = {step: v for step, name, v in result.metrics if name == "dist_init"}
        assert tracked[result.final_step] == pytest.approx(evaluated[result.final_step], rel=1e-12)
