"""The driver: study → plan → population chunks → backend → store → analysis → report.

Everything a user can get wrong is checked in :func:`prepare`, before any file is written.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ValidationError
from threadpoolctl import threadpool_limits

from implicitreg import provenance
from implicitreg.backends import Backend, LocalBackend, Task
from implicitreg.backends.local import cached_dataset
from implicitreg.config import ConfigError, build_config
from implicitreg.models import build_model
from implicitreg.plan import Group
from implicitreg.report.html import write_report
from implicitreg.store import (
    LOCK_FILENAME,
    DirectoryBusy,
    DirectoryLock,
    Store,
    StorageFault,
    bookkeeping_files,
    classify_write_error,
    describe_write_error,
)
from implicitreg.store import now as store_now
from implicitreg.studies import STUDIES, get_study
from implicitreg.studies.base import Analysis, ProgressBar, Solved, Study, is_solved, no_progress

ENGINES = ("population", "sequential")
ALL = "all"  # `implicitreg run all`: every study into one directory
QUICK_NOTE = "--quick: the same checks at a smaller size (fewer seeds, data or steps)."
DEVICES = ("auto", "cpu", "cuda")
SOLUTIONS = "solutions.npz"
MAX_RUNS = 10_000
"""The most runs one study may plan (seeds × grid); a bigger plan is refused before it is built."""
NAME_MAX, PATH_MAX = 255, 4096  # bytes, where the file system does not say (Linux's limits)


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


@dataclass
class Prepared:
    """A validated run: the study, its resolved config, device, threads, output directory and,
    for a solved study, its loaded problem."""

    study: Study
    config: Any
    device: torch.device
    threads: int
    out: Path
    options: RunOptions
    problem: Any = None


def available_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_device(name: str) -> torch.device:
    if name not in DEVICES:
        raise ConfigError(f"--device: expected one of {', '.join(DEVICES)}, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here (use --device cpu or auto)")
    return torch.device(name)


def default_out(study: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = Path("runs") / f"{study}-{stamp}"
    suffix = 1
    while path.exists():
        path = Path("runs") / f"{study}-{stamp}-{suffix}"
        suffix += 1
    return path


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


def _planned_runs(study: Study, config: Any) -> list[Group]:
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
        base = sum(len(g.members) for g in _planned_runs(study, probe))
        factors = {key: n for key, n in seeds.items()
                   if n > 1 and sum(len(g.members) for g in _planned_runs(study, _with_field(probe, key, 2))) > base}
    except ValidationError:
        return  # the study's own validation refuses one seed; its plan is bounded by the check above
    total = base * math.prod(factors.values())
    if total > MAX_RUNS:
        parts = " × ".join([f"{base:,} runs per seed", *(f"{key}={n:,}" for key, n in factors.items())])
        raise ConfigError(f"the plan has {total:,} runs ({parts}), more than the {MAX_RUNS:,} one study may have; "
                          "use fewer seeds or a smaller grid (or split the sweep over several --out directories)")


def check_out_path(out: Path, flag: str = "--out", parent_must_exist: bool = False) -> Path:
    """Check that ``out`` can be a results directory: names within the file system's limits, not a
    dangling link, its nearest existing ancestor a writable directory (its parent itself, if
    ``parent_must_exist``). Returns that ancestor."""
    if len(os.fsencode(str(out))) >= PATH_MAX:
        raise ConfigError(f"{flag}: the path is {len(os.fsencode(str(out)))} bytes long; at most {PATH_MAX - 1} "
                          "are allowed")
    for part in out.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise ConfigError(f"{flag}: the name {part[:24]}… is {len(os.fsencode(part))} bytes long; a file "
                              f"name may have at most {NAME_MAX}")
    if out.is_symlink() and not out.exists():
        raise ConfigError(f"{flag}: {out} is a symbolic link to {os.readlink(out)}, which does not exist")
    existing = out
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        what = "exists and is not a directory" if existing == out else "is a file, not a directory"
        raise ConfigError(f"{flag}: {existing} {what}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag}: {existing} is not writable (a read-only file system, or no permission)")
    if parent_must_exist and not out.parent.exists():
        raise ConfigError(f"{flag}: the parent directory {out.parent} does not exist")
    return existing


def _store_state(out: Path, study: Study, config: Any, resume: bool) -> bool:
    """Whether ``out`` holds results of this study and config to continue (True) or nothing (False);
    :class:`ConfigError` when it cannot take this run. Reads without writing."""
    stored = out / Store.FILENAME
    journals = {Store.FILENAME, Store.FILENAME + "-wal", Store.FILENAME + "-shm"}
    if stored.is_symlink() or stored.exists():
        try:
            meta, n_runs = Store.inspect(stored)
        except (sqlite3.Error, ValueError, OSError) as err:
            raise ConfigError(f"--out: {stored} cannot be read as a results store ({err}); choose another --out"
                              ) from None
        if meta.get("study") is not None or n_runs:
            if not resume:
                raise ConfigError(f"--out: {out} already holds results; pass --resume to continue them or choose "
                                  "another --out")
            if meta.get("study") != study.name or meta.get("config") != json.loads(config.model_dump_json()):
                raise ConfigError(f"--resume: {out} holds a different study or configuration "
                                  f"({meta.get('study')}); rerun with the same options or choose another --out")
            return True
        # a store whose creation never completed (no metadata, no runs) holds nothing: replaced
    if out.is_dir():
        extra = set(p.name for p in out.iterdir()) - journals - {p.name for p in bookkeeping_files(out)}
        if extra:
            raise ConfigError(f"--out: {out} exists and is not empty (and holds no results to resume)")
    return False


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


def prepare(options: RunOptions, parent_may_be_missing: bool = False) -> Prepared:
    """Validate everything; raise :class:`ConfigError` naming the field. Writes nothing."""
    study = get_study(options.study)
    if options.engine not in ENGINES:
        raise ConfigError(f"--engine: expected one of {', '.join(ENGINES)}, got {options.engine!r}")
    if options.seeds is not None and options.seeds < 1:
        raise ConfigError(f"--seeds: expected an integer >= 1, got {options.seeds}")
    if options.threads is not None and options.threads < 1:
        raise ConfigError(f"--threads: expected an integer >= 1, got {options.threads}")
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
    device = resolve_device(options.device)
    out = Path(options.out) if options.out is not None else default_out(study.name)
    if options.out is not None and not parent_may_be_missing:
        check_out_path(out, parent_must_exist=True)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} exists and is not a directory")
    if out.is_dir() and DirectoryLock.is_held(out):
        raise ConfigError(f"--out: another implicitreg process is writing results to {out} now; wait for it to "
                          "finish (then --resume) or choose another --out")
    _store_state(out, study, config, options.resume)
    for group in _planned_runs(study, config):
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
    return Prepared(study, config, device, options.threads or available_threads(), out, options, problem)


def member_bytes(group: Group, n_eval: int = 2048) -> int:
    """Rough memory of one population member: parameters with gradient, optimizer state and
    initial copy (×8), plus activations of a training batch (×4 for backward) and of an
    evaluation chunk of ``n_eval`` points."""
    data = cached_dataset(group.data)
    model = build_model(group.arch, group.model, data.input_dim, data.n_classes or 1)
    params = sum(p.numel() for p in model.parameters())
    activations = sum(math.prod(shape) for shape in model.hidden_shapes())
    itemsize = 8 if group.train.dtype == "float64" else 4
    return itemsize * (8 * params + activations * (4 * group.train.batch_size + n_eval))


def max_members(group: Group, device: torch.device) -> int:
    """Members per population chunk: a chunk takes at most a quarter of host memory (and at
    most 8 GiB), or half of the GPU's free memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        budget = free // 2
    else:
        budget = min(8 << 30, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4)
    return max(1, int(budget // member_bytes(group)))


def run_record(study: Study, group: Group, member) -> dict[str, Any]:
    return {"run_id": member.run_id, "study": study.name, "arm": member.arm, "seed": member.seed,
            "config": group.run_config(member)}


def write_solutions(directory: Path, arrays: dict[str, np.ndarray]) -> None:
    """``solutions.npz``, replaced atomically."""
    tmp = directory / (SOLUTIONS + ".tmp")
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(tmp, directory / SOLUTIONS)


def read_solutions(directory: Path) -> dict[str, np.ndarray]:
    """The arrays of ``solutions.npz`` (empty if the study has not finished solving)."""
    path = Path(directory) / SOLUTIONS
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def solve(prepared: Prepared, store: Store, prov: dict[str, Any], progress: ProgressBar) -> None:
    """Run a solved study's dynamics and store its runs and ``solutions.npz`` (skipped on resume
    once done: solving is deterministic)."""
    study, config = prepared.study, prepared.config
    if store.meta().get("solved"):
        return
    # One thread unless --threads says otherwise: these are small float64 problems, where a second
    # thread only adds synchronization (measured 6–13× slower on a busy 2-core machine). numpy's
    # BLAS (SVDs, lstsq, cvxpy) gets the same count: BLAS threads that outnumber the free cores spin.
    threads = prepared.options.threads or 1
    torch.set_num_threads(threads)
    with threadpool_limits(limits=threads, user_api="blas"):
        solved: Solved = study.solve(config, prepared.problem, progress)
    store.start([{"run_id": r.run_id, "study": study.name, "arm": r.arm, "seed": r.seed, "config": r.config}
                 for r in solved.runs], prov)
    store.finish(solved.runs)
    write_solutions(prepared.out, solved.arrays)
    store.set_meta(solved=True)


def _make_directories(out: Path) -> list[Path]:
    """``mkdir -p out``; returns the directories it created, outermost first."""
    missing = [p for p in [out, *out.parents] if not p.exists()][::-1]
    for path in missing:
        path.mkdir(exist_ok=True)
    return missing


def _remove_created(out: Path, created: list[Path], locked: bool) -> None:
    """Undo a creation that failed before any result was stored: a temporary store, the lock file
    if this process made the directory and held its lock, then the directories it made (each only
    if empty: nothing of anyone else's is removed, another process's lock file least of all)."""
    if locked and out.is_dir():
        for path in bookkeeping_files(out):
            if path.name != LOCK_FILENAME or created:
                path.unlink(missing_ok=True)
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:
            break


def _write_fault(err: BaseException, out: Path, stored: bool) -> BaseException | None:
    """The user-facing error for a storage failure (None: not one). Before anything was stored, an
    unwritable ``--out`` is the command's mistake (:class:`ConfigError`); a full disk is the
    machine's (:class:`StorageFault`)."""
    kind = classify_write_error(err)
    reason = describe_write_error(err)
    if not stored and isinstance(err, (OSError, sqlite3.Error)):
        if kind != "full":  # read-only, no permission, a path the system refuses to create
            return ConfigError(f"--out: cannot write to {out} ({reason})")
        return StorageFault(f"cannot create the results store in {out} ({reason}); nothing was stored: "
                            "free some space and run the same command again")
    if kind is None:
        return None
    return StorageFault(f"writing to {out} failed ({reason}); what was stored before is kept: free some space, "
                        f"then continue with --resume --out {out}")


def execute(prepared: Prepared, backend: Backend | None = None,
            progress: Callable[[Task], Callable[[int, int], None]] | None = None,
            on_outcome: Callable[[Any], None] | None = None,
            solve_progress: ProgressBar = no_progress) -> "StudyResult":
    """Solve and train what is not yet finished, store it, analyze and write the report.

    One process at a time writes a directory (an advisory lock, held throughout: a second one gets
    :class:`ConfigError`). The store is created whole or not at all; a failure before it exists
    removes what this call created. A full disk later raises :class:`StorageFault`, keeping every
    population committed before (``--resume`` continues).
    """
    study, config, out = prepared.study, prepared.config, prepared.out
    started = time.perf_counter()
    created: list[Path] = []
    lock = DirectoryLock(out)
    try:
        created = _make_directories(out)
        lock.acquire()
        # checked again under the lock: another process may have written here since prepare()
        resuming = _store_state(out, study, config, prepared.options.resume)
        for stale in bookkeeping_files(out):
            if stale.name != LOCK_FILENAME:
                stale.unlink(missing_ok=True)  # a killed creation's temporary store
        store = (Store(out / Store.FILENAME) if resuming else
                 Store.create(out / Store.FILENAME, study=study.name, config=json.loads(config.model_dump_json()),
                              quick=prepared.options.quick, engine=prepared.options.engine, wall_seconds=0.0))
    except BaseException as err:
        locked = lock.held
        if not (out / Store.FILENAME).exists():
            _remove_created(out, created, locked)
        lock.release()
        if isinstance(err, DirectoryBusy):
            raise ConfigError(f"--out: {err}") from None
        fault = _write_fault(err, out, stored=False)
        if fault is None:
            raise
        raise fault from None
    try:
        with store:
            meta = store.meta()
            # a resumed session adds its time to the earlier sessions'; the first session's engine
            # and quick flag stay the directory's (each run's provenance names its own engine)
            before = float(meta.get("wall_seconds") or 0.0)
            sessions = list(meta.get("sessions") or [])
            sessions.append({"started_at": store_now(), "engine": prepared.options.engine,
                             "device": str(prepared.device), "threads": prepared.threads, "wall_seconds": 0.0})

            def clock() -> None:
                sessions[-1]["wall_seconds"] = round(time.perf_counter() - started, 2)
                store.set_meta(wall_seconds=round(before + sessions[-1]["wall_seconds"], 2), sessions=sessions)

            clock()
            prov = {**provenance.collect(prepared.device, prepared.threads), "engine": prepared.options.engine}
            if is_solved(study):
                solve(prepared, store, prov, solve_progress)
                clock()
            finished = store.finished_ids()
            tasks = []
            for group in study.plan(config):
                size = (len(group.members) if prepared.options.engine == "sequential"
                        else max_members(group, prepared.device))
                for chunk in group.chunks(size):
                    if all(m.run_id in finished for m in chunk.members):
                        continue  # chunks are fixed by the plan, so a resumed chunk reruns exactly as before
                    tasks.append(Task(chunk, prepared.options.engine, str(prepared.device), prepared.threads))
            store.start([run_record(study, t.group, m) for t in tasks for m in t.group.members], prov)
            failures = []
            for outcome in (backend or LocalBackend()).run(tasks, progress):
                ids = [m.run_id for m in outcome.task.group.members]
                if outcome.error is not None:
                    store.fail(ids, outcome.error)
                    failures.append(outcome.error)
                else:
                    store.finish(outcome.results)
                clock()
                if on_outcome is not None:
                    on_outcome(outcome)
        result = write_outputs(out)
    except (OSError, sqlite3.Error) as err:
        fault = _write_fault(err, out, stored=True)
        if fault is None:
            raise
        raise fault from None
    finally:
        lock.release()
    result.failures = failures
    return result


def _clean(value: Any) -> Any:
    """JSON-safe: NaN → None, numpy scalars → Python."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summarize(directory: Path) -> tuple[dict[str, Any], Study, Any, Analysis, pd.DataFrame, pd.DataFrame]:
    """Re-analyze a directory's stored results; returns the summary (as in ``summary.json``) and
    what it was computed from. Writes nothing."""
    with Store.open_existing(directory) as store:
        meta, runs, metrics = store.meta(), store.runs(), store.metrics()
    study = get_study(meta["study"])
    config = study.Config.model_validate(meta["config"])
    analysis = study.analyze(config, runs, metrics, *_solved_args(study, directory))
    counts, missing = run_counts(study, config, runs, meta)
    verdict, why = judge(study, analysis, counts, missing, bool(meta.get("quick")))
    first_provenance = runs["provenance"].iloc[0] if len(runs) else {}
    summary = _clean({
        "study": study.name,
        "claim": study.claim,
        "paper": study.paper,
        "verdict": verdict,
        "checks": [c.as_dict() for c in analysis.checks],
        "table": analysis.table.to_dict("records"),
        "notes": ([why] if why else []) + analysis.notes + ([QUICK_NOTE] if meta.get("quick") else []),
        "runs": counts,
        "config": meta["config"],
        "provenance": {**first_provenance, "engine": meta.get("engine"), "quick": meta.get("quick"),
                       "wall_seconds": meta.get("wall_seconds")},
    })
    return summary, study, config, analysis, runs, metrics


def run_counts(study: Study, config: Any, runs: pd.DataFrame, meta: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``{planned, done, diverged, failed, missing}`` and the ids of the planned runs that did not
    finish (failed, interrupted or never started). A solved study plans the runs its solve stored;
    before its solve finished, its runs are all missing (``planned`` counts the populations' alone)."""
    planned = [m.run_id for group in study.plan(config) for m in group.members]
    if is_solved(study):
        solved = [] if not meta.get("solved") else [r for r in runs["run_id"] if r not in set(planned)]
        planned = solved + planned
    status = dict(zip(runs["run_id"], runs["status"]))
    missing = [r for r in planned if status.get(r) not in ("done", "diverged")]
    if is_solved(study) and not meta.get("solved"):
        missing.insert(0, "(the exact solve)")
    statuses = [status.get(r) for r in planned]
    counts = {"planned": len(planned), "done": statuses.count("done"), "diverged": statuses.count("diverged"),
              "failed": statuses.count("failed"), "missing": len(missing)}
    return counts, missing


def judge(study: Study, analysis: Analysis, counts: dict[str, int], missing: list[str],
          quick: bool) -> tuple[str | None, str]:
    """The verdict and, when it is not the checks' own, why: a planned run that failed or never
    finished makes it inconclusive (its arm's checks rest on fewer runs than planned); a quick run
    of a study whose claim needs the full size is a smoke test; an open experiment (``claim`` None)
    has no verdict, and only says which planned runs did not finish."""
    if study.claim is None:
        return None, (f"{len(missing)} of {counts['planned']} planned runs did not finish ({counts['failed']} failed): "
                      f"{_shown(missing)}. Continue them with --resume." if missing else "")
    caveat = getattr(study, "quick_caveat", None)
    if quick and caveat:
        return "smoke", f"verdict smoke: --quick cannot show this claim ({caveat}); run without --quick to judge it."
    if missing:
        return "inconclusive", (f"verdict inconclusive: {len(missing)} of {counts['planned']} planned runs did not "
                                f"finish ({counts['failed']} failed): {_shown(missing)}; checks {analysis.verdict} on "
                                "the rest. Continue them with --resume.")
    return analysis.verdict, ""


def _shown(run_ids: list[str], at_most: int = 8) -> str:
    return ", ".join(run_ids[:at_most]) + (f", … ({len(run_ids) - at_most} more)" if len(run_ids) > at_most else "")


def _solved_args(study: Study, directory: Path) -> tuple[dict[str, np.ndarray], ...]:
    """A solved study's analysis and figures also receive its solutions."""
    return (read_solutions(directory),) if is_solved(study) else ()


def write_outputs(directory: Path) -> "StudyResult":
    """Figures, ``summary.json`` and ``report.html`` from the store alone (each replaced atomically).

    :class:`ConfigError` when the directory cannot take them (not writable, ``figures`` not a
    directory); the store is only read, so nothing stored is lost.
    """
    directory = Path(directory)
    summary, study, config, analysis, runs, metrics = summarize(directory)
    figures_dir = directory / "figures"
    if (figures_dir.exists() or figures_dir.is_symlink()) and not figures_dir.is_dir():
        raise ConfigError(f"{figures_dir} exists and is not a directory; move it away to write the figures")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise ConfigError(f"{directory} is not writable; the report (summary.json, report.html, figures/) is "
                          "written there")
    temporary = [directory / "summary.json.tmp", directory / "report.html.tmp"]
    try:
        figures = (study.figures(config, runs, metrics, *_solved_args(study, directory), figures_dir)
                   if not metrics.empty else [])
        temporary[0].write_text(json.dumps(summary, indent=2))
        os.replace(temporary[0], directory / "summary.json")
        report_tmp = write_report(summary, analysis.table, figures, temporary[1])
        os.replace(report_tmp, directory / "report.html")
    except OSError as err:
        for path in temporary:
            path.unlink(missing_ok=True)
        if classify_write_error(err) == "not-writable":
            raise ConfigError(f"{directory}: cannot write the report there ({describe_write_error(err)})") from None
        raise
    return StudyResult(directory, summary)


@dataclass
class StudyResult:
    """The outcome of a study run: verdict, summary, and the stored runs and metrics as DataFrames."""

    out: Path
    summary: dict[str, Any]
    failures: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        return self.summary["verdict"]

    def runs(self) -> pd.DataFrame:
        with Store.open_existing(self.out) as store:
            return store.runs()

    def metrics(self) -> pd.DataFrame:
        with Store.open_existing(self.out) as store:
            return store.metrics()
