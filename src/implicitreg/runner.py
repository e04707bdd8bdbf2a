"""The driver: study → plan → population chunks → backend → store → analysis → report.

Everything a user can get wrong is checked in :func:`prepare`, before any file is written.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from implicitreg import provenance
from implicitreg.backends import Backend, LocalBackend, Task
from implicitreg.backends.local import cached_dataset
from implicitreg.config import ConfigError, build_config
from implicitreg.models import build_model
from implicitreg.plan import Group
from implicitreg.report.html import write_report
from implicitreg.store import Store
from implicitreg.studies import STUDIES, get_study
from implicitreg.studies.base import Analysis, ProgressBar, Solved, Study, is_solved, no_progress

ENGINES = ("population", "sequential")
ALL = "all"  # `implicitreg run all`: every study into one directory
QUICK_NOTE = "--quick: the same checks at a smaller size (fewer seeds, data or steps)."
DEVICES = ("auto", "cpu", "cuda")
SOLUTIONS = "solutions.npz"


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


def prepare_all(options: RunOptions) -> list[Prepared]:
    """Validate a run of every study into ``OUT/<study>`` (``implicitreg run all``). Writes nothing."""
    if options.overrides or options.data is not None:
        flag = "--set" if options.overrides else "--data"
        raise ConfigError(f"{flag}: settings differ between studies, so `run all` takes no {flag}; "
                          "run a study alone")
    base = Path(options.out) if options.out is not None else default_out(ALL)
    if options.out is not None and not base.parent.exists():
        raise ConfigError(f"--out: the parent directory {base.parent} does not exist")
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
        overrides["data_file"] = str(Path(options.data).resolve())
    config = build_config(study.Config, study.defaults(options.quick), overrides)
    device = resolve_device(options.device)
    out = Path(options.out) if options.out is not None else default_out(study.name)
    if options.out is not None and not parent_may_be_missing and not out.parent.exists():
        raise ConfigError(f"--out: the parent directory {out.parent} does not exist")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} exists and is not a directory")
    stored = out / Store.FILENAME
    if stored.exists():
        if not options.resume:
            raise ConfigError(f"--out: {out} already holds results; pass --resume to continue them or choose "
                              "another --out")
        with Store(stored) as store:
            meta = store.meta()
        if meta.get("study") != study.name or meta.get("config") != json.loads(config.model_dump_json()):
            raise ConfigError(f"--resume: {out} holds a different study or configuration "
                              f"({meta.get('study')}); rerun with the same options or choose another --out")
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(f"--out: {out} exists and is not empty (and holds no results to resume)")
    for group in study.plan(config):
        try:
            cached_dataset(group.data)  # sizes a data set cannot provide fail here, before any file exists
        except (ValueError, FileNotFoundError) as err:
            raise ConfigError(str(err)) from None
    problem = None
    if is_solved(study):
        try:
            problem = study.problem(config)  # a malformed --data file fails here, before any file exists
        except ValueError as err:
            raise ConfigError(str(err)) from None
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


def execute(prepared: Prepared, backend: Backend | None = None,
            progress: Callable[[Task], Callable[[int, int], None]] | None = None,
            on_outcome: Callable[[Any], None] | None = None,
            solve_progress: ProgressBar = no_progress) -> "StudyResult":
    """Solve and train what is not yet finished, store it, analyze and write the report."""
    study, config, out = prepared.study, prepared.config, prepared.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    prov = provenance.collect(prepared.device, prepared.threads)
    with Store(out / Store.FILENAME) as store:
        store.set_meta(study=study.name, config=json.loads(config.model_dump_json()), quick=prepared.options.quick,
                       engine=prepared.options.engine)
        if is_solved(study):
            solve(prepared, store, prov, solve_progress)
        finished = store.finished_ids()
        tasks = []
        for group in study.plan(config):
            size = len(group.members) if prepared.options.engine == "sequential" else max_members(group, prepared.device)
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
            if on_outcome is not None:
                on_outcome(outcome)
        store.set_meta(wall_seconds=round(time.perf_counter() - started, 2))
    result = write_outputs(out)
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


def judge(study: Study, analysis: Analysis, counts: dict[str, int], missing: list[str], quick: bool) -> tuple[str, str]:
    """The verdict and, when it is not the checks' own, why: a planned run that failed or never
    finished makes it inconclusive (its arm's checks rest on fewer runs than planned); a quick run
    of a study whose claim needs the full size is a smoke test."""
    caveat = getattr(study, "quick_caveat", None)
    if quick and caveat:
        return "smoke", f"verdict smoke: --quick cannot show this claim ({caveat}); run without --quick to judge it."
    if missing:
        shown = ", ".join(missing[:8]) + (f", … ({len(missing) - 8} more)" if len(missing) > 8 else "")
        return "inconclusive", (f"verdict inconclusive: {len(missing)} of {counts['planned']} planned runs did not "
                                f"finish ({counts['failed']} failed): {shown}; checks {analysis.verdict} on the rest. "
                                "Continue them with --resume.")
    return analysis.verdict, ""


def _solved_args(study: Study, directory: Path) -> tuple[dict[str, np.ndarray], ...]:
    """A solved study's analysis and figures also receive its solutions."""
    return (read_solutions(directory),) if is_solved(study) else ()


def write_outputs(directory: Path) -> "StudyResult":
    """Figures, ``summary.json`` and ``report.html`` from the store alone (each replaced atomically)."""
    summary, study, config, analysis, runs, metrics = summarize(directory)
    figures = (study.figures(config, runs, metrics, *_solved_args(study, directory), directory / "figures")
               if not metrics.empty else [])
    tmp = directory / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, directory / "summary.json")
    report_tmp = write_report(summary, analysis.table, figures, directory / "report.html.tmp")
    os.replace(report_tmp, directory / "report.html")
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
