"""Delivery of task snapshots to listeners, in order, outside the manager's lock.

The manager queues a snapshot under its own lock at each change (so the queue order is the
order of the changes) and calls :meth:`ListenerQueue.deliver` after releasing it. One thread
delivers at a time; a thread that finds another delivering leaves its snapshots to it.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from .tasks import TaskInfo

__all__ = ["ListenerQueue"]

logger = logging.getLogger(__name__)

Listener = Callable[[TaskInfo], None]


class ListenerQueue:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._queue: deque[TaskInfo] = deque()
        self._delivering = False

    @property
    def active(self) -> bool:
        """True when someone listens: the manager makes snapshots only then."""
        return bool(self._listeners)

    def add(self, callback: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners = [*self._listeners, callback]

        def remove() -> None:
            with self._lock:
                self._listeners = [c for c in self._listeners if c is not callback]

        return remove

    def put(self, info: TaskInfo) -> None:
        """Queue a snapshot (the caller holds the manager's lock, which orders the queue)."""
        self._queue.append(info)

    def deliver(self) -> None:
        """Hand queued snapshots to every listener; returns at once if another thread is delivering."""
        if not self._queue:
            return
        with self._lock:
            if self._delivering:
                return  # the thread delivering now will take these too
            self._delivering = True
        while True:
            with self._lock:
                if not self._queue:
                    self._delivering = False
                    return
                callbacks = self._listeners
            while self._queue:
                info = self._queue.popleft()  # atomic: put() may append meanwhile
                for callback in callbacks:
                    try:
                        callback(info)
                    except Exception:
                        logger.exception("task listener failed")
