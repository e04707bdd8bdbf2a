"""In-process backend: tasks run one after another in the driver's process."""

from __future__ import annotations

import traceback
from functools import lru_cache
from typing import Iterator

import torch

from implicitreg.backends.base import ProgressFactory, Task, TaskOutcome
from implicitreg.config import DataConfig
from implicitreg.data import Dataset, load_dataset
from implicitreg.sequential import train_sequential
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
        if task.engine == "sequential":
            results = train_sequential(group, data, progress)
        else:
            results = train_population(group, data, progress=progress)
        return TaskOutcome(task, results)
    except KeyboardInterrupt:
        raise
    except Exception as err:  # a failed population is recorded and the sweep goes on
        return TaskOutcome(task, None, f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=5)}")


class LocalBackend:
    """Runs every task in the current process, in order."""

    def run(self, tasks: list[Task], progress: ProgressFactory | None = None) -> Iterator[TaskOutcome]:
        for task in tasks:
            yield run_task(task, progress(task) if progress else None)
