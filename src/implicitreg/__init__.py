"""implicitreg — a lab for implicit regularization.

Flat public API::

    import implicitreg
    result = implicitreg.run("explicit-vs-implicit", quick=True, **{"train.lr": 0.02})
    result.verdict, result.summary, result.runs(), result.metrics()

    with implicitreg.Tracker("runs/mine", ["l2_norm"], every=100, train_data=(x, y), model=model) as tracker:
        for step in range(steps):
            ...                              # your own training step
            tracker.step(model, step)        # our measures inside your loop, into the same store

    result = implicitreg.sweep("examples/sweep-tiny.toml", out="runs/tiny")   # your own grid
    result.summary["table"], result.summary["ranking"]

    implicitreg.landscape.slice_2d(model, loss_fn, (x, y))          # loss surfaces, paths, trajectory PCA
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# the sweep-file driver, loaded before the function `sweep` below takes its name in this namespace
# (a submodule imported later would replace the function with itself)
import implicitreg.sweep as _sweep_files
from implicitreg import landscape, measures
from implicitreg.config import ConfigError, parse_sets
from implicitreg.population import Population
from implicitreg.runner import RunOptions, StudyResult, execute, prepare
from implicitreg.studies import STUDIES as studies
from implicitreg.studies import study_to_run
from implicitreg.tracker import Tracker
from implicitreg.train import train_population as train

__version__ = "0.1.0"


def run(study: str, quick: bool = False, *, seeds: int | None = None, device: str = "auto",
        engine: str = "population", out: str | Path | None = None, resume: bool = False,
        threads: int | None = None, data: str | Path | None = None, progress: bool = True,
        backend: str = "local", ray_address: str | None = None, retries: int = 2,
        **overrides: Any) -> StudyResult:
    """Run a study as ``implicitreg run`` does; overrides use dotted keys (``**{"train.lr": 0.01}``)
    or nested dicts (``train={"lr": 0.01}``); ``data`` is a user's ``.npz`` problem (``--data``).

    ``progress``: a bar per population in a notebook or terminal, one line per population
    elsewhere (on stderr); ``False`` prints nothing.

    ``backend="ray"``: every population chunk and solve is a Ray task (``--backend ray``), on the
    cluster at ``ray_address`` (``--ray-address``; where this process already called ``ray.init``,
    that connection), else a local Ray instance; ``retries``: how often a task whose worker died is
    tried again. Needs ``pip install -e ".[ray]"``.
    """
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    options = RunOptions(study, quick, nested, seeds, device, engine, Path(out) if out else None, resume, threads,
                         Path(data) if data is not None else None, backend, ray_address, retries)
    study_to_run(study)
    prepared = prepare(options)
    if not progress:
        return execute(prepared)
    from rich.console import Console

    from implicitreg.display import execution_progress

    with execution_progress(Console(stderr=True), prepared.study.name) as hooks:
        return execute(prepared, **hooks)


def sweep(source: str | Path | dict[str, Any], out: str | Path | None = None, *, quick: bool = False,
          resume: bool = False, threads: int | None = None, device: str = "auto", engine: str = "population",
          progress: bool = True, backend: str = "local", ray_address: str | None = None,
          retries: int = 2) -> StudyResult:
    """Run a sweep file (a path to its TOML, or a dict of the same shape) as ``implicitreg sweep`` does.

    Returns the :class:`StudyResult` of the sweep study: ``verdict`` None (a sweep makes no claim),
    ``summary["table"]`` one row per grid point, ``summary["ranking"]`` the measure-vs-gap ranking
    (None with fewer than two points or no tracked measure). ``progress`` as for :func:`run`; with
    it, a model trained on the sequential engine instead of the population engine is said on stderr.
    ``backend``, ``ray_address``, ``retries`` as for :func:`run`.
    """
    options = _sweep_files.SweepOptions(source, Path(out) if out is not None else None, resume, quick, threads,
                                        device, engine, backend, ray_address, retries)
    prepared, notices = _sweep_files.prepare_sweep(options)
    if not progress:
        return execute(prepared)
    from rich.console import Console

    from implicitreg.display import execution_progress

    console = Console(stderr=True)
    for line in notices:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    with execution_progress(console, prepared.study.name) as hooks:
        return execute(prepared, **hooks)


__all__ = ["ConfigError", "Population", "StudyResult", "Tracker", "landscape", "measures", "parse_sets", "run",
           "studies", "sweep", "train"]
