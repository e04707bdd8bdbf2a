"""Validated configuration: pydantic models, ``--set a.b=value`` overrides, clear errors.

Every config model forbids unknown keys, so a typo is an error that names the field rather
than a silently ignored setting.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from types import UnionType
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator


class ConfigError(ValueError):
    """A user-facing configuration error: names the field, what is allowed, what arrived."""


#: Names that only a higher layer knows, by kind ("measure": the measure registry). Config sits
#: below everything and imports nothing of the package; the layer that owns the names says them with
#: :func:`known_names` (the engine's hooks name the measures ``train.track`` accepts).
_KNOWN_NAMES: dict[str, Collection[str]] = {}


def known_names(kind: str, names: Collection[str]) -> None:
    """Declare the names a config field of this ``kind`` accepts (a live collection: a registry
    that grows later is seen as it is then)."""
    _KNOWN_NAMES[kind] = names


def check_names(kind: str, value: list[str]) -> list[str]:
    """``value``, or a ValueError naming the unknown ones and the allowed names.

    Unchecked while no layer has declared the names of ``kind`` (the engine checks again when it
    uses them).
    """
    allowed = _KNOWN_NAMES.get(kind)
    if allowed is None:
        return value
    unknown = [name for name in value if name not in allowed]
    if unknown:
        raise ValueError(f"unknown {kind}(s) {unknown}; expected any of {sorted(allowed)}")
    return value


class Strict(BaseModel):
    """Base for config models: unknown keys are rejected, values are validated on assignment, and a
    boolean is not a number (pydantic would read ``h=true`` as 1.0)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and not _admits_bool(cls.model_fields[info.field_name].annotation):
            raise ValueError("expected a number, not a boolean")
        return value


def _admits_bool(annotation: Any) -> bool:
    """Whether a field's type accepts True/False as such (bool, Any, a Literal or union with them)."""
    if annotation is bool or annotation is Any:
        return True
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return any(isinstance(a, bool) for a in args)
    if origin in (Union, UnionType):
        return any(_admits_bool(a) for a in args)
    return False


DatasetName = Literal["mnist1d", "digits", "regression", "separable", "teacher-student", "mnist", "cifar10"]


class DataConfig(Strict):
    """Which data set, its size and generation seed; ``data=digits`` is shorthand for the name."""

    name: DatasetName = "mnist1d"
    n_train: int | None = Field(None, ge=2, description="train points; None = the data set's default")
    n_test: int | None = Field(None, ge=1, description="test points; None = the data set's default")
    dim: int = Field(20, ge=1, description="input dimension of the synthetic generators")
    noise: float = Field(0.0, ge=0.0, description="label/target noise of the synthetic generators")
    seed: int | None = Field(None, ge=0, description="seed of data generation (not of training); None = the data "
                             "set's default: 42 for mnist1d (the paper's set), 0 otherwise")
    inputs: Literal["original", "shuffled", "gaussian"] = Field(
        "original", description="shuffled: one fixed permutation of feature positions; gaussian: random inputs")
    root: str | None = Field(None, description="local directory of mnist / cifar10 files (never downloaded)")

    @model_validator(mode="after")
    def _root_for_files(self) -> "DataConfig":
        if self.name in ("mnist", "cifar10") and not self.root:
            raise ValueError(f"data.root: {self.name} is read from local files; set data.root=DIR")
        return self

    @model_validator(mode="before")
    @classmethod
    def _name_shorthand(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value


class MLPConfig(Strict):
    """A fully connected ReLU network; input and output sizes come from the data."""

    hidden: list[int] = Field(default_factory=lambda: [256, 256], min_length=1)
    init_scale: float = Field(1.0, gt=0.0, description="multiplies PyTorch's default init")

    @model_validator(mode="after")
    def _positive_widths(self) -> "MLPConfig":
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"every hidden width must be >= 1, got {self.hidden}")
        return self


class CNNConfig(Strict):
    """A 1-D CNN (the MNIST-1D paper's): conv layers with stride 2, then a linear read-out."""

    channels: int = Field(25, ge=1)
    layers: int = Field(3, ge=1, le=6)
    kernel_size: int = Field(5, ge=1)
    init_scale: float = Field(1.0, gt=0.0)


OptimizerName = Literal["gd", "sgd", "momentum", "nesterov", "adam", "adagrad", "rmsprop"]


class TrainConfig(Strict):
    """How every member of a population is trained (shared by all members of one population)."""

    optimizer: OptimizerName = "momentum"
    lr: float = Field(0.05, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(1e-8, gt=0.0)
    batch_size: int = Field(128, ge=1, description="ignored by gd (full batch)")
    max_steps: int = Field(3000, ge=1)
    target_train_acc: float | None = Field(
        1.0, gt=0.0, le=1.0, description="a member stops once its train accuracy reaches this"
    )
    target_train_loss: float | None = Field(
        None, gt=0.0, description="a member stops once its train loss falls to this (with the accuracy target, "
                                  "once both are met)"
    )
    eval_every: int = Field(100, ge=1)
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    weight_decay_mode: Literal["coupled", "decoupled"] = "coupled"
    dtype: Literal["float32", "float64"] = "float32"
    track: list[str] = Field(default_factory=list, description="measures (implicitreg measures) tracked along training")
    track_every: int = Field(250, ge=1, description="cadence of tracked measures that need no Hessian")
    track_expensive_every: int = Field(1000, ge=1, description="cadence of tracked Hessian-based measures")

    @field_validator("track")
    @classmethod
    def _known_measures(cls, value: list[str]) -> list[str]:
        return check_names("measure", value)

    @model_validator(mode="after")
    def _betas_in_range(self) -> "TrainConfig":
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {list(self.betas)}")
        return self


C = TypeVar("C", bound=BaseModel)


def parse_value(text: str) -> Any:
    """Parse the right-hand side of ``--set``: JSON where it parses, ``[a,b]`` lists, else a string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    lowered = text.strip().lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return [parse_value(part.strip()) for part in inner.split(",")] if inner else []
    return text


def parse_sets(sets: list[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=x"]`` into a nested dict ``{"a": {"b": 1}, "c": "x"}``."""
    nested: dict[str, Any] = {}
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. train.lr=0.01), got {item!r}")
        key, raw = item.split("=", 1)
        path = [part for part in key.strip().split(".")]
        if not key.strip() or any(not part for part in path):
            raise ConfigError(f"--set expects a dotted key such as train.lr, got {key!r}")
        node = nested
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {part!r} was already set to a value")
            node = child
        if isinstance(node.get(path[-1]), dict):
            raise ConfigError(f"--set {key}=…: would discard the earlier --set {key}.… ; set {key} first")
        node[path[-1]] = parse_value(raw.strip())
    return nested


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Merge ``update`` into a copy of ``base``; nested dicts merge, everything else replaces.

    A string shorthand (``data=digits``) replaces a dict wholesale, so the validator sees it.
    """
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def format_validation_error(err: ValidationError) -> str:
    """One line per problem: ``field.path: message (got value)``."""
    lines = []
    for problem in err.errors():
        loc = ".".join(str(p) for p in problem["loc"] if not str(p).startswith("function-"))
        message = problem["msg"].removeprefix("Value error, ")
        if problem["type"] == "extra_forbidden":
            message = "unknown key"
        got = problem.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{loc or '(config)'}: {message}{shown}")
    return "; ".join(lines)


def allowed_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key a config model accepts, for error messages and documentation."""
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.extend(allowed_keys(annotation, f"{prefix}{name}."))
        else:
            keys.append(prefix + name)
    return keys


def build_config(model: type[C], base: dict[str, Any], overrides: dict[str, Any]) -> C:
    """Validate the model's defaults, updated by ``base`` then ``overrides``; raise :class:`ConfigError`.

    Starting from the full defaults matters: ``--set train.lr=…`` must change one field of the
    study's training config, not rebuild it from the class defaults.
    """
    try:
        return model.model_validate(deep_merge(deep_merge(model().model_dump(), base), overrides))
    except ValidationError as err:
        message = format_validation_error(err)
        if "unknown key" in message:
            message += f". Allowed keys: {', '.join(allowed_keys(model))}"
        raise ConfigError(message) from None
