"""Which worker may run a request: :class:`Worker` (the router's record of one connected worker) and the
routing rule, as pure functions of the registry (no lock, no I/O; :class:`~.router.WorkerRouter` holds the lock).

Routing: the named worker when a request names one (if it is busy, the request waits in that
worker's own queue); otherwise the least loaded worker with a free slot that can run it (it offers
the script's language, or for a runtime-tool call the runtime) and carries every label of the
request's selector.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .requests import RemoteRequest, RemoteUnavailable

__all__ = ["SendFrame", "Worker", "choose_worker", "describe_need", "need_key"]

SendFrame = Callable[[dict[str, Any]], None]
"""Hands one protocol frame (a dict) to a worker's connection; must not block."""


class Worker:
    """One connected worker as the router sees it; ``connection`` is the transport's own (opaque)."""

    __slots__ = (
        "name",
        "capabilities",
        "max_concurrent",
        "send",
        "connection",
        "in_flight",
        "assigned",
        "completed",
        "connected_at",
        "last_seen",
        "running",
        "dropped",
        "cancelled",
        "labels",
        "version",
        "transport",
        "runtimes",
        "started",
        "sends_starts",
        "slot_freed_at",
    )

    def __init__(
        self,
        name: str,
        capabilities: list[str],
        max_concurrent: int,
        send: SendFrame,
        connection: Any = None,
        *,
        labels: dict[str, str] | None = None,
        version: str = "",
        transport: str = "ws",
        runtimes: list[str] | tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.labels: dict[str, str] = dict(labels or {})
        self.version = version
        self.transport = transport
        self.runtimes: list[str] = list(runtimes)
        self.capabilities = list(capabilities)
        self.max_concurrent = max_concurrent
        self.send = send
        self.connection = connection
        self.in_flight: dict[str, RemoteRequest] = {}
        self.assigned = 0
        self.completed = 0
        self.connected_at = time.time()
        self.last_seen = time.time()
        self.running = 0
        self.dropped = False
        # recently cancelled request ids (-> their task ids): their late log lines and results are expected
        self.cancelled: dict[str, str | None] = {}
        self.started: set[str] = set()  # in-flight requests whose process the worker said started
        self.sends_starts = False  # it reported a start once: it speaks the start event
        self.slot_freed_at = self.connected_at

    def can_run(self, request: RemoteRequest) -> bool:
        """Whether this worker offers what ``request`` needs (language or runtime) and has every selector label."""
        runtime = request.runtime
        if runtime is not None:
            if runtime["runtime"] not in self.runtimes:
                return False
        elif request.language not in self.capabilities:
            return False
        labels = request.labels
        return not labels or all(self.labels.get(key) == value for key, value in labels.items())

    def describe(self) -> str:
        """``name [transport] (shell, python; runtimes ...; labels k=v)`` for error messages."""
        parts = [", ".join(self.capabilities) or "no scripts"]
        if self.runtimes:
            parts.append("runtimes " + ", ".join(self.runtimes))
        parts.append("labels " + (", ".join(f"{k}={v}" for k, v in sorted(self.labels.items())) or "none"))
        return f"{self.name} [{self.transport}] ({'; '.join(parts)})"

    def __repr__(self) -> str:
        return f"<Worker {self.name!r} in_flight={len(self.in_flight)}/{self.max_concurrent}>"


def choose_worker(
    workers: dict[str, Worker], request: RemoteRequest, no_worker_message: Callable[[], str]
) -> Worker | None:
    """The worker for ``request``: the named one (its own queue holds it if busy), else the least
    loaded able worker with a free slot; ``None`` when all of those are busy. Raises
    :class:`RemoteUnavailable` (``no_worker``) when no worker in ``workers`` can run it."""
    if request.worker:
        worker = workers.get(request.worker)
        if worker is None:
            names = ", ".join(sorted(workers)) or "none"
            raise RemoteUnavailable(
                "no_worker",
                f"no worker named {request.worker!r} is connected (connected workers: {names})",
            )
        if not worker.can_run(request):
            raise RemoteUnavailable(
                "no_worker", f"worker {worker.describe()} cannot run {describe_need(request)}"
            )
        return worker
    candidates = [w for w in workers.values() if w.can_run(request)]
    if not candidates:
        if not workers:
            raise RemoteUnavailable("no_worker", no_worker_message())
        offered = "; ".join(w.describe() for w in workers.values())
        raise RemoteUnavailable(
            "no_worker", f"no connected worker can run {describe_need(request)} (workers: {offered})"
        )
    free = [w for w in candidates if len(w.in_flight) < w.max_concurrent]
    if not free:
        return None
    return min(free, key=lambda w: (len(w.in_flight) / w.max_concurrent, w.assigned))


def need_key(request: RemoteRequest) -> tuple[Any, ...]:
    """What a request needs of a worker, as a key: requests with the same key wait in one line."""
    runtime = request.runtime
    kind = ("runtime", runtime["runtime"]) if runtime is not None else ("language", request.language)
    return (*kind, tuple(sorted((request.labels or {}).items())))


def describe_need(request: RemoteRequest) -> str:
    """``python commands`` / ``javascript runtime tools``, plus the label selector, for error messages."""
    runtime = request.runtime
    what = f"{runtime['runtime']} runtime tools" if runtime is not None else f"{request.language} commands"
    if request.labels:
        what += " with labels " + ", ".join(f"{k}={v}" for k, v in sorted(request.labels.items()))
    return what
