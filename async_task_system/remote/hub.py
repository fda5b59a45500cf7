"""RemoteHub: the WebSocket server remote workers join, running on its own asyncio loop thread.

The agent process starts it (``attach_remote(agent)`` or ``RemoteHub(manager, token=...).start()``).
Workers connect to ``ws://HOST:PORT`` with ``Authorization: Bearer <token>`` (anything else is
refused with HTTP 401 before the WebSocket opens), register a name and capabilities, and send
heartbeats. The hub is the bridge's transport: it routes each request to the named worker or to
the least loaded one with a free slot (waiting at the hub while all are busy), and turns result
frames into ``handle_remote_response``.

Faults and what they do:

* no worker connected (or none that can run the language, or the named one is absent): the
  request fails at once with ``no_worker`` and a message saying how to start a worker;
* a worker's connection closes, or it sends nothing for ``heartbeat_timeout`` seconds: its
  requests fail with ``worker_lost`` and the connection is closed;
* ``stop()``: every request routed through the hub fails with ``hub_stopped``;
* a malformed frame, an unknown type, a result for a request the worker was not given, or a frame
  over ``max_message_bytes``: the worker gets an ``error`` frame and nothing else changes (frames
  over four times the limit make the WebSocket library close that one connection with 1009).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import threading
import time
from http import HTTPStatus
from typing import Any

try:
    from websockets.asyncio.server import Server, ServerConnection, serve
    from websockets.exceptions import ConnectionClosed
    from websockets.http11 import Request, Response
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "the remote hub needs the websockets library (>= 15): pip install 'async_task_system[remote]'"
    ) from exc

from .._compat import TIMEOUT_ERRORS
from .bridge import RemoteExecutionManager, RemoteRequest, RemoteUnavailable
from .protocol import (
    ProtocolError,
    cancel_frame,
    check_log,
    check_register,
    check_result,
    decode,
    encode,
    error_frame,
    execute_frame,
    registered_frame,
)

__all__ = ["RemoteHub"]

logger = logging.getLogger(__name__)


class _Worker:
    __slots__ = (
        "name",
        "capabilities",
        "max_concurrent",
        "ws",
        "in_flight",
        "assigned",
        "completed",
        "connected_at",
        "last_seen",
        "running",
        "deadline",
        "dropped",
        "cancelled",
    )

    def __init__(self, fields: dict[str, Any], ws: ServerConnection) -> None:
        self.name: str = fields["name"]
        self.capabilities: list[str] = fields["capabilities"]
        self.max_concurrent: int = fields["max_concurrent"]
        self.ws = ws
        self.in_flight: dict[str, RemoteRequest] = {}
        self.assigned = 0
        self.completed = 0
        self.connected_at = time.time()
        self.last_seen = time.time()
        self.running = 0
        self.deadline: asyncio.TimerHandle | None = None
        self.dropped = False
        self.cancelled: dict[
            str, None
        ] = {}  # recently cancelled request ids: their late results are expected


class RemoteHub:
    """A WebSocket hub for remote workers, bound to one task manager's remote bridge.

    Args:
        manager: a ``TaskManager`` (its ``remote_manager`` is used), an ``AsyncAgent`` (its task
            manager's), or a ``RemoteExecutionManager``.
        host: interface to bind; loopback unless you mean to accept workers from other machines.
        port: TCP port; 0 picks a free one (read it back from :attr:`port` / :attr:`url`).
        token: the shared secret workers must present. ``None`` generates one (see :attr:`token`).
        heartbeat_interval: seconds between the heartbeats workers are asked to send.
        heartbeat_timeout: a worker silent this long is declared lost and its requests fail.
        max_message_bytes: larger frames are refused with an error frame.
        register_timeout: seconds a new connection has to send its ``register`` frame.
    """

    def __init__(
        self,
        manager: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        heartbeat_interval: float = 5.0,
        heartbeat_timeout: float = 15.0,
        max_message_bytes: int = 1 << 20,
        register_timeout: float = 10.0,
    ) -> None:
        if heartbeat_timeout <= heartbeat_interval:
            raise ValueError("heartbeat_timeout must be longer than heartbeat_interval")
        manager = getattr(manager, "task_manager", manager)  # an AsyncAgent works too
        self.remote: RemoteExecutionManager = (
            manager if isinstance(manager, RemoteExecutionManager) else manager.remote_manager
        )
        self.host = host
        self.port = port
        self.token = token if token else secrets.token_urlsafe(18)
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.max_message_bytes = max_message_bytes
        self.register_timeout = register_timeout
        self._lock = threading.Lock()
        self._workers_changed = threading.Condition(self._lock)
        self._workers: dict[str, _Worker] = {}
        self._routes: dict[str, _Worker] = {}
        self._backlog: dict[
            str, RemoteRequest
        ] = {}  # waiting at the hub for a free worker slot, oldest first
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Server | None = None
        self._running = False
        self._stopped = False
        self.refused_connections = 0
        self.rejected_frames = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """``ws://HOST:PORT`` for ``async-agent worker --hub``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> RemoteHub:
        """Start listening (returns once the port is bound) and become the bridge's transport."""
        if self._thread is not None:
            raise RuntimeError("this hub was already started; create a new one")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(
            target=self._run_loop, args=(loop,), name="async-task-remote-hub", daemon=True
        )
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._serve(), loop).result(timeout)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(timeout)
            raise
        with self._lock:
            self._running = True
        self.remote.set_transport(self)
        logger.info("remote hub listening on %s", self.url)
        return self

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._authorize,
            max_size=4 * self.max_message_bytes,
            ping_interval=None,  # liveness is the application heartbeat, with its own timeout
            close_timeout=2.0,
        )
        sockets = list(self._server.sockets)
        if sockets:
            self.port = sockets[0].getsockname()[1]

    def stop(self, timeout: float = 5.0) -> None:
        """Stop accepting workers, fail every request routed here (``hub_stopped``), close connections."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._running = False
            routed = list(self._routes) + list(self._backlog)
            self._routes.clear()
            self._backlog.clear()
            for worker in self._workers.values():
                worker.in_flight.clear()
            self._workers_changed.notify_all()
        # The hub stays the transport (refusing with hub_stopped) until another one is set, so new
        # requests fail clearly instead of waiting for a response nothing will deliver.
        for request_id in routed:
            self.remote.fail_request(
                request_id, "hub_stopped", "the remote hub stopped before the command finished"
            )
        loop = self._loop
        if loop is None or self._thread is None:
            return
        if loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self._close_server(), loop).result(timeout)
            except Exception:
                logger.exception("closing the remote hub's server failed")
            loop.call_soon_threadsafe(loop.stop)
        self._thread.join(timeout)

    async def _close_server(self) -> None:
        if self._server is not None:
            self._server.close()  # closes every worker connection with 1001 (going away)
            await self._server.wait_closed()
        for worker in list(self._workers.values()):
            self._drop(worker, "hub stopped")

    def __enter__(self) -> RemoteHub:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ workers

    def workers(self) -> list[dict[str, Any]]:
        """The connected workers: name, capabilities, max_concurrent, in_flight, assigned, completed, times."""
        with self._lock:
            return [
                {
                    "name": w.name,
                    "capabilities": list(w.capabilities),
                    "max_concurrent": w.max_concurrent,
                    "in_flight": len(w.in_flight),
                    "assigned": w.assigned,
                    "completed": w.completed,
                    "running": w.running,
                    "connected_at": w.connected_at,
                    "last_seen": w.last_seen,
                }
                for w in self._workers.values()
            ]

    def wait_for_workers(self, count: int = 1, timeout: float | None = 10.0) -> bool:
        """Block until at least ``count`` workers are registered (True) or ``timeout`` seconds pass (False)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._workers_changed:
            while len(self._workers) < count and not self._stopped:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._workers_changed.wait(remaining)
            return len(self._workers) >= count

    # ------------------------------------------------------------------ transport (any thread)

    def send_request(self, request: RemoteRequest) -> None:
        """Route ``request`` to a worker, or raise :class:`RemoteUnavailable` (``no_worker``/``hub_stopped``)."""
        with self._lock:
            if not self._running:
                raise RemoteUnavailable("hub_stopped", "the remote hub is not running")
            worker = self._choose(request)
            if worker is None:  # every capable worker is busy: wait here for the first free slot
                self._backlog[request.request_id] = request
                return
            self._assign(worker, request)
        self._dispatch([(worker, request)], [])

    def _assign(self, worker: _Worker, request: RemoteRequest) -> None:
        """Book ``request`` on ``worker`` (lock held)."""
        worker.in_flight[request.request_id] = request
        worker.assigned += 1
        self._routes[request.request_id] = worker

    def _pump(self) -> tuple[list[tuple[_Worker, RemoteRequest]], list[tuple[str, RemoteUnavailable]]]:
        """Assign waiting requests to free worker slots, oldest first (lock held).

        Returns what to send and what can no longer run (no connected worker offers its language).
        """
        assigned: list[tuple[_Worker, RemoteRequest]] = []
        failed: list[tuple[str, RemoteUnavailable]] = []
        blocked: set[str] = set()
        for request_id, request in list(self._backlog.items()):
            if request.language in blocked:
                continue
            try:
                worker = self._choose(request)
            except RemoteUnavailable as exc:
                del self._backlog[request_id]
                failed.append((request_id, exc))
                continue
            if worker is None:
                blocked.add(request.language)
                continue
            del self._backlog[request_id]
            self._assign(worker, request)
            assigned.append((worker, request))
        return assigned, failed

    def _dispatch(
        self, assigned: list[tuple[_Worker, RemoteRequest]], failed: list[tuple[str, RemoteUnavailable]]
    ) -> None:
        """Send booked requests and fail the ones that cannot run (lock not held)."""
        for worker, request in assigned:
            frame = encode(
                execute_frame(
                    request.request_id,
                    request.command,
                    request.language,
                    request.timeout,
                    request.env,
                    request.trace,
                )
            )
            self._call_soon(self._send_execute, worker, frame, request.request_id)
        for request_id, exc in failed:
            self.remote.fail_request(request_id, exc.error_type, str(exc.args[0]))

    def _pump_and_dispatch(self) -> None:
        with self._lock:
            if not self._backlog:
                return
            assigned, failed = self._pump()
        self._dispatch(assigned, failed)

    def cancel_request(self, request: RemoteRequest, reason: str) -> None:
        """Tell the worker running ``request`` to kill it (best effort)."""
        with self._lock:
            if self._backlog.pop(request.request_id, None) is not None:
                return  # never sent
            worker = self._routes.pop(request.request_id, None)
            if worker is not None:
                worker.in_flight.pop(request.request_id, None)
                worker.cancelled[request.request_id] = None
                if len(worker.cancelled) > 1000:
                    worker.cancelled.pop(next(iter(worker.cancelled)))
        if worker is not None:
            self._call_soon(self._send_quietly, worker, encode(cancel_frame(request.request_id, reason)))
            self._pump_and_dispatch()

    def _call_soon(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(fn(*args)))
        except RuntimeError:  # the loop has closed
            pass

    def _choose(self, request: RemoteRequest) -> _Worker | None:
        """The worker for ``request``: the named one (its own queue holds it if busy), else the least
        loaded capable worker with a free slot; ``None`` when all of those are busy (lock held)."""
        language = request.language
        if request.worker:
            worker = self._workers.get(request.worker)
            if worker is None:
                names = ", ".join(sorted(self._workers)) or "none"
                raise RemoteUnavailable(
                    "no_worker",
                    f"no worker named {request.worker!r} is connected (connected workers: {names})",
                )
            if language not in worker.capabilities:
                raise RemoteUnavailable(
                    "no_worker",
                    f"worker {worker.name!r} cannot run {language} commands (it offers {', '.join(worker.capabilities)})",
                )
            return worker
        candidates = [w for w in self._workers.values() if language in w.capabilities]
        if not candidates:
            if not self._workers:
                raise RemoteUnavailable(
                    "no_worker",
                    f"no remote worker is connected to the hub at {self.url}; start one with: "
                    f"async-agent worker --hub {self.url} --token <TOKEN> --name <NAME>",
                )
            offered = "; ".join(f"{w.name} ({', '.join(w.capabilities)})" for w in self._workers.values())
            raise RemoteUnavailable(
                "no_worker", f"no connected worker can run {language} commands (workers: {offered})"
            )
        free = [w for w in candidates if len(w.in_flight) < w.max_concurrent]
        if not free:
            return None
        return min(free, key=lambda w: (len(w.in_flight) / w.max_concurrent, w.assigned))

    # ------------------------------------------------------------------ connections (hub loop)

    def _authorize(self, connection: ServerConnection, request: Request) -> Response | None:
        header = request.headers.get("Authorization", "")
        supplied = header[7:].strip() if header[:7].lower() == "bearer " else ""
        if not supplied or not hmac.compare_digest(supplied.encode(), self.token.encode()):
            self.refused_connections += 1
            logger.warning("refused a connection from %s: missing or wrong token", connection.remote_address)
            return connection.respond(HTTPStatus.UNAUTHORIZED, "missing or wrong token\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        worker: _Worker | None = None
        reason = "connection closed"
        try:
            worker = await self._register(ws)
            if worker is None:
                return
            async for raw in ws:
                self._arm(worker)
                await self._on_frame(worker, raw)
        except ConnectionClosed:
            pass
        finally:
            if worker is not None:
                code = ws.close_code
                reason = f"connection closed with code {code}" if code is not None else reason
                self._drop(worker, reason)

    async def _register(self, ws: ServerConnection) -> _Worker | None:
        try:
            raw = await asyncio.wait_for(ws.recv(), self.register_timeout)
        except TIMEOUT_ERRORS:
            await ws.close(1008, "send a register frame first")
            return None
        try:
            self._check_size(raw)
            message = decode(raw)
            if message.get("type") != "register":
                raise ProtocolError(
                    f"the first frame must be a register frame, got type {message.get('type')!r}"
                )
            fields = check_register(message)
        except ProtocolError as exc:
            self.rejected_frames += 1
            await ws.send(encode(error_frame(str(exc))))
            await ws.close(1008, "registration failed")
            return None
        worker = _Worker(fields, ws)
        with self._lock:
            if not self._running:
                replaced = None
                stopped = True
            else:
                stopped = False
                replaced = self._workers.get(worker.name)
                self._workers[worker.name] = worker
                self._workers_changed.notify_all()
        if stopped:
            await ws.close(1001, "hub stopping")
            return None
        if replaced is not None:
            logger.warning("worker %r reconnected; dropping its previous connection", worker.name)
            self._drop(replaced, "replaced by a new connection with the same name")
            asyncio.ensure_future(replaced.ws.close(4000, "replaced by a new connection"))
        await ws.send(
            encode(
                registered_frame(
                    worker.name, self.heartbeat_interval, self.heartbeat_timeout, self.max_message_bytes
                )
            )
        )
        self._arm(worker)
        logger.info("worker %r registered (%s)", worker.name, ", ".join(worker.capabilities))
        self._pump_and_dispatch()  # requests waiting for a free slot may go to the newcomer
        return worker

    def _arm(self, worker: _Worker) -> None:
        """(Re)start the worker's liveness deadline: any frame counts as a heartbeat."""
        worker.last_seen = time.time()
        if worker.deadline is not None:
            worker.deadline.cancel()
        loop = asyncio.get_running_loop()
        worker.deadline = loop.call_later(self.heartbeat_timeout, self._heartbeat_expired, worker)

    def _heartbeat_expired(self, worker: _Worker) -> None:
        logger.warning("worker %r sent nothing for %g s: declared lost", worker.name, self.heartbeat_timeout)
        self._drop(worker, f"no heartbeat for {self.heartbeat_timeout:g} s")
        asyncio.ensure_future(worker.ws.close(4001, "heartbeat timeout"))

    def _drop(self, worker: _Worker, reason: str) -> None:
        with self._lock:
            if worker.dropped:
                return
            worker.dropped = True
            if self._workers.get(worker.name) is worker:
                del self._workers[worker.name]
            lost = list(worker.in_flight)
            worker.in_flight.clear()
            for request_id in lost:
                self._routes.pop(request_id, None)
            self._workers_changed.notify_all()
        if worker.deadline is not None:
            worker.deadline.cancel()
        for request_id in lost:
            self.remote.fail_request(
                request_id,
                "worker_lost",
                f"worker {worker.name!r} was lost ({reason}) while running the command",
            )
        self._pump_and_dispatch()  # waiting requests nobody can run any more fail now
        logger.info("worker %r left: %s", worker.name, reason)

    def _check_size(self, raw: str | bytes) -> None:
        size = len(raw) if isinstance(raw, bytes) or raw.isascii() else len(raw.encode("utf-8"))
        if size > self.max_message_bytes:
            raise ProtocolError(
                f"frame of {size} bytes exceeds the limit of {self.max_message_bytes} bytes; dropped"
            )

    async def _on_frame(self, worker: _Worker, raw: str | bytes) -> None:
        request_id = None
        try:
            self._check_size(raw)
            message = decode(raw)
            kind = message.get("type")
            request_id = message.get("request_id") if isinstance(message.get("request_id"), str) else None
            if kind == "heartbeat":
                running = message.get("running")
                worker.running = running if isinstance(running, int) else worker.running
            elif kind == "log":
                log = check_log(message)
                if log["request_id"] in worker.cancelled:
                    return
                if log["request_id"] not in worker.in_flight:
                    raise ProtocolError(
                        f"log for request {log['request_id']!r}, which this worker is not running"
                    )
                self.remote.handle_remote_log(log["request_id"], log["stream"], log["line"])
            elif kind == "result" or (kind is None and "request_id" in message):
                fields = check_result(message)
                with self._lock:
                    request = worker.in_flight.pop(fields["request_id"], None)
                    if request is not None:
                        self._routes.pop(fields["request_id"], None)
                        worker.completed += 1
                    elif worker.cancelled.pop(fields["request_id"], 0) is None:
                        return  # the answer to a request we cancelled: expected, nothing to do
                if request is None:
                    raise ProtocolError(
                        f"result for request {fields['request_id']!r}, which this worker is not running"
                    )
                self._pump_and_dispatch()  # a slot on this worker is free again
                self.remote.complete(
                    fields["request_id"],
                    fields["success"],
                    fields["result"],
                    fields["error"],
                    fields["error_type"],
                )
            else:
                raise ProtocolError(f"unknown frame type {kind!r}: expected heartbeat, log or result")
        except ProtocolError as exc:
            self.rejected_frames += 1
            logger.warning("worker %r sent a bad frame: %s", worker.name, exc)
            await self._send_quietly(worker, encode(error_frame(str(exc), request_id)))

    async def _send_execute(self, worker: _Worker, frame: str, request_id: str) -> None:
        try:
            await worker.ws.send(frame)
        except Exception as exc:  # the connection went away between routing and sending
            with self._lock:
                known = worker.in_flight.pop(request_id, None) is not None
                self._routes.pop(request_id, None)
            if known:
                self.remote.fail_request(
                    request_id, "worker_lost", f"could not send the command to worker {worker.name!r}: {exc}"
                )
                self._pump_and_dispatch()

    @staticmethod
    async def _send_quietly(worker: _Worker, frame: str) -> None:
        try:
            await worker.ws.send(frame)
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<RemoteHub {self.url} workers={len(self._workers)} routed={len(self._routes)}>"
