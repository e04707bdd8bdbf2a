"""One plan, every engine: the sequential engine tracks the same measures at the same steps, stops
and diverges by the same rules, and records the same rows as the population."""

import pytest
import torch

from implicitreg.config import DataConfig, MLPConfig, TrainConfig
from implicitreg.data import load_dataset
from implicitreg.plan import Group, Member
from implicitreg.sequential import train_sequential
from implicitreg.train import train_population


@pytest.fixture(scope="module")
def digits64():
    return load_dataset(DataConfig(name="digits", n_train=128, n_test=64)).tensors("cpu", torch.float64)


def rows(result):
    return [(step, name) for step, name, _ in result.metrics]


def assert_same_runs(pop, seq, rel):
    for p, s in zip(pop, seq, strict=True):
        assert (p.run_id, p.status, p.final_step, p.target_step) == (s.run_id, s.status, s.final_step, s.target_step)
        assert rows(p) == rows(s), p.run_id
        for (step, name, a), (_, _, b) in zip(p.metrics, s.metrics):
            assert a == pytest.approx(b, rel=rel, abs=1e-12, nan_ok=True), (p.run_id, step, name, a, b)


@pytest.mark.parametrize("track", [["path_norm", "top_hessian_eigenvalue"], ["l2_norm", "margin"]])
def test_sequential_tracks_what_the_population_tracks(digits64, track):
    """Cadences (cheap every 4 steps, Hessian every 25), each run's last step (step 40 for "fast", alone), targets,
    label noise, dropout."""
    train = TrainConfig(optimizer="momentum", lr=0.1, max_steps=60, eval_every=10, batch_size=32, dtype="float64",
                        target_train_acc=0.9, track=track, track_every=4, track_expensive_every=25)
    members = (Member("fast", 0, 0.3), Member("noisy", 1, 0.1, label_noise=0.5), Member("slow", 2, 0.01),
               Member("dropout", 3, 0.2, dropout=0.3))
    group = Group("mlp", MLPConfig(hidden=[8]), DataConfig(), train, members)
    pop, seq = train_population(group, digits64), train_sequential(group, digits64)
    assert_same_runs(pop, seq, rel=1e-6)
    assert [r.final_step for r in pop] == [40, 60, 60, 60]  # "fast" ends alone, off the Hessian's cadence
    for result in seq:
        tracked = {step for step, name, _ in result.metrics if name == track[1]}
        cadence = 25 if track[1] == "top_hessian_eigenvalue" else 4
        assert tracked == {s for s in range(cadence, result.final_step + 1, cadence)} | {result.final_step}


def test_a_diverging_member_stops_at_the_same_step_with_the_same_rows(digits64):
    train = TrainConfig(optimizer="sgd", lr=0.05, max_steps=30, eval_every=10, batch_size=32, dtype="float64",
                        target_train_acc=None, track=["l1_norm"], track_every=1)
    group = Group("mlp", MLPConfig(hidden=[8]), DataConfig(), train,
                  (Member("calm", 1, 0.05), Member("wild", 2, 1e200)))  # overflows within a few steps
    pop, seq = train_population(group, digits64), train_sequential(group, digits64)
    assert_same_runs(pop, seq, rel=1e-10)
    wild = seq[1]
    assert wild.status == "diverged" and 1 < wild.final_step < 30
    # the step the loss turned non-finite is the last one: nothing is recorded from it on
    assert max(step for step, _ in rows(wild)) == wild.final_step - 1
