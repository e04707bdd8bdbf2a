"""Discoverable settings: ``config.describe_fields`` on a small model with known rows and on every
registered study, ``implicitreg config STUDY``, the hint of ``--set`` errors, and the examples in
every command's ``--help``."""

from __future__ import annotations

import json
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field

from conftest import assert_user_error, invoke_cli
from implicitreg.cli import app
from implicitreg.config import (REQUIRED, FieldRow, Strict, allowed_keys, allowed_values, build_config,
                                describe_fields, parse_sets, setting_text, type_name)
from implicitreg.studies import STUDIES


class Inner(Strict):
    """A nested model: its keys are listed as inner.*."""

    rate: float = Field(0.5, gt=0.0, lt=1.0, description="a rate in (0, 1)")
    mode: Literal["a", "b"] = "a"


class Small(BaseModel):
    name: str  # required: no default
    count: int = Field(3, ge=1, description="how many")
    scale: float | None = Field(None, ge=0.0, le=10.0)
    kinds: list[Literal["mlp", "cnn"]] = Field(default_factory=lambda: ["mlp"], min_length=1)
    widths: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [8, 16])
    pair: tuple[float, float] = Field((0.9, 0.999), min_length=2, max_length=2)
    inner: Inner = Field(default_factory=Inner)


def test_describe_fields_lists_every_leaf_with_type_default_bounds_and_description():
    rows = describe_fields(Small)
    assert rows == [
        FieldRow("name", "str", REQUIRED),
        FieldRow("count", "int", 3, ">= 1", "how many"),
        FieldRow("scale", "float | None", None, "[0, 10]"),
        FieldRow("kinds", "list[str]", ["mlp"], "at least 1 item; each one of: mlp, cnn"),
        FieldRow("widths", "list[int]", [8, 16], "each >= 1"),
        FieldRow("pair", "tuple[float, float]", [0.9, 0.999], "exactly 2 items"),
        FieldRow("inner.rate", "float", 0.5, "(0, 1)", "a rate in (0, 1)"),
        FieldRow("inner.mode", "str", "a", "one of: a, b"),
    ]
    assert [row.key for row in rows] == allowed_keys(Small)


def test_describe_fields_takes_defaults_from_an_instance_and_marks_what_quick_changes():
    full = Small(name="x", inner=Inner(rate=0.25))
    quick = Small(name="x", count=1, inner=Inner(rate=0.25, mode="b"))
    rows = {row.key: row for row in describe_fields(Small, full, quick)}
    assert rows["name"].default == "x" and rows["inner.rate"].default == 0.25
    changed = {key: row.quick for key, row in rows.items() if row.quick_changes}
    assert changed == {"count": 1, "inner.mode": "b"}
    assert rows["count"].as_dict() == {"key": "count", "type": "int", "default": 3, "allowed": ">= 1",
                                       "description": "how many", "quick": 1}


@pytest.mark.parametrize("annotation,metadata,type_text,allowed", [
    (int, [], "int", ""),
    (Literal[1, 2, None], [], "int | None", "one of: 1, 2, None"),
    (Literal["x"] | None, [], "str | None", "one of: x or None"),
    (list[float], [], "list[float]", ""),
    (dict[str, float], [], "dict[str, float]", ""),
    (float, Field(ge=0.5).metadata, "float", ">= 0.5"),
    (float, Field(lt=2).metadata, "float", "< 2"),
    (int, Field(gt=0, le=6).metadata, "int", "(0, 6]"),
    (int, Field(multiple_of=2).metadata, "int", "a multiple of 2"),
])
def test_type_and_allowed_values_read_as_a_user_writes_them(annotation, metadata, type_text, allowed):
    assert type_name(annotation) == type_text
    assert allowed_values(annotation, metadata) == allowed


@pytest.mark.parametrize("value", [3, 0.05, 1e-8, None, True, "mnist1d", "1e-3", "none", "[a]", [0.9, 0.999],
                                   ["mlp", "cnn"], [[64, 64], [8]]])
def test_setting_text_reads_back_as_the_same_value(value):
    assert parse_sets([f"key={setting_text(value)}"])["key"] == value


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_every_key_of_every_study_is_listed_with_a_default_that_validates(name):
    study = STUDIES[name]
    full = build_config(study.Config, study.defaults(False), {})
    quick = build_config(study.Config, study.defaults(True), {})
    rows = describe_fields(study.Config, full, quick)
    assert [row.key for row in rows] == allowed_keys(study.Config)
    for row in rows:
        assert row.type and row.default is not REQUIRED, row
        # the default as printed, given back with --set, validates and changes nothing
        assert build_config(study.Config, study.defaults(False), parse_sets([f"{row.key}={setting_text(row.default)}"])
                            ) == full, row
    # the --quick column is exactly what --quick changes
    changes = [f"{row.key}={setting_text(row.quick)}" for row in rows if row.quick_changes]
    assert changes, f"{name}: --quick changes nothing"
    assert build_config(study.Config, study.defaults(False), parse_sets(changes)) == quick


def test_config_command_prints_every_key_and_what_quick_changes():
    result = invoke_cli(["config", "explicit-vs-implicit"])
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    lr = next(line for line in lines if line.split()[:1] == ["train.lr"])
    assert lr.split()[1:4] == ["float", "0.05", ">"]  # no --quick value: quick keeps lr
    seeds = next(line for line in lines if line.split()[:1] == ["seeds"])
    assert seeds.split()[1:4] == ["int", "5", "2"]  # default 5, --quick 2
    assert "--quick" in result.stdout and "--set KEY=VALUE" in result.stdout

    rows = json.loads(invoke_cli(["config", "explicit-vs-implicit", "--json"]).stdout)
    by_key = {row["key"]: row for row in rows}
    assert by_key["seeds"]["quick"] == 2 and "quick" not in by_key["train.lr"]
    assert by_key["train.optimizer"]["allowed"].startswith("one of: gd, sgd, momentum")
    assert len(rows) == len(allowed_keys(STUDIES["explicit-vs-implicit"].Config))


def test_config_of_an_unknown_study_is_one_line():
    assert_user_error(invoke_cli(["config", "no-such-study"]), ["unknown study 'no-such-study'", "min-norm"])


@pytest.mark.parametrize("args,expected", [
    (["--set", "nope=1"], "nope: unknown key"),
    (["--set", "n=abc"], "n: Input should be a valid integer"),
    (["--set", "n"], "--set expects KEY=VALUE"),
    (["--seeds", "1"], "seeds: unknown key"),  # min-norm has no seeds: the option's mistake is a setting's
], ids=["unknown-key", "bad-value", "malformed", "seeds-option"])
def test_set_errors_end_with_where_to_look_the_keys_up(tmp_path, args, expected):
    out = tmp_path / "out"
    result = invoke_cli(["run", "min-norm", "--quick", *args, "--out", out])
    assert_user_error(result, [expected], out)
    assert result.stderr.strip().endswith("(see implicitreg config min-norm for every key, its type and allowed "
                                          "values)")


def test_other_errors_carry_no_settings_hint(tmp_path):
    result = invoke_cli(["run", "min-norm", "--quick", "--device", "tpu", "--out", tmp_path / "out"])
    assert_user_error(result, ["--device"])
    assert "implicitreg config" not in result.stderr


COMMANDS = sorted(command.name or command.callback.__name__ for command in app.registered_commands)


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_every_commands_help_shows_an_example(command):
    result = invoke_cli([command, "--help"] if command else ["--help"])
    assert result.returncode == 0, result
    text = result.stdout
    assert "Examples:" in text, text
    shown = [line.strip() for line in text.splitlines() if line.strip().startswith(f"implicitreg {command}")]
    assert shown, f"no example of `implicitreg {command}` in its --help"
