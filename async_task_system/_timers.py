"""One thread that fires callbacks at deadlines: task timeouts and retry back-offs.

It sleeps on a condition variable until the earliest deadline or until a sooner one is added,
so it never polls; a task without a timeout costs nothing here.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)


class TimerHandle:
    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        # Lazy deletion: the heap entry stays and is skipped when it comes due.
        self.cancelled = True


class TimerQueue:
    """``call_later(delay, fn)`` on a single daemon thread, started on first use."""

    def __init__(self, name: str = "async-task-timers") -> None:
        self._name = name
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        handle = TimerHandle(time.monotonic() + max(0.0, delay), callback)
        with self._cond:
            if self._closed:
                raise RuntimeError("timer queue is closed")
            heapq.heappush(self._heap, (handle.when, next(self._counter), handle))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            elif self._heap[0][2] is handle:
                self._cond.notify()
        return handle

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._heap.clear()
            self._cond.notify()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    if not self._heap:
                        self._cond.wait()
                        continue
                    when, _, handle = self._heap[0]
                    if handle.cancelled:
                        heapq.heappop(self._heap)
                        continue
                    delay = when - time.monotonic()
                    if delay <= 0:
                        heapq.heappop(self._heap)
                        break
                    self._cond.wait(delay)
            try:
                handle.callback()
            except Exception:  # a failing callback must not stop every later timer
                logger.exception("timer callback failed")
