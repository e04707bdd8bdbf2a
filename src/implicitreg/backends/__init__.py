"""Where populations run. Backends return results; only the driver writes the store."""

from implicitreg.backends.base import Backend, Task, TaskOutcome
from implicitreg.backends.local import LocalBackend

__all__ = ["Backend", "LocalBackend", "Task", "TaskOutcome"]
