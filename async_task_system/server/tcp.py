"""The asyncio TCP server speaking seed 003's JSON-lines protocol.

One connection carries many requests; each runs as a task of the server's
:class:`~async_task_system.TaskManager` (kind ``request``) on a fresh agent from the factory, and
its response line is written as soon as the task finishes (any order, tagged with its
``request_id``). The manager owns the lifecycle: the concurrency limit is its ``max_workers``
(waiting requests are PENDING tasks), a request's time limit is its task's ``timeout``, and
cancelling a request cancels its task. The event loop only reads lines, validates them, submits
tasks and writes responses, so a slow agent never blocks another request or connection.

Rules a client can rely on (see ``docs/protocol.md``):

* every request gets exactly one final response line; nothing else is sent unless the client
  asked for it (approval questions with ``ask_before_tool_execution``, incremental chunks with
  ``config.incremental_stream``), so clients that read one line per request keep working;
* a malformed line gets a ``parse_error`` response and the connection stays usable;
* a line over ``max_line_bytes`` gets a ``connection_error`` response and the connection closes;
* a request over its time limit gets ``timeout_error`` and its work is cancelled;
* a client that goes away (EOF or reset) cancels all its unfinished requests.

The parts: :mod:`.limits` (defaults, per-client counting), :mod:`.framing` (bounded lines, HTTP
detection), :mod:`.connection` (one client's lines and requests) and :mod:`.request_tasks` (a
request as a task, its response); this module accepts connections and owns the lifecycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
from collections.abc import Callable
from typing import Any

from ..core.manager import TaskManager
from ..sandbox.isolation import isolation_status
from ..sandbox.process import RunLimits

# Some of these names are here only because they were importable from here before the split.
from .agents import (  # noqa: F401
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_REQUEST_PIXELS,
    AgentFactory,
    AgentHandle,
    Exchange,
    ExecutionResult,
    ImageLimits,
    RequestCancelled,
    RequestHooks,
    approval_decision,
    cancel_tasks,
    execute_request,
    is_approval,
)
from .connection import Connection
from .limits import (
    DEFAULT_AUTH_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_AUTH_LINE_BYTES,
    DEFAULT_MAX_CONCURRENT_REQUESTS,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
    DEFAULT_MAX_HISTORY,
    DEFAULT_MAX_HISTORY_CHARS,
    DEFAULT_MAX_LINE_BYTES,
    DEFAULT_MAX_REQUESTS_PER_CONNECTION,
    DEFAULT_MAX_RUNNING_PER_CLIENT,
    DEFAULT_MAX_RUNNING_PER_CONNECTION,
    DEFAULT_REQUEST_TIMEOUT,
    ClientSlots,
    fit_connections_to_file_limit,
    refusal,
)
from .protocol import (  # noqa: F401
    ErrorCode,
    RemoteRequest,
    RemoteResponse,
    RequestError,
    ResponseContent,
    ToolCallContent,
    encode_response,
    error_response,
    parse_request,
)
from .request_tasks import (
    REQUEST_KIND,
    REQUEST_TARGET,
    DaemonThreadExecutor,
    RequestRecord,
    request_target,
    task_listener,
)

__all__ = [
    "AgentServer",
    "REQUEST_KIND",
    "REQUEST_TARGET",
    "RequestRecord",
    "ServerThread",
    "parse_address",
    "serve",
]

logger = logging.getLogger("async_task_system.server")


def parse_address(address: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (or ``"[::1]:PORT"``, or ``":PORT"`` for 127.0.0.1) -> (host, port)."""
    text = address.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:8080, got {address!r}")
    host = host.strip("[]") or "127.0.0.1"
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0-65535, got {port}")
    return host, port


class AgentServer:
    """Serve an agent factory over seed 003's JSON-lines protocol.

    Args:
        agent_factory: a callable returning a *fresh* agent per request: an ``AsyncAgent``
            (``create_async_agent``) or any smolagents agent such as ``CodeAgent``.
        host, port: where to listen; 127.0.0.1 by default, port 0 picks a free port (see :attr:`port`).
        token: when set, a connection must present it (``"token"`` on its first line) before anything runs.
        model: the model for ``use_tools=false`` answers; by default the agent's own model.
        request_timeout: seconds one request may take (its ``config.timeout`` may only shorten it).
        max_line_bytes: longest accepted line; a longer one closes the connection.
        max_concurrent_requests: requests running at once over all connections: the ``max_workers``
            of the manager the server creates (ignored when ``task_manager`` is given).
        max_requests_per_connection: requests in flight on one connection before new ones are refused.
        default_context_num: earlier exchanges shown to a request that sets no ``max_context_num``.
        max_history: exchanges remembered per connection (the cap of ``max_context_num``).
        temp_dir: where per-request file folders are created (system temp dir by default).
        max_connections, max_connections_per_client: connections open at once, in all and from one
            IP address; one more is answered with ``connection_error`` and closed.
        max_running_per_connection: requests of one connection running (or pending for a slot) at
            once; its further requests wait in the connection, so one client cannot take every slot.
        max_running_per_client: the same over all the connections from one IP address.
        idle_timeout: seconds a connection may send nothing while none of its requests is in flight.
        auth_timeout: with a token, seconds to present it before the connection is closed.
        max_auth_line_bytes: with a token, the longest line before it is checked (nothing more is
            buffered or parsed until then).
        max_history_chars: each side of an exchange kept in a connection's history is cut to this.
        max_image_pixels, max_request_pixels: pixels (width x height x frames) of one image and of all
            the images of a request, checked from each image's header before it is decoded.
        task_manager: the :class:`~async_task_system.TaskManager` whose tasks run the requests
            (kind ``request``, target ``serve_request``); by default the server creates one with
            ``max_workers=max_concurrent_requests`` and shuts it down in :meth:`close`. A manager
            you pass is left running; its executor must run calls in this process (threads), and
            its ``max_workers`` is then the concurrency limit.
        code_isolation: run the code an agent's LLM writes (``CodeAgent`` code steps, its managed
            agents' too) in a sandboxed kernel per agent (:mod:`async_task_system.runtimes.code_sandbox`)
            instead of in this process: no network, read-only files but a private scratch directory
            (and the request's file folder, readable), its own pid namespace, the limits of
            ``code_limits``; tools still run here. On by default; where namespaces are unavailable
            :meth:`start` refuses to start unless it is ``False`` (CLI ``--no-code-isolation``),
            which runs agent code in this process (only for agents and clients you trust). Agents
            with a remote executor (E2B, Docker, ...) keep it.
        code_limits: the sandbox of agent code (:class:`~async_task_system.sandbox.process.RunLimits`;
            default ``RunLimits()``: no network, 1 GiB, 64 processes, 300 CPU seconds per kernel);
            ``RunLimits(network=True)`` lets the code use the network. A step's time limit stays the
            agent's own code timeout.

    Every request is a task: PENDING while it waits for a free slot, RUNNING with the request's
    time limit as its ``timeout``, then COMPLETED, FAILED (an error response; error type
    ``timeout`` for ``timeout_error``) or CANCELLED (client gone, server shutting down).

    Use it from asyncio (``await server.start()``, ``await server.serve_forever()``,
    ``await server.close()``), from blocking code with :func:`serve`, or in a background thread
    with :meth:`start_in_thread`.
    """

    def __init__(
        self,
        agent_factory: AgentFactory,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        model: Any | None = None,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS,
        max_requests_per_connection: int = DEFAULT_MAX_REQUESTS_PER_CONNECTION,
        default_context_num: int = 5,
        max_history: int = DEFAULT_MAX_HISTORY,
        temp_dir: str | None = None,
        task_manager: TaskManager | None = None,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_connections_per_client: int = DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
        max_running_per_connection: int = DEFAULT_MAX_RUNNING_PER_CONNECTION,
        max_running_per_client: int = DEFAULT_MAX_RUNNING_PER_CLIENT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        auth_timeout: float = DEFAULT_AUTH_TIMEOUT,
        max_auth_line_bytes: int = DEFAULT_MAX_AUTH_LINE_BYTES,
        max_history_chars: int = DEFAULT_MAX_HISTORY_CHARS,
        code_isolation: bool = True,
        code_limits: RunLimits | None = None,
    ) -> None:
        if not callable(agent_factory):
            raise TypeError("agent_factory must be a callable returning a fresh agent for each request")
        if request_timeout is not None and request_timeout <= 0:
            raise ValueError("request_timeout must be a positive number of seconds")
        self.agent_factory = agent_factory
        self.host = host
        self.requested_port = port
        self.token = token or None
        self.model = model
        self.request_timeout = float(request_timeout)
        self.max_line_bytes = int(max_line_bytes)
        self._owns_manager = task_manager is None
        if task_manager is None:
            task_manager = TaskManager(
                max_workers=int(max_concurrent_requests), executor=DaemonThreadExecutor()
            )
        self.task_manager = task_manager
        self.max_concurrent_requests = task_manager.max_workers
        self.max_requests_per_connection = int(max_requests_per_connection)
        self.default_context_num = int(default_context_num)
        self.max_history = int(max_history)
        self.temp_dir = temp_dir
        self.max_connections = int(max_connections)
        self.max_connections_per_client = int(max_connections_per_client)
        self.max_running_per_connection = max(1, int(max_running_per_connection))
        self.max_running_per_client = max(1, int(max_running_per_client))
        self.client_slots = ClientSlots(self.max_running_per_client, self._start_waiting_of)
        """Requests running per client address (its connections share the count)."""
        self.idle_timeout = float(idle_timeout)
        self.auth_timeout = float(auth_timeout)
        self.max_auth_line_bytes = int(max_auth_line_bytes)
        self.max_history_chars = int(max_history_chars)
        self.max_image_pixels = int(max_image_pixels)
        self.max_request_pixels = int(max_request_pixels)
        self.code_isolation = bool(code_isolation)
        self.code_limits = code_limits if code_limits is not None else RunLimits()
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[Connection] = set()
        self._connection_ids = itertools.count(1)
        self._listeners: list[Callable[[RequestRecord], None]] = []
        self._closing = False
        self._closed: asyncio.Future[None] | None = None  # done once close() starts (start() makes it)
        task_manager.register_target(request_target())
        self._remove_task_listener = task_manager.add_listener(task_listener(self))

    # ------------------------------------------------------------------------------------ public

    @property
    def connections(self) -> tuple[object, ...]:
        """The open connections (each with its conversation ``history``), for inspection."""
        return tuple(self._connections)

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def closing(self) -> bool:
        """Whether :meth:`close` has started."""
        return self._closing

    @property
    def sandbox_limits(self) -> RunLimits | None:
        """The limits agent code runs under, ``None`` when it runs in this process (``code_isolation=False``)."""
        return self.code_limits if self.code_isolation else None

    def add_listener(self, callback: Callable[[RequestRecord], None]) -> None:
        """Call ``callback(record)`` (on the event loop) whenever a request ends."""
        self._listeners.append(callback)

    async def start(self) -> None:
        """Bind and start accepting connections. Raises ``RuntimeError`` when agent code is to run
        isolated (``code_isolation``) but namespaces are unavailable here."""
        if self.code_isolation and self.code_limits.isolation:
            status = await asyncio.get_running_loop().run_in_executor(None, isolation_status)
            if not status.available:
                raise RuntimeError(
                    f"agent code cannot be sandboxed here ({status.reason}): pass code_isolation=False "
                    "(async-agent serve --no-code-isolation) to run it in the server process, "
                    "only for agents and clients you trust"
                )
        self._closed = asyncio.get_running_loop().create_future()
        self.max_connections, backlog = fit_connections_to_file_limit(self.max_connections)
        # The reader's limit only sets its flow control (it pauses reading at twice this much
        # unread); the connection splits lines itself, with its own limits.
        self._server = await asyncio.start_server(
            self._on_connection, self.host, self.requested_port, limit=65536, backlog=backlog
        )
        logger.info("serving on %s", self.address)

    async def serve_forever(self) -> None:
        """Serve until cancelled or :meth:`close` is called; then returns (call :meth:`close` after it).

        Not ``asyncio.Server.serve_forever()``: from Python 3.12.1 on, that one, when cancelled,
        waits for every connection to close before it returns, and a connection with a request
        still running closes only in :meth:`close`, which runs after it: SIGTERM or Ctrl-C would
        hang until the request ended. The server accepts connections from :meth:`start` on.
        """
        if self._server is None:
            await self.start()
        assert self._closed is not None
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self._closed)

    async def close(self) -> None:
        """Stop accepting, answer in-flight requests with ``connection_error``, close connections."""
        self._closing = True
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        if self._server is not None:
            self._server.close()
        tasks = []
        for connection in list(self._connections):
            for state in list(connection.requests.values()):
                state.cancel("server shutting down")
                if state.task is not None:
                    tasks.append(state.task)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for connection in list(self._connections):
            with contextlib.suppress(Exception):
                await connection.writer.drain()
            connection.abort("server shutting down")
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
        self._remove_task_listener()
        if self._owns_manager:
            # Every request task has ended; threads of stopped ones end at their next check.
            self.task_manager.shutdown(wait=False, cancel_pending=True)

    def start_in_thread(self) -> ServerThread:
        """Run the server on its own event loop in a daemon thread; returns once it is listening."""
        return ServerThread(self)

    # ------------------------------------------------------------------------------------ internal

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = Connection(self, next(self._connection_ids), reader, writer)
        same_client = sum(1 for c in self._connections if c.client == connection.client)
        message = refusal(
            len(self._connections), same_client, self.max_connections, self.max_connections_per_client
        )
        if message is not None:
            logger.warning("refused a connection from %s: too many connections", connection.peer)
            with contextlib.suppress(Exception):
                writer.write(encode_response(error_response("", ErrorCode.CONNECTION_ERROR, message)))
                await writer.drain()
            writer.close()
            return
        self._connections.add(connection)
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)

    def _start_waiting_of(self, client: str) -> None:
        """A request of ``client`` ended: start the next waiting ones of its connections."""
        for connection in list(self._connections):
            if connection.client == client and connection.has_waiting and not connection.closed:
                asyncio.ensure_future(connection.start_waiting())

    def notify(self, record: RequestRecord) -> None:
        """Tell the listeners that a request ended (its connection calls this)."""
        for callback in list(self._listeners):
            try:
                callback(record)
            except Exception:
                logger.exception("server listener failed")


class ServerThread:
    """An :class:`AgentServer` running in a background thread (for embedding and tests).

    ``port`` is ready when the constructor returns; :meth:`stop` (or leaving the ``with``
    block) closes the server and joins the thread.
    """

    def __init__(self, server: AgentServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="agent-server", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self.server.start())
        except BaseException as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def address(self) -> tuple[str, int]:
        return self.server.host, self.server.port

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the server's loop and return its result (for inspection in tests)."""
        return asyncio.run_coroutine_threadsafe(_call(fn), self.loop).result()

    def stop(self, timeout: float = 10.0) -> None:
        if not self._thread.is_alive():
            return
        future = asyncio.run_coroutine_threadsafe(self.server.close(), self.loop)
        with contextlib.suppress(Exception):
            future.result(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _call(fn: Callable[[], Any]) -> Any:
    return fn()


def serve(agent_factory: AgentFactory, address: str = "127.0.0.1:8080", **options: Any) -> None:
    """Serve ``agent_factory`` on ``address`` ("HOST:PORT") until interrupted (Ctrl-C).

    ``options`` are :class:`AgentServer`'s keyword arguments (``token``, ``request_timeout``, ...).
    """
    host, port = parse_address(address)
    server = AgentServer(agent_factory, host, port, **options)

    async def main() -> None:
        await server.start()
        try:
            await server.serve_forever()
        finally:
            await server.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
