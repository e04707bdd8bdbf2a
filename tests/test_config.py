"""``--set`` parsing and config validation: values parse as documented, errors name the field."""

import pytest

from implicitreg.config import ConfigError, DataConfig, TrainConfig, allowed_keys, build_config, parse_sets, parse_value
from implicitreg.studies.explicit_vs_implicit import Config, STUDY


# -- parse_sets / parse_value ----------------------------------------------------------------------

def test_parse_sets_nests_dotted_keys_and_merges_siblings():
    assert parse_sets(["train.lr=0.01", "train.optimizer=adam", "seeds=3", "data.name=digits"]) == {
        "train": {"lr": 0.01, "optimizer": "adam"},
        "seeds": 3,
        "data": {"name": "digits"},
    }


def test_parse_sets_three_levels_and_later_value_wins():
    assert parse_sets(["a.b.c=1", "a.b.d=2", "a.b.c=3"]) == {"a": {"b": {"c": 3, "d": 2}}}


@pytest.mark.parametrize("raw,expected", [
    ("3", 3),
    ("-1", -1),
    ("0.5", 0.5),
    ("1e-3", 1e-3),
    ('"quoted"', "quoted"),
    ("[16, 32]", [16, 32]),        # JSON list
    ('{"k": 1}', {"k": 1}),        # JSON object
    ("[mlp,cnn]", ["mlp", "cnn"]),  # bare-word list
    ("[mlp, 4]", ["mlp", 4]),       # items parse one by one
    ("[]", []),
    ("none", None), ("None", None), ("null", None),
    ("true", True), ("True", True), ("false", False), ("FALSE", False),
    ("digits", "digits"),
    ("a=b", "a=b"),
])
def test_parse_value(raw, expected):
    value = parse_value(raw)
    assert value == expected and type(value) is type(expected)


def test_parse_sets_value_may_contain_equals_and_spaces_are_stripped():
    assert parse_sets([" train.optimizer = adam "]) == {"train": {"optimizer": "adam"}}
    assert parse_sets(["note=a=b"]) == {"note": "a=b"}


@pytest.mark.parametrize("item", ["train.lr", "seeds", ""])
def test_parse_sets_missing_equals_is_a_config_error(item):
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_sets([item])


@pytest.mark.parametrize("item", ["=1", "train.=1", ".lr=1", "a..b=1"])
def test_parse_sets_empty_key_part_is_a_config_error(item):
    with pytest.raises(ConfigError, match="dotted key"):
        parse_sets([item])


def test_parse_sets_value_then_subkey_is_a_config_error():
    with pytest.raises(ConfigError, match="already set"):
        parse_sets(["data=digits", "data.n_train=100"])


def test_parse_sets_never_drops_an_earlier_override_silently():
    try:
        parsed = parse_sets(["data.n_train=100", "data=digits"])
    except ConfigError:
        return  # refusing the combination is fine too
    config = build_config(Config, {}, parsed)
    assert config.data.name == "digits" and config.data.n_train == 100


# -- build_config: values that validate --------------------------------------------------------------

def test_build_config_applies_overrides_over_defaults():
    config = build_config(Config, STUDY.defaults(quick=True),
                          parse_sets(["train.lr=0.01", "models=[mlp]", "mlp.hidden=[8,8]", "seeds=1"]))
    assert config.train.lr == 0.01
    assert config.models == ["mlp"] and config.mlp.hidden == [8, 8] and config.seeds == 1
    # quick defaults survive where not overridden, study defaults where quick says nothing
    quick = STUDY.defaults(quick=True)["train"]
    assert (config.train.max_steps, config.train.eval_every) == (quick["max_steps"], quick["eval_every"])
    assert config.train.batch_size == 128 and config.dropout == 0.5


def test_overriding_one_train_key_keeps_the_study_defaults_of_the_others():
    default = build_config(Config, STUDY.defaults(quick=False), {})
    assert (default.train.max_steps, default.train.eval_every) == (4000, 250)  # the study's own defaults
    changed = build_config(Config, STUDY.defaults(quick=False), parse_sets(["train.lr=0.1"]))
    assert changed.train.lr == 0.1
    assert changed.train.model_dump(exclude={"lr"}) == default.train.model_dump(exclude={"lr"})


@pytest.mark.parametrize("item", ["train.lr=Infinity", "weight_decay=Infinity"])
def test_infinite_values_are_rejected(item):
    with pytest.raises(ConfigError):
        build_config(Config, {}, parse_sets([item]))


def test_data_shorthand_names_the_data_set():
    config = build_config(Config, {}, parse_sets(["data=digits"]))
    assert config.data == DataConfig(name="digits")
    assert build_config(Config, {}, {"data": "separable"}).data.name == "separable"


def test_none_clears_an_optional_field():
    config = build_config(Config, {}, parse_sets(["train.target_train_acc=none"]))
    assert config.train.target_train_acc is None


# -- build_config: errors name the field path and what is allowed -----------------------------------

def config_error(overrides: list[str]) -> str:
    with pytest.raises(ConfigError) as info:
        build_config(Config, STUDY.defaults(quick=True), parse_sets(overrides))
    return str(info.value)


def test_unknown_top_level_key_lists_the_allowed_keys():
    message = config_error(["foo=1"])
    assert message.startswith("foo: unknown key")
    allowed = message.split("Allowed keys:", 1)[1]
    for key in ("seeds", "models", "train.lr", "data.name", "mlp.hidden", "cnn.channels", "dropout"):
        assert key in allowed


def test_unknown_nested_key_names_the_full_path():
    message = config_error(["train.learning_rate=0.1"])
    assert message.startswith("train.learning_rate: unknown key")
    assert "train.lr" in message


def test_wrong_type_names_field_and_value():
    message = config_error(["seeds=abc"])
    assert message.startswith("seeds:")
    assert "integer" in message and "'abc'" in message


def test_negative_learning_rate_names_train_lr_and_the_bound():
    message = config_error(["train.lr=-1"])
    assert message.startswith("train.lr:")
    assert "greater than 0" in message and "-1" in message


@pytest.mark.parametrize("value", ["1", "1.5"])
def test_dropout_of_one_or_more_is_rejected(value):
    message = config_error([f"dropout={value}"])
    assert message.startswith("dropout:") and "less than 1" in message


def test_unknown_choice_lists_the_choices():
    message = config_error(["train.optimizer=lion"])
    assert message.startswith("train.optimizer:")
    for choice in ("gd", "sgd", "momentum", "nesterov", "adam", "adagrad", "rmsprop"):
        assert choice in message


def test_unknown_data_set_via_shorthand_names_data_name():
    message = config_error(["data=imagenet"])
    assert message.startswith("data.name:") and "mnist1d" in message and "'imagenet'" in message


def test_list_item_error_names_the_index():
    message = config_error(["models=[mlp,transformer]"])
    assert message.startswith("models.1:") and "'mlp'" in message and "'cnn'" in message


def test_several_problems_are_all_reported():
    message = config_error(["train.lr=-1", "seeds=0"])
    assert "train.lr:" in message and "seeds:" in message


def test_study_level_validator_errors_are_reported():
    assert "must not repeat" in config_error(["models=[mlp,mlp]"])
    assert "classification" in config_error(["data=regression"])


def test_hidden_width_must_be_positive():
    assert "hidden width must be >= 1" in config_error(["mlp.hidden=[16,0]"])


def test_betas_out_of_range():
    with pytest.raises(ConfigError, match="betas"):
        build_config(TrainConfig, {}, {"betas": [0.9, 1.0]})


def test_allowed_keys_are_dotted_leaves():
    keys = allowed_keys(Config)
    assert "train.lr" in keys and "data.seed" in keys and "seeds" in keys
    assert "train" not in keys and "data" not in keys  # sub-models are expanded, not listed
    assert len(keys) == len(set(keys))
