"""RemoteHub: the WebSocket server remote workers join, running on its own asyncio loop thread.

The agent process starts it (``attach_remote(agent)`` or ``RemoteHub(manager, token=...).start()``).
Workers connect to ``ws://HOST:PORT`` with ``Authorization: Bearer <token>`` (anything else is
refused with HTTP 401 before the WebSocket opens), register a name and capabilities, and send
heartbeats. The hub is the bridge's transport, and only the WebSocket part of it: it authorizes
connections, checks frames (:mod:`.protocol`) and their sizes, watches heartbeats, picks close
codes, and hands everything else to a :class:`~.router.WorkerRouter`, which keeps the registry of
workers and routes each request to the named worker or to the least loaded one with a free slot
(waiting at the hub while all are busy), and turns result frames into ``complete`` on the bridge.

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
    check_log,
    check_register,
    check_result,
    decode,
    encode,
    error_frame,
    registered_frame,
)
from .router import Worker, WorkerRouter

__all__ = ["RemoteHub"]

logger = logging.getLogger(__name__)


class _Link:
    """The hub's side of one worker connection: the socket and its liveness deadline (hub loop only)."""

    __slots__ = ("ws", "deadline")

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.deadline: asyncio.TimerHandle | None = None


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
        self.router = WorkerRouter(self.remote, no_worker_message=self._no_worker_message)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: Server | None = None
        self._stop_lock = threading.Lock()
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
        self.router.open()
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
        with self._stop_lock:
            if self._stopped:
                return
            self._stopped = True
        # The hub stays the transport (refusing with hub_stopped) until another one is set, so new
        # requests fail clearly instead of waiting for a response nothing will deliver.
        self.router.close("hub_stopped", "the remote hub stopped before the command finished")
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
        for worker in self.router.connected():
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
        return self.router.workers()

    def wait_for_workers(self, count: int = 1, timeout: float | None = 10.0) -> bool:
        """Block until at least ``count`` workers are registered (True) or ``timeout`` seconds pass (False)."""
        return self.router.wait_for_workers(count, timeout)

    # ------------------------------------------------------------------ transport (any thread)

    def send_request(self, request: RemoteRequest) -> None:
        """Route ``request`` to a worker, or raise :class:`RemoteUnavailable` (``no_worker``/``hub_stopped``)."""
        self.router.send_request(request)

    def cancel_request(self, request: RemoteRequest, reason: str) -> None:
        """Tell the worker running ``request`` to kill it (best effort)."""
        self.router.cancel_request(request, reason)

    def _no_worker_message(self) -> str:
        return (
            f"no remote worker is connected to the hub at {self.url}; start one with: "
            f"async-agent worker --hub {self.url} --token <TOKEN> --name <NAME>"
        )

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
        worker: Worker | None = None
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

    async def _register(self, ws: ServerConnection) -> Worker | None:
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
        if not self.router.accepting:
            await ws.close(1001, "hub stopping")
            return None
        if self.router.has_worker(fields["name"]):
            await self._refuse_name(ws, fields["name"])
            return None
        # Answer before joining the router, so no execute frame can reach the worker before it.
        await ws.send(
            encode(
                registered_frame(
                    fields["name"], self.heartbeat_interval, self.heartbeat_timeout, self.max_message_bytes
                )
            )
        )
        worker = Worker(
            fields["name"],
            fields["capabilities"],
            fields["max_concurrent"],
            # ``worker`` is bound before the router can call this (``join`` below)
            send=lambda frame: self._call_soon(self._send_frame, worker, frame),
            connection=_Link(ws),
        )
        try:
            self.router.join(worker)
        except RemoteUnavailable as exc:
            if exc.error_type == "name_taken":  # another connection with the name came in meanwhile
                await self._refuse_name(ws, fields["name"])
            else:  # the hub stopped meanwhile
                await ws.close(1001, "hub stopping")
            return None
        self._arm(worker)
        return worker

    async def _refuse_name(self, ws: ServerConnection, name: str) -> None:
        self.rejected_frames += 1
        logger.warning("refused a second connection for worker %r (the first is alive)", name)
        frame = error_frame(f"worker name {name!r} is in use by a live connection; retry later")
        frame["error_type"] = "name_taken"
        await ws.send(encode(frame))
        await ws.close(1008, "worker name in use")

    def _arm(self, worker: Worker) -> None:
        """(Re)start the worker's liveness deadline: any frame counts as a heartbeat."""
        self.router.seen(worker)
        link: _Link = worker.connection
        if link.deadline is not None:
            link.deadline.cancel()
        loop = asyncio.get_running_loop()
        link.deadline = loop.call_later(self.heartbeat_timeout, self._heartbeat_expired, worker)

    def _heartbeat_expired(self, worker: Worker) -> None:
        logger.warning("worker %r sent nothing for %g s: declared lost", worker.name, self.heartbeat_timeout)
        self._drop(worker, f"no heartbeat for {self.heartbeat_timeout:g} s")
        asyncio.ensure_future(worker.connection.ws.close(4001, "heartbeat timeout"))

    def _drop(self, worker: Worker, reason: str) -> None:
        """Stop watching ``worker``'s liveness; the router fails its requests (``worker_lost``)."""
        link: _Link = worker.connection
        if link.deadline is not None:
            link.deadline.cancel()
        self.router.leave(worker, reason)

    def _check_size(self, raw: str | bytes) -> None:
        size = len(raw) if isinstance(raw, bytes) or raw.isascii() else len(raw.encode("utf-8"))
        if size > self.max_message_bytes:
            raise ProtocolError(
                f"frame of {size} bytes exceeds the limit of {self.max_message_bytes} bytes; dropped"
            )

    async def _on_frame(self, worker: Worker, raw: str | bytes) -> None:
        request_id = None
        try:
            self._check_size(raw)
            message = decode(raw)
            kind = message.get("type")
            request_id = message.get("request_id") if isinstance(message.get("request_id"), str) else None
            if kind == "heartbeat":
                running = message.get("running", 0)
                if isinstance(running, bool) or not isinstance(running, int) or running < 0:
                    raise ProtocolError(
                        f"heartbeat field 'running' must be a count, got {type(running).__name__}"
                    )
                self.router.heartbeat(worker, running)
            elif kind == "log":
                log = check_log(message)
                self.router.log(worker, log["request_id"], log["stream"], log["line"])
            elif kind == "result" or (kind is None and "request_id" in message):
                fields = check_result(message)
                self.router.result(
                    worker,
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
            await self._send_quietly(worker.connection.ws, encode(error_frame(str(exc), request_id)))

    # ------------------------------------------------------------------ sending (hub loop)

    def _call_soon(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(lambda: asyncio.ensure_future(fn(*args)))
        except RuntimeError:  # the loop has closed
            pass

    async def _send_frame(self, worker: Worker, frame: dict[str, Any]) -> None:
        """Send a frame the router handed over; an ``execute`` that cannot go out fails its request."""
        try:
            await worker.connection.ws.send(encode(frame))
        except Exception as exc:  # the connection went away between routing and sending
            if frame.get("type") == "execute":
                self.router.send_failed(worker, frame["request_id"], exc)

    @staticmethod
    async def _send_quietly(ws: ServerConnection, frame: str) -> None:
        try:
            await ws.send(frame)
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"<RemoteHub {self.url} workers={len(self.router.connected())} routed={self.router.routed}>"
