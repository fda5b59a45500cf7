"""PendingRequests: the bridge's request bookkeeping (request ids <-> futures, deadlines, listeners, outcomes).

It issues requests, arms their deadlines, hands them to the transport, matches responses, logs and
start events to them and remembers recent outcomes; it knows nothing of tasks. Responses may arrive
from any thread or event loop; unknown, late and duplicate responses are logged and ignored, and
nothing here raises into the transport that delivered them. :class:`~.bridge.RemoteExecutionManager`
adds the task side (suspension, inline waits) through :meth:`PendingRequests.settle`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from ..core.compat import TIMEOUT_ERRORS
from ..core.errors import RemoteExecutionError, TaskValidationError
from ..core.manager import call_later
from .listeners import Listeners
from .protocol import LANGUAGES, ProtocolError, check_labels, check_runtime_call
from .requests import (
    LogListener,
    RemoteOutcome,
    RemoteRequest,
    RemoteTransport,
    StartListener,
    UnknownRequestError,
    unwrap,
)

__all__ = ["PendingRequests"]

logger = logging.getLogger("async_task_system.remote.bridge")


class PendingRequests:
    """Remote requests by id until they end, and how they ended (recent ones).

    Args:
        default_timeout: seconds a command may run when the caller gives no timeout.
        response_grace: extra seconds to wait for a response after the command's own timeout
            (the worker kills the command at its timeout and still has to report it).
        max_log_lines: streamed lines kept per pending request for :meth:`get_logs`.
        remembered_outcomes: finished requests whose outcome :meth:`outcome` still answers.
    """

    def __init__(
        self,
        *,
        default_timeout: float = 60.0,
        response_grace: float = 5.0,
        max_log_lines: int = 500,
        remembered_outcomes: int = 4096,
    ) -> None:
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
        self._log_listeners = Listeners("remote log listener", logger)
        self._start_listeners = Listeners("remote start listener", logger)
        self.ignored_responses = 0

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
            task_id,
            False,
            command,
            timeout,
            language=language,
            worker=worker,
            env=env,
            labels=labels,
            runtime=runtime,
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
        self._log_listeners(request.task_id, request_id, stream, line)
        return True

    def handle_remote_start(self, request_id: str, started_at: float) -> bool:
        """Note that the executor's process of a pending request started at ``started_at`` (epoch
        seconds) and tell the start listeners; False (nothing changes) if it is not pending or started."""
        with self._lock:
            request = self._requests.get(request_id)
            if request is None or request.started_at is not None:
                return False
            request.started_at = started_at
        self._start_listeners(request.task_id, request_id, started_at)
        return True

    def add_start_listener(self, callback: StartListener) -> Callable[[], None]:
        """Call ``callback(task_id, request_id, started_at)`` when a request's process starts; returns a remover."""
        return self._start_listeners.add(callback)

    def add_log_listener(self, callback: LogListener) -> Callable[[], None]:
        """Call ``callback(task_id, request_id, stream, line)`` for each streamed line; returns a remover."""
        return self._log_listeners.add(callback)

    def get_logs(self, request_or_task_id: str) -> list[tuple[str, str]]:
        """The streamed ``(stream, line)`` pairs so far of a pending request (by request or task id)."""
        request = self.pending_for(request_or_task_id)
        return list(request.logs) if request is not None else []

    def pending_for(self, request_or_task_id: str) -> RemoteRequest | None:
        """The pending request with this id, or the one the task with this id waits on; else ``None``."""
        with self._lock:
            return self._requests.get(request_or_task_id) or self._by_task.get(request_or_task_id)

    async def wait_for_remote_result(self, request_id: str, timeout: float | None = None) -> Any:
        """Await a request's result (seed 000). Raises :class:`RemoteExecutionError` if it failed and
        ``TimeoutError`` if ``timeout`` seconds pass first (the request itself stays pending)."""
        future = self._future_for(request_id)
        try:
            outcome = await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except TIMEOUT_ERRORS:  # asyncio.TimeoutError before 3.11
            raise TimeoutError(f"no result for remote request {request_id} within {timeout:g} s") from None
        return unwrap(outcome)

    def wait_result(self, request_id: str, timeout: float | None = None) -> Any:
        """Blocking twin of :meth:`wait_for_remote_result` for synchronous code."""
        future = self._future_for(request_id)
        try:
            outcome = future.result(timeout)
        except TIMEOUT_ERRORS:  # concurrent.futures.TimeoutError before 3.11
            raise TimeoutError(f"no result for remote request {request_id} within {timeout:g} s") from None
        return unwrap(outcome)

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

    # ------------------------------------------------------------------ internals

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
        inline: bool,
        command: str,
        timeout: float | None = None,
        *,
        language: str | None = "shell",
        worker: str | None = None,
        env: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        runtime: dict[str, Any] | None = None,
    ) -> RemoteRequest:
        """Issue a request (validated) and arm its deadline; the caller sends it with :meth:`_send`."""
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
            self.settle(request, outcome)
        finally:
            request.future.set_result(outcome)
        return True

    def settle(self, request: RemoteRequest, outcome: RemoteOutcome) -> None:
        """What an outcome does besides ending the request's future, called once, before the future
        is set: nothing here; the bridge moves the waiting task on."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} pending={len(self._requests)} transport={type(self._transport).__name__}>"
