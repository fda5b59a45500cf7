"""RemoteExecutionManager: request ids <-> futures, deadlines, and what a response does to its task.

Seed 000's API, with two ways for a task to wait:

* **Detached** (``suspend_task_for_remote``, ``submit_task("remote", ...)``, ``remote_execute`` called
  by the coordinating LLM): the task moves RUNNING -> WAITING_REMOTE, gives its worker slot back,
  and its code returns. No thread and no slot are held while it waits. The response completes
  it (RUNNING -> COMPLETED with the remote result) or fails it (``remote_error``, ``timeout``,
  ``worker_lost``, ``hub_stopped``, ``no_worker``).
* **Inline** (``remote_execute`` called inside a running task, e.g. a sub-agent's step): the task
  moves to WAITING_REMOTE and lends its slot back while the calling thread blocks on the request's
  future; the response moves it back to RUNNING (taking a slot again at once) and hands the result
  to the caller, so it enters the sub-agent's context as the tool's output.

Responses may arrive from any thread or event loop. Unknown, late and duplicate responses are
logged and ignored; nothing here raises into the transport that delivered them.

Every task transition goes through the manager's public task control: ``TaskManager.suspend``
hands the attempt over, and the request's :class:`~async_task_system.core.manager.Suspension` finishes
it (``complete``, ``fail`` with the manager's one retry rule, or ``resume`` for an inline wait).
A task cancelled or timed out while it waits abandons its suspension, which fails the request
and tells the executor to stop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..core.compat import TIMEOUT_ERRORS
from ..core.errors import AsyncTaskSystemError, RemoteExecutionError, TaskValidationError
from ..core.manager import Suspension, TimerHandle, call_later, get_current_task_id
from ..core.targets import Target
from ..core.tasks import TaskError, TaskKind
from ..observe import tracing
from .protocol import LANGUAGES, ProtocolError, check_labels, check_runtime_call

if TYPE_CHECKING:
    from ..core.manager import TaskManager

__all__ = [
    "RemoteExecutionManager",
    "RemoteExecutionError",
    "RemoteUnavailable",
    "RemoteOutcome",
    "RemoteRequest",
    "RemoteTransport",
    "UnknownRequestError",
    "REMOTE_TARGET_NAME",
    "REMOTE_INPUTS",
]

logger = logging.getLogger(__name__)

REMOTE_TARGET_NAME = "remote_execute"
"""The name of the ``remote`` target: ``submit_task("remote", "remote_execute", {"command": ...})``."""

REMOTE_INPUTS: dict[str, dict[str, Any]] = {
    "command": {
        "type": "string",
        "description": "Shell command to run on a remote worker (or Python code with language='python').",
    },
    "timeout": {
        "type": "number",
        "description": "Seconds the command may run before it is killed (default 60).",
        "nullable": True,
    },
    "worker": {
        "type": "string",
        "description": "Name of the worker to run on; any free worker when omitted.",
        "nullable": True,
    },
    "language": {"type": "string", "description": "'shell' (default) or 'python'.", "nullable": True},
    "labels": {
        "type": "object",
        "description": "Label selector, e.g. {'region': 'eu', 'gpu': 'a100'}: run only on a worker that has all "
        "these labels (any such worker when 'worker' is omitted). Fails at once, listing the workers' labels, "
        "when no connected worker matches.",
        "nullable": True,
    },
}


class RemoteUnavailable(RemoteExecutionError):
    """Raised by a transport's ``send_request`` when nothing can take the request (no worker, hub stopped)."""


class UnknownRequestError(AsyncTaskSystemError, LookupError):
    """A request id this manager never issued or has forgotten."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class RemoteOutcome:
    """How a request ended: seed 000's ``success``/``result``/``error`` plus the kind of failure."""

    request_id: str
    success: bool
    result: Any = None
    error: str | None = None
    error_type: str | None = None
    worker: str | None = None
    """The executor the transport sent it to (from its authenticated connection), if one did."""


class RemoteRequest:
    """One command sent (or to be sent) to a remote executor."""

    __slots__ = (
        "request_id",
        "task_id",
        "command",
        "language",
        "timeout",
        "worker",
        "env",
        "inline",
        "created_at",
        "future",
        "timer",
        "logs",
        "trace",
        "suspension",
        "labels",
        "runtime",
        "started_at",
        "sent_at",
        "sent_to",
    )

    def __init__(
        self,
        request_id: str,
        task_id: str | None,
        command: str,
        language: str,
        timeout: float,
        worker: str | None,
        env: dict[str, str] | None,
        inline: bool,
        max_log_lines: int,
        *,
        labels: dict[str, str] | None = None,
        runtime: dict[str, Any] | None = None,
    ) -> None:
        self.request_id = request_id
        self.labels = dict(labels) if labels else None
        # a runtime-tool call ({runtime, entry, parameters}; ``command`` is the tool's command), or None
        self.runtime = runtime
        self.task_id = task_id
        self.command = command
        self.language = language
        self.timeout = timeout
        self.worker = worker
        self.env = env
        self.inline = inline
        self.created_at = time.time()
        self.future: Future[RemoteOutcome] = Future()
        # A RUNNING concurrent future cannot be cancelled, so a waiter that gives up (asyncio.wait_for,
        # wrap_future) never cancels the outcome other waiters and the task depend on.
        self.future.set_running_or_notify_cancel()
        self.timer: TimerHandle | None = None
        self.logs: deque[tuple[str, str]] = deque(maxlen=max_log_lines)
        # W3C trace context of the code that made the request (empty when tracing is off), so the
        # remote side can join the trace.
        self.trace: dict[str, str] = tracing.inject_context() if tracing.tracing_enabled() else {}
        self.suspension: Suspension | None = None
        # when the executor said its process started (epoch seconds; None until then), and when the
        # transport last handed it to an executor (for the bound on a dispatch that never starts)
        self.started_at: float | None = None
        self.sent_at: float | None = None
        self.sent_to: str | None = None  # the worker the transport handed it to last


class RemoteTransport(Protocol):
    """What carries requests to executors (the hub, or your own). Both methods must not block."""

    def send_request(self, request: RemoteRequest) -> None:
        """Route the request to an executor, or raise :class:`RemoteUnavailable`."""

    def cancel_request(self, request: RemoteRequest, reason: str) -> None:
        """Tell the executor running ``request`` to stop it (best effort)."""


LogListener = Callable[[str | None, str, str, str], None]
"""``(task_id, request_id, stream, line)``, called for each streamed output line."""

StartListener = Callable[[str | None, str, float], None]
"""``(task_id, request_id, started_at)``, called once when an executor's process started."""


class RemoteExecutionManager:
    """Tracks remote requests and turns their responses into task transitions.

    Args:
        task_manager: the manager whose tasks suspend on remote results (``None`` for a standalone
            bridge that only matches requests and responses).
        default_timeout: seconds a command may run when the caller gives no timeout.
        response_grace: extra seconds the bridge waits for a response after the command's own
            timeout (the worker kills the command at its timeout and still has to report it).
        max_log_lines: streamed lines kept per pending request for :meth:`get_logs`.
    """

    def __init__(
        self,
        task_manager: TaskManager | None = None,
        *,
        default_timeout: float = 60.0,
        response_grace: float = 5.0,
        max_log_lines: int = 500,
        remembered_outcomes: int = 4096,
    ) -> None:
        self._manager = task_manager
        self.default_timeout = default_timeout
        self.response_grace = response_grace
        self.max_log_lines = max_log_lines
        self._remembered = remembered_outcomes
        self._lock = threading.Lock()
        self._requests: dict[str, RemoteRequest] = {}
        self._by_task: dict[str, RemoteRequest] = {}
        self._recent: OrderedDict[str, RemoteOutcome] = OrderedDict()
        self._recent_by_task: OrderedDict[str, str] = OrderedDict()
        self._transport: RemoteTransport | None = None
        self.manual_delivery = False
        """True: with no hub attached, ``remote_execute`` still sends its requests nowhere and waits for
        your code to deliver them and answer with ``handle_websocket_response`` (seed 000's flow;
        a :class:`~async_task_system.remote.handler.RemoteExecutionHandler` sets it). False (the
        default): ``remote_execute`` with no hub fails at once with ``no_hub``."""
        self._log_listeners: list[LogListener] = []
        self._start_listeners: list[StartListener] = []
        self.ignored_responses = 0
        if task_manager is not None:
            task_manager.register_target(self._remote_target())
            task_manager.extension("conversations").add_tool_provider(
                REMOTE_TARGET_NAME, _remote_execute_tool
            )

    # ------------------------------------------------------------------ transport

    @property
    def transport(self) -> RemoteTransport | None:
        return self._transport

    def set_transport(self, transport: RemoteTransport | None) -> None:
        """Send new requests through ``transport`` (the hub sets itself here when it starts)."""
        self._transport = transport

    def detach_transport(self, transport: RemoteTransport) -> None:
        """Forget ``transport`` if it is the current one."""
        if self._transport is transport:
            self._transport = None

    def require_delivery(self) -> None:
        """Raise :class:`RemoteUnavailable` (``no_hub``) when nothing would deliver a request: no hub is
        attached and :attr:`manual_delivery` is off. ``remote_execute`` calls it before it sends."""
        if self._transport is None and not self.manual_delivery:
            raise RemoteUnavailable(
                "no_hub",
                "no remote hub is attached, so no worker can receive the command; attach one with "
                "attach_remote(agent, token=...) (or RemoteHub(task_manager, token=...).start()) and start a "
                "worker: async-agent worker --hub ws://127.0.0.1:8765 --name <NAME>. To deliver requests "
                "yourself, set task_manager.remote_manager.manual_delivery = True",
            )

    # ------------------------------------------------------------------ requests (seed 000)

    def create_remote_request(
        self,
        task_id: str | None,
        command: str,
        timeout: float | None = None,
        *,
        language: str = "shell",
        worker: str | None = None,
        env: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        runtime: dict[str, Any] | None = None,
    ) -> str:
        """Register a request, arm its deadline, send it if a transport is attached; returns its id.

        ``labels`` is a selector (the worker must carry every pair); ``runtime`` makes it one call of
        a runtime tool, ``{"runtime", "entry", "parameters"}``, with ``command`` the tool's command.

        The task's status is not changed (use ``TaskManager.suspend_task_for_remote`` for that).
        With no transport, your own code delivers the command and later calls
        :meth:`handle_remote_response` (or ``TaskManager.handle_websocket_response``).
        """
        request = self._register(
            task_id, command, timeout, language, worker, env, inline=False, labels=labels, runtime=runtime
        )
        self._send(request)
        return request.request_id

    def handle_remote_response(
        self, request_id: str, success: bool, result: Any = None, error: str | None = None
    ) -> bool:
        """Deliver a response (seed 000's shape). Safe from any thread or loop; never raises.

        Returns False (and logs) for an unknown, late or duplicate ``request_id``. A failure whose
        ``result`` says ``{"timed_out": true}`` counts as a ``timeout``, else as ``remote_error``.
        """
        error_type = None
        if not success:
            error_type = "timeout" if isinstance(result, dict) and result.get("timed_out") else "remote_error"
        return self.complete(request_id, bool(success), result, error, error_type)

    def complete(
        self, request_id: str, success: bool, result: Any, error: str | None, error_type: str | None
    ) -> bool:
        """:meth:`handle_remote_response` with an explicit ``error_type`` (transports use this)."""
        try:
            if not success and not error:
                error = "remote execution failed"
            outcome = RemoteOutcome(
                request_id, success, result, error, None if success else error_type or "remote_error"
            )
            return self._complete(outcome)
        except Exception:  # the caller is a transport's receive loop: never break it
            logger.exception("handling the response to remote request %r failed", request_id)
            return False

    def add_done_callback(self, request_id: str, callback: Callable[[RemoteOutcome], None]) -> None:
        """Call ``callback(outcome)`` once the request ends (at once if it already has), in the thread that ends it."""
        self._future_for(request_id).add_done_callback(lambda future: callback(future.result()))

    def cancel(self, request_id: str, reason: str = "cancelled") -> bool:
        """End a pending request as ``cancelled`` and tell the executor running it to stop; False if not pending."""
        with self._lock:
            request = self._requests.get(request_id)
        if request is None or not self.fail_request(request_id, "cancelled", f"remote request {reason}"):
            return False
        self._cancel_remote(request, reason)
        return True

    def fail_request(self, request_id: str, error_type: str, message: str) -> bool:
        """End a pending request with a failure (worker lost, hub stopped, ...); False if it was not pending."""
        return self.complete(request_id, False, None, message, error_type)

    def handle_remote_log(self, request_id: str, stream: str, line: str) -> bool:
        """Record one streamed output line of a pending request and pass it to the log listeners."""
        with self._lock:
            request = self._requests.get(request_id)
            if request is None:
                return False
            request.logs.append((stream, line))
            listeners = list(self._log_listeners)
        for listener in listeners:
            try:
                listener(request.task_id, request_id, stream, line)
            except Exception:
                logger.exception("remote log listener failed")
        return True

    def handle_remote_start(self, request_id: str, started_at: float) -> bool:
        """Note that the executor's process of a pending request started at ``started_at`` (epoch
        seconds) and tell the start listeners; False (nothing changes) if it is not pending or started."""
        with self._lock:
            request = self._requests.get(request_id)
            if request is None or request.started_at is not None:
                return False
            request.started_at = started_at
            listeners = list(self._start_listeners)
        for listener in listeners:
            try:
                listener(request.task_id, request_id, started_at)
            except Exception:
                logger.exception("remote start listener failed")
        return True

    def add_start_listener(self, callback: StartListener) -> Callable[[], None]:
        """Call ``callback(task_id, request_id, started_at)`` when a request's process starts; returns a remover."""
        with self._lock:
            self._start_listeners.append(callback)

        def remove() -> None:
            with self._lock:
                if callback in self._start_listeners:
                    self._start_listeners.remove(callback)

        return remove

    def add_log_listener(self, callback: LogListener) -> Callable[[], None]:
        """Call ``callback(task_id, request_id, stream, line)`` for each streamed line; returns a remover."""
        with self._lock:
            self._log_listeners.append(callback)

        def remove() -> None:
            with self._lock:
                if callback in self._log_listeners:
                    self._log_listeners.remove(callback)

        return remove

    def get_logs(self, request_or_task_id: str) -> list[tuple[str, str]]:
        """The streamed ``(stream, line)`` pairs so far of a pending request (by request or task id)."""
        with self._lock:
            request = self._requests.get(request_or_task_id) or self._by_task.get(request_or_task_id)
            return list(request.logs) if request is not None else []

    async def wait_for_remote_result(self, request_id: str, timeout: float | None = None) -> Any:
        """Await a request's result (seed 000). Raises :class:`RemoteExecutionError` if it failed and
        ``TimeoutError`` if ``timeout`` seconds pass first (the request itself stays pending)."""
        future = self._future_for(request_id)
        try:
            outcome = await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except TIMEOUT_ERRORS:  # asyncio.TimeoutError before 3.11
            raise TimeoutError(f"no result for remote request {request_id} within {timeout:g} s") from None
        return _unwrap(outcome)

    def wait_result(self, request_id: str, timeout: float | None = None) -> Any:
        """Blocking twin of :meth:`wait_for_remote_result` for synchronous code."""
        future = self._future_for(request_id)
        try:
            outcome = future.result(timeout)
        except TIMEOUT_ERRORS:  # concurrent.futures.TimeoutError before 3.11
            raise TimeoutError(f"no result for remote request {request_id} within {timeout:g} s") from None
        return _unwrap(outcome)

    def outcome(self, request_id: str) -> RemoteOutcome | None:
        """How a finished request ended (recent ones are remembered), or ``None`` while pending/unknown."""
        with self._lock:
            return self._recent.get(request_id)

    def request_for_task(self, task_id: str) -> str | None:
        """The id of the request a task is waiting on (or recently waited on), if any."""
        with self._lock:
            request = self._by_task.get(task_id)
            return self._recent_by_task.get(task_id) if request is None else request.request_id

    def pending(self) -> list[RemoteRequest]:
        """The requests still waiting for a response."""
        with self._lock:
            return list(self._requests.values())

    def fail_all(self, error_type: str, message: str) -> int:
        """Fail every pending request (e.g. the hub stopped); returns how many."""
        with self._lock:
            ids = list(self._requests)
        return sum(self.fail_request(request_id, error_type, message) for request_id in ids)

    def close(self) -> None:
        """Fail what is pending."""
        self.fail_all("cancelled", "remote execution manager closed")

    # ------------------------------------------------------------------ task side

    def suspend(
        self,
        task_id: str,
        command: str,
        timeout: float | None = None,
        *,
        language: str = "shell",
        worker: str | None = None,
        env: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
    ) -> str:
        """Seed 000's suspension (detached): RUNNING -> WAITING_REMOTE, slot given back, request sent.

        The response completes or fails the task; the caller's code may simply return.
        """
        return self._suspend(
            task_id, command, timeout, language, worker, env, False, labels=labels
        ).request_id

    def execute_inline(
        self,
        task_id: str,
        command: str,
        timeout: float | None = None,
        *,
        language: str = "shell",
        worker: str | None = None,
        env: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        runtime: dict[str, Any] | None = None,
    ) -> Any:
        """Run a command for a running task and block until its result (the task waits in WAITING_REMOTE
        without a slot meanwhile, and is RUNNING again when this returns). Raises RemoteExecutionError."""
        request = self._suspend(
            task_id, command, timeout, language, worker, env, True, labels=labels, runtime=runtime
        )
        return _unwrap(request.future.result())

    async def execute_async(
        self,
        task_id: str,
        command: str,
        timeout: float | None = None,
        *,
        language: str = "shell",
        worker: str | None = None,
        env: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        runtime: dict[str, Any] | None = None,
    ) -> Any:
        """:meth:`execute_inline` for coroutine tasks: awaits the result, holding neither a thread nor a slot."""
        request = self._suspend(
            task_id, command, timeout, language, worker, env, True, labels=labels, runtime=runtime
        )
        return _unwrap(await asyncio.wrap_future(request.future))

    def resume(self, task_id: str, result: Any) -> bool:
        """Seed 000's ``resume_task_with_result``: WAITING_REMOTE -> RUNNING -> COMPLETED with ``result``.

        A request the task was waiting on is answered with ``result``. For an inline wait the task
        returns to RUNNING and its code continues with ``result``. False if the task was not waiting.
        """
        with self._lock:
            request = self._by_task.get(task_id)
        if request is not None:
            return self.complete(request.request_id, True, result, None, None)
        suspension = self._require_manager().suspension(task_id)
        return suspension is not None and suspension.complete(result)

    # ------------------------------------------------------------------ internals

    def _require_manager(self) -> TaskManager:
        if self._manager is None:
            raise RuntimeError("this RemoteExecutionManager is not attached to a TaskManager")
        return self._manager

    def validate_command(
        self, command: Any, timeout: Any, language: Any, worker: Any, labels: Any = None, runtime: Any = None
    ) -> float:
        """Check a command's fields; returns its timeout in seconds or raises ``TaskValidationError`` saying how to fix it."""
        if not isinstance(command, str) or not command.strip():
            raise TaskValidationError("command must be a non-empty string, e.g. remote_execute('uname -a')")
        if labels is not None:
            try:
                check_labels(labels, "labels")
            except ProtocolError as exc:
                raise TaskValidationError(
                    f"{exc}; pass a label selector such as {{'region': 'eu'}}"
                ) from None
        if runtime is not None:
            try:
                check_runtime_call(runtime)
            except ProtocolError as exc:
                raise TaskValidationError(str(exc)) from None
        elif language not in LANGUAGES:
            raise TaskValidationError(
                f"language must be one of {', '.join(map(repr, LANGUAGES))}, got {language!r}"
            )
        if worker is not None and not isinstance(worker, str):
            raise TaskValidationError(f"worker must be a worker name (string) or None, got {worker!r}")
        if timeout is None:
            return float(self.default_timeout)
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise TaskValidationError(f"timeout must be a positive number of seconds, got {timeout!r}")
        return float(timeout)

    def _register(
        self,
        task_id: str | None,
        command: str,
        timeout: float | None,
        language: str | None,
        worker: str | None,
        env: dict[str, str] | None,
        inline: bool,
        *,
        labels: dict[str, str] | None = None,
        runtime: dict[str, Any] | None = None,
    ) -> RemoteRequest:
        language = language or "shell"
        seconds = self.validate_command(command, timeout, language, worker, labels, runtime)
        request = RemoteRequest(
            uuid.uuid4().hex,
            task_id,
            command,
            language,
            seconds,
            worker or None,
            env,
            inline,
            self.max_log_lines,
            labels=labels,
            runtime=runtime,
        )
        with self._lock:
            self._requests[request.request_id] = request
            if task_id is not None:
                self._by_task[task_id] = request
        deadline = seconds + self.response_grace
        request_id = request.request_id
        request.timer = call_later(deadline, lambda: self._expire(request_id, seconds))
        return request

    def _expire(self, request_id: str, seconds: float) -> None:
        with self._lock:
            request = self._requests.get(request_id)
        if request is None:
            return
        self.fail_request(request_id, "timeout", f"no result from the remote executor within {seconds:g} s")
        self._cancel_remote(request, "timeout")

    def _send(self, request: RemoteRequest) -> None:
        transport = self._transport
        if transport is None:
            return  # the caller delivers it itself (seed 000's send_to_remote_server)
        try:
            transport.send_request(request)
        except RemoteExecutionError as exc:
            self.fail_request(request.request_id, exc.error_type, str(exc.args[0]))
        except Exception as exc:
            logger.exception("sending remote request %s failed", request.request_id)
            self.fail_request(request.request_id, "remote_error", f"could not send the command: {exc}")

    def _cancel_remote(self, request: RemoteRequest, reason: str) -> None:
        transport = self._transport
        if transport is None:
            return
        try:
            transport.cancel_request(request, reason)
        except Exception:
            logger.exception("cancelling remote request %s failed", request.request_id)

    def _suspend(
        self,
        task_id: str,
        command: str,
        timeout: float | None,
        language: str | None,
        worker: str | None,
        env: dict[str, str] | None,
        inline: bool,
        *,
        labels: dict[str, str] | None = None,
        runtime: dict[str, Any] | None = None,
    ) -> RemoteRequest:
        manager = self._require_manager()
        if task_id is None:
            raise RuntimeError("no current task: suspend_task_for_remote must be called for a running task")
        self.validate_command(command, timeout, language or "shell", worker, labels, runtime)
        holder: list[RemoteRequest] = []
        suspension = manager.suspend(task_id, on_abandon=lambda error: self._abandoned(holder, error))
        request = self._register(
            task_id, command, timeout, language, worker, env, inline, labels=labels, runtime=runtime
        )
        request.suspension = suspension
        holder.append(request)
        if not suspension.active:  # cancelled or timed out between the two steps
            self._abandoned(
                holder, TaskError("cancelled", f"task {task_id} ended before its command was sent")
            )
            return request
        self._send(request)
        return request

    def _abandoned(self, holder: list[RemoteRequest], error: TaskError) -> None:
        """The manager ended a waiting task (cancel, timeout, shutdown): fail its request, stop the command."""
        if not holder:
            return
        request = holder[0]
        error_type = "cancelled" if error.type == "cancelled" else error.type
        message = f"task {request.task_id} ended while waiting for the remote result: {error.message}"
        if self.fail_request(request.request_id, error_type, message):
            self._cancel_remote(request, error_type)

    def _future_for(self, request_id: str) -> Future[RemoteOutcome]:
        with self._lock:
            request = self._requests.get(request_id)
            if request is not None:
                return request.future
            outcome = self._recent.get(request_id)
        if outcome is None:
            raise UnknownRequestError(f"unknown remote request id {request_id!r}")
        future: Future[RemoteOutcome] = Future()
        future.set_result(outcome)
        return future

    def _complete(self, outcome: RemoteOutcome) -> bool:
        request_id = outcome.request_id
        with self._lock:
            request = self._requests.pop(request_id, None)
            if request is None:
                self.ignored_responses += 1
                late = request_id in self._recent
            else:
                if request.task_id is not None:
                    if self._by_task.get(request.task_id) is request:
                        del self._by_task[request.task_id]
                    self._recent_by_task[request.task_id] = request_id
                    if len(self._recent_by_task) > self._remembered:
                        self._recent_by_task.popitem(last=False)
                self._recent[request_id] = outcome
                if len(self._recent) > self._remembered:
                    self._recent.popitem(last=False)
        if request is None:
            logger.info(
                "ignored a %s response for remote request %r",
                "duplicate or late" if late else "unknown",
                request_id,
            )
            return False
        if request.sent_to is not None and outcome.worker is None:
            outcome = dataclasses.replace(outcome, worker=request.sent_to)
            with self._lock:
                if request_id in self._recent:
                    self._recent[request_id] = outcome
        if request.timer is not None:
            request.timer.cancel()
        try:
            # The task's transition comes first: an inline waiter woken by the future must find its
            # task RUNNING again, or its return would look like a detached suspension.
            self._apply(request, outcome)
        finally:
            request.future.set_result(outcome)
        return True

    def _apply(self, request: RemoteRequest, outcome: RemoteOutcome) -> None:
        """What the outcome does to the waiting task (a no-op if it no longer waits)."""
        suspension = request.suspension
        if suspension is None:
            return
        if request.inline:
            suspension.resume()  # the blocked caller continues with the outcome
        elif outcome.success:
            suspension.complete(outcome.result)
        else:
            suspension.fail(
                outcome.error_type or "remote_error",
                _failure_message(outcome),
                retryable=outcome.error_type != "cancelled",
            )

    def _remote_target(self) -> Target:
        def run(arguments: dict[str, Any]) -> None:
            task_id = get_current_task_id()
            if task_id is None:
                raise RuntimeError("the remote target runs only as a task")
            self.require_delivery()
            self.suspend(
                task_id,
                arguments["command"],
                arguments.get("timeout"),
                language=arguments.get("language") or "shell",
                worker=arguments.get("worker"),
                labels=arguments.get("labels"),
            )

        return Target(
            kind=TaskKind.REMOTE,
            name=REMOTE_TARGET_NAME,
            description="Runs a shell command or Python code on a remote worker; the result is a dict with "
            "exit_code, stdout and stderr.",
            inputs=dict(REMOTE_INPUTS),
            call=run,
            runs_inline=True,  # it only sends the request and suspends: no slot, no thread while it waits
        )

    def __repr__(self) -> str:
        return f"<RemoteExecutionManager pending={len(self._requests)} transport={type(self._transport).__name__}>"


def _remote_execute_tool(manager: TaskManager) -> Any:
    from .tools import RemoteExecuteTool  # smolagents: loaded only when a conversation uses the tool

    return RemoteExecuteTool(manager)


def _failure_message(outcome: RemoteOutcome) -> str:
    message = outcome.error or "remote execution failed"
    result = outcome.result
    if isinstance(result, dict):
        tails = []
        for stream in ("stderr", "stdout"):
            text = result.get(stream)
            if isinstance(text, str) and text.strip():
                tail = text.strip()[-500:]
                tails.append(f"{stream}: {tail}")
        if tails and not any(t in message for t in tails):
            message = f"{message}; " + "; ".join(tails)
    return message


def _unwrap(outcome: RemoteOutcome) -> Any:
    if outcome.success:
        return outcome.result
    raise RemoteExecutionError(
        outcome.error_type or "remote_error",
        outcome.error or "remote execution failed",
        outcome.result,
        outcome.request_id,
    )
