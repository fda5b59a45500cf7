"""Module-level targets for the process-pool test (a process pool imports them by name)."""

from __future__ import annotations

import os

from async_task_system import get_current_task_id, inject_context


def where_am_i(tag: str) -> dict:
    """Runs in a pool process: reports its pid, the task it runs and the trace context it sees."""
    return {"tag": tag, "pid": os.getpid(), "task_id": get_current_task_id(), "carrier": inject_context()}


def fails_remotely() -> None:
    raise ValueError("raised in a worker process")
