"""The HTTP front shared by the platform's REST API and the A2A server: uvicorn (h11) hardened.

Two parts, both used by :mod:`async_task_system.platform.service` and :mod:`async_task_system.collab.a2a`:

* :class:`FrontLimits` and :func:`start_server`: uvicorn on the h11 protocol, with a connection
  registry uvicorn lacks. A connection must send a complete request head within
  ``header_timeout`` seconds of opening (or of its previous response, plus the keep-alive
  ``keep_alive`` seconds), else it is closed. A connection that has not sent a head yet (half-open,
  or idle between requests) is *pending*; pending connections are the ones that make room: when
  the server holds ``max_connections`` connections, or an address holds
  ``max_connections_per_address``, a new connection closes the oldest pending one (of that
  address, for the per-address limit) and is admitted; only when none is pending is the new one
  refused (closed at once). A connection serving a request is never closed for a newcomer, so a
  flood of half-open connections cannot starve a client that sends its request.
* :class:`FrontGuard`: ASGI middleware before the app reads a byte of the body: a request with
  both ``Content-Length`` and ``Transfer-Encoding`` is refused (400, the connection closed: the
  pair is how requests are smuggled past proxies), at most ``max_requests`` requests run at once
  (more get 503 with ``Retry-After``), the bearer token is checked (``hmac.compare_digest``), and a
  body over ``max_body_bytes`` gets 413 -- from its ``Content-Length`` or, chunked, as soon as the
  bytes received pass the limit; a body whose next part takes over ``body_timeout`` (30 s) gets 408.

Why uvicorn + h11 and not another server: uvicorn's only knobs for this are ``limit_concurrency``
(it counts open connections, so half-open ones turn real requests into 503s) and
``timeout_keep_alive`` (idle time after a response, not the time to send a head); hypercorn has a
``read_timeout`` but is not a dependency; h11 parses strictly (conflicting lengths, bad chunk
sizes, oversized heads via ``h11_max_incomplete_event_size``). The registry is a small subclass of
uvicorn's public ``H11Protocol`` plugged in through ``Config(http=...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["FrontGuard", "FrontLimits", "HttpServer", "error_response", "listen", "start_server"]


@dataclass(frozen=True)
class FrontLimits:
    """Connection limits of one HTTP server (seconds and counts; every one can be changed)."""

    header_timeout: float = 5.0
    """Seconds a connection has to send a complete request head."""
    keep_alive: float = 5.0
    """Seconds an idle keep-alive connection is kept (then ``header_timeout`` more for the head)."""
    max_connections: int = 1024
    """Open connections at once; past it a newcomer closes the oldest pending one."""
    max_connections_per_address: int = 256
    """Open connections of one client address; past it a newcomer closes that address's oldest pending one."""
    body_timeout: float = 30.0
    """Seconds a request body's next part may take (then 408: a trickled body gives its slot back)."""
    max_head_bytes: int = 64 * 1024
    """Bytes of a request line plus headers (more: 400)."""
    backlog: int = 512
    """The listening socket's accept queue."""

    def __post_init__(self) -> None:
        for name in ("header_timeout", "keep_alive", "body_timeout"):
            value = getattr(self, name)
            if not 0 < value <= 3600:
                raise ValueError(f"{name} must be in (0, 3600] seconds, got {value!r}")
        for name in ("max_connections", "max_connections_per_address", "max_head_bytes", "backlog"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


def error_response(status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None) -> Any:
    """The one error shape of both servers: ``{"error": ..., "detail": ...}`` (a Starlette response)."""
    from starlette.responses import JSONResponse

    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


# ---------------------------------------------------------------------------------------------- registry


class _Registry:
    """The connections of one server, pending ones in age order (all on the server's event loop)."""

    def __init__(self, limits: FrontLimits) -> None:
        self.limits = limits
        self.open: dict[str, int] = {}  # address -> open connections
        self.total = 0
        self.pending: OrderedDict[Any, None] = OrderedDict()
        self.evicted = 0
        self.refused = 0
        self.timed_out = 0

    def admit(self, conn: Any) -> bool:
        address = conn.address
        if self.open.get(address, 0) >= self.limits.max_connections_per_address and not self._evict(
            lambda other: other.address == address
        ):
            return False
        if self.total >= self.limits.max_connections and not self._evict(lambda other: True):
            return False
        self.open[address] = self.open.get(address, 0) + 1
        self.total += 1
        return True

    def _evict(self, match: Callable[[Any], bool]) -> bool:
        for other in self.pending:
            if match(other):
                self.evicted += 1
                self.pending.pop(other, None)
                other.transport.close()
                other.release()
                return True
        self.refused += 1
        return False

    def release(self, conn: Any) -> None:
        self.pending.pop(conn, None)
        count = self.open.get(conn.address, 0) - 1
        if count > 0:
            self.open[conn.address] = count
        else:
            self.open.pop(conn.address, None)
        self.total -= 1


def _protocol_class(registry: _Registry) -> type:
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class FrontProtocol(H11Protocol):
        """uvicorn's h11 protocol plus the registry: head timeout, admission, eviction of pending ones."""

        front = registry

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                # Head and body are written apart: without this, Nagle and the peer's delayed ACK
                # hold every response ~40 ms.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.address = self.client[0] if self.client else "?"
            self._released = False
            self._head_timer: Any = None
            if not self.front.admit(self):
                self._released = True
                transport.close()
                return
            self._wait_for_head(self.front.limits.header_timeout)

        def release(self) -> None:
            if not self._released:
                self._released = True
                self._cancel_head_timer()
                self.front.release(self)

        def connection_lost(self, exc: Exception | None) -> None:
            self.release()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._check_head()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                limits = self.front.limits
                self._wait_for_head(limits.keep_alive + limits.header_timeout)
            else:
                self._check_head()

        def _wait_for_head(self, seconds: float) -> None:
            if self._released:
                return
            self._cancel_head_timer()
            self.front.pending[self] = None
            self._head_timer = self.loop.call_later(seconds, self._head_timeout)

        def _check_head(self) -> None:
            if self in self.front.pending and self.conn.their_state is not h11.IDLE:
                self.front.pending.pop(self, None)
                self._cancel_head_timer()

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self in self.front.pending:
                self.front.timed_out += 1
                self.transport.close()
                self.release()

    return FrontProtocol


class HttpServer:
    """A uvicorn server in a daemon thread (what :func:`start_server` returns)."""

    def __init__(self, server: Any, thread: threading.Thread, port: int, registry: _Registry) -> None:
        self.server = server
        self.thread = thread
        self.port = port
        self.registry = registry

    @property
    def started(self) -> bool:
        return bool(self.server.started)

    def stats(self) -> dict[str, int]:
        """Open, pending, evicted, refused and timed-out connection counts (for tests and operators)."""
        registry = self.registry
        return {
            "open": registry.total,
            "pending": len(registry.pending),
            "evicted": registry.evicted,
            "refused": registry.refused,
            "timed_out": registry.timed_out,
        }

    def wait_started(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.server.started:  # uvicorn offers no event for this; bounded, at start only
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server {self.thread.name!r} did not start")
            time.sleep(0.01)

    def stop(self, timeout: float) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def listen(host: str, port: int, limits: FrontLimits | None = None) -> socket.socket:
    """A listening socket on ``host:port`` (0 = a free port: read ``getsockname()``)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen((limits or FrontLimits()).backlog)
    return sock


def start_server(
    app: Any,
    sock: socket.socket,
    *,
    limits: FrontLimits | None = None,
    name: str = "http",
    graceful_shutdown: float = 3.0,
) -> HttpServer:
    """Serve ``app`` on ``sock`` (from :func:`listen`) on hardened uvicorn in a daemon thread."""
    import uvicorn

    limits = limits or FrontLimits()
    registry = _Registry(limits)
    config = uvicorn.Config(
        app,
        http=_protocol_class(registry),
        ws="none",  # neither API speaks WebSocket: an Upgrade would leave the registry's protocol
        log_level="warning",
        access_log=False,  # uvicorn builds each access line's arguments before the level check
        lifespan="off",
        # Not behind a proxy by default: X-Forwarded-For from any local process would otherwise
        # rewrite the client address (and it is a middleware layer per request).
        proxy_headers=False,
        timeout_keep_alive=int(max(1, limits.keep_alive)),
        timeout_graceful_shutdown=int(max(1, graceful_shutdown)),
        limit_concurrency=None,  # it counts connections, half-open ones too: FrontGuard counts requests
        h11_max_incomplete_event_size=limits.max_head_bytes,
        backlog=limits.backlog,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=name, daemon=True)
    thread.start()
    return HttpServer(server, thread, sock.getsockname()[1], registry)


# ---------------------------------------------------------------------------------------------- guard


class FrontGuard:
    """ASGI middleware: no smuggling pair, bounded requests in flight, the token, the body size --
    all before the app reads a byte of the body.

    ``public(method, path)`` says which requests need no token. Errors are
    ``{"error": ..., "detail": ...}``.
    """

    def __init__(
        self,
        app: Any,
        *,
        token: str,
        max_body_bytes: int,
        public: Callable[[str, str], bool],
        max_requests: int = 256,
        body_timeout: float = 30.0,
    ) -> None:
        self.app = app
        self.token = token.encode()
        self.max_body_bytes = max_body_bytes
        self.drain_bytes = 4 * max_body_bytes
        self.public = public
        self.max_requests = max_requests
        self.body_timeout = body_timeout
        self.in_flight = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        length = headers.get(b"content-length")
        if length is not None and b"transfer-encoding" in headers:
            await error_response(
                400,
                "Content-Length with Transfer-Encoding",
                "send one of them (the pair is refused: it smuggles requests past proxies)",
                {"Connection": "close"},
            )(scope, receive, send)
            return
        if self.in_flight >= self.max_requests:
            await error_response(
                503, "too many requests in progress", {"max": self.max_requests}, {"Retry-After": "1"}
            )(scope, receive, send)
            return
        self.in_flight += 1
        try:
            await self._guarded(scope, receive, send, headers, length)
        finally:
            self.in_flight -= 1

    async def _guarded(
        self, scope: dict[str, Any], receive: Any, send: Any, headers: dict[bytes, bytes], length: Any
    ) -> None:
        if not self.public(scope.get("method", ""), scope.get("path", "")):
            header = headers.get(b"authorization", b"")
            supplied = header[7:].strip() if header[:7].lower() == b"bearer " else b""
            if not supplied or not hmac.compare_digest(supplied, self.token):
                await error_response(
                    401,
                    "missing or wrong token",
                    "send the token as 'Authorization: Bearer <token>'",
                    {"WWW-Authenticate": "Bearer"},
                )(scope, receive, send)
                return
        if length is not None:
            if not length.isdigit() or len(length) > 18:
                await error_response(400, "bad Content-Length header", length.decode("latin-1")[:40])(
                    scope, receive, send
                )
                return
            if int(length) > self.max_body_bytes:
                if int(length) <= self.drain_bytes:
                    await self._drain(receive, 0)
                await self._too_large(scope, receive, send)
                return
        started = False  # the app began its response
        refused = False  # we answered 413 ourselves: the app's own answer is dropped
        received = 0
        body_done = False

        async def limited_receive() -> dict[str, Any]:
            nonlocal received, refused, body_done
            if body_done or refused:
                return await receive()  # e.g. a streaming response waiting for the client to leave
            try:
                message = await _within(receive(), self.body_timeout)
            except asyncio.TimeoutError:  # a body trickled byte by byte: give the slot back
                if not started:
                    refused = True
                    await error_response(
                        408,
                        "request body too slow",
                        {"body_timeout": self.body_timeout},
                        {"Connection": "close"},
                    )(scope, receive, send)
                return {"type": "http.disconnect"}
            if message["type"] != "http.request" or not message.get("more_body"):
                body_done = True
            if message["type"] == "http.request" and not refused:
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    if not started:
                        refused = True
                        if message.get("more_body"):
                            await self._drain(receive, received)
                        await self._too_large(scope, receive, send)
                    return {"type": "http.disconnect"}  # the app stops reading
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, limited_receive, tracking_send)

    async def _drain(self, receive: Any, received: int) -> None:
        """Read and drop the rest of a refused body, up to ``drain_bytes``: a client still sending when
        the connection closes would get a reset instead of the 413 (past that, it does)."""
        while received <= self.drain_bytes:
            message = await receive()
            if message["type"] != "http.request":
                return
            received += len(message.get("body", b""))
            if not message.get("more_body"):
                return

    async def _too_large(self, scope: Any, receive: Any, send: Any) -> None:
        await error_response(
            413, "request body too large", {"max_bytes": self.max_body_bytes}, {"Connection": "close"}
        )(scope, receive, send)


async def _within(awaitable: Any, seconds: float) -> Any:
    """``await awaitable`` for at most ``seconds`` (``asyncio.TimeoutError`` after): on 3.11 and
    later without the task ``asyncio.wait_for`` creates there for every call (once per body part)."""
    if _TIMEOUT is None:  # Python 3.10
        return await asyncio.wait_for(awaitable, seconds)
    async with _TIMEOUT(seconds):
        return await awaitable


_TIMEOUT = getattr(asyncio, "timeout", None)
