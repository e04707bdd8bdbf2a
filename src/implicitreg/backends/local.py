"""In-process backend: tasks run one after another in the driver's process.

:func:`run_task` and :func:`run_solve` are also what a remote worker runs (:mod:`.ray`), so that a
task computes the same floating-point operations wherever it runs.
"""

from __future__ import annotations

import traceback
from functools import lru_cache
from typing import Iterator, Sequence

import torch
from threadpoolctl import threadpool_limits

from implicitreg.backends.base import Outcome, ProgressFactory, SolveOutcome, SolveProgressFactory, SolveTask, Task, \
    TaskOutcome
from implicitreg.config import DataConfig
from implicitreg.data import Dataset, load_dataset
from implicitreg.precision import matmul_precision
from implicitreg.sequential import train_sequential
from implicitreg.studies.base import ProgressBar, no_progress
from implicitreg.train import torch_dtype, train_population


@lru_cache(maxsize=4)
def _dataset(config_json: str) -> Dataset:
    return load_dataset(DataConfig.model_validate_json(config_json))


def cached_dataset(config: DataConfig) -> Dataset:
    """The data set of ``config``, loaded once per process."""
    return _dataset(config.model_dump_json())


def run_task(task: Task, progress=None) -> TaskOutcome:
    """Train one task in this process. Any exception becomes a failed outcome, not a crash."""
    try:
        torch.set_num_threads(task.threads)
        group = task.group
        data = cached_dataset(group.data).tensors(task.device, torch_dtype(group.train.dtype))
        with matmul_precision(group.train.matmul_precision):
            if task.engine == "sequential":
                results = train_sequential(group, data, progress)
            else:
                results = train_population(group, data, progress=progress)
        return TaskOutcome(task, results)
    except KeyboardInterrupt:
        raise
    except Exception as err:  # a failed population is recorded and the sweep goes on
        return TaskOutcome(task, None, f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=5)}")


def run_solve(task: SolveTask, progress: ProgressBar = no_progress) -> SolveOutcome:
    """Solve a study's dynamics in this process. An exception of the study's ``solve`` propagates."""
    # One thread unless --threads says otherwise: these are small float64 problems, where a second
    # thread only adds synchronization (measured 6–13× slower on a busy 2-core machine). numpy's
    # BLAS (SVDs, lstsq, cvxpy) gets the same count: BLAS threads that outnumber the free cores spin.
    torch.set_num_threads(task.threads)
    with threadpool_limits(limits=task.threads, user_api="blas"):
        return SolveOutcome(task, task.study.solve(task.config, task.problem, progress))


class LocalBackend:
    """Runs every task in the current process, in order."""

    def run(self, tasks: Sequence[Task | SolveTask], progress: ProgressFactory | None = None,
            solve_progress: SolveProgressFactory | None = None) -> Iterator[Outcome]:
        for task in tasks:
            if isinstance(task, SolveTask):
                yield run_solve(task, solve_progress(task) if solve_progress else no_progress)
            else:
                yield run_task(task, progress(task) if progress else None)
