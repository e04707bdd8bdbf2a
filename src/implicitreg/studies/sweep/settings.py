"""A sweep file as a configuration: the base settings (data, model, train, member), the grid over
dotted config paths, and its points (every combination of the grid's values)."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from implicitreg.config import (
    CNNConfig,
    DataConfig,
    MLPConfig,
    Strict,
    TrainConfig,
    allowed_keys,
    deep_merge,
    format_validation_error,
)
from implicitreg.models.factory import ModuleConfig

#: Settings each member of a population holds for itself (the rest is shared by the population).
PER_MEMBER = ("train.lr", "member.weight_decay", "member.dropout", "member.label_noise", "member.init_scale")
#: Keys of ``model`` by architecture (``arch`` itself belongs to all).
ARCH_KEYS = {"mlp": ("hidden",), "cnn": ("channels", "layers", "kernel_size"), "module": ("factory",)}


class ModelSettings(Strict):
    """The network: ``arch`` and the keys of that architecture (the others stay unset)."""

    arch: Literal["mlp", "cnn", "module"] = Field("mlp", description='"mlp", "cnn" or "module" (your own, '
                                                                     "built by factory)")
    hidden: list[int] | None = Field(None, min_length=1, description="mlp: hidden widths (default [256, 256])")
    channels: int | None = Field(None, ge=1, description="cnn: channels per layer (default 25)")
    layers: int | None = Field(None, ge=1, le=6, description="cnn: convolution layers (default 3)")
    kernel_size: int | None = Field(None, ge=1, description="cnn: kernel size (default 5)")
    factory: str | None = Field(None, description='module: "package.module:function", called with '
                                                  "(input_dim, n_classes), returning an nn.Module")

    @model_validator(mode="after")
    def _keys_of_the_arch(self) -> "ModelSettings":
        for key, owners in ((k, [a for a, keys in ARCH_KEYS.items() if k in keys]) for k in
                            ("hidden", "channels", "layers", "kernel_size", "factory")):
            if getattr(self, key) is not None and self.arch not in owners:
                raise ValueError(f"{key} applies to arch = {owners[0]!r}, not {self.arch!r}")
        if self.arch == "module":
            if self.factory is None:
                raise ValueError('arch = "module" needs factory = "package.module:function"')
            ModuleConfig(factory=self.factory)  # its spelling, checked where the model config checks it
        if self.hidden is not None and any(h < 1 for h in self.hidden):
            raise ValueError(f"model.hidden: every width must be >= 1, got {self.hidden}")
        return self

    def spec(self) -> tuple[str, MLPConfig | CNNConfig | ModuleConfig]:
        """The architecture and its model config, as a :class:`~implicitreg.plan.Group` holds them."""
        given = {k: getattr(self, k) for k in ARCH_KEYS[self.arch] if getattr(self, k) is not None}
        model = {"mlp": MLPConfig, "cnn": CNNConfig, "module": ModuleConfig}[self.arch](**given)
        return self.arch, model


class MemberSettings(Strict):
    """Settings each run holds for itself; runs that differ only here (and in seed and ``train.lr``)
    share a population."""

    weight_decay: float = Field(0.0, ge=0.0, description="L2 penalty (train.weight_decay_mode: coupled or "
                                                         "decoupled)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout rate on hidden activations (mlp, cnn)")
    label_noise: float = Field(0.0, ge=0.0, le=1.0, description="fraction of training labels replaced at random")
    init_scale: float = Field(1.0, gt=0.0, description="multiplies the initialization")


class Settings(Strict):
    """One run's settings: the base configuration, or a grid point's."""

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelSettings = Field(default_factory=ModelSettings)
    train: TrainConfig = Field(default_factory=TrainConfig)
    member: MemberSettings = Field(default_factory=MemberSettings)

    @model_validator(mode="after")
    def _dropout_needs_masks(self) -> "Settings":
        if self.model.arch == "module" and self.member.dropout > 0:
            raise ValueError(f"member.dropout = {self.member.dropout}: dropout masks apply to mlp and cnn, whose "
                             "forward takes them; a module of your own applies its own dropout (with the "
                             "sequential engine) — set member.dropout = 0")
        return self


def grid_paths() -> list[str]:
    """Every dotted config path a grid may vary."""
    return [f"{section}.{key}" for section, model in (("data", DataConfig), ("model", ModelSettings),
                                                      ("train", TrainConfig), ("member", MemberSettings))
            for key in allowed_keys(model)]


def _flatten(grid: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"hidden": [...]}}`` (TOML's unquoted dotted keys) → ``{"model.hidden": [...]}``."""
    flat: dict[str, Any] = {}
    for key, value in grid.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def value_text(value: Any) -> str:
    """A grid value as a label shows it: strings bare, the rest as compact JSON (``[64,64]``, ``0.0001``)."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


class Config(Settings):
    """A sweep file: its name and description, seeds per grid point, the base settings and the grid."""

    name: str | None = Field(None, description="shown in the report and the summary")
    description: str | None = Field(None, description="free text shown in the report")
    seeds: int = Field(1, ge=1, description="runs per grid point (seeds 0 … seeds − 1)")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="dotted config path → its values; every "
                                                                         "combination is a grid point")

    @field_validator("grid", mode="before")
    @classmethod
    def _dotted(cls, grid: Any) -> Any:
        return _flatten(grid) if isinstance(grid, dict) else grid

    @field_validator("grid")
    @classmethod
    def _axes(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        paths = grid_paths()
        for key, values in grid.items():
            if key not in paths:
                hint = ("seeds is the number of runs per point, not an axis" if key in ("seeds", "member.seed")
                        else f"expected one of: {', '.join(paths)}")
                raise ValueError(f"{key!r} is not a config path; {hint}")
            if not values:
                raise ValueError(f"{key}: expected a non-empty list of values, got []")
            texts = [value_text(v) for v in values]
            repeated = sorted({t for t in texts if texts.count(t) > 1})
            if repeated:
                raise ValueError(f"{key}: the value(s) {', '.join(repeated)} appear more than once; list each once")
        return grid

    @model_validator(mode="after")
    def _every_point_validates(self) -> "Config":
        points(self)  # a grid value out of range fails here, naming its point
        return self


@dataclass(frozen=True)
class Point:
    """One grid point: its position in the grid's order, its label, its axis values and settings."""

    index: int
    label: str
    values: dict[str, Any]
    settings: Settings


def axis_names(config: Config) -> dict[str, str]:
    """Each grid key → the short name labels use: its last component where that is unique, else the
    whole dotted path."""
    last = [key.rsplit(".", 1)[-1] for key in config.grid]
    return {key: short if last.count(short) == 1 else key for key, short in zip(config.grid, last)}


def _nested(key: str, value: Any) -> dict[str, Any]:
    node: dict[str, Any] = value
    for part in reversed(key.split(".")):
        node = {part: node}
    return node


def points(config: Config) -> list[Point]:
    """Every combination of the grid's values, in the grid's order (the last axis fastest); a point
    whose settings do not validate raises ``ValueError`` naming the point and the field."""
    base = Settings.model_validate({k: getattr(config, k) for k in Settings.model_fields}).model_dump()
    names = axis_names(config)
    found = []
    for index, combination in enumerate(itertools.product(*config.grid.values())):
        values = dict(zip(config.grid, combination))
        label = ",".join(f"{names[k]}={value_text(v)}" for k, v in values.items()) or "base"
        merged = base
        for key, value in values.items():
            merged = deep_merge(merged, _nested(key, value))
        try:
            settings = Settings.model_validate(merged)
        except ValidationError as err:
            raise ValueError(f"grid point {label}: {format_validation_error(err)}") from None
        found.append(Point(index, label, values, settings))
    return found


def tracked(config: Config) -> list[str]:
    """The measures tracked at any grid point, in order of first appearance."""
    return list(dict.fromkeys(name for point in points(config) for name in point.settings.train.track))
