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
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import hmac
import itertools
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from ..core.compat import TIMEOUT_ERRORS
from ..core.errors import ManagerClosedError
from ..core.manager import TaskManager
from ..core.targets import CallWithKeywords, Target
from ..core.tasks import TaskInfo, TaskKind, TaskStatus
from .agents import (
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
from .protocol import (
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

DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024
# The defaults of the server's limits (AgentServer's keyword arguments, ``async-agent serve`` flags).
DEFAULT_MAX_CONCURRENT_REQUESTS = 64
DEFAULT_MAX_REQUESTS_PER_CONNECTION = 256
DEFAULT_MAX_RUNNING_PER_CONNECTION = 8
DEFAULT_MAX_RUNNING_PER_CLIENT = 16
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_MAX_CONNECTIONS_PER_CLIENT = 32
DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_AUTH_TIMEOUT = 10.0
DEFAULT_MAX_AUTH_LINE_BYTES = 64 * 1024
DEFAULT_MAX_HISTORY = 50
DEFAULT_MAX_HISTORY_CHARS = 4000

# The start of an HTTP request line (RFC 9112 section 3): a method, then a target. JSON never
# starts like this, so such a first line is an HTTP client, possibly a web page in a browser.
_HTTP_REQUEST_LINE = re.compile(
    rb"^(GET|HEAD|POST|PUT|DELETE|CONNECT|OPTIONS|TRACE|PATCH|PRI) +(/|\*|[a-z]+://)", re.I
)
DEFAULT_REQUEST_TIMEOUT = 300.0
_MAX_KEPT_BACKGROUND = 1024  # background task ids a connection keeps to cancel when it closes

REQUEST_KIND = TaskKind.register("request", "a JSON-lines request")
"""The task kind of the server's requests."""
REQUEST_TARGET = "serve_request"
"""The name of the target a server registers on its manager; its tasks run one request each."""


@dataclass(frozen=True)
class RequestRecord:
    """How one request ended; passed to the server's listeners (for logs, metrics and tests)."""

    connection_id: int
    request_id: str
    status: str
    """``completed``, ``failed`` (an error response), ``timeout``, or ``cancelled`` (client gone / shutdown)."""
    error: str | None
    duration: float
    """Seconds from the request line being read to the end of its work."""
    task_id: str | None = None
    """The id of the request's task in the server's ``task_manager`` (kind ``request``)."""


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


_REQUEST_INPUTS: dict[str, dict[str, Any]] = {
    "job": {"type": "integer", "description": "The server's number for this request (internal)."},
    "connection": {"type": "integer", "description": "The connection the request came on."},
    "request_id": {"type": "string", "description": "The client's request_id."},
}

# Requests submitted and not yet answered, by job number, over all servers of the process: a
# manager may be shared by several servers, and one target (the same call) serves them all.
_jobs: dict[int, _Request] = {}
_job_numbers = itertools.count(1)


def _serve_request(job: int, connection: int = 0, request_id: str = "") -> ExecutionResult:
    """The call of a ``request`` task: run the request submitted as ``job`` (in a worker thread)."""
    state = _jobs.get(job)
    if state is None:
        raise RequestCancelled(
            f"request {request_id!r} of connection {connection} is no longer waiting to run"
        )
    return state.execute()


def request_target() -> Target:
    """The target a server registers on its manager: one task per request."""
    return Target(
        kind=REQUEST_KIND,
        name=REQUEST_TARGET,
        description="Runs one request of the JSON-lines server on a fresh agent; the result is its response.",
        inputs=dict(_REQUEST_INPUTS),
        call=CallWithKeywords(_serve_request),
    )


class _DaemonThreadExecutor(concurrent.futures.Executor):
    """Runs each call in a new daemon thread; the manager's slots bound how many run at once.

    Daemon threads, not a pool: a tool that never returns must not keep the process from
    exiting after :meth:`AgentServer.close` (a pool's threads are joined at exit).
    """

    def __init__(self) -> None:
        self._names = itertools.count(1)
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        if self._shutdown:
            raise RuntimeError("cannot run new requests after the server closed")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # handed to the manager through the future
                future.set_exception(exc)
            else:
                future.set_result(result)

        threading.Thread(target=run, name=f"agent-request-{next(self._names)}", daemon=True).start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._shutdown = True


class _Request:
    """One in-flight request of a connection: its task, and what the connection needs to answer it."""

    def __init__(self, connection: _Connection, request: RemoteRequest, started: float) -> None:
        self.connection = connection
        self.request = request
        self.started = started
        self.hooks = RequestHooks()
        self.job = next(_job_numbers)
        self.task_id: str | None = None
        self.timeout = 0.0
        self.work: Callable[[], ExecutionResult] | None = None
        self.raised: BaseException | None = None
        self.done: asyncio.Future[None] = connection.loop.create_future()
        self.task: asyncio.Task[None] | None = None
        self.handle: AgentHandle | None = None
        self.approvals: collections.deque[asyncio.Future[tuple[bool, str]]] = collections.deque()
        self.cancel_reason: str | None = None

    def execute(self) -> ExecutionResult:
        """The task's work (worker thread); what it raised is kept for the error response."""
        assert self.work is not None
        try:
            return self.work()
        except BaseException as exc:
            self.raised = exc
            raise

    def cancel(self, reason: str) -> None:
        """Cancel the request's task (on the loop); :meth:`stop` follows from its status change."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
        if self.task_id is not None:
            self.connection.server.task_manager.cancel(self.task_id)

    def stop(self) -> None:
        """The task ended without completing: stop the work (any thread).

        The flag is checked at every model call and tool gate; the agent is interrupted.
        """
        self.hooks.cancel_event.set()
        if self.handle is not None:
            self.handle.interrupt()
            # The background tasks it started: a waiting wait_for_tasks returns, their slots free up.
            self.handle.cancel_background()

    def finished(self) -> None:
        """The task reached a terminal status (on the loop): no question waits any more."""
        while self.approvals:
            future = self.approvals.popleft()
            if not future.done():
                future.cancel()
        if not self.done.done():
            self.done.set_result(None)


def _bounded(exchange: Exchange, chars: int) -> Exchange:
    """The exchange as history keeps it: each side cut to ``chars`` characters."""

    def cut(text: str) -> str:
        return text if len(text) <= chars else text[:chars] + " [...]"

    return Exchange(user=cut(exchange.user), assistant=cut(exchange.assistant))


class _Connection:
    def __init__(
        self,
        server: AgentServer,
        connection_id: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.server = server
        self.id = connection_id
        self.reader = reader
        self.writer = writer
        self.loop = asyncio.get_running_loop()
        self.requests: dict[str, _Request] = {}
        self.history: collections.deque[Exchange] = collections.deque(maxlen=max(server.max_history, 0))
        self.authenticated = server.token is None
        self.closed = False
        self._buffer = bytearray()
        self._running = 0  # requests of this connection submitted to the manager and not ended
        # Background tasks that completed requests left running on a shared manager (an agent's own
        # manager is closed with its request): cancelled when the client leaves.
        self.background: collections.deque[tuple[Any, str]] = collections.deque(maxlen=_MAX_KEPT_BACKGROUND)
        self._waiting: collections.deque[_Request] = collections.deque()
        self._write_lock = asyncio.Lock()
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)
        self.client = self.peer.rpartition(":")[0]  # the address limits per client count by

    # ------------------------------------------------------------------------------------ writing

    def write_nowait(self, data: bytes) -> None:
        if not self.closed and not self.writer.is_closing():
            self.writer.write(data)

    async def send(self, response: RemoteResponse) -> None:
        if self.closed or self.writer.is_closing():
            return
        data = encode_response(response)
        async with self._write_lock:
            try:
                self.writer.write(data)
                await self.writer.drain()
            except (ConnectionError, RuntimeError) as exc:
                logger.debug("connection %s: write failed: %s", self.id, exc)
                self.abort("write failed")

    def abort(self, reason: str) -> None:
        """The client is gone: cancel everything it asked for."""
        if self.closed:
            return
        self.closed = True
        for state in self._waiting:
            self.requests.pop(state.request.request_id, None)
        self._waiting.clear()
        for request in list(self.requests.values()):
            request.cancel(reason)
        while self.background:
            manager, task_id = self.background.popleft()
            cancel_tasks(manager, [task_id])
        with contextlib.suppress(Exception):
            self.writer.close()

    # ------------------------------------------------------------------------------------ reading

    async def _read_line(self) -> bytes | None:
        """The next line, or ``None`` at EOF. Raises ``ValueError`` when a line outgrows the limit.

        Our own buffer rather than ``StreamReader.readline``: the limit is small until the token is
        checked (``max_auth_line_bytes``), and nothing after the first line is parsed before that.
        """
        while True:
            end = self._buffer.find(b"\n")
            limit = self.server.max_line_bytes if self.authenticated else self.server.max_auth_line_bytes
            if end >= 0:
                if end >= limit:
                    raise ValueError(limit)
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                return line
            if len(self._buffer) > limit:
                raise ValueError(limit)
            idle = self.server.idle_timeout if self.authenticated else self.server.auth_timeout
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), idle)
            except TIMEOUT_ERRORS:
                if self.requests and self.authenticated:
                    continue  # answers are still coming: not idle
                raise
            if not chunk:
                return None
            self._buffer += chunk

    async def run(self) -> None:
        logger.info("connection %s from %s", self.id, self.peer)
        first = True
        try:
            while not self.closed:
                try:
                    line = await self._read_line()
                except ValueError as exc:
                    await self.send(
                        error_response(
                            "",
                            ErrorCode.CONNECTION_ERROR,
                            f"Line longer than the limit of {exc.args[0]} bytes; the connection "
                            "is closed. Send smaller inputs (the server's --max-line-bytes sets the limit"
                            + (
                                "; before the token is checked, --max-auth-line-bytes: send "
                                '{"token": "<token>"} as a line of its own first).'
                                if not self.authenticated
                                else ")."
                            ),
                        )
                    )
                    await self._close_after_flush()
                    return
                except TIMEOUT_ERRORS:
                    reason = "idle" if self.authenticated else "no token"
                    logger.info("connection %s: closed (%s)", self.id, reason)
                    if not self.authenticated:
                        await self._refuse(
                            "", f"No token within {self.server.auth_timeout:g} s; the connection is closed."
                        )
                    break
                except (ConnectionError, OSError):
                    break
                if line is None:
                    break  # EOF: the client is gone (or stopped sending): cancel its work
                if not line.strip():
                    continue
                if first and _HTTP_REQUEST_LINE.match(line):
                    # A browser or another HTTP client (a web page can POST to localhost): no answer,
                    # nothing runs, not even the body that follows the headers.
                    logger.warning("connection %s from %s: an HTTP request; closed", self.id, self.peer)
                    break
                first = False
                await self._handle_line(line)
        finally:
            self.abort("client disconnected")
            logger.info("connection %s closed", self.id)

    async def _close_after_flush(self) -> None:
        with contextlib.suppress(Exception):
            await self.writer.drain()
        self.abort("connection closed by the server")

    async def _refuse(self, request_id: str, message: str) -> None:
        await self.send(error_response(request_id, ErrorCode.CONNECTION_ERROR, message))
        await self._close_after_flush()

    async def _handle_line(self, line: bytes) -> None:
        started = time.monotonic()
        try:
            obj = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            await self.send(error_response("", ErrorCode.PARSE_ERROR, f"Failed to parse request: {exc}"))
            return
        except RecursionError:
            await self.send(
                error_response("", ErrorCode.PARSE_ERROR, "Failed to parse request: JSON nested too deeply")
            )
            return
        raw_id = obj.get("request_id") if isinstance(obj, dict) else None
        request_id = str(raw_id) if isinstance(raw_id, (str, int)) and not isinstance(raw_id, bool) else ""
        is_auth_line = isinstance(obj, dict) and "token" in obj and "input" not in obj
        if not self.authenticated:
            presented = obj.get("token") if isinstance(obj, dict) else None
            if not isinstance(presented, str):
                await self._refuse(
                    request_id,
                    'This server requires a token: add "token": "<token>" to your first request, or send '
                    '{"token": "<token>"} as the first line. The connection is closed.',
                )
                return
            if not hmac.compare_digest(presented.encode(), (self.server.token or "").encode()):
                await self._refuse(request_id, "Invalid token; the connection is closed.")
                return
            self.authenticated = True
        if is_auth_line:
            await self.send(
                RemoteResponse(request_id=request_id, response=ResponseContent(Text="authenticated"))
            )
            return
        try:
            request = parse_request(obj)
        except RequestError as exc:
            await self.send(error_response(exc.request_id, exc.code, exc.message))
            return
        existing = self.requests.get(request.request_id)
        if existing is not None:
            if is_approval(request):
                if existing.approvals:
                    future = existing.approvals.popleft()
                    if not future.done():
                        future.set_result(approval_decision(request))
                    return
                # Not fatal for the running request: say so, but do not end it.
                logger.warning("connection %s: stray approval for %r", self.id, request.request_id)
                return
            await self.send(
                error_response(
                    request.request_id,
                    ErrorCode.PROCESSING_ERROR,
                    f"request_id {request.request_id!r} is already in flight on this connection; "
                    "give every request a unique request_id",
                )
            )
            return
        if is_approval(request):
            await self.send(
                error_response(
                    request.request_id,
                    ErrorCode.PROCESSING_ERROR,
                    f"No tool call of request {request.request_id!r} is waiting for approval (the request "
                    "finished, timed out, or never asked); 'approve' and 'deny' only answer ToolCall questions",
                )
            )
            return
        if len(self.requests) >= self.server.max_requests_per_connection:
            await self.send(
                error_response(
                    request.request_id,
                    ErrorCode.PROCESSING_ERROR,
                    f"Too many requests in flight on this connection (limit "
                    f"{self.server.max_requests_per_connection}); wait for some answers first",
                )
            )
            return
        state = _Request(self, request, started)
        self.requests[request.request_id] = state
        if self._waiting or not self._may_start():
            # One client never takes every slot: its next request waits here, not in the manager.
            self._waiting.append(state)
            return
        await self._start(state)

    def _may_start(self) -> bool:
        """Whether this connection, and its client's address, may start one more request now."""
        server = self.server
        return (
            self._running < server.max_running_per_connection
            and server._running_by_client[self.client] < server.max_running_per_client
        )

    async def _start(self, state: _Request) -> None:
        """Submit ``state`` as a task; it then counts against the connection's running requests."""
        request_id = state.request.request_id
        try:
            self._submit(state)
        except ManagerClosedError:
            self.requests.pop(request_id, None)
            await self.send(
                error_response(request_id, ErrorCode.CONNECTION_ERROR, "The server is shutting down")
            )
            return
        except Exception as exc:  # the manager refused the task: say why
            self.requests.pop(request_id, None)
            await self.send(
                error_response(request_id, ErrorCode.PROCESSING_ERROR, f"{type(exc).__name__}: {exc}")
            )
            return
        self._running += 1
        self.server._running_by_client[self.client] += 1
        state.task = asyncio.create_task(self._run_request(state))

    async def _start_waiting(self) -> None:
        while self._waiting and not self.closed and self._may_start():
            await self._start(self._waiting.popleft())

    # ------------------------------------------------------------------------------------ requests

    def _hooks_for(self, state: _Request) -> RequestHooks:
        hooks = state.hooks
        request = state.request
        config = request.effective_config()

        def on_handle(handle: AgentHandle) -> None:
            state.handle = handle
            if hooks.cancel_event.is_set():
                handle.interrupt()
                handle.cancel_background()

        hooks.on_handle = on_handle
        if config.ask_before_tool_execution:

            def ask_approval(name: str, arguments: Any) -> tuple[bool, str]:
                future = asyncio.run_coroutine_threadsafe(
                    self._ask_approval(state, name, arguments), self.loop
                )
                try:
                    return future.result()
                except (concurrent.futures.CancelledError, asyncio.CancelledError):
                    raise RequestCancelled("request cancelled while waiting for tool approval") from None

            hooks.ask_approval = ask_approval
        if request.stream and config.incremental_stream:
            request_id = request.request_id

            def send_partial(chunk: str) -> None:
                data = encode_response(
                    RemoteResponse(
                        request_id=request_id, response=ResponseContent(Stream=[chunk]), partial=True
                    )
                )
                self.loop.call_soon_threadsafe(self.write_nowait, data)

            hooks.send_partial = send_partial
        return hooks

    async def _ask_approval(self, state: _Request, name: str, arguments: Any) -> tuple[bool, str]:
        if state.hooks.cancel_event.is_set() or state.done.done():
            raise asyncio.CancelledError
        future: asyncio.Future[tuple[bool, str]] = self.loop.create_future()
        state.approvals.append(future)
        await self.send(
            RemoteResponse(
                request_id=state.request.request_id,
                response=ResponseContent(ToolCall=ToolCallContent(name=name, arguments=arguments)),
            )
        )
        return await future

    def _submit(self, state: _Request) -> None:
        """Submit the request as a task of the server's manager (on the loop, right after it is read)."""
        server = self.server
        request = state.request
        config = request.effective_config()
        timeout = server.request_timeout
        if config.timeout is not None:
            timeout = min(timeout, config.timeout) if timeout else config.timeout
        state.timeout = timeout
        hooks = self._hooks_for(state)
        history = list(self.history)
        if config.max_context_num is None:
            config_context = server.default_context_num
            request = request.model_copy(
                update={"config": config.model_copy(update={"max_context_num": config_context})}
            )
        state.work = partial(
            execute_request,
            server.agent_factory,
            request,
            history,
            hooks,
            model=server.model,
            temp_root=server.temp_dir,
            image_limits=ImageLimits(server.max_image_pixels, server.max_request_pixels),
        )
        limit = timeout if math.isfinite(timeout) else None
        arguments = {"job": state.job, "connection": self.id, "request_id": request.request_id}
        _jobs[state.job] = state
        try:
            state.task_id = server.task_manager.submit(REQUEST_KIND, REQUEST_TARGET, arguments, timeout=limit)
        except BaseException:
            del _jobs[state.job]
            raise

    async def _run_request(self, state: _Request) -> None:
        """Wait (without blocking the loop) for the request's task to end, then answer from its record."""
        server = self.server
        request_id = state.request.request_id
        status, response, error = "failed", None, None
        try:
            await asyncio.shield(state.done)
            assert state.task_id is not None
            info = server.task_manager.check(state.task_id)
            status, response = self._outcome(state, info)
            handle = state.handle
            if status == "completed" and handle is not None and not handle.owns_task_manager:
                self.background.extend(
                    (handle.task_manager, task_id) for task_id in handle.background_tasks()
                )
            if status == "cancelled" and server._closing and not self.closed:
                with contextlib.suppress(Exception):
                    await self.send(
                        error_response(request_id, ErrorCode.CONNECTION_ERROR, "The server is shutting down")
                    )
        except asyncio.CancelledError:
            # The loop itself is going away: stop the work.
            state.cancel(state.cancel_reason or "cancelled")
            status = "cancelled"
        finally:
            _jobs.pop(state.job, None)
            self._running -= 1
            server._release_client_slot(self.client)
            if self.requests.get(request_id) is state:
                del self.requests[request_id]
            if response is not None:
                error = response.error
                await self.send(response)
            server._notify(
                RequestRecord(
                    self.id,
                    request_id,
                    status,
                    error or state.cancel_reason,
                    time.monotonic() - state.started,
                    state.task_id,
                )
            )

    def _outcome(self, state: _Request, info: TaskInfo) -> tuple[str, RemoteResponse | None]:
        """The record's status and the response line of a request whose task ended as ``info`` says."""
        request_id = state.request.request_id
        if info.status is TaskStatus.COMPLETED:
            result: ExecutionResult = info.result
            if (
                result.exchange is not None
                and self.history.maxlen
                and state.request.effective_config().max_context_num != 0
            ):
                self.history.append(_bounded(result.exchange, self.server.max_history_chars))
            return "completed", RemoteResponse(
                request_id=request_id, response=result.content, token_usage=result.token_usage
            )
        if info.status is TaskStatus.FAILED and info.error is not None and info.error.type == "timeout":
            if state.cancel_reason is None:
                state.cancel_reason = "timeout"
            return "timeout", error_response(
                request_id,
                ErrorCode.TIMEOUT_ERROR,
                f"The request ran longer than its time limit of {state.timeout:g} s and was cancelled; simplify "
                "the request or raise config.timeout (the server caps it with --request-timeout).",
            )
        exc = state.raised
        if info.status is TaskStatus.CANCELLED or isinstance(exc, RequestCancelled):
            return "cancelled", None
        if isinstance(exc, RequestError):
            return "failed", error_response(request_id, exc.code, exc.message)
        # A bug or an unexpected failure: still one clear answer.
        task_error = info.error
        if exc is not None:
            message = f"{type(exc).__name__}: {exc}"
        else:
            message = str(task_error) if task_error is not None else "the request failed"
        logger.error(
            "request %r failed: %s", request_id, (task_error.traceback if task_error else None) or message
        )
        return "failed", error_response(request_id, ErrorCode.PROCESSING_ERROR, message)


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
                max_workers=int(max_concurrent_requests), executor=_DaemonThreadExecutor()
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
        self._running_by_client: collections.Counter[str] = collections.Counter()
        self.idle_timeout = float(idle_timeout)
        self.auth_timeout = float(auth_timeout)
        self.max_auth_line_bytes = int(max_auth_line_bytes)
        self.max_history_chars = int(max_history_chars)
        self.max_image_pixels = int(max_image_pixels)
        self.max_request_pixels = int(max_request_pixels)
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()
        self._connection_ids = itertools.count(1)
        self._listeners: list[Callable[[RequestRecord], None]] = []
        self._closing = False
        self._closed: asyncio.Future[None] | None = None  # done once close() starts (start() makes it)
        task_manager.register_target(request_target())
        self._remove_task_listener = task_manager.add_listener(self._on_task_change)

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

    def add_listener(self, callback: Callable[[RequestRecord], None]) -> None:
        """Call ``callback(record)`` (on the event loop) whenever a request ends."""
        self._listeners.append(callback)

    async def start(self) -> None:
        """Bind and start accepting connections."""
        self._closed = asyncio.get_running_loop().create_future()
        backlog = self._fit_connections_to_file_limit()
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

    def _fit_connections_to_file_limit(self) -> int:
        """Lower ``max_connections`` below the process's file-descriptor limit (``ulimit -n``);
        returns the listen backlog.

        Silent connections must meet the connection limit before they use up the descriptors the
        server needs to accept, refuse, and run requests (temp files, sockets of tools). The
        backlog is also how many connections asyncio accepts in one go before any is refused, so
        it stays within the descriptors kept in reserve.
        """
        try:
            import resource

            soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        except (ImportError, OSError, ValueError):  # no such limit here (Windows)
            return 100
        if soft == resource.RLIM_INFINITY:
            return 100
        reserve = max(32, soft // 4)  # a quarter (at least 32) stays for everything else
        room = max(1, soft - reserve)
        if self.max_connections > room:
            logger.warning(
                "max_connections lowered from %s to %s to fit the file-descriptor limit of %s (ulimit -n)",
                self.max_connections,
                room,
                soft,
            )
            self.max_connections = room
        return min(100, reserve // 2)

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = _Connection(self, next(self._connection_ids), reader, writer)
        same_client = sum(1 for c in self._connections if c.client == connection.client)
        if len(self._connections) >= self.max_connections or same_client >= self.max_connections_per_client:
            logger.warning("refused a connection from %s: too many connections", connection.peer)
            which = "" if len(self._connections) >= self.max_connections else " from your address"
            with contextlib.suppress(Exception):
                writer.write(
                    encode_response(
                        error_response(
                            "", ErrorCode.CONNECTION_ERROR, f"Too many connections{which}; try again later."
                        )
                    )
                )
                await writer.drain()
            writer.close()
            return
        self._connections.add(connection)
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)

    def _release_client_slot(self, client: str) -> None:
        """A request of ``client`` ended: start the next waiting ones of its connections."""
        self._running_by_client[client] -= 1
        if self._running_by_client[client] <= 0:
            del self._running_by_client[client]
        for connection in list(self._connections):
            if connection.client == client and connection._waiting and not connection.closed:
                asyncio.ensure_future(connection._start_waiting())

    def _on_task_change(self, info: TaskInfo) -> None:
        """A task of the manager changed (any thread): hand this server's finished requests to the loop."""
        if info.kind is not REQUEST_KIND or not info.status.is_terminal:
            return
        state = _jobs.get(info.arguments.get("job"))  # type: ignore[arg-type]
        if state is None or state.connection.server is not self or state.task_id not in (None, info.id):
            return
        if info.status is not TaskStatus.COMPLETED:
            state.stop()  # timed out or cancelled: the agent stops at its next model call or tool
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            state.connection.loop.call_soon_threadsafe(state.finished)

    def _notify(self, record: RequestRecord) -> None:
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
