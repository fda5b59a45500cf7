"""Live output lines for SSE clients: a bounded broker that hands lines from any thread to event loops."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

__all__ = ["LogBroker"]


class _Subscriber:
    __slots__ = ("task_id", "loop", "queue", "overflow")

    def __init__(self, task_id: str, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.task_id = task_id
        self.loop = loop
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(size)
        self.overflow = False


class LogBroker:
    """Live output lines and end-of-task notices for SSE clients, at most ``max_clients`` at once.

    ``publish`` may be called from any thread; each subscriber's queue lives on its own event loop
    and holds at most ``queue_size`` items: a client that falls behind is marked ``overflow`` and
    its stream ends (the browser reconnects with ``Last-Event-ID`` and catches up from the store).
    """

    def __init__(self, max_clients: int = 64, queue_size: int = 1000) -> None:
        self.max_clients = max_clients
        self.queue_size = queue_size
        self._lock = threading.Lock()
        self._subscribers: dict[str, set[_Subscriber]] = {}
        self._count = 0

    @property
    def clients(self) -> int:
        """Streams open now."""
        return self._count

    def subscribe(self, task_id: str) -> _Subscriber | None:
        """A subscription on the running loop, or ``None`` when ``max_clients`` streams are open."""
        subscriber = _Subscriber(task_id, asyncio.get_running_loop(), self.queue_size)
        with self._lock:
            if self._count >= self.max_clients:
                return None
            self._count += 1
            self._subscribers.setdefault(task_id, set()).add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: _Subscriber) -> None:
        with self._lock:
            group = self._subscribers.get(subscriber.task_id)
            if group is not None and subscriber in group:
                group.discard(subscriber)
                self._count -= 1
                if not group:
                    del self._subscribers[subscriber.task_id]

    def publish(self, task_id: str, kind: str, payload: Any = None) -> None:
        """Hand ``(kind, payload)`` to every subscriber of ``task_id`` (``log``, ``end`` or ``close``)."""
        with self._lock:
            group = list(self._subscribers.get(task_id, ()))
        for subscriber in group:
            try:
                subscriber.loop.call_soon_threadsafe(self._put, subscriber, kind, payload)
            except RuntimeError:  # its loop is closed: the stream is gone
                self.unsubscribe(subscriber)

    def close_all(self) -> None:
        """End every stream (the platform stops)."""
        with self._lock:
            everyone = [s for group in self._subscribers.values() for s in group]
        for subscriber in everyone:
            try:
                subscriber.loop.call_soon_threadsafe(self._put, subscriber, "close", None)
            except RuntimeError:
                pass

    @staticmethod
    def _put(subscriber: _Subscriber, kind: str, payload: Any) -> None:
        if kind != "log":  # end / close always get through: make room by dropping a line
            if subscriber.queue.full():
                subscriber.overflow = True
                subscriber.queue.get_nowait()
            subscriber.queue.put_nowait((kind, payload))
            return
        try:
            subscriber.queue.put_nowait((kind, payload))
        except asyncio.QueueFull:
            subscriber.overflow = True
