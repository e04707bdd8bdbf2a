"""Where populations run. Backends return results; only the driver writes the store.

- :class:`LocalBackend` — in the driver's process, one task after another.
- :func:`ray_backend` — Ray tasks on a cluster or a local Ray instance (:mod:`.ray`, imported only
  when asked for: ``import implicitreg`` never imports Ray).
"""

from __future__ import annotations

from typing import Any

from implicitreg.backends.base import Backend, SolveOutcome, SolveTask, Task, TaskOutcome
from implicitreg.backends.local import LocalBackend
from implicitreg.config import ConfigError

BACKENDS = ("local", "ray")
RAY_INSTALL = 'pip install -e ".[ray]" (or pip install "ray>=2.9")'


def ray_available() -> bool:
    """Whether Ray can be imported here (without importing it)."""
    from importlib.util import find_spec

    return find_spec("ray") is not None


def ray_backend(address: str | None = None, retries: int = 2, cpus: int | None = None,
                import_paths: tuple[str, ...] = ()) -> Any:
    """A :class:`~implicitreg.backends.ray.RayBackend` (not connected yet); :class:`ConfigError`
    saying how to install Ray where it is missing."""
    try:
        from implicitreg.backends.ray import RayBackend
    except ImportError as err:
        if not ray_available():
            raise ConfigError(f"--backend ray: Ray is not installed here; install it with {RAY_INSTALL}") from None
        if (err.name or "").split(".")[0] == "implicitreg":
            raise  # our own import failed: a bug, not the user's install
        raise ConfigError(f"--backend ray: Ray is installed but cannot be imported ({type(err).__name__}: {err}); "
                          f"reinstall it with {RAY_INSTALL}") from None
    return RayBackend(address, retries, cpus, import_paths)


__all__ = ["BACKENDS", "Backend", "LocalBackend", "SolveOutcome", "SolveTask", "Task", "TaskOutcome", "ray_available",
           "ray_backend"]
