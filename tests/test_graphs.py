"""The CUDA-graph plumbing on CPU, with a stand-in capture: a replay computes on the static inputs
alone, so a batch not copied into them, a stale graph after members leave, or a lost fallback
shows up as a wrong loss or gradient."""

from __future__ import annotations

import pytest
import torch

from implicitreg.config import MLPConfig
from implicitreg.graphs import GraphedLossAndGrad
from implicitreg.models import build_model
from implicitreg.population import Population
from implicitreg.seeding import generator


def replay_of(step):
    """A stand-in for CUDA capture: the replay reruns the closure (on its static tensors)."""
    return step


@pytest.fixture
def population():
    modules = [build_model("mlp", MLPConfig(hidden=[12]), 6, 3, generator(s, "init")) for s in range(4)]
    return Population(modules, device="cpu", dtype=torch.float64)


def batch(seed: int, p: int = 4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(p, 5, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (p, 5), generator=g)


def snapshot(loss, grads):
    return loss.clone(), {k: v.clone() for k, v in grads.items()}


def test_replays_match_the_eager_pass_on_each_new_batch(population):
    graphed = GraphedLossAndGrad(population, capture=replay_of)
    for seed in range(3):
        x, y = batch(seed)
        got = snapshot(*graphed(x, y, None))
        want = snapshot(*population.loss_and_grad(x, y, None))
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert graphed.captures == 1


def test_masks_reach_the_graph(population):
    graphed = GraphedLossAndGrad(population, capture=replay_of)
    x, y = batch(0)
    for seed in (1, 2):
        masks = [(torch.rand(4, 5, 12, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) > 0.5)
                 .double() * 2.0]
        torch.testing.assert_close(snapshot(*graphed(x, y, masks)), snapshot(*population.loss_and_grad(x, y, masks)),
                                   rtol=0, atol=0)
    assert graphed.captures == 1


def test_members_leaving_recapture_on_the_new_parameters(population):
    graphed = GraphedLossAndGrad(population, capture=replay_of)
    x, y = batch(0)
    graphed(x, y, None)
    population.select(torch.tensor([0, 2]))
    x2, y2 = x[[0, 2]], y[[0, 2]]
    got = snapshot(*graphed(x2, y2, None))
    torch.testing.assert_close(got, snapshot(*population.loss_and_grad(x2, y2, None)), rtol=0, atol=0)
    assert graphed.captures == 2 and got[0].shape == (2,)


def test_in_place_updates_are_seen_without_recapture(population):
    graphed = GraphedLossAndGrad(population, capture=replay_of)
    x, y = batch(0)
    before = snapshot(*graphed(x, y, None))
    for v in population.params.values():
        v.mul_(0.5)
    after = snapshot(*graphed(x, y, None))
    assert graphed.captures == 1 and not torch.equal(before[0], after[0])
    torch.testing.assert_close(after, snapshot(*population.loss_and_grad(x, y, None)), rtol=0, atol=0)


def test_a_failed_capture_falls_back_to_the_eager_pass_with_a_warning(population):
    def broken(step):
        raise RuntimeError("operation not permitted when stream is capturing")

    graphed = GraphedLossAndGrad(population, capture=broken)
    x, y = batch(0)
    with pytest.warns(UserWarning, match="CUDA graph capture failed.*not permitted"):
        got = snapshot(*graphed(x, y, None))
    torch.testing.assert_close(got, snapshot(*population.loss_and_grad(x, y, None)), rtol=0, atol=0)
    assert graphed.fallback.startswith("RuntimeError")
    torch.testing.assert_close(snapshot(*graphed(*batch(1), None)), snapshot(*population.loss_and_grad(*batch(1), None)),
                               rtol=0, atol=0)
