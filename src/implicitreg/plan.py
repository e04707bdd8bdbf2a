"""What to train: runs (members) grouped into populations that can train in lockstep."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from implicitreg.config import CNNConfig, DataConfig, MLPConfig, TrainConfig


@dataclass(frozen=True)
class Member:
    """One run: its identity and the hyperparameters that may differ inside a population."""

    run_id: str
    seed: int
    lr: float
    weight_decay: float = 0.0
    dropout: float = 0.0
    label_noise: float = 0.0
    init_scale: float = 1.0
    arm: str = ""
    tags: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def __post_init__(self) -> None:
        checks = {
            "lr": self.lr > 0,
            "weight_decay": self.weight_decay >= 0,
            "dropout": 0 <= self.dropout < 1,
            "label_noise": 0 <= self.label_noise <= 1,
            "init_scale": self.init_scale > 0,
        }
        allowed = {"lr": "> 0", "weight_decay": ">= 0", "dropout": "in [0, 1)", "label_noise": "in [0, 1]",
                   "init_scale": "> 0"}
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"run {self.run_id}: {name} must be {allowed[name]}, got {getattr(self, name)}")


@dataclass(frozen=True)
class Group:
    """Runs sharing architecture, data and training settings: one population (or a few chunks).

    Attributes:
        arch: "mlp" or "cnn"; model: its config; data, train: shared settings.
        members: the runs, in a fixed order (chunking and resume depend on it).
    """

    arch: str
    model: MLPConfig | CNNConfig
    data: DataConfig
    train: TrainConfig
    members: tuple[Member, ...]

    def key(self) -> str:
        """A canonical string of everything shared; runs with equal keys may share a population."""
        return json.dumps(
            {"arch": self.arch, "model": self.model.model_dump(), "data": self.data.model_dump(),
             "train": self.train.model_dump()},
            sort_keys=True,
        )

    def run_config(self, member: Member) -> dict[str, Any]:
        """The full resolved configuration of one run, as stored with it."""
        return {**json.loads(self.key()), "member": asdict(member)}

    def chunks(self, max_members: int) -> list["Group"]:
        """Split into populations of at most ``max_members``, in member order."""
        step = max(1, max_members)
        return [
            Group(self.arch, self.model, self.data, self.train, self.members[i : i + step])
            for i in range(0, len(self.members), step)
        ]


def group_runs(runs: list[tuple[str, MLPConfig | CNNConfig, DataConfig, TrainConfig, Member]]) -> list[Group]:
    """Group ``(arch, model, data, train, member)`` tuples by everything but the member.

    Groups come out in order of first appearance, members in their original order, so the
    grouping is a deterministic function of the plan.
    """
    groups: dict[str, Group] = {}
    for arch, model, data, train, member in runs:
        probe = Group(arch, model, data, train, ())
        key = probe.key()
        if key in groups:
            g = groups[key]
            groups[key] = Group(g.arch, g.model, g.data, g.train, (*g.members, member))
        else:
            groups[key] = Group(arch, model, data, train, (member,))
    ids = [m.run_id for g in groups.values() for m in g.members]
    if len(ids) != len(set(ids)):
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"run ids must be unique; repeated: {dupes}")
    return list(groups.values())
