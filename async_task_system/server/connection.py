"""One client connection: its lines read and checked (token, JSON, request), its requests started
within its limits (the rest wait here), their questions and chunks sent, their answers written."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import hmac
import json
import logging
import math
import time
from functools import partial
from typing import Any, Protocol

from ..core.compat import TIMEOUT_ERRORS
from ..core.errors import ManagerClosedError
from .agents import (
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
from .framing import LineReader, is_http_request, line_too_long_message
from .limits import ClientSlots, client_of
from .protocol import (
    ErrorCode,
    RemoteResponse,
    RequestError,
    ResponseContent,
    ToolCallContent,
    encode_response,
    error_response,
    parse_request,
)
from .request_tasks import InFlightRequest, RequestRecord, bounded

__all__ = ["Connection", "ConnectionHost"]

logger = logging.getLogger("async_task_system.server")

_MAX_KEPT_BACKGROUND = 1024  # background task ids a connection keeps to cancel when it closes


class ConnectionHost(Protocol):
    """What a connection needs of its server (:class:`~async_task_system.server.AgentServer`)."""

    agent_factory: AgentFactory
    token: str | None
    model: Any
    request_timeout: float
    max_line_bytes: int
    max_auth_line_bytes: int
    idle_timeout: float
    auth_timeout: float
    max_requests_per_connection: int
    max_running_per_connection: int
    default_context_num: int
    max_history: int
    max_history_chars: int
    temp_dir: str | None
    max_image_pixels: int
    max_request_pixels: int
    task_manager: Any
    client_slots: ClientSlots

    @property
    def closing(self) -> bool: ...

    @property
    def sandbox_limits(self) -> Any: ...

    def notify(self, record: RequestRecord) -> None: ...


class Connection:
    """A client's connection to a server: :meth:`run` serves it until the client goes or is sent away."""

    def __init__(
        self,
        server: ConnectionHost,
        connection_id: int,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.server = server
        self.id = connection_id
        self.reader = reader
        self.writer = writer
        self.loop = asyncio.get_running_loop()
        self.requests: dict[str, InFlightRequest] = {}
        self.history: collections.deque[Exchange] = collections.deque(maxlen=max(server.max_history, 0))
        self.authenticated = server.token is None
        self.closed = False
        self._lines = LineReader(reader)
        self._running = 0  # requests of this connection submitted to the manager and not ended
        # Background tasks that completed requests left running on a shared manager (an agent's own
        # manager is closed with its request): cancelled when the client leaves.
        self.background: collections.deque[tuple[Any, str]] = collections.deque(maxlen=_MAX_KEPT_BACKGROUND)
        self._waiting: collections.deque[InFlightRequest] = collections.deque()
        self._write_lock = asyncio.Lock()
        self.peer, self.client = client_of(writer.get_extra_info("peername"))

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

        The limit is small until the token is checked (``max_auth_line_bytes``), and nothing after
        the first line is parsed before that.
        """
        server = self.server
        return await self._lines.read_line(
            server.max_line_bytes if self.authenticated else server.max_auth_line_bytes,
            server.idle_timeout if self.authenticated else server.auth_timeout,
            lambda: bool(self.requests) and self.authenticated,
        )

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
                            line_too_long_message(exc.args[0], self.authenticated),
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
                if first and is_http_request(line):
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
        state = InFlightRequest(self.server, self.loop, self.server.task_manager, request, started)
        self.requests[request.request_id] = state
        if self._waiting or not self._may_start():
            # One client never takes every slot: its next request waits here, not in the manager.
            self._waiting.append(state)
            return
        await self._start(state)

    def _may_start(self) -> bool:
        """Whether this connection, and its client's address, may start one more request now."""
        return self._running < self.server.max_running_per_connection and self.server.client_slots.available(
            self.client
        )

    async def _start(self, state: InFlightRequest) -> None:
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
        self.server.client_slots.take(self.client)
        state.task = asyncio.create_task(self._run_request(state))

    @property
    def has_waiting(self) -> bool:
        """Whether requests of this connection wait for a slot."""
        return bool(self._waiting)

    async def start_waiting(self) -> None:
        """Start the waiting requests that the limits let start now."""
        while self._waiting and not self.closed and self._may_start():
            await self._start(self._waiting.popleft())

    # ------------------------------------------------------------------------------------ requests

    def _hooks_for(self, state: InFlightRequest) -> RequestHooks:
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

    async def _ask_approval(self, state: InFlightRequest, name: str, arguments: Any) -> tuple[bool, str]:
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

    def _submit(self, state: InFlightRequest) -> None:
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
            code_limits=server.sandbox_limits,
        )
        state.submit(self.id, timeout if math.isfinite(timeout) else None)

    async def _run_request(self, state: InFlightRequest) -> None:
        """Wait (without blocking the loop) for the request's task to end, then answer from its record."""
        server = self.server
        request_id = state.request.request_id
        status, response, error = "failed", None, None
        try:
            await asyncio.shield(state.done)
            assert state.task_id is not None
            info = server.task_manager.check(state.task_id)
            status, response = state.outcome(info)
            if status == "completed":
                self._remember(state, info.result)
            handle = state.handle
            if status == "completed" and handle is not None and not handle.owns_task_manager:
                self.background.extend(
                    (handle.task_manager, task_id) for task_id in handle.background_tasks()
                )
            if status == "cancelled" and server.closing and not self.closed:
                with contextlib.suppress(Exception):
                    await self.send(
                        error_response(request_id, ErrorCode.CONNECTION_ERROR, "The server is shutting down")
                    )
        except asyncio.CancelledError:
            # The loop itself is going away: stop the work.
            state.cancel(state.cancel_reason or "cancelled")
            status = "cancelled"
        finally:
            state.forget()
            self._running -= 1
            server.client_slots.release(self.client)
            if self.requests.get(request_id) is state:
                del self.requests[request_id]
            if response is not None:
                error = response.error
                await self.send(response)
            server.notify(
                RequestRecord(
                    self.id,
                    request_id,
                    status,
                    error or state.cancel_reason,
                    time.monotonic() - state.started,
                    state.task_id,
                )
            )

    def _remember(self, state: InFlightRequest, result: ExecutionResult) -> None:
        """A completed request's exchange goes into the history (unless it asked for no context)."""
        if (
            result.exchange is not None
            and self.history.maxlen
            and state.request.effective_config().max_context_num != 0
        ):
            self.history.append(bounded(result.exchange, self.server.max_history_chars))
