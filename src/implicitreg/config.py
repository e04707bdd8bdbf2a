"""Validated configuration: pydantic models, ``--set a.b=value`` overrides, clear errors.

Every config model forbids unknown keys, so a typo is an error that names the field rather
than a silently ignored setting.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, replace
from types import UnionType
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo


class ConfigError(ValueError):
    """A user-facing configuration error: names the field, what is allowed, what arrived."""


class SettingError(ConfigError):
    """A :class:`ConfigError` in the settings themselves (``--set``, a study's config): the command
    that reports it points to ``implicitreg config STUDY``, which lists every key."""


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


DatasetName = Literal["mnist1d", "digits", "regression", "separable", "teacher-student", "mnist", "cifar10",
                      "modular"]


class DataConfig(Strict):
    """Which data set, its size and generation seed; ``data=digits`` is shorthand for the name."""

    name: DatasetName = "mnist1d"
    n_train: int | None = Field(None, ge=2, description="train points; None = the data set's default")
    n_test: int | None = Field(None, ge=1, description="test points; None = the data set's default")
    dim: int = Field(20, ge=1, description="input dimension of the synthetic generators; the modulus p of modular")
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
    matmul_precision: Literal["highest", "tf32"] = Field(
        "highest", description="tf32: TF32 float32 matmuls and convolutions on CUDA (faster, ~1e-3 relative); no effect on CPU")
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
            raise SettingError(f"--set expects KEY=VALUE (e.g. train.lr=0.01), got {item!r}")
        key, raw = item.split("=", 1)
        path = [part for part in key.strip().split(".")]
        if not key.strip() or any(not part for part in path):
            raise SettingError(f"--set expects a dotted key such as train.lr, got {key!r}")
        node = nested
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SettingError(f"--set {key}: {part!r} was already set to a value")
            node = child
        if isinstance(node.get(path[-1]), dict):
            raise SettingError(f"--set {key}=…: would discard the earlier --set {key}.… ; set {key} first")
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
        raise SettingError(message) from None


@dataclass(frozen=True)
class FieldRow:
    """One settable key of a config model, as ``implicitreg config STUDY`` shows it.

    Attributes:
        key: the dotted path ``--set`` takes (``train.lr``).
        type: the value's type, readable (``float``, ``int | None``, ``list[int]``).
        default: the value when nothing is set (JSON-like: lists, numbers, strings, None);
            :data:`REQUIRED` for a field with no default.
        allowed: the values accepted beyond the type: Literal choices, bounds (``> 0``, ``[0, 1)``),
            lengths; "" when the type says it all.
        description: the field's ``Field(description=...)``.
        quick: the value under ``--quick`` when it differs from ``default`` (see ``quick_changes``).
        quick_changes: whether ``--quick`` changes this key.
    """

    key: str
    type: str
    default: Any
    allowed: str = ""
    description: str = ""
    quick: Any = None
    quick_changes: bool = False

    def as_dict(self) -> dict[str, Any]:
        row = {"key": self.key, "type": self.type, "default": self.default, "allowed": self.allowed,
               "description": self.description}
        if self.default is REQUIRED:
            row.update(default=None, required=True)
        if self.quick_changes:
            row["quick"] = self.quick
        return row


class _Required:
    def __repr__(self) -> str:
        return "(required)"


REQUIRED: Any = _Required()
"""The default of a field that has none (it must be given)."""


def describe_fields(model: type[BaseModel], values: BaseModel | None = None,
                    quick: BaseModel | None = None) -> list[FieldRow]:
    """Every settable key of ``model``, nested models expanded into dotted keys, in declaration order.

    Args:
        model: a pydantic model class (a study's ``Config``).
        values: an instance whose values are the defaults shown (a study's config as it runs without
            ``--set``); default: the model's own field defaults.
        quick: an instance of the configuration under ``--quick``; each key whose value differs from
            ``values`` gets it as ``quick``.

    Returns:
        One :class:`FieldRow` per leaf key: type, default, allowed values (Literal choices, bounds from
        ``Field(ge=, gt=, le=, lt=, min_length=, max_length=)``) and description. A field whose type
        is a model is expanded, not listed; a union with a model (``Teacher | None``) is one key.
    """
    rows = []
    for name, field in model.model_fields.items():
        value = getattr(values, name) if values is not None else _field_default(field)
        quick_value = getattr(quick, name) if quick is not None else None
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            nested = describe_fields(annotation, value if isinstance(value, BaseModel) else None,
                                     quick_value if isinstance(quick_value, BaseModel) else None)
            rows += [replace(row, key=f"{name}.{row.key}") for row in nested]
            continue
        shown = value if value is REQUIRED else _plain(value)
        changed = quick is not None and _plain(quick_value) != shown
        rows.append(FieldRow(name, type_name(annotation), shown, allowed_values(annotation, field.metadata),
                             field.description or "", _plain(quick_value) if changed else None, changed))
    return rows


def _field_default(field: Any) -> Any:
    if field.is_required():
        return REQUIRED
    return field.get_default(call_default_factory=True)


def _plain(value: Any) -> Any:
    """A value as JSON has it (tuples as lists, models as dicts), to show and to compare."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _strip_annotated(annotation: Any) -> tuple[Any, list[Any]]:
    """``Annotated[T, ...]`` → (T, its constraints); anything else → (itself, [])."""
    if get_origin(annotation) is Annotated:
        base, *extra = get_args(annotation)
        metadata = []
        for item in extra:
            metadata += list(getattr(item, "metadata", None) or []) if isinstance(item, FieldInfo) else [item]
        return base, metadata
    return annotation, []


def type_name(annotation: Any) -> str:
    """A type as a user reads it: ``float``, ``int | None``, ``list[int]``, ``tuple[float, float]``;
    a Literal as the type of its choices (the choices are :func:`allowed_values`')."""
    annotation, _ = _strip_annotated(annotation)
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None) or annotation is None:
        return "None"
    if annotation is Any:
        return "any"
    if origin is Literal:
        kinds = list(dict.fromkeys(type(a).__name__ if a is not None else "None" for a in args))
        return " | ".join(kinds)
    if origin in (Union, UnionType):
        return " | ".join(dict.fromkeys(type_name(a) for a in args))
    if origin is not None:
        shown = getattr(origin, "__name__", str(origin))
        return f"{shown}[{', '.join(type_name(a) if a is not Ellipsis else '...' for a in args)}]" if args else shown
    return getattr(annotation, "__name__", str(annotation))


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _bounds(metadata: list[Any]) -> list[str]:
    """Constraints as text: ``[0, 1)``, ``> 0``, ``at least 1 item``, ``a multiple of 2``."""
    found = {kind: getattr(item, kind) for item in metadata for kind in ("ge", "gt", "le", "lt", "min_length",
                                                                          "max_length", "multiple_of")
             if getattr(item, kind, None) is not None}
    parts = []
    low = ("[", found["ge"]) if "ge" in found else ("(", found["gt"]) if "gt" in found else None
    high = ("]", found["le"]) if "le" in found else (")", found["lt"]) if "lt" in found else None
    if low and high:
        parts.append(f"{low[0]}{_number(low[1])}, {_number(high[1])}{high[0]}")
    elif low:
        parts.append(f"{'>=' if low[0] == '[' else '>'} {_number(low[1])}")
    elif high:
        parts.append(f"{'<=' if high[0] == ']' else '<'} {_number(high[1])}")
    lengths = [(words, found[kind]) for kind, words in (("min_length", "at least"), ("max_length", "at most"))
               if kind in found]
    if len(lengths) == 2 and lengths[0][1] == lengths[1][1]:
        lengths = [("exactly", lengths[0][1])]
    parts += [f"{words} {n} item{'s' if n != 1 else ''}" for words, n in lengths]
    if "multiple_of" in found:
        parts.append(f"a multiple of {_number(found['multiple_of'])}")
    return parts


def allowed_values(annotation: Any, metadata: list[Any] = ()) -> str:
    """What a field accepts beyond its type: Literal choices, the field's bounds (``metadata``: a
    FieldInfo's constraints) and those of list items (``each >= 1``, ``each one of: mlp, cnn``)."""
    annotation, inner = _strip_annotated(annotation)
    parts = _bounds([*metadata, *inner])
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, UnionType):
        members = [a for a in args if a is not type(None)]
        if len(members) == 1:
            choices = allowed_values(members[0])
            parts += [f"{choices} or None"] if choices else []
        return "; ".join(parts)
    if origin is Literal:
        parts.append("one of: " + ", ".join(str(a) for a in args))
    elif origin in (list, set, frozenset, tuple) and args and (origin is not tuple or len(set(args)) == 1
                                                                or args[-1] is Ellipsis):
        item = allowed_values(args[0])
        parts += [f"each {item}"] if item else []
    return "; ".join(parts)


def setting_text(value: Any) -> str:
    """``value`` as the right-hand side of ``--set KEY=TEXT`` reads it back (:func:`parse_value`):
    JSON for numbers, booleans and lists, ``None``, a string as it is unless it would read as
    something else (then quoted)."""
    if value is REQUIRED:
        return repr(REQUIRED)
    if value is None:
        return "None"
    if isinstance(value, str) and parse_value(value) == value:
        return value
    return json.dumps(value, ensure_ascii=False)
