"""Our measures inside a user's own training loop: :class:`Tracker`.

::

    with Tracker("runs/resnet-sgd", measures=["l2_norm", "distance_from_init", "top_hessian_eigenvalue"],
                 every=100, train_data=(x, y), test_data=(xt, yt), loss_fn=F.cross_entropy,
                 config={"optimizer": "sgd", "lr": 0.1}, model=model) as tracker:
        for step in range(steps):
            ...                              # the user's own forward, backward, optimizer step
            tracker.step(model, step)        # due measures + train/test loss and accuracy, stored

Each Tracker is one run (``name=``) of the directory's store, the same store, ``show``, ``report``
and figures as a study's (the study ``tracker``: :mod:`implicitreg.studies.tracked`, an open
experiment with no claim). Several Trackers in one directory compare optimizers, learning rates or
models. A measurement sees the model in eval mode, on the given data, and leaves it exactly as it
was: every module's ``training`` flag, every buffer (BatchNorm's running statistics), the
parameters' gradients and the global random streams — the loop trains the same with or without it.

Everything that can be checked before training is checked when the Tracker is made (measure names,
data, the directory, a stored run's settings, and — given ``model=`` — which measures apply to the
model); the first step of a run is always measured, so what can only fail on data fails then.
"""

from __future__ import annotations

import difflib
import errno
import fcntl
import json
import math
import os
import re
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from implicitreg import provenance
from implicitreg.measures.core import REGISTRY, Stacked
from implicitreg.measures.tracking import compute, loss_fn_for
from implicitreg.runner import StudyResult, write_outputs
from implicitreg.store import DirectoryBusy, DirectoryLock, Store, bookkeeping_files
from implicitreg.studies.base import SolvedRun
from implicitreg.studies.tracked import STUDY, RunConfig

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=,@-]{0,99}")
TRACKER_DIR = "tracker"  # per-run files: θ₀ (NAME.init.npz) and the lock held while a Tracker writes the run
LOCK_WAIT = 60.0  # seconds to wait for another Tracker of the directory to finish writing its report


def _close_matches(name: str) -> str:
    close = difflib.get_close_matches(name, list(REGISTRY), n=3, cutoff=0.6)
    return f"did you mean {', '.join(close)}?" if close else f"expected any of {', '.join(sorted(REGISTRY))}"


def _measure_names(measures: Any) -> list[str]:
    if isinstance(measures, str) or not all(isinstance(m, str) for m in measures):
        raise ValueError(f"measures: expected a list of measure names, got {measures!r}")
    names = list(dict.fromkeys(measures))
    unknown = [m for m in names if m not in REGISTRY]
    if unknown:
        raise ValueError("measures: " + "; ".join(f"unknown measure {m!r} ({_close_matches(m)})" for m in unknown)
                         + " — `implicitreg measures` lists them")
    return names


def _positive(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{field}: expected an integer >= 1, got {value!r}")
    return int(value)


def _pair(data: Any, field: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` as tensors (numpy arrays accepted): x [N, ...], y [N] integer classes or float targets."""
    if not isinstance(data, (tuple, list)) or len(data) != 2:
        raise ValueError(f"{field}: expected a pair (x, y) of tensors, got {type(data).__name__}")
    try:
        x, y = (torch.as_tensor(v) for v in data)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{field}: expected a pair (x, y) of tensors or arrays ({err})") from None
    if x.dim() < 1 or len(x) == 0:
        raise ValueError(f"{field}: x must hold at least one point (shape [N, ...]), got shape {tuple(x.shape)}")
    if y.dim() != 1 or len(y) != len(x):
        raise ValueError(f"{field}: expected y of shape [{len(x)}] (one label or target per point of x), "
                         f"got shape {tuple(y.shape)}")
    if y.dtype == torch.bool:
        y = y.long()
    if y.is_complex():
        raise ValueError(f"{field}: expected integer class labels or float targets, got {y.dtype}")
    return x, y


def _user_config(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ValueError(f"config: expected a dict of your settings, got {type(config).__name__}")
    try:
        return json.loads(json.dumps(config, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ValueError(f"config: expected JSON values (numbers, strings, booleans, lists, dicts) ({err})") from None


def _loss_name(loss_fn: Callable) -> str:
    return getattr(loss_fn, "__name__", None) or type(loss_fn).__name__


def _param_dtype(model: nn.Module) -> torch.dtype | None:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), None)


def _device(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


@contextmanager
def _as_measured(model: nn.Module) -> Iterator[None]:
    """The model in eval mode for the duration; afterwards every module's ``training`` flag and every
    buffer (running statistics) are as before, and the CPU's and the model's GPU's random streams too."""
    modes = [(module, module.training) for module in model.modules()]
    buffers = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    device = _device(model)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model.eval()
        try:
            yield
        finally:
            for module, training in modes:
                module.training = training
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)


@contextmanager
def _directory_lock(directory: Path) -> Iterator[None]:
    """The directory's lock (:class:`~implicitreg.store.DirectoryLock`), waited for: several Trackers of
    one directory take turns creating the store and writing the report."""
    lock = DirectoryLock(directory)
    deadline = time.monotonic() + LOCK_WAIT
    while True:
        try:
            lock.acquire()
            break
        except DirectoryBusy:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    try:
        yield
    finally:
        lock.release()


class Tracker:
    """Track measures and the train/test loss and accuracy of a model trained in your own loop.

    Args:
        directory: the results directory (created; or one that Trackers wrote before).
        measures: registry names (``implicitreg measures`` lists them).
        every: measure every ``every`` steps (``step % every == 0``), at a run's first step, and at
            its last one when the Tracker closes.
        train_data, test_data: ``(x, y)``, x [N, ...], y [N] integer classes (accuracy is stored) or
            float targets (regression: losses only). Evaluated at every measured step, on the
            model's device and in its dtype: pass a fixed subset of a large data set. The measures
            that need data read ``train_data``.
        loss_fn: ``loss_fn(outputs, y)`` → the mean loss over a batch; cross-entropy for class labels,
            mean squared error for float targets by default.
        config: your settings (optimizer, learning rate, …), stored with the run and shown as columns
            of the report's table: JSON values.
        name: the run (several runs share a directory). A name already stored continues that run.
        model: the model before training. Given, the measures that do not apply to it are refused
            now, and θ₀ of the "init" measures (distance from initialization) is taken now; without
            it both happen at the first :meth:`step`.
        overwrite: a reopened run normally continues after its last stored step (an earlier step is
            an error); with ``overwrite=True`` the stored steps from this session's first step on are
            replaced — all of them (settings and θ₀ too) when the loop starts again from its start.
        batch_size: points per forward pass of the evaluation.

    Raises:
        ValueError: an unknown measure (with the close matches), a measure that does not apply to
            ``model`` (with the reason), malformed data or config, a directory that holds something
            else, or a stored run of the same name with other settings.
    """

    def __init__(self, directory: str | Path, measures: Any = (), *, every: int = 100, train_data: Any,
                 test_data: Any = None, loss_fn: Callable | None = None, config: dict[str, Any] | None = None,
                 name: str = "run", model: nn.Module | None = None, overwrite: bool = False,
                 batch_size: int = 1024):
        self.directory = Path(directory)
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ValueError(f"name: expected 1 to 100 letters, digits or ._+=,@- (starting with a letter or digit), "
                             f"got {name!r}")
        self.name = name
        self.measures = _measure_names(measures)
        self.every = _positive(every, "every")
        self.batch_size = _positive(batch_size, "batch_size")
        self.overwrite = bool(overwrite)
        self._train = _pair(train_data, "train_data")
        self._test = None if test_data is None else _pair(test_data, "test_data")
        self.input_shape = tuple(self._train[0].shape[1:])
        self.classes = not self._train[1].is_floating_point()
        if self._test is not None:
            if tuple(self._test[0].shape[1:]) != self.input_shape:
                raise ValueError(f"test_data: x has points of shape {tuple(self._test[0].shape[1:])}, train_data's "
                                 f"are {self.input_shape}")
            if self._test[1].is_floating_point() == self.classes:
                raise ValueError(f"test_data: y is {self._test[1].dtype}, train_data's y is {self._train[1].dtype} "
                                 "(both class labels, or both float targets)")
        if loss_fn is not None and not callable(loss_fn):
            raise ValueError(f"loss_fn: expected a function loss_fn(outputs, y) -> mean loss, got {loss_fn!r}")
        self.loss_fn = loss_fn if loss_fn is not None else loss_fn_for(1 if self.classes else 0)
        self.needs_init = any("init" in REGISTRY[m].needs for m in self.measures)
        if model is not None:
            self._check_applicable(model)
        self.settings = RunConfig(measures=self.measures, every=self.every, config=_user_config(config),
                                  loss=_loss_name(self.loss_fn), n_train=len(self._train[0]),
                                  n_test=0 if self._test is None else len(self._test[0]),
                                  input_shape=list(self.input_shape),
                                  init="construction" if model is not None else "first step")
        self._device_hint = _device(model) if model is not None else self._train[0].device
        self._init = ({k: v.detach().to("cpu", copy=True) for k, v in model.named_parameters()}
                      if model is not None and self.needs_init else None)
        self._stored = self._read_stored()  # (settings, first step, last step) of a stored run; None if new
        if model is None and self.needs_init and (self._stored is None or self.overwrite):
            warnings.warn(f"{', '.join(m for m in self.measures if 'init' in REGISTRY[m].needs)}: no model= was given, "
                          "so θ₀ is the model at the first step() (after your first update); pass model= (the model "
                          "before training) to measure from the initialization", UserWarning, stacklevel=2)
        self.seconds = 0.0  # spent measuring and storing, this session
        self.result: StudyResult | None = None
        self._store: Store | None = None
        self._run_lock: int | None = None
        self._checked = model is not None
        self._seen: int | None = None  # last step() of this session
        self._measured: int | None = None  # last step measured, this session
        self._model: nn.Module | None = None
        self._opened_at = 0.0
        self._closed = False
        self._cache: dict[tuple, Any] = {}

    # -- checks ----------------------------------------------------------------------------------
    def _check_applicable(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        if not any(True for _ in model.parameters()):
            raise ValueError(f"model: {type(model).__name__} has no parameters to measure")
        refused = [(m, REGISTRY[m].refusal(model, self.input_shape)) for m in self.measures]
        refused = [(m, reason) for m, reason in refused if reason is not None]
        if refused:
            kept = [m for m in self.measures if m not in dict(refused)]
            raise ValueError(f"measures: {len(refused)} of the requested measures do not apply to this model "
                             f"({type(model).__name__}): "
                             + "; ".join(f"{m}: {reason}" for m, reason in refused)
                             + f". Track the others (measures={kept}) or change the model")

    def _read_stored(self) -> tuple[RunConfig, int | None, int | None] | None:
        """What the directory holds for this run, read without writing; ValueError if the directory
        cannot take it."""
        directory, path = self.directory, self.directory / Store.FILENAME
        if directory.exists() and not directory.is_dir():
            raise ValueError(f"directory: {directory} exists and is not a directory")
        if not path.exists():
            if directory.is_dir():
                ours = {Store.FILENAME + "-wal", Store.FILENAME + "-shm", TRACKER_DIR,
                        *(p.name for p in bookkeeping_files(directory))}
                if any(p.name not in ours for p in directory.iterdir()):
                    raise ValueError(f"directory: {directory} exists, is not empty and holds no tracker results; "
                                     "choose a new directory (or one that Trackers wrote)")
            return None
        try:
            with Store.open_existing(directory) as store:
                study = store.meta().get("study")
                if study != STUDY.name:
                    raise ValueError(f"directory: {directory} holds results of the study {study!r}; a Tracker writes "
                                     "a directory of its own: choose another")
                runs = store.runs()
                if self.name not in set(runs["run_id"]):
                    return None
                steps = store.step_range(self.name)
        except FileNotFoundError as err:  # a store whose creation never completed holds nothing
            if "holds no study results" in str(err):
                return None
            raise ValueError(f"directory: {err}") from None
        stored = RunConfig.model_validate(runs.loc[runs["run_id"] == self.name, "config"].iloc[0])
        first, last = steps
        if not self.overwrite:
            self._check_same(stored)
            if self.needs_init and not self._init_path.exists():
                raise ValueError(f"name: run {self.name!r} in {self.directory} lost its initial parameters "
                                 f"({self._init_path} is missing), which {', '.join(self.measures)} need to continue; "
                                 "pass overwrite=True to start it again")
        return stored, first, last

    def _check_same(self, stored: RunConfig) -> None:
        mine = self.settings.model_dump(exclude={"init"})
        theirs = stored.model_dump(exclude={"init"})
        differ = [k for k in mine if mine[k] != theirs[k]]
        if differ:
            shown = "; ".join(f"{k}: stored {theirs[k]!r}, given {mine[k]!r}" for k in differ)
            raise ValueError(f"name: run {self.name!r} in {self.directory} was tracked with other settings ({shown}); "
                             "continue it with the same ones, choose another name= for a new run, or pass "
                             "overwrite=True to replace it")

    @property
    def _init_path(self) -> Path:
        return self.directory / TRACKER_DIR / f"{self.name}.init.npz"

    # -- opening and closing ---------------------------------------------------------------------
    def __enter__(self) -> "Tracker":
        self.open()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._finish(exc)
        return False  # an exception of the loop is raised again

    def open(self) -> "Tracker":
        """Create the directory and its store (if new) and mark the run ``running``: done by ``with``,
        or by the first :meth:`step`."""
        if self._closed:
            raise RuntimeError(f"Tracker {self.name!r} is closed; make a new one to continue the run")
        if self._store is not None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / TRACKER_DIR).mkdir(exist_ok=True)
        self._lock_run()
        try:
            with _directory_lock(self.directory):
                if not (self.directory / Store.FILENAME).exists():
                    Store.create(self.directory / Store.FILENAME, study=STUDY.name, config={}, quick=False,
                                 engine="tracker", wall_seconds=0.0)
                self._store = Store(self.directory / Store.FILENAME)
            self._stored = self._read_stored()  # again, under the run's lock: another process may have written
            if self._stored is None:
                self._start_run()
            else:
                self._store.reopen(self.name)
        except BaseException:
            self._release()
            raise
        self._opened_at = time.perf_counter()
        return self

    def _lock_run(self) -> None:
        path = self.directory / TRACKER_DIR / f"{self.name}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ValueError(f"name: run {self.name!r} of {self.directory} is being tracked by another Tracker now "
                                 "(this process or another); choose another name=") from None
            raise
        self._run_lock = fd

    def _start_run(self) -> None:
        """Store the run as new (replacing a stored one of the same name, and its metrics)."""
        seed = self.settings.config.get("seed")
        prov = {**provenance.collect(self._device_hint, torch.get_num_threads()), "engine": "tracker"}
        self._store.start([{"run_id": self.name, "study": STUDY.name, "arm": self.name,
                            "seed": seed if isinstance(seed, int) and not isinstance(seed, bool) else 0,
                            "config": self.settings.model_dump()}], prov)
        self._stored = None
        self._init_path.unlink(missing_ok=True)

    def close(self) -> None:
        """Measure the last step if it was not measured, mark the run done, write ``report.html``,
        ``summary.json`` and the figures (``self.result``). Done by leaving the ``with`` block."""
        self._finish(None)

    def _finish(self, error: BaseException | None) -> None:
        if self._closed:
            return
        self._closed = True
        if self._store is None:
            return
        at_close = None  # an error of the last measurement, taken at close: stored like a loop's, then raised
        try:
            if error is None and self._seen is not None and self._measured != self._seen:
                try:
                    self._measure(self._model, self._seen)
                except BaseException as err:
                    error = at_close = err
            if error is None:
                self._store.finish([SolvedRun(self.name, self.name, {}, [], self._store.step_range(self.name)[1])])
            else:
                self._store.fail([self.name], f"{type(error).__name__}: {error}".strip().rstrip(":"))
            with _directory_lock(self.directory):
                before = float(self._store.meta().get("wall_seconds") or 0.0)
                self._store.set_meta(wall_seconds=round(before + time.perf_counter() - self._opened_at, 2))
                self.result = write_outputs(self.directory)
        except Exception as err:
            if error is None:
                raise
            warnings.warn(f"Tracker {self.name!r}: could not complete the report after the loop's error ({err})",
                          RuntimeWarning, stacklevel=3)
        finally:
            self._release()
        if at_close is not None:
            raise at_close

    def _release(self) -> None:
        if self._store is not None:
            self._store.close()
        if self._run_lock is not None:
            os.close(self._run_lock)
            self._run_lock = None

    # -- measuring -------------------------------------------------------------------------------
    def step(self, model: nn.Module, step: int) -> dict[str, float]:
        """Report that ``model`` has finished training step ``step``; measure and store if it is due.

        Returns:
            What was stored at this step (name → value; empty when nothing was due).
        """
        if not isinstance(model, nn.Module):
            raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or step < 0:
            raise ValueError(f"step: expected an integer >= 0, got {step!r}")
        step = int(step)
        if self._store is None:
            self.open()
        if not self._checked:
            self._check_applicable(model)
            self._checked = True
        if self._seen is None:
            self._first_step(model, step)
        elif step <= self._seen:
            raise ValueError(f"step: expected steps that increase, got {step} after {self._seen}")
        self._seen, self._model = step, model
        first = self._stored is None or self._stored[2] is None  # nothing stored yet: the run's first step
        if step % self.every and not first:
            return {}
        values = self._measure(model, step)
        self._stored = (self.settings, step, step) if self._stored is None else self._stored[:2] + (step,)
        return values

    def _first_step(self, model: nn.Module, step: int) -> None:
        """The session's first step: it continues the stored run (after its last step), replaces part or
        all of it (``overwrite``), or starts it; θ₀ is stored where a new run needs it."""
        if self._stored is not None:
            stored, first, last = self._stored
            if last is not None and step <= last:
                if not self.overwrite:
                    raise ValueError(f"step: run {self.name!r} has steps up to {last} stored, so this session continues "
                                     f"after it; got step {step}. Pass overwrite=True to replace the stored steps "
                                     f"from {step} on, or choose another name=")
                if step > first:  # a restart from a checkpoint: the earlier steps stay, and so must the settings
                    self._check_same(stored)
                    self._store.reopen(self.name, from_step=step)
                    self._stored = (stored, first, self._store.step_range(self.name)[1])
                else:  # from the start: the whole run is replaced
                    self._start_run()
            elif self.overwrite and stored.model_dump(exclude={"init"}) != self.settings.model_dump(exclude={"init"}):
                self._start_run()  # nothing to keep after this step, and other settings: a new run
        if self.needs_init:
            if self._init_path.exists() and self._stored is not None:
                self._init = self._load_init()
            else:
                if self._init is None:  # no model= was given: θ₀ is the model now
                    self._init = {k: v.detach().to("cpu", copy=True) for k, v in model.named_parameters()}
                self._save_init()

    def _save_init(self) -> None:
        arrays = {k: (v.float() if v.dtype in (torch.bfloat16,) else v).numpy() for k, v in self._init.items()}
        tmp = self._init_path.with_name(self._init_path.name + ".tmp")
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, self._init_path)

    def _load_init(self) -> dict[str, torch.Tensor]:
        with np.load(self._init_path, allow_pickle=False) as archive:
            return {k: torch.from_numpy(archive[k]) for k in archive.files}

    def _on(self, model: nn.Module, key: str) -> Any:
        """The data (and θ₀) on the model's device, x in its parameters' dtype; cached."""
        device, dtype = _device(model), _param_dtype(model)
        cached = self._cache.get((key, device, dtype))
        if cached is None:
            if key == "init":
                cached = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
                          for k, v in self._init.items()}
            else:
                x, y = self._train if key == "train" else self._test
                x = x.to(device=device, dtype=dtype) if x.is_floating_point() and dtype is not None else x.to(device)
                cached = (x, y.to(device))
            self._cache = {k: v for k, v in self._cache.items() if k[1:] == (device, dtype)}
            self._cache[(key, device, dtype)] = cached
        return cached

    def _evaluate(self, model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, float | None]:
        """Mean loss and accuracy (None for float targets, or outputs that are not class scores)."""
        x, y = data
        total, correct, scores = 0.0, 0, self.classes
        with torch.no_grad():
            for start in range(0, len(x), self.batch_size):
                xb, yb = x[start:start + self.batch_size], y[start:start + self.batch_size]
                out = model(xb)
                total += float(self.loss_fn(out, yb)) * len(xb)
                scores = scores and out.dim() == 2 and out.shape[1] >= 2
                if scores:
                    correct += int((out.argmax(1) == yb).sum())
        return total / len(x), (correct / len(x) if scores else None)

    def _measure(self, model: nn.Module, step: int) -> dict[str, float]:
        started = time.perf_counter()
        values: dict[str, float] = {}
        with _as_measured(model):
            train = self._on(model, "train")
            values["train_loss"], train_acc = self._evaluate(model, train)
            if train_acc is not None:
                values["train_acc"] = train_acc
            if self._test is not None:
                values["test_loss"], test_acc = self._evaluate(model, self._on(model, "test"))
                if test_acc is not None:
                    values["test_acc"] = test_acc
                values["gap"] = (train_acc - test_acc if train_acc is not None and test_acc is not None
                                 else values["test_loss"] - values["train_loss"])
            if self.measures:
                init = None
                if self.needs_init:
                    params = self._on(model, "init")
                    init = Stacked(model, {k: v.unsqueeze(0) for k, v in params.items()}, single=True)
                with torch.enable_grad():
                    measured, converged = compute(self.measures, model, init=init, data=train, loss_fn=self.loss_fn,
                                                  input_shape=self.input_shape, with_convergence=True)
                for name in self.measures:
                    values[name] = float(measured[name].detach())
                    if name in converged:
                        values[f"{name}.converged"] = float(bool(converged[name]))
        self._store.record(self.name, [(step, k, v if math.isfinite(v) else (None if math.isnan(v) else v))
                                       for k, v in values.items()])
        self._measured = step
        self.seconds += time.perf_counter() - started
        return values
