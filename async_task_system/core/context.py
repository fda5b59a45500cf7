"""Which task the running code belongs to: the context variables behind ``get_current_task_id`` and friends.

Kept apart from the manager so that the code that runs an attempt (``_attempt``) can set them
without importing the manager. In another process (a process pool, a Dask worker) the task id is
known but its manager is not: ``get_task_manager()`` is then ``None`` and progress reports and
cancellation checks are no-ops.
"""

from __future__ import annotations

import contextvars
from typing import Any, Protocol


class TaskManager(Protocol):
    """What the context needs of the manager running a task (the real one is
    :class:`async_task_system.core.manager.TaskManager`; named here so that this module, which the
    manager's own parts import, does not import the manager)."""

    def is_cancel_requested(self, task_id: str) -> bool: ...

    def report_progress(self, task_id: str, fraction: float | None, message: str | None) -> bool: ...


__all__ = [
    "current_task",
    "active_manager",
    "get_current_task_id",
    "get_task_manager",
    "cancellation_requested",
    "report_progress",
]

current_task: contextvars.ContextVar[tuple[TaskManager | None, str] | None] = contextvars.ContextVar(
    "async_task_system_current_task", default=None
)
active_manager: contextvars.ContextVar[TaskManager | None] = contextvars.ContextVar(
    "async_task_system_active_manager", default=None
)


def get_current_task_id() -> str | None:
    """The id of the task whose code is running in this context, or ``None`` outside a task."""
    current = current_task.get()
    return None if current is None else current[1]


def get_task_manager() -> TaskManager | None:
    """The manager running the current task, else the one an ``AsyncAgent`` run made active."""
    current = current_task.get()
    if current is not None and current[0] is not None:
        return current[0]
    return active_manager.get()


def cancellation_requested() -> bool:
    """True when the current task was cancelled or timed out; long-running code may check it and stop."""
    current = current_task.get()
    if current is None or current[0] is None:
        return False
    manager, task_id = current
    return manager.is_cancel_requested(task_id)


def report_progress(fraction: float | None = None, message: str | None = None) -> bool:
    """Report the current task's progress (``fraction`` from 0 to 1, and/or a short ``message``).

    ``check_task``, ``list_tasks`` and listeners see it. Returns False outside a task (or in
    another process, where the manager is not reachable).
    """
    current = current_task.get()
    if current is None or current[0] is None:
        return False
    manager: Any = current[0]
    return bool(manager.report_progress(current[1], fraction, message))
