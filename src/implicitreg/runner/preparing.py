"""Preparing a run: what was asked (:class:`RunOptions`), checked whole before any file is written
(:func:`prepare`, :func:`prepare_all`), into a :class:`Prepared` run."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from implicitreg.backends import BACKENDS, Backend, LocalBackend, ray_backend
from implicitreg.backends.local import cached_dataset
from implicitreg.config import ConfigError, build_config
from implicitreg.runner.paths import check_out_path, default_out, store_state
from implicitreg.runner.plan_size import check_plan_size, planned_runs
from implicitreg.runner.threads import available_threads, polite_threads
from implicitreg.store import LOCK_FILENAME, DirectoryLock, Store, describe_write_error
from implicitreg.studies import STUDIES, get_study, study_to_run
from implicitreg.studies.base import Study, is_solved


ENGINES = ("population", "sequential")
ALL = "all"  # `implicitreg run all`: every study into one directory
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class RunOptions:
    """What ``implicitreg run`` was asked to do."""

    study: str
    quick: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)
    seeds: int | None = None
    device: str = "auto"
    engine: str = "population"
    out: Path | None = None
    resume: bool = False
    threads: int | None = None
    data: Path | None = None
    backend: str = "local"
    ray_address: str | None = None
    retries: int = 2
    import_paths: tuple[str, ...] = ()  # directories a remote worker also imports from (a sweep file's own)


@dataclass
class Prepared:
    """A validated run: the study, its resolved config, device, threads, output directory and,
    for a solved study, its loaded problem.

    ``device`` is None on the Ray backend until the run starts: a cluster's devices decide it
    (:meth:`~implicitreg.backends.ray.RayBackend.device`), not the driver's. ``threads`` are each
    task's (a Ray task asks for as many CPUs).
    """

    study: Study
    config: Any
    device: torch.device | None
    threads: int
    out: Path
    options: RunOptions
    problem: Any = None
    threads_note: str = ""  # why the default took fewer threads than cores (other processes run)


def make_backend(options: RunOptions) -> Backend:
    """The backend ``options`` ask for, not yet connected; :class:`ConfigError` for a bad choice
    (and for ``--backend ray`` where Ray is not installed: how to install it)."""
    if options.backend not in BACKENDS:
        raise ConfigError(f"--backend: expected one of {', '.join(BACKENDS)}, got {options.backend!r}")
    if options.retries < 0:
        raise ConfigError(f"--retries: expected an integer >= 0, got {options.retries}")
    if options.backend == "local":
        if options.ray_address is not None:
            raise ConfigError(f"--ray-address: applies to --backend ray, got it with --backend {options.backend}")
        return LocalBackend()
    if options.ray_address is not None and not options.ray_address.strip():
        raise ConfigError("--ray-address: expected HOST:PORT, auto or ray://HOST:PORT, got an empty address")
    # a local Ray instance takes every core this process may use: its tasks take --threads each
    return ray_backend(options.ray_address, options.retries, cpus=available_threads(),
                       import_paths=options.import_paths)


def resolve_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise ConfigError(f"--device: expected one of {', '.join(DEVICES)}, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    return torch.device(name)


RUN_ALL_FILES = ("index.html", "index.json", "index.html.tmp", "index.json.tmp", LOCK_FILENAME)


def prepare_all(options: RunOptions) -> list[Prepared]:
    """Validate a run of every study into ``OUT/<study>`` (``implicitreg run all``). Writes nothing."""
    if options.overrides or options.data is not None:
        flag = "--set" if options.overrides else "--data"
        raise ConfigError(f"{flag}: settings differ between studies, so `run all` takes no {flag}; "
                          "run a study alone")
    base = Path(options.out) if options.out is not None else default_out(ALL)
    if options.out is not None:
        check_out_path(base, parent_must_exist=True)
    if base.is_dir():
        # only what `run all` itself writes: the studies' directories and the index (overwritten)
        entries = list(base.iterdir())
        studies = [p for p in entries if p.name in STUDIES and p.is_dir()]
        unrelated = [p for p in entries if p not in studies and p.name not in RUN_ALL_FILES]
        if unrelated or (entries and not any((p / Store.FILENAME).exists() for p in studies)
                         and any(p.name.startswith("index.") for p in entries)):
            raise ConfigError(f"--out: {base} exists and is not empty (and holds no results of `run all` to "
                              "resume); choose another --out")
    return [prepare(replace(options, study=name, out=base / name), parent_may_be_missing=True)
            for name in sorted(STUDIES)]


def prepare_study(options: RunOptions) -> list[Prepared]:
    """Validate ``implicitreg run STUDY`` (or ``all``): a study the command starts, not an open
    experiment (a sweep starts from its file, a tracked loop from the user's code). Writes nothing."""
    if options.study == ALL:
        return prepare_all(options)
    study_to_run(options.study)
    return [prepare(options)]


def prepare(options: RunOptions, parent_may_be_missing: bool = False) -> Prepared:
    """Validate everything; raise :class:`ConfigError` naming the field. Writes nothing."""
    study = get_study(options.study)
    if options.engine not in ENGINES:
        raise ConfigError(f"--engine: expected one of {', '.join(ENGINES)}, got {options.engine!r}")
    if options.seeds is not None and options.seeds < 1:
        raise ConfigError(f"--seeds: expected an integer >= 1, got {options.seeds}")
    if options.threads is not None and options.threads < 1:
        raise ConfigError(f"--threads: expected an integer >= 1, got {options.threads}")
    make_backend(options)
    overrides = dict(options.overrides)
    if options.seeds is not None:
        if "seeds" in overrides:
            raise ConfigError("seeds: given both as --seeds and as --set seeds=…; use one")
        overrides["seeds"] = options.seeds
    if options.data is not None:
        if "data_file" not in study.Config.model_fields:
            takers = sorted(n for n, s in STUDIES.items() if "data_file" in s.Config.model_fields)
            raise ConfigError(f"--data: {study.name} generates its own data; --data FILE.npz applies to "
                              f"{', '.join(takers)}")
        if "data_file" in overrides:
            raise ConfigError("data_file: given both as --data and as --set data_file=…; use one")
        try:
            overrides["data_file"] = str(Path(options.data).resolve())
        except OSError as err:
            raise ConfigError(f"--data: {options.data}: {describe_write_error(err)}") from None
    config = build_config(study.Config, study.defaults(options.quick), overrides)
    try:
        check_plan_size(study, config)
    except ConfigError as err:
        if options.seeds is not None and str(err).startswith("seeds:"):
            raise ConfigError(f"--{err}") from None
        raise
    if options.backend == "local":
        device = resolve_device(options.device)
    elif options.device not in DEVICES:
        raise ConfigError(f"--device: expected one of {', '.join(DEVICES)}, got {options.device!r}")
    else:
        device = None  # the cluster's devices decide (RayBackend.device), when the run starts
    out = Path(options.out) if options.out is not None else default_out(study.name)
    if options.out is not None and not parent_may_be_missing:
        check_out_path(out, parent_must_exist=True)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} exists and is not a directory")
    if out.is_dir() and DirectoryLock.is_held(out):
        raise ConfigError(f"--out: another implicitreg process is writing results to {out} now; wait for it to "
                          "finish (then --resume) or choose another --out")
    store_state(out, study, config, options.resume)
    for group in planned_runs(study, config):
        try:
            cached_dataset(group.data)  # sizes a data set cannot provide fail here, before any file exists
        except (ValueError, FileNotFoundError) as err:
            raise ConfigError(str(err)) from None
        except OSError as err:  # a data.root the system cannot read (a name too long, no permission)
            raise ConfigError(f"data: {describe_write_error(err)}") from None
    problem = None
    if is_solved(study):
        try:
            problem = study.problem(config)  # a malformed --data file fails here, before any file exists
        except ValueError as err:
            raise ConfigError(str(err)) from None
        except OSError as err:  # a --data path the system cannot read (a name too long, no permission)
            raise ConfigError(f"--data: {describe_write_error(err)}") from None
    # a Ray task asks for --threads CPUs: by default one, so that a cluster runs a task per core;
    # locally, the cores other processes leave free (runner.threads: oversubscribing costs 6-12x)
    threads, note = options.threads or 1, ""
    if options.threads is None and options.backend == "local":
        choice = polite_threads()
        threads, note = choice.threads, choice.reason if choice.threads < choice.cores else ""
    return Prepared(study, config, device, threads, out, options, problem, note)
