"""Where the scheduler reads the time and arms its one timer: the wall clock, or a manual one for tests."""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from ..core.manager import call_later
from .values import UTC, to_epoch

__all__ = ["Clock", "SystemClock", "ManualClock", "MAX_SLEEP"]

MAX_SLEEP = 3600.0  # the timer re-checks the wall clock at least hourly (a clock set forward or back)


@runtime_checkable
class Clock(Protocol):
    """Where the scheduler reads the time and arms its one timer."""

    def time(self) -> float:
        """Seconds since the epoch (UTC)."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> Any:
        """Call ``callback()`` at ``when`` (epoch seconds); the result has ``cancel()``."""
        ...


class SystemClock:
    """The wall clock, with the manager's shared timer thread (sleeps at most an hour, to follow clock changes)."""

    def time(self) -> float:
        return time.time()

    def call_at(self, when: float, callback: Callable[[], None]) -> Any:
        return call_later(min(MAX_SLEEP, max(0.0, when - time.time())), callback)


class _ManualTimer:
    __slots__ = ("when", "callback")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback: Callable[[], None] | None = callback

    def cancel(self) -> None:
        self.callback = None


class ManualClock:
    """A clock that moves only when told: for tests of fire times, misfires and catch-up.

    :meth:`advance` steps through every timer due on the way, at its own time (a process that
    was on time throughout); :meth:`jump` moves the time first and then fires what is due, all of
    it late (a process that was stopped or stalled). Callbacks run in the calling thread.
    """

    def __init__(self, start: float | datetime | str = "2024-01-01T00:00:00+00:00") -> None:
        self._now = to_epoch(start, UTC, "start")
        self._timers: list[tuple[float, int, _ManualTimer]] = []
        self._counter = itertools.count()
        self._lock = threading.RLock()

    def time(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> _ManualTimer:
        timer = _ManualTimer(when, callback)
        with self._lock:
            heapq.heappush(self._timers, (when, next(self._counter), timer))
        return timer

    @property
    def armed(self) -> int:
        """How many timers wait (the scheduler keeps at most one)."""
        with self._lock:
            return sum(1 for _, _, timer in self._timers if timer.callback is not None)

    def advance(self, seconds: float) -> None:
        """Move forward ``seconds``, firing each timer at its due time on the way."""
        self._move(self._now + seconds, on_time=True)

    def jump(self, seconds: float) -> None:
        """Move forward ``seconds`` at once, then fire every timer now due (late)."""
        self._move(self._now + seconds, on_time=False)

    def _move(self, target: float, on_time: bool) -> None:
        if not on_time:
            self._now = max(self._now, target)
        while True:
            with self._lock:
                while self._timers and self._timers[0][2].callback is None:
                    heapq.heappop(self._timers)
                if not self._timers or self._timers[0][0] > target:
                    break
                when, _, timer = heapq.heappop(self._timers)
                callback, timer.callback = timer.callback, None
                self._now = max(self._now, when)
            if callback is not None:
                callback()
        self._now = max(self._now, target)
