"""Shared fixtures: a per-session data cache, helpers that run the CLI as a real subprocess, and the
per-member autograd reference the population kernels are tested against."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

# A tiny sweep of the explicit-vs-implicit study: one MLP population of 5 runs (one seed per arm)
# on 200 MNIST-1D points, 40 steps. ~3 s of imports + ~1 s of training + ~2 s of figures.
TINY = [
    "run", "explicit-vs-implicit", "--quick", "--seeds", "1", "--threads", "1",
    "--set", "models=[mlp]", "--set", "mlp.hidden=[16]",
    "--set", "data.n_train=200", "--set", "data.n_test=100",
    "--set", "train.max_steps=40", "--set", "train.eval_every=20",
]


@pytest.fixture(scope="session", autouse=True)
def data_cache(tmp_path_factory) -> Path:
    """Point ``IMPLICITREG_CACHE`` at a session-wide tmp dir (never ~/.cache); subprocesses inherit it.

    Shared across the session because generating MNIST-1D takes seconds.
    """
    path = tmp_path_factory.mktemp("implicitreg-cache")
    previous = os.environ.get("IMPLICITREG_CACHE")
    os.environ["IMPLICITREG_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("IMPLICITREG_CACHE", None)
    else:
        os.environ["IMPLICITREG_CACHE"] = previous


@dataclass
class CliResult:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    def __str__(self) -> str:  # shown by pytest when an assertion on the result fails
        return (f"implicitreg {' '.join(self.args)}\n-> exit {self.returncode}\n"
                f"--- stdout ---\n{self.stdout[-3000:]}\n--- stderr ---\n{self.stderr[-3000:]}")

    __repr__ = __str__


def cli_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "implicitreg.cli", *map(str, args)]


def cli_env() -> dict[str, str]:
    # a wide, plain terminal so that rich neither wraps lines nor adds colour codes
    return {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb", "PYTHONHASHSEED": "0"}


def run_cli(args: list[str], cwd: Path | str | None = None, timeout: float = 180) -> CliResult:
    """Run ``implicitreg ARGS`` in a fresh interpreter; capture exit code, stdout and stderr."""
    proc = subprocess.run(cli_command(args), capture_output=True, text=True, cwd=cwd, env=cli_env(),
                          timeout=timeout)
    return CliResult([str(a) for a in args], proc.returncode, proc.stdout, proc.stderr)


def invoke_cli(args: list) -> CliResult:
    """Run ``implicitreg ARGS`` in this process (typer's CliRunner: no interpreter start-up); an
    uncaught exception counts as a traceback in stderr."""
    from implicitreg.cli import app

    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200", "NO_COLOR": "1"})
    finally:
        torch.set_num_threads(threads)  # a run that got as far as training set it to --threads
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "Traceback (in-process):\n" + "".join(traceback.format_exception(result.exception))
    return CliResult([str(a) for a in args], result.exit_code, result.stdout, stderr)


def assert_user_error(result: CliResult, expected: list[str], out: Path | None = None) -> None:
    """A user mistake: exit code 2, one line on stderr ("error: …") holding every ``expected``
    substring, no traceback, and no ``out`` directory written."""
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result
    for text in expected:
        assert text in lines[0], (text, result)
    if out is not None:
        assert not Path(out).exists(), f"{out} was written by a command that failed validation"


def start_cli(args: list[str], log: Path, cwd: Path | str | None = None) -> subprocess.Popen:
    """Start ``implicitreg ARGS`` without waiting; stdout and stderr go to the file ``log``.

    (A file, not a pipe: nobody reads the output while it runs, and a full pipe would block it.)
    """
    with open(log, "w") as handle:
        return subprocess.Popen(cli_command(args), stdout=handle, stderr=subprocess.STDOUT, cwd=cwd, env=cli_env())


def run_cli_many(commands: list[list[str]], workers: int = 2) -> list[CliResult]:
    """Run several CLI commands concurrently (2 at a time: the test machine has 2 cores)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(run_cli, commands))


def read_store(directory: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The runs and metrics tables of ``DIRECTORY/results.sqlite``, read with plain sqlite3 (read-only)."""
    conn = sqlite3.connect(f"file:{directory / 'results.sqlite'}?mode=ro", uri=True)
    try:
        runs = pd.read_sql_query("SELECT * FROM runs ORDER BY run_id", conn)
        metrics = pd.read_sql_query("SELECT run_id, step, name, value FROM metrics ORDER BY run_id, step, name",
                                    conn)
    finally:
        conn.close()
    return runs, metrics


def solved_frames(solved) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The runs and metrics frames the store would hold for a solved study's ``Solved``."""
    runs = pd.DataFrame([{"run_id": r.run_id, "arm": r.arm, "seed": r.seed, "config": r.config, "provenance": {},
                          "status": r.status, "final_step": r.final_step, "target_step": r.target_step}
                         for r in solved.runs])
    metrics = pd.DataFrame([{"run_id": r.run_id, "step": s, "name": name, "value": v}
                            for r in solved.runs for s, name, v in r.metrics], columns=["run_id", "step", "name", "value"])
    return runs, metrics


def autograd_reference(mods, x, y, masks, loss):
    """Per-member mean loss [P] and parameter gradients (name → tensor, one dict per member) by
    autograd through each member's own module: the reference of the hand-batched kernels."""
    losses, grads = [], []
    for i, m in enumerate(mods):
        out = m(x[i], None if masks is None else [mk[i] for mk in masks])
        value = F.cross_entropy(out, y[i]) if loss == "cross_entropy" else F.mse_loss(out.squeeze(-1), y[i])
        losses.append(value.detach())
        grads.append(dict(zip([n for n, _ in m.named_parameters()], torch.autograd.grad(value, list(m.parameters())))))
    return torch.stack(losses), grads


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module of tiny problems (``pytestmark =
    pytest.mark.usefixtures("one_thread")``): with 2 threads on a shared machine each small op
    waits on the thread pool (a conv measured ~6 ms against 25 µs on one thread). The previous
    count comes back after the module."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def dense_hessian(model, x, y, loss_fn=F.cross_entropy) -> torch.Tensor:
    """The full Hessian [n, n] of ``loss_fn(model(x), y)`` over all parameters, flattened in
    ``named_parameters`` order, by autograd: the dense reference of the curvature tests."""
    named = [(name, p.detach()) for name, p in model.named_parameters()]
    flat = torch.cat([p.reshape(-1) for _, p in named])

    def loss(theta):
        params, i = {}, 0
        for name, p in named:
            params[name] = theta[i : i + p.numel()].view(p.shape)
            i += p.numel()
        return loss_fn(torch.func.functional_call(model, params, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat)
