"""WorkerRouter: the registry of connected workers and the routing of requests to them, with no I/O.

Why apart from the hub: the WebSocket hub is one transport, gRPC is the next, and both must feed
one registry and one router (the way ``websockets`` keeps its protocol logic apart from I/O). A
transport authenticates connections, reads and writes frames (:mod:`.protocol`), enforces sizes,
and turns what happens into calls here:

=====================================  ==========================================================
transport event                        router call
=====================================  ==========================================================
a worker registered                    ``join(Worker(name, capabilities, max_concurrent, send, ...))``
any frame received / a heartbeat       ``seen(worker)`` / ``heartbeat(worker, running)``
a started frame                        ``started(worker, request_id, started_at)``
a log or result frame                  ``log(worker, ...)`` / ``result(worker, ...)``
connection closed, or silent too long  ``leave(worker, reason)``
a frame could not be delivered later   ``send_failed(worker, request_id, error)``
the bridge sends / cancels a request   ``send_request(request)`` / ``cancel_request(request, ...)``
a periodic tick (the hub's loop)       ``expire_unstarted(bound)``
the transport starts / stops           ``open()`` / ``close(error_type, message)``
=====================================  ==========================================================

The router answers through each worker's ``send(frame)`` callable (frames are :mod:`.protocol`
dicts: ``execute`` and ``cancel``; the transport encodes them) and through the bridge's public
methods ``complete``, ``fail_request`` and ``handle_remote_log``.

Routing: the named worker when a request names one (if it is busy, the request waits in that
worker's own queue); otherwise the least loaded worker with a free slot that can run it (it offers
the script's language, or for a runtime-tool call the runtime) and carries every label of the
request's selector. When all of those are busy the request waits here, oldest first, for the first
slot that frees (or the first worker that joins); if no worker able to run it is left, it fails
with ``no_worker`` and a message listing the connected workers (their capabilities and labels).

Workers joined through any transport share this registry: :class:`Worker` says which
(``transport``: ``"ws"`` or ``"grpc"``), with the ``labels``, ``version`` and ``runtimes`` it
registered.

Ids: an ``execute`` frame carries the hub's ``request_id`` (one attempt) and the operator's
``task_id``. Workers answer with the ``request_id``; an answer that names the ``task_id`` instead (a
gRPC agent built from seed 002's proto only knows ``TaskRequest.task_id``) is matched to the request
that worker runs for that task.

Starts: a worker that reports ``started`` (its process spawned) makes the request count as running
on it (``running`` in :meth:`workers`); a start for a request it is not running, a second one, or one
after the result is ignored and counted (:attr:`ignored_starts`), never an error. Once a worker has
reported a start, a request it was sent that neither starts nor ends within ``bound`` seconds of a
free slot (:meth:`expire_unstarted`) fails with ``start_timeout`` (a retry may re-queue it).

Threads: one lock guards the registry, and every method is safe from any thread (the bridge calls
``send_request`` / ``cancel_request`` from task threads and timers, a transport calls the rest
from its own loop). Sends and bridge callbacks are always made outside the lock, so a ``send``
must not block (a transport queues the frame on its loop). If it raises, the connection counts as
broken: the request fails with ``worker_lost`` and the worker leaves. A failure found later
(after the frame was queued) is reported with ``send_failed``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from .listeners import Listeners
from .protocol import ProtocolError, cancel_frame, execute_frame
from .requests import RemoteRequest, RemoteUnavailable
from .routing import SendFrame, Worker, choose_worker, need_key

__all__ = ["RequestOutcomes", "SendFrame", "Worker", "WorkerRouter"]

logger = logging.getLogger(__name__)

_REMEMBERED_CANCELS = 1000


class RequestOutcomes(Protocol):
    """What the router reports to: ``RemoteExecutionManager``'s public methods for transports."""

    def complete(
        self, request_id: str, success: bool, result: Any, error: str | None, error_type: str | None
    ) -> bool: ...

    def fail_request(self, request_id: str, error_type: str, message: str) -> bool: ...

    def handle_remote_log(self, request_id: str, stream: str, line: str) -> bool: ...

    def handle_remote_start(self, request_id: str, started_at: float) -> bool: ...


def _default_no_worker_message() -> str:
    return "no remote worker is connected"


class WorkerRouter:
    """Worker registry and request routing for one bridge; no I/O (see the module docstring).

    Args:
        remote: where outcomes go, normally the ``RemoteExecutionManager``.
        no_worker_message: builds the error text when no worker at all is connected (a transport
            says how to start one for its own address).
    """

    def __init__(
        self, remote: RequestOutcomes, *, no_worker_message: Callable[[], str] = _default_no_worker_message
    ) -> None:
        self.remote = remote
        self.no_worker_message = no_worker_message
        self._lock = threading.Lock()
        self._workers_changed = threading.Condition(self._lock)
        self._workers: dict[str, Worker] = {}
        self._routes: dict[str, Worker] = {}
        self._backlog: dict[str, RemoteRequest] = {}  # waiting for a free worker slot, oldest first
        self._open = False
        self._closed = False
        self._listeners = Listeners("worker {0} listener", logger)
        self.ignored_starts = 0

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Start accepting workers and requests (a transport calls this once it listens)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("this router was closed; create a new one")
            self._open = True

    @property
    def accepting(self) -> bool:
        """True between :meth:`open` and :meth:`close`."""
        return self._open

    def close(self, error_type: str = "hub_stopped", message: str = "the transport stopped") -> int:
        """Refuse workers and requests from now on and fail every request routed here; returns how many."""
        with self._lock:
            if self._closed:
                return 0
            self._closed = True
            self._open = False
            routed = list(self._routes) + list(self._backlog)
            self._routes.clear()
            self._backlog.clear()
            for worker in self._workers.values():
                worker.in_flight.clear()
            self._workers_changed.notify_all()
        for request_id in routed:
            self.remote.fail_request(request_id, error_type, message)
        return len(routed)

    # ------------------------------------------------------------------ registry

    def join(self, worker: Worker) -> None:
        """Register ``worker``.

        Raises :class:`RemoteUnavailable`: ``hub_stopped`` when not accepting, ``name_taken`` while
        a live worker has the same name. A second connection never takes over a worker's name or
        its work: a worker that reconnects is let in once its old connection is gone (closed, or
        silent past the heartbeat timeout).
        """
        with self._lock:
            if not self._open:
                raise RemoteUnavailable("hub_stopped", "not accepting workers")
            if worker.name in self._workers:
                raise RemoteUnavailable(
                    "name_taken",
                    f"a worker named {worker.name!r} is connected; a reconnecting worker is accepted once "
                    "its previous connection is gone",
                )
            self._workers[worker.name] = worker
            self._workers_changed.notify_all()
        logger.info("worker joined: %s, %d slot(s)", worker.describe(), worker.max_concurrent)
        self._announce("joined", self._worker_info(worker))
        self.pump(workers_changed=True)  # requests waiting for a free slot may go to the newcomer

    def has_worker(self, name: str) -> bool:
        """Whether a worker named ``name`` is registered now."""
        with self._lock:
            return name in self._workers

    def leave(self, worker: Worker, reason: str) -> list[str]:
        """Forget ``worker`` and fail its in-flight requests with ``worker_lost``; idempotent."""
        info = self._worker_info(worker) if self._listeners and not worker.dropped else None
        with self._lock:
            if worker.dropped:
                return []
            worker.dropped = True
            if self._workers.get(worker.name) is worker:
                del self._workers[worker.name]
            lost = list(worker.in_flight)
            worker.in_flight.clear()
            worker.started.clear()
            for request_id in lost:
                self._routes.pop(request_id, None)
            self._workers_changed.notify_all()
        for request_id in lost:
            self.remote.fail_request(
                request_id,
                "worker_lost",
                f"worker {worker.name!r} was lost ({reason}) while running the command",
            )
        self.pump(workers_changed=True)  # waiting requests nobody can run any more fail now
        logger.info(
            "worker left: %s: %s%s",
            worker.describe(),
            reason,
            f"; {len(lost)} request(s) in flight failed (worker_lost)" if lost else "",
        )
        if info is not None:
            self._announce("left", {**info, "reason": reason})
        return lost

    def add_listener(self, callback: Callable[[str, dict[str, Any]], None]) -> Callable[[], None]:
        """Call ``callback(event, info)`` when a worker ``"joined"`` or ``"left"``; returns a remover.

        ``info`` is the worker's dict as in :meth:`workers` (plus ``reason`` for ``"left"``). Callbacks
        run outside the lock, in the transport's thread (keep them short); exceptions are logged.
        """
        return self._listeners.add(callback)

    def _worker_info(self, worker: Worker) -> dict[str, Any]:
        """``worker``'s entry of :meth:`workers` (it must still be registered), else its name."""
        return next((info for info in self.workers() if info["name"] == worker.name), {"name": worker.name})

    def _announce(self, event: str, info: dict[str, Any]) -> None:
        self._listeners(event, info)

    @staticmethod
    def seen(worker: Worker) -> None:
        """Note a sign of life (any frame)."""
        worker.last_seen = time.time()

    @staticmethod
    def heartbeat(worker: Worker, running: int) -> None:
        """Note the number of scripts the worker says it runs."""
        worker.running = running

    def connected(self) -> list[Worker]:
        """The workers registered now."""
        with self._lock:
            return list(self._workers.values())

    @property
    def routed(self) -> int:
        """Requests sent to a worker or waiting here, not yet answered."""
        with self._lock:
            return len(self._routes) + len(self._backlog)

    def workers(self) -> list[dict[str, Any]]:
        """The connected workers: name, transport, capabilities, runtimes, labels, version,
        max_concurrent, in_flight, assigned, completed, running, times."""
        with self._lock:
            return [
                {
                    "name": w.name,
                    "transport": w.transport,
                    "capabilities": list(w.capabilities),
                    "runtimes": list(w.runtimes),
                    "labels": dict(w.labels),
                    "version": w.version,
                    "max_concurrent": w.max_concurrent,
                    "in_flight": len(w.in_flight),
                    "assigned": w.assigned,
                    "completed": w.completed,
                    # what the platform knows (started, not ended) for a worker that reports starts;
                    # else its last heartbeat's figure
                    "running": len(w.started) if w.sends_starts else w.running,
                    "reported_running": w.running,
                    "started": len(w.started),
                    "sends_starts": w.sends_starts,
                    "connected_at": w.connected_at,
                    "last_seen": w.last_seen,
                }
                for w in self._workers.values()
            ]

    def wait_for_workers(self, count: int = 1, timeout: float | None = 10.0) -> bool:
        """Block until at least ``count`` workers are registered (True) or ``timeout`` seconds pass (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._workers_changed:
            while len(self._workers) < count and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._workers_changed.wait(remaining)
            return len(self._workers) >= count

    # ------------------------------------------------------------------ frames from workers

    def log(self, worker: Worker, request_id: str, stream: str, line: str) -> bool:
        """Pass one output line on; False for a request just cancelled; ProtocolError if not ``worker``'s."""
        with self._lock:
            request_id = self._resolve(worker, request_id)
            if request_id in worker.cancelled:
                return False
            known = request_id in worker.in_flight
        if not known:
            raise ProtocolError(f"log for request {request_id!r}, which this worker is not running")
        self.remote.handle_remote_log(request_id, stream, line)
        return True

    def result(
        self,
        worker: Worker,
        request_id: str,
        success: bool,
        result: Any,
        error: str | None,
        error_type: str | None = None,
    ) -> bool:
        """Complete a request from ``worker``'s answer and free its slot.

        Returns False for the expected answer to a request that was cancelled; raises
        :class:`ProtocolError` (and changes nothing) for a request this worker was not given.
        """
        with self._lock:
            request_id = self._resolve(worker, request_id)
            request = worker.in_flight.pop(request_id, None)
            if request is not None:
                self._routes.pop(request_id, None)
                worker.completed += 1
                worker.started.discard(request_id)
                worker.slot_freed_at = time.time()
            elif request_id in worker.cancelled:
                del worker.cancelled[request_id]
                return False
        if request is None:
            raise ProtocolError(f"result for request {request_id!r}, which this worker is not running")
        self.pump()  # a slot on this worker is free again
        self.remote.complete(request_id, success, result, error, error_type)
        return True

    def started(self, worker: Worker, request_id: str, started_at: float | None = None) -> bool:
        """``worker`` spawned the process of ``request_id`` (at ``started_at``, epoch seconds; now if None).

        Returns False, changing nothing but :attr:`ignored_starts`, for a request this worker is not
        running (unknown, another worker's, already answered) or one it reported started before.
        """
        with self._lock:
            worker.sends_starts = True
            request_id = self._resolve(worker, request_id)
            fresh = request_id in worker.in_flight and request_id not in worker.started
            if fresh:
                worker.started.add(request_id)
            else:
                self.ignored_starts += 1
        if not fresh:
            logger.debug("ignored a start from worker %r for request %r", worker.name, request_id)
            return False
        self.remote.handle_remote_start(request_id, time.time() if started_at is None else started_at)
        return True

    def expire_unstarted(self, bound: float, now: float | None = None) -> list[str]:
        """Fail requests sent to start-reporting workers that neither started nor ended within ``bound``
        seconds of being sent with a free slot (error type ``start_timeout``); returns their ids."""
        now = time.time() if now is None else now
        expired: list[tuple[Worker, RemoteRequest]] = []
        with self._lock:
            for worker in self._workers.values():
                if not worker.sends_starts or len(worker.started) >= worker.max_concurrent:
                    continue  # no start events, or every slot busy: a request may wait there
                for request_id, request in list(worker.in_flight.items()):
                    if request_id in worker.started:
                        continue
                    since = max(request.sent_at or now, worker.slot_freed_at)
                    if now - since >= bound:
                        del worker.in_flight[request_id]
                        self._routes.pop(request_id, None)
                        worker.cancelled[request_id] = request.task_id
                        expired.append((worker, request))
        for worker, request in expired:
            self.remote.fail_request(
                request.request_id,
                "start_timeout",
                f"worker {worker.name!r} neither started nor answered the command within {bound:g} s",
            )
            try:
                worker.send(cancel_frame(request.request_id, "start_timeout", request.task_id))
            except Exception:
                logger.debug("could not send a cancel to worker %r", worker.name, exc_info=True)
        if expired:
            self.pump()
        return [request.request_id for _worker, request in expired]

    def send_failed(self, worker: Worker, request_id: str, error: BaseException) -> None:
        """An ``execute`` frame could not be delivered: fail the request with ``worker_lost``."""
        if self._undeliverable(worker, request_id, error):
            self.pump()

    # ------------------------------------------------------------------ requests from the bridge

    def send_request(self, request: RemoteRequest) -> None:
        """Route ``request`` to a worker, or raise :class:`RemoteUnavailable` (``no_worker``/``hub_stopped``)."""
        with self._lock:
            if not self._open:
                raise RemoteUnavailable("hub_stopped", "the remote hub is not running")
            worker = choose_worker(self._workers, request, self.no_worker_message)
            if worker is None:  # every capable worker is busy: wait here for the first free slot
                self._backlog[request.request_id] = request
                return
            self._assign(worker, request)
        self._dispatch([(worker, request)], [])

    def cancel_request(self, request: RemoteRequest, reason: str) -> None:
        """Drop a waiting request, or tell the worker running it to kill it (best effort)."""
        with self._lock:
            if self._backlog.pop(request.request_id, None) is not None:
                return  # never sent
            worker = self._routes.pop(request.request_id, None)
            if worker is not None:
                worker.in_flight.pop(request.request_id, None)
                worker.started.discard(request.request_id)
                worker.cancelled[request.request_id] = request.task_id
                if len(worker.cancelled) > _REMEMBERED_CANCELS:
                    worker.cancelled.pop(next(iter(worker.cancelled)))
        if worker is not None:
            try:
                worker.send(cancel_frame(request.request_id, reason, request.task_id))
            except Exception:  # best effort: a worker that cannot be told will be lost anyway
                logger.debug("could not send a cancel to worker %r", worker.name, exc_info=True)
            self.pump()

    def pump(self, workers_changed: bool = False) -> None:
        """Send waiting requests to free slots, oldest first; with ``workers_changed`` (one joined
        or left) also fail those no connected worker can run any more."""
        with self._lock:
            if not self._backlog:
                return
            assigned, failed = self._pump_locked(workers_changed)
        self._dispatch(assigned, failed)

    # ------------------------------------------------------------------ internals

    def _assign(self, worker: Worker, request: RemoteRequest) -> None:
        """Book ``request`` on ``worker`` (lock held)."""
        worker.in_flight[request.request_id] = request
        worker.assigned += 1
        self._routes[request.request_id] = worker
        request.sent_at = time.time()
        request.sent_to = worker.name

    @staticmethod
    def _resolve(worker: Worker, request_id: str) -> str:
        """The request ``worker`` runs (or just had cancelled) for an id that may be its task id (lock held)."""
        if request_id in worker.in_flight or request_id in worker.cancelled:
            return request_id
        for candidate, request in worker.in_flight.items():
            if request.task_id == request_id:
                return candidate
        for candidate, task_id in reversed(worker.cancelled.items()):
            if task_id == request_id:
                return candidate
        return request_id

    def _pump_locked(
        self, full_scan: bool
    ) -> tuple[list[tuple[Worker, RemoteRequest]], list[tuple[str, RemoteUnavailable]]]:
        """Book waiting requests on free slots (lock held): what to send and what can no longer run.

        Unless ``full_scan``, the scan stops once no worker has a free slot: a freed slot then
        costs a look at the first requests waiting, not at every one (a backlog of thousands made
        each answer from a worker cost a scan of all of them)."""
        assigned: list[tuple[Worker, RemoteRequest]] = []
        failed: list[tuple[str, RemoteUnavailable]] = []
        blocked: set[tuple[Any, ...]] = set()
        free = sum(max(0, w.max_concurrent - len(w.in_flight)) for w in self._workers.values())
        for request_id, request in self._backlog.items():
            if free <= 0 and not full_scan:
                break
            need = need_key(request)
            if need in blocked:
                continue
            try:
                worker = choose_worker(self._workers, request, self.no_worker_message)
            except RemoteUnavailable as exc:
                failed.append((request_id, exc))
                continue
            if worker is None:
                blocked.add(need)
                continue
            self._assign(worker, request)  # books the slot: the next choice sees it taken
            assigned.append((worker, request))
            free -= 1
        for request_id, _exc in failed:  # not while iterating the backlog
            del self._backlog[request_id]
        for _worker, request in assigned:
            del self._backlog[request.request_id]
        return assigned, failed

    def _dispatch(
        self, assigned: list[tuple[Worker, RemoteRequest]], failed: list[tuple[str, RemoteUnavailable]]
    ) -> None:
        """Send booked requests and fail the ones that cannot run (lock not held)."""
        broken: dict[Worker, str] = {}
        for worker, request in assigned:
            frame = execute_frame(
                request.request_id,
                request.command,
                request.language,
                request.timeout,
                request.env,
                request.trace,
                request.runtime,
                request.task_id,
            )
            try:
                worker.send(frame)
            except Exception as exc:  # its connection is broken: nothing more goes there
                self._undeliverable(worker, request.request_id, exc)
                broken.setdefault(worker, str(exc))
        for request_id, exc in failed:
            self.remote.fail_request(request_id, exc.error_type, str(exc.args[0]))
        for worker, error in broken.items():
            self.leave(worker, f"could not send to it: {error}")

    def _undeliverable(self, worker: Worker, request_id: str, error: BaseException) -> bool:
        """Fail a request whose ``execute`` frame never reached ``worker``; False if it was answered already."""
        with self._lock:
            known = worker.in_flight.pop(request_id, None) is not None
            if known:
                self._routes.pop(request_id, None)
                worker.started.discard(request_id)
        if known:
            self.remote.fail_request(
                request_id, "worker_lost", f"could not send the command to worker {worker.name!r}: {error}"
            )
        return known

    def __repr__(self) -> str:
        return f"<WorkerRouter workers={len(self._workers)} routed={len(self._routes)}>"
