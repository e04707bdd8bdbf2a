"""The size of a study's plan, refused before the plan is built when it exceeds :data:`MAX_RUNS`."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ValidationError

from implicitreg.config import ConfigError
from implicitreg.plan import Group
from implicitreg.studies.base import Study


MAX_RUNS = 10_000
"""The most runs one study may plan (seeds × grid); a bigger plan is refused before it is built."""


def _seed_fields(config: BaseModel, prefix: str = "") -> dict[str, int]:
    """Dotted keys of the integer fields named ``seeds`` or ``*_seeds``, with their values: the
    config fields that multiply a study's plan."""
    found: dict[str, int] = {}
    for name in type(config).model_fields:
        value = getattr(config, name)
        if isinstance(value, BaseModel):
            found.update(_seed_fields(value, f"{prefix}{name}."))
        elif (name == "seeds" or name.endswith("_seeds")) and isinstance(value, int) and not isinstance(value, bool):
            found[prefix + name] = value
    return found


def _with_field(config: BaseModel, key: str, value: Any) -> BaseModel:
    data = config.model_dump()
    node = data
    *path, last = key.split(".")
    for part in path:
        node = node[part]
    node[last] = value
    return type(config).model_validate(data)


def planned_runs(study: Study, config: Any) -> list[Group]:
    try:
        return study.plan(config)
    except ValueError as err:  # a run's hyperparameters out of range (Member checks them)
        raise ConfigError(str(err)) from None


def check_plan_size(study: Study, config: Any) -> None:
    """Refuse a plan of more than :data:`MAX_RUNS` runs before building it (a billion seeds would
    fill the memory for minutes, then fail): the plan is built with one seed per seed field, and
    each field that multiplies it multiplies the count."""
    seeds = _seed_fields(config)
    for key, n in seeds.items():
        if n > MAX_RUNS:
            raise ConfigError(f"{key}: {n} seeds would plan more than {MAX_RUNS:,} runs, the most one study "
                              "may have; use fewer seeds (or split the sweep over several --out directories)")
    probe = config
    try:
        for key in seeds:
            probe = _with_field(probe, key, 1)
        base = sum(len(g.members) for g in planned_runs(study, probe))
        factors = {key: n for key, n in seeds.items()
                   if n > 1 and sum(len(g.members) for g in planned_runs(study, _with_field(probe, key, 2))) > base}
    except ValidationError:
        return  # the study's own validation refuses one seed; its plan is bounded by the check above
    total = base * math.prod(factors.values())
    if total > MAX_RUNS:
        parts = " × ".join([f"{base:,} runs per seed", *(f"{key}={n:,}" for key, n in factors.items())])
        raise ConfigError(f"the plan has {total:,} runs ({parts}), more than the {MAX_RUNS:,} one study may have; "
                          "use fewer seeds or a smaller grid (or split the sweep over several --out directories)")
