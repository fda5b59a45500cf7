"""Running an :class:`McpTaskServer` over stdio or streamable HTTP (``serve_mcp``).

stdio: the protocol owns the process's real standard output; anything a tool prints goes to
standard error instead, so it cannot corrupt the stream. A request line longer than the limit
gets a JSON-RPC error naming the limit, and the line is skipped.

Streamable HTTP: the SDK's session manager (stateful: one MCP session per ``Mcp-Session-Id``)
behind a small ASGI layer that binds 127.0.0.1 by default and requires ``Authorization: Bearer
<token>`` on every request (401 otherwise), refuses bodies over the limit (413 with a JSON-RPC
error), and checks ``Host``/``Origin`` against DNS rebinding. A session ends on the client's
``DELETE`` or after ``session_idle_timeout`` seconds without a request; its tasks are then
cancelled.
"""

from __future__ import annotations

import contextlib
import hmac
import io
import json
import os
import re
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from mcp.server.stdio import stdio_server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings

from ..core.manager import TaskManager
from .server import DEFAULT_MAX_REQUEST_BYTES, McpTaskServer

__all__ = ["serve_mcp", "run_stdio", "run_http", "http_app", "DEFAULT_SESSION_IDLE_TIMEOUT"]

DEFAULT_SESSION_IDLE_TIMEOUT = 300.0
"""Seconds an HTTP session may go without any request before it ends (and its tasks are cancelled)."""
_ID = re.compile(rb'"id"\s*:\s*("(?:[^"\\]|\\.){0,200}"|-?\d{1,20})')


def _too_large(limit: int, request_id: Any = None) -> str:
    error = {
        "code": -32600,
        "message": f"Request over this server's limit of {limit} bytes (--max-request-bytes): pass large "
        "data by reference (a path or a URL) instead of inline.",
    }
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "error": error})


class _Output:
    """The protocol's standard output: each line written and flushed whole, under a lock."""

    def __init__(self, stream: io.BufferedWriter) -> None:
        self.stream = stream
        self.lock = threading.Lock()

    def _write_line(self, text: str) -> None:
        with self.lock:
            self.stream.write(text.encode("utf-8"))
            self.stream.flush()

    async def write(self, text: str) -> None:
        await anyio.to_thread.run_sync(self._write_line, text)

    async def flush(self) -> None:
        pass


class _BoundedLines:
    """Standard input as lines of at most ``limit`` bytes; a longer one is answered with an error and skipped."""

    def __init__(self, stream: io.BufferedReader, limit: int, output: _Output) -> None:
        self.stream = stream
        self.limit = limit
        self.output = output

    def __aiter__(self) -> AsyncIterator[str]:
        return self._lines()

    async def _lines(self) -> AsyncIterator[str]:
        while True:
            line = await anyio.to_thread.run_sync(self.stream.readline, self.limit + 1)
            if not line:
                return
            if len(line) > self.limit and not line.endswith(b"\n"):
                head, tail = line[:4096], line[-512:]
                while line and not line.endswith(b"\n"):  # skip the rest of the line, bounded reads
                    line = await anyio.to_thread.run_sync(self.stream.readline, 65536)
                    tail = (tail + line)[-512:]
                found = _ID.findall(tail) or _ID.findall(head)  # the SDK writes "id" last
                request_id = json.loads(found[-1]) if found else None
                await self.output.write(_too_large(self.limit, request_id) + "\n")
                continue
            yield line.decode("utf-8", errors="replace")


async def run_stdio(mcp_server: McpTaskServer) -> None:
    """Serve one session on this process's standard input and output until input ends."""
    protocol_out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints of tools go to stderr
    output = _Output(protocol_out)
    lines = _BoundedLines(sys.stdin.buffer, mcp_server.max_request_bytes, output)
    try:
        async with stdio_server(stdin=lines, stdout=output) as (read_stream, write_stream):  # type: ignore[arg-type]
            server = mcp_server.server
            await server.run(read_stream, write_stream, server.create_initialization_options())
    finally:
        mcp_server.close()


class _Guard:
    """The ASGI layer in front of the SDK's session manager: token, body size, path."""

    def __init__(self, sessions: StreamableHTTPSessionManager, token: str, max_body: int, path: str) -> None:
        self.sessions = sessions
        self.token = f"Bearer {token}".encode()
        self.max_body = max_body
        self.path = path

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        headers = dict(scope.get("headers") or [])
        if scope["path"].rstrip("/") != self.path:
            await _respond(send, 404, f"No MCP endpoint here: use {self.path}.")
            return
        if not hmac.compare_digest(headers.get(b"authorization", b""), self.token):
            await _respond(
                send, 401, "Missing or wrong token: send the header 'Authorization: Bearer <token>'."
            )
            return
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _respond(send, 413, json.loads(_too_large(self.max_body))["error"]["message"])
            return
        received = 0

        async def bounded_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body:
                return {"type": "http.disconnect"}  # a chunked body past the limit: treated as gone
            return message

        await self.sessions.handle_request(scope, bounded_receive, send)

    async def _lifespan(self, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        message = await receive()
        async with self.sessions.run():
            await send({"type": "lifespan.startup.complete"})
            while message["type"] != "lifespan.shutdown":
                message = await receive()
        await send({"type": "lifespan.shutdown.complete"})


async def _respond(send: Callable[..., Any], status: int, message: str) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": message}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def http_app(
    mcp_server: McpTaskServer,
    token: str,
    *,
    path: str = "/mcp",
    session_idle_timeout: float | None = DEFAULT_SESSION_IDLE_TIMEOUT,
    allowed_hosts: list[str] | None = None,
) -> Any:
    """The ASGI app of the streamable HTTP transport (run it with uvicorn, lifespan on)."""
    if not token:
        raise ValueError("the HTTP transport requires a token (clients send 'Authorization: Bearer <token>')")
    hosts = allowed_hosts or ["127.0.0.1:*", "localhost:*", "[::1]:*"]
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=hosts,
        allowed_origins=[f"http://{host}" for host in hosts],
    )
    sessions = StreamableHTTPSessionManager(
        mcp_server.server, security_settings=security, session_idle_timeout=session_idle_timeout
    )
    return _Guard(sessions, token, mcp_server.max_request_bytes, path.rstrip("/"))


async def run_http(
    mcp_server: McpTaskServer,
    token: str,
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    session_idle_timeout: float | None = DEFAULT_SESSION_IDLE_TIMEOUT,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve streamable HTTP at ``http://host:port/mcp`` until cancelled; ``on_ready(url)`` once listening."""
    import uvicorn

    app = http_app(mcp_server, token, session_idle_timeout=session_idle_timeout)
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    bound = listener.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    display = f"[{host}]" if ":" in host else host
    try:
        async with anyio.create_task_group() as group:
            group.start_soon(server.serve, [listener])
            while not server.started:
                await anyio.sleep(0.01)
            if on_ready is not None:
                on_ready(f"http://{display}:{bound}/mcp")
    finally:
        listener.close()
        mcp_server.close()


def serve_mcp(
    manager: TaskManager,
    transport: str = "stdio",
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    session_idle_timeout: float | None = DEFAULT_SESSION_IDLE_TIMEOUT,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    on_ready: Callable[[str], None] | None = None,
    **options: Any,
) -> None:
    """Serve ``manager``'s tools, agents and kinds over MCP until the client leaves (stdio) or Ctrl-C (HTTP).

    ``transport`` is ``"stdio"`` or ``"http"`` (streamable HTTP; ``token`` required). Other
    keyword arguments go to :class:`McpTaskServer` (``max_tasks_per_session``, ``max_wait_cap``).
    """
    mcp_server = McpTaskServer(manager, max_request_bytes=max_request_bytes, **options)
    if transport == "stdio":
        anyio.run(run_stdio, mcp_server)
    elif transport == "http":
        if not token:
            raise ValueError(
                "serve_mcp(transport='http') needs token=...: clients send 'Authorization: Bearer <token>'"
            )

        async def main() -> None:
            await run_http(
                mcp_server, token, host, port, session_idle_timeout=session_idle_timeout, on_ready=on_ready
            )

        with contextlib.suppress(KeyboardInterrupt):
            anyio.run(main)
    else:
        raise ValueError(f"transport must be 'stdio' or 'http', got {transport!r}")
