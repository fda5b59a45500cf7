"""One root for the package's exceptions, so ``except AsyncTaskSystemError`` catches every one of ours.

Each exception also derives from the built-in it behaves like (``ValueError`` for a call the
caller must fix, ``LookupError`` for an unknown id, ``RuntimeError`` for a state that forbids the
call), so code written against the built-ins keeps working.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "RemoteExecutionError",
    "AsyncTaskSystemError",
    "TaskValidationError",
    "UnknownTaskError",
    "InvalidTransition",
    "ManagerClosedError",
]


class AsyncTaskSystemError(Exception):
    """The root of every exception this package raises on purpose."""


class TaskValidationError(AsyncTaskSystemError, ValueError):
    """A submit was refused before queueing: unknown name, bad arguments or dependencies.

    The message says how to fix the call (it is shown to the LLM as is).
    """


class UnknownTaskError(AsyncTaskSystemError, LookupError):
    """A task id this manager does not know: never submitted here, or dropped after its result was read."""

    def __str__(self) -> str:  # LookupError would print the repr of its argument
        return str(self.args[0]) if self.args else ""


class InvalidTransition(AsyncTaskSystemError, RuntimeError):
    """Code asked the manager for a move the task state machine does not allow."""


class ManagerClosedError(AsyncTaskSystemError, RuntimeError):
    """The task manager is shut down and accepts no new tasks."""


class RemoteExecutionError(AsyncTaskSystemError, RuntimeError):
    """A remote command did not succeed. ``error_type`` is ``remote_error`` (it ran and failed, e.g. a
    non-zero exit code; ``result`` then holds exit code, stdout and stderr), ``timeout``,
    ``worker_lost``, ``hub_stopped``, ``no_worker``, ``no_hub`` or ``cancelled``.

    Raised by :mod:`async_task_system.remote`; defined beside the other errors so that every layer
    can catch it (runtime tools run on fleet workers too)."""

    def __init__(
        self, error_type: str, message: str, result: Any = None, request_id: str | None = None
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.result = result
        self.request_id = request_id

    def __str__(self) -> str:
        return f"{self.error_type}: {self.args[0]}"
