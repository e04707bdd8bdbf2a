"""Sweep files: a TOML file (or a dict of the same shape) → the sweep study's config → the runner.

::

    implicitreg sweep my-sweep.toml --out runs/mine          # the CLI
    implicitreg.sweep("my-sweep.toml", out="runs/mine")       # the flat API

The file's keys are those of :class:`implicitreg.studies.sweep.Config` (``implicitreg config sweep``
lists them): ``name``, ``description``, ``seeds``, the base ``data``, ``model``, ``train`` and
``member`` tables, and ``[grid]``, dotted config paths → lists of values. Everything is checked before
anything is written — the file's syntax, unknown keys, grid keys that are no config path, empty or
repeated values, every grid point's settings, that a ``model.factory`` imports and builds a module
whose forward pass takes a batch of the data, that each tracked measure applies to each model, and
the output directory — and each problem is one :class:`~implicitreg.config.ConfigError` naming the
file and the field. From there a sweep is a study run: the same store, ``--resume``, summary,
report, ``show`` and ``report``.

``--quick`` takes a tenth of the file's steps and of its evaluation and tracking cadences (of each
grid value of those keys too), and one seed.
"""

from __future__ import annotations

import copy
import math
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from implicitreg.backends.local import cached_dataset
from implicitreg.config import ConfigError, build_config
from implicitreg.measures import REGISTRY
from implicitreg.models import build_model
from implicitreg.models.factory import load_factory
from implicitreg.runner import Prepared, RunOptions, default_out, prepare
from implicitreg.runner.chunks import engine_for
from implicitreg.store import describe_write_error
from implicitreg.studies.sweep import STUDY, Config, points

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

#: The train keys ``--quick`` divides by ten (steps and cadences, so that the curves keep their shape).
QUICK_KEYS = ("max_steps", "eval_every", "track_every", "track_expensive_every")
SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass
class SweepOptions:
    """What ``implicitreg sweep`` was asked to do (the options shared with ``run`` mean the same)."""

    source: str | Path | dict[str, Any]
    out: Path | None = None
    resume: bool = False
    quick: bool = False
    threads: int | None = None
    device: str = "auto"
    engine: str = "population"
    backend: str = "local"
    ray_address: str | None = None
    retries: int = 2


def read_sweep(source: str | Path | dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The sweep's raw settings and the name errors give it (the file's path, or ``sweep`` for a dict)."""
    if isinstance(source, dict):
        return copy.deepcopy(source), "sweep"
    path = Path(source)
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; expected a sweep file (TOML)")
    if not path.exists():
        raise ConfigError(f"{path}: no such file; expected a sweep file (TOML)")
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle), str(path)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML (not UTF-8 text: {err.reason} at byte {err.start})") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({describe_write_error(err)})") from None


def _validated(raw: dict[str, Any], label: str) -> Config:
    try:
        return build_config(Config, {}, raw)
    except ConfigError as err:
        # a model validator's problem has no field of its own ("(config): grid point …")
        raise type(err)(f"{label}: " + str(err).replace("(config): ", "")) from None


def _tenth(value: Any) -> Any:
    return max(1, math.ceil(value / 10)) if isinstance(value, int) and not isinstance(value, bool) else value


def quickened(raw: dict[str, Any], full: Config) -> dict[str, Any]:
    """``raw`` for ``--quick``: one seed; a tenth (at least 1) of the steps and of the evaluation and
    tracking cadences, of the base (as ``full`` resolved it, defaults included) and of every grid
    value of those keys."""
    quick = copy.deepcopy(raw)
    quick["seeds"] = 1
    train = dict(quick.get("train") or {})
    for key in QUICK_KEYS:
        train[key] = _tenth(getattr(full.train, key))
    quick["train"] = train
    quick["grid"] = {key: [_tenth(v) for v in values] if key.removeprefix("train.") in QUICK_KEYS else values
                     for key, values in full.grid.items()}
    return quick


def load_config(source: str | Path | dict[str, Any], quick: bool = False) -> tuple[dict[str, Any], Config, str]:
    """Read and validate a sweep: its settings as the runner takes them (``--quick`` applied), the
    config they validate to, and the name errors give the sweep."""
    raw, label = read_sweep(source)
    config = _validated(raw, label)
    if quick:
        raw = quickened(raw, config)
        config = _validated(raw, label)
    return raw, config, label


@contextmanager
def _importable_beside(directory: Path | None) -> Iterator[None]:
    """Imports also find modules in ``directory`` (the sweep file's own), for the time of the block;
    an imported module stays in ``sys.modules``, so training in this process finds it again."""
    if directory is None:
        yield
        return
    entry = str(directory.resolve())
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        sys.path.remove(entry)


def check_models(prepared: Prepared, label: str, directory: Path | None) -> list[str]:
    """Build each population's model once and check what training will ask of it: a factory that
    imports and returns a module whose forward pass maps a batch of the data to one output per
    class, and tracked measures that apply to it. Returns the notices to print (a population that
    the sequential engine trains instead, and why)."""
    notices = []
    seen = set()
    for group in STUDY.plan(prepared.config):
        key = (group.arch, group.model.model_dump_json(), group.data.model_dump_json(), tuple(group.train.track))
        if key in seen:
            continue
        seen.add(key)
        data = cached_dataset(group.data)
        outputs = data.n_classes or 1
        where = f"{label}: model.factory {group.model.factory}" if group.arch == "module" else f"{label}: model"
        with _importable_beside(directory):
            try:
                if group.arch == "module":
                    load_factory(group.model.factory)
                model = build_model(group.arch, group.model, data.input_dim, outputs)
            except ValueError as err:
                raise ConfigError(f"{label}: {err}") from None
            except Exception as err:  # the user's factory raised
                raise ConfigError(f"{where}: calling it with (input_dim={data.input_dim}, n_classes={outputs}) "
                                  f"raised {type(err).__name__}: {' '.join(str(err).split())}") from None
        sample = torch.as_tensor(data.x_train[:2], dtype=torch.float64)
        try:
            with torch.no_grad():
                model.eval()
                out = model(sample)
        except Exception as err:  # the user's module: any failure of its forward pass is theirs
            raise ConfigError(f"{where}: its forward pass fails on a batch of shape {list(sample.shape)} "
                              f"({type(err).__name__}: {' '.join(str(err).split())})") from None
        if not torch.is_tensor(out) or tuple(out.shape) != (len(sample), outputs):
            shape = list(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise ConfigError(f"{where}: expected outputs of shape [batch, {outputs}] for a batch of shape "
                              f"{list(sample.shape)}, got {shape}")
        for name in group.train.track:
            reason = REGISTRY[name].refusal(model, tuple(data.x_train.shape[1:]))
            if reason:
                raise ConfigError(f"{label}: train.track: {name} does not apply to the {group.arch} model: {reason}")
        engine, reason = engine_for(group, prepared.options.engine)
        if engine != prepared.options.engine:
            notices.append(f"{label}: {group.model.factory}: {reason}; its runs train on the sequential engine, one "
                           "model at a time (the population engine cannot stack it)")
    return notices


def prepare_sweep(options: SweepOptions) -> tuple[Prepared, list[str]]:
    """Validate a sweep whole (see the module's docstring); returns the prepared run and the notices
    to print before training. Writes nothing."""
    raw, config, label = load_config(options.source, options.quick)
    directory = None if isinstance(options.source, dict) else Path(options.source).parent
    out = options.out
    if out is None:  # runs/<name>-<time>, named after the sweep where its name can be a file name
        out = default_out(config.name if config.name and SLUG.fullmatch(config.name) else STUDY.name)
    # a user's module beside the sweep file: remote workers import it from there too (where they see
    # the driver's disk: a local Ray instance, a shared file system; elsewhere it must be installed)
    run = RunOptions(STUDY.name, options.quick, raw, None, options.device, options.engine, Path(out),
                     options.resume, options.threads, backend=options.backend, ray_address=options.ray_address,
                     retries=options.retries,
                     import_paths=(str(directory.resolve()),) if directory is not None else ())
    with _importable_beside(directory):
        for factory in dict.fromkeys(p.settings.model.factory for p in points(config) if p.settings.model.factory):
            try:
                load_factory(factory)
            except ValueError as err:
                raise ConfigError(f"{label}: {err}") from None
    prepared = prepare(run, parent_may_be_missing=options.out is None)
    return prepared, check_models(prepared, label, directory)


__all__ = ["SweepOptions", "load_config", "prepare_sweep", "quickened", "read_sweep"]
