"""One thread per process that fires callbacks at deadlines: task timeouts, retry back-offs, request deadlines.

It sleeps on a condition variable until the earliest deadline or until a sooner one is added,
so it never polls; a task without a timeout costs nothing here. Every manager shares it, so a
manager that is dropped without ``shutdown()`` leaves no thread behind, and a cancelled timer
lets go of its callback at once (200,000 tasks finished long before their one-hour timeouts
keep nothing alive): cancelled entries are also purged from the heap once they are the majority.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

__all__ = ["TimerHandle", "TimerQueue", "call_later"]


class TimerHandle:
    """A scheduled callback; :meth:`cancel` it when it is no longer needed."""

    __slots__ = ("when", "callback", "fired", "_queue")

    def __init__(self, when: float, callback: Callable[[], None], queue: TimerQueue) -> None:
        self.when = when
        self.callback: Callable[[], None] | None = callback
        self.fired = False
        self._queue = queue

    @property
    def cancelled(self) -> bool:
        return self.callback is None and not self.fired

    def cancel(self) -> None:
        """Forget the callback (and what it references); idempotent, safe from any thread."""
        if self.callback is not None:
            self._queue.cancel(self)


class TimerQueue:
    """``call_later(delay, fn)`` on a single daemon thread, started on first use."""

    def __init__(self, name: str = "async-task-timers") -> None:
        self._name = name
        self._heap: list[tuple[float, int, TimerHandle]] = []
        self._counter = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._cancelled = 0

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback()`` on the timer thread after ``delay`` seconds (keep it short: it delays later timers)."""
        handle = TimerHandle(time.monotonic() + max(0.0, delay), callback, self)
        with self._cond:
            heapq.heappush(self._heap, (handle.when, next(self._counter), handle))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            elif self._heap[0][2] is handle:
                self._cond.notify()
        return handle

    def stored(self) -> int:
        """Entries held, cancelled ones not yet purged included (bounded: see ``cancel``)."""
        with self._cond:
            return len(self._heap)

    def __len__(self) -> int:
        """Timers still armed."""
        with self._cond:
            return len(self._heap) - self._cancelled

    def cancel(self, handle: TimerHandle) -> None:
        """Cancel ``handle`` and count it, under the lock: the timer thread pops and purges entries
        under the same lock, so the count of cancelled entries in the heap stays exact."""
        with self._cond:
            if handle.callback is None:
                return  # fired or cancelled already
            handle.callback = None
            self._cancelled += 1
            if self._cancelled > 1024 and self._cancelled * 2 > len(self._heap):
                self._heap = [entry for entry in self._heap if entry[2].callback is not None]
                heapq.heapify(self._heap)
                self._cancelled = 0

    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if not self._heap:
                        self._cond.wait()
                        continue
                    when, _, handle = self._heap[0]
                    if handle.callback is None:
                        heapq.heappop(self._heap)
                        self._cancelled -= 1
                        continue
                    delay = when - time.monotonic()
                    if delay <= 0:
                        heapq.heappop(self._heap)
                        callback = handle.callback
                        handle.callback = None  # fired: it counts as neither armed nor cancelled
                        handle.fired = True
                        break
                    self._cond.wait(delay)
            try:
                callback()
            except Exception:  # a failing callback must not stop every later timer
                logger.exception("timer callback failed")
            # Drop the references before sleeping: the last callback must not keep its manager alive.
            del callback, handle


_default = TimerQueue()


def call_later(delay: float, callback: Callable[[], None]) -> TimerHandle:
    """Schedule ``callback`` on the process-wide timer thread."""
    return _default.call_later(delay, callback)
