"""A connection's requests as tasks of the server's manager (kind ``request``): the target that runs
them, one in-flight request from submission to its end, and the response its task's record gives."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..core.targets import CallWithKeywords, Target
from ..core.tasks import TaskInfo, TaskKind, TaskStatus
from .handle import AgentHandle
from .hooks import Exchange, ExecutionResult, RequestCancelled, RequestHooks
from .protocol import ErrorCode, RemoteRequest, RemoteResponse, RequestError, error_response

__all__ = [
    "REQUEST_KIND",
    "REQUEST_TARGET",
    "DaemonThreadExecutor",
    "InFlightRequest",
    "RequestRecord",
    "bounded",
    "request_target",
    "task_listener",
]

logger = logging.getLogger("async_task_system.server")

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


_REQUEST_INPUTS: dict[str, dict[str, Any]] = {
    "job": {"type": "integer", "description": "The server's number for this request (internal)."},
    "connection": {"type": "integer", "description": "The connection the request came on."},
    "request_id": {"type": "string", "description": "The client's request_id."},
}

# Requests submitted and not yet answered, by job number, over all servers of the process: a
# manager may be shared by several servers, and one target (the same call) serves them all.
_jobs: dict[int, InFlightRequest] = {}
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


def task_listener(owner: object) -> Callable[[TaskInfo], None]:
    """The manager listener of the server ``owner``: hands its finished requests to their loops.

    Called from any thread; a timed-out or cancelled request's agent is stopped at once (at its
    next model call or tool).
    """

    def on_task_change(info: TaskInfo) -> None:
        if info.kind is not REQUEST_KIND or not info.status.is_terminal:
            return
        state = _jobs.get(info.arguments.get("job"))  # type: ignore[arg-type]
        if state is None or state.owner is not owner or state.task_id not in (None, info.id):
            return
        if info.status is not TaskStatus.COMPLETED:
            state.stop()
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            state.loop.call_soon_threadsafe(state.finished)

    return on_task_change


class DaemonThreadExecutor(concurrent.futures.Executor):
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


class InFlightRequest:
    """One in-flight request of a connection: its task, and what the connection needs to answer it.

    ``owner`` is the server it came to (a manager may serve several), ``loop`` its event loop.
    """

    def __init__(
        self,
        owner: object,
        loop: asyncio.AbstractEventLoop,
        task_manager: Any,
        request: RemoteRequest,
        started: float,
    ) -> None:
        self.owner = owner
        self.loop = loop
        self.task_manager = task_manager
        self.request = request
        self.started = started
        self.hooks = RequestHooks()
        self.job = next(_job_numbers)
        self.task_id: str | None = None
        self.timeout = 0.0
        self.work: Callable[[], ExecutionResult] | None = None
        self.raised: BaseException | None = None
        self.done: asyncio.Future[None] = loop.create_future()
        self.task: asyncio.Task[None] | None = None
        self.handle: AgentHandle | None = None
        self.approvals: collections.deque[asyncio.Future[tuple[bool, str]]] = collections.deque()
        self.cancel_reason: str | None = None

    def submit(self, connection_id: int, timeout: float | None) -> None:
        """Submit the request's task (``work`` is set); the task looks the request up by job number."""
        arguments = {"job": self.job, "connection": connection_id, "request_id": self.request.request_id}
        _jobs[self.job] = self
        try:
            self.task_id = self.task_manager.submit(REQUEST_KIND, REQUEST_TARGET, arguments, timeout=timeout)
        except BaseException:
            del _jobs[self.job]
            raise

    def forget(self) -> None:
        """The request is answered: its task no longer finds it."""
        _jobs.pop(self.job, None)

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
            self.task_manager.cancel(self.task_id)

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

    def outcome(self, info: TaskInfo) -> tuple[str, RemoteResponse | None]:
        """The record's status and the response line of the request whose task ended as ``info`` says."""
        request_id = self.request.request_id
        if info.status is TaskStatus.COMPLETED:
            result: ExecutionResult = info.result
            return "completed", RemoteResponse(
                request_id=request_id, response=result.content, token_usage=result.token_usage
            )
        if info.status is TaskStatus.FAILED and info.error is not None and info.error.type == "timeout":
            if self.cancel_reason is None:
                self.cancel_reason = "timeout"
            return "timeout", error_response(
                request_id,
                ErrorCode.TIMEOUT_ERROR,
                f"The request ran longer than its time limit of {self.timeout:g} s and was cancelled; simplify "
                "the request or raise config.timeout (the server caps it with --request-timeout).",
            )
        exc = self.raised
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


def bounded(exchange: Exchange, chars: int) -> Exchange:
    """The exchange as history keeps it: each side cut to ``chars`` characters."""

    def cut(text: str) -> str:
        return text if len(text) <= chars else text[:chars] + " [...]"

    return Exchange(user=cut(exchange.user), assistant=cut(exchange.assistant))
