"""One root for the package's exceptions, so ``except AsyncTaskSystemError`` catches every one of ours.

Each exception also derives from the built-in it behaves like (``ValueError`` for a call the
caller must fix, ``LookupError`` for an unknown id, ``RuntimeError`` for a state that forbids the
call), so code written against the built-ins keeps working.
"""

from __future__ import annotations

__all__ = [
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
