"""train.matmul_precision: IEEE float32 unless TF32 is asked for; settings restored; CPU unaffected."""

from __future__ import annotations

import pytest

from implicitreg.backends import local
from implicitreg.backends.base import Task
from implicitreg.config import ConfigError, DataConfig, MLPConfig, TrainConfig, build_config
from implicitreg.plan import Group, Member
from implicitreg.precision import _backends, matmul_precision


def settings() -> list[str]:
    return [b.fp32_precision for b in _backends()]


@pytest.mark.parametrize("precision,inside", [("highest", "ieee"), ("tf32", "tf32")])
def test_the_block_sets_matmuls_and_convolutions_and_restores_them(precision, inside):
    before = settings()
    assert before, "this PyTorch has the per-backend fp32_precision settings"
    with matmul_precision(precision):
        assert settings() == [inside] * len(before)
    assert settings() == before
    with pytest.raises(RuntimeError, match="boom"), matmul_precision(precision):
        raise RuntimeError("boom")
    assert settings() == before


def test_an_unknown_precision_names_the_field_and_the_choices():
    with pytest.raises(ValueError, match=r"train\.matmul_precision: expected highest or tf32, got 'fp16'"):
        with matmul_precision("fp16"):
            pass
    with pytest.raises(ConfigError, match=r"matmul_precision.*highest.*tf32"):
        build_config(TrainConfig, {}, {"matmul_precision": "medium"})


def _group(precision: str) -> Group:
    train = TrainConfig(optimizer="sgd", lr=0.1, batch_size=32, max_steps=20, eval_every=10, target_train_acc=None,
                        matmul_precision=precision)
    return Group("mlp", MLPConfig(hidden=[16]), DataConfig(name="digits", n_train=128, n_test=64), train,
                 (Member("a", seed=0, lr=0.1), Member("b", seed=1, lr=0.05)))


def test_a_task_trains_under_its_groups_precision(monkeypatch):
    seen = []
    real = local.train_population
    monkeypatch.setattr(local, "train_population", lambda *a, **k: (seen.append(settings()), real(*a, **k))[1])
    outcome = local.run_task(Task(_group("tf32"), "population", "cpu", 1))
    assert outcome.error is None and seen == [["tf32"] * len(settings())]


def test_tf32_changes_nothing_on_cpu():
    """The same float32 runs, bit for bit: TF32 is a CUDA setting."""
    a = local.run_task(Task(_group("highest"), "population", "cpu", 1)).results
    b = local.run_task(Task(_group("tf32"), "population", "cpu", 1)).results
    assert [r.metrics for r in a] == [r.metrics for r in b]
