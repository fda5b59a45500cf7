"""The callbacks of ended runs: queued under the scheduler's lock, called outside it.

A callback is ``callback(schedule, run)`` (the schedule's ``to_dict()`` and the
:class:`~.records.ScheduleRun`), plain or ``async def``: a coroutine runs on the loop that was
running when the schedule was made (or its callback set), else on the package's background loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from ..core.loop import background_loop
from .records import ScheduledTask, ScheduleRun

__all__ = ["CallbackQueue", "running_loop"]

logger = logging.getLogger(__name__)


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or None."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class CallbackQueue:
    """Ended runs waiting for their schedule's callback (``add`` may be called under a lock)."""

    def __init__(self) -> None:
        self._due: deque[tuple[ScheduledTask, ScheduleRun]] = deque()

    def add(self, task: ScheduledTask, run: ScheduleRun) -> None:
        self._due.append((task, run))

    def flush(self) -> None:
        """Call the callbacks queued so far, in this thread; a failing callback is logged."""
        while self._due:
            try:
                task, run = self._due.popleft()
            except IndexError:  # another thread took the last one
                return
            call_back(task, run)


def call_back(task: ScheduledTask, run: ScheduleRun) -> None:
    """Call ``task``'s callback for ``run`` (a coroutine goes to its loop); errors are logged."""
    callback = task.callback
    if callback is None:
        return
    try:
        outcome = callback(task.to_dict(), run)
        if asyncio.iscoroutine(outcome):
            loop = task.loop
            if loop is None or loop.is_closed():
                loop = background_loop()
            asyncio.run_coroutine_threadsafe(outcome, loop)
    except Exception:
        logger.exception("callback of schedule %s failed", task.id)
