"""The requesting side of collaboration: send a REQUEST, follow its PROGRESS, end it with one RESPONSE.

A :class:`Requester` sends in one agent's name through a directory. Replies come back through a
callback as they happen, so a RESPONSE wakes the waiting request (a future or an event, never a
poll); a correlation id ties each reply to its request, late or duplicate replies are dropped, and a
request nobody answers in time ends with a ``timeout`` error (and a CANCEL to its agent).
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from ..core.manager import call_later, get_current_task_id, get_task_manager
from .directory import AgentDirectory
from .messages import (
    DEFAULT_TIMEOUT,
    CollaborationEndpoint,
    CollaborationError,
    CollaborationMessage,
    MessageType,
    check_size,
    is_time,
    result_of,
    set_once,
)


class RequestHandle:
    """A REQUEST on its way: ``cancel()`` sends CANCEL and ends it with a ``cancelled`` error."""

    def __init__(self, protocol: Requester, request_id: str) -> None:
        """``protocol``: what sent it (a :class:`Requester`, usually a ``CollaborationProtocol``)."""
        self.protocol = protocol
        self.request_id = request_id

    def cancel(self) -> bool:
        return self.protocol.cancel_request(self.request_id)


@dataclass
class _Pending:
    message: CollaborationMessage
    endpoint: CollaborationEndpoint | None
    on_progress: Callable[[float | None, str | None], None] | None
    on_done: Callable[[CollaborationMessage], None]
    timer: Any = None


class Requester:
    """Requests sent in one agent's name (the requesting half of a ``CollaborationProtocol``).

    Args:
        name: who the requests are from (and the prefix of their ids).
        directory: where the receiving agents are found.
    """

    def __init__(self, name: str, directory: AgentDirectory) -> None:
        self.name = name
        self.directory = directory
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._ids = itertools.count(1)

    def start_request(
        self,
        to_agent: str,
        tool_name: str,
        parameters: dict[str, Any] | None,
        timeout: float | None,
        on_done: Callable[[CollaborationMessage], None],
        on_progress: Callable[[float | None, str | None], None] | None = None,
        from_agent: str | None = None,
    ) -> RequestHandle:
        """Send a REQUEST without waiting: ``on_done(response)`` is called exactly once (any thread).

        Every failure (unknown agent, timeout, transport) arrives as an error RESPONSE, never as an
        exception from here. The building block of the blocking, async and task forms.
        """
        timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        message = CollaborationMessage(
            id=f"{self.name}-{next(self._ids)}-{uuid.uuid4().hex[:8]}",
            type=MessageType.REQUEST,
            from_agent=from_agent or self.name,
            to_agent=to_agent,
            content={"tool": tool_name, "parameters": parameters or {}},
            deadline=time.time() + timeout if isinstance(timeout, (int, float)) and timeout > 0 else None,
        )
        pending = _Pending(message, None, on_progress, on_done)
        with self._lock:
            self._pending[message.id] = pending
        try:
            if message.deadline is None:
                raise CollaborationError(
                    "bad_request", f"timeout must be a positive number of seconds, got {timeout!r}"
                )
            check_size(message.content, "the request's parameters")
            pending.endpoint = self.directory.resolve(to_agent)
        except CollaborationError as exc:
            self._receive(message.reply(MessageType.RESPONSE, exc.content()))
            return RequestHandle(self, message.id)
        pending.timer = call_later(timeout, partial(self._time_out, message.id, timeout))
        try:
            pending.endpoint.deliver(message, self._receive)
        except Exception as exc:  # a broken endpoint: the caller gets an answer all the same
            self._receive(
                message.reply(MessageType.RESPONSE, CollaborationError("transport", str(exc)).content())
            )
        return RequestHandle(self, message.id)

    def _receive(self, message: CollaborationMessage) -> None:
        """A reply arrived (any thread): PROGRESS to the requester's callback, RESPONSE ends the request."""
        with self._lock:
            pending = self._pending.get(message.correlation_id or "")
            if pending is not None and message.type is MessageType.RESPONSE:
                del self._pending[message.correlation_id]
        if pending is None:
            return  # late or duplicate: the request already ended
        if message.type is MessageType.PROGRESS:
            if pending.on_progress is not None and isinstance(message.content, dict):
                fraction = message.content.get("fraction")
                fraction = fraction if isinstance(fraction, (int, float)) and 0 <= fraction <= 1 else None
                note = message.content.get("message")
                pending.on_progress(fraction, None if note is None else str(note))
            return
        if pending.timer is not None:
            pending.timer.cancel()
        pending.on_done(message)

    def _time_out(self, request_id: str, timeout: float) -> None:
        self._end_request(request_id, CollaborationError("timeout", f"no response within {timeout:g} s"))

    def cancel_request(self, request_id: str) -> bool:
        """End a request of ours with a ``cancelled`` error and send CANCEL to its agent."""
        return self._end_request(request_id, CollaborationError("cancelled", "the request was cancelled"))

    def _end_request(self, request_id: str, error: CollaborationError) -> bool:
        with self._lock:
            pending = self._pending.get(request_id)
        if pending is None:
            return False
        endpoint = pending.endpoint
        self._receive(pending.message.reply(MessageType.RESPONSE, error.content()))
        if endpoint is not None:
            try:
                endpoint.cancel(request_id)
            except Exception:  # noqa: BLE001 - a CANCEL that cannot be sent changes nothing here
                pass
        return True

    async def request_collaboration(
        self,
        from_agent: str,
        to_agent: str,
        tool_name: str,
        parameters: dict[str, Any] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        on_progress: Callable[[float | None, str | None], None] | None = None,
    ) -> dict[str, Any]:
        """The seed's call: ask ``to_agent`` to run ``tool_name``; returns the RESPONSE content.

        ``{"status": "success", "result": ...}`` or ``{"status": "error", "error": ..., "error_type":
        ...}``. ``timeout`` is in seconds (the seed's milliseconds are not used anywhere here).
        Inside a task, PROGRESS messages become that task's progress; ``on_progress(fraction,
        message)`` sees them too. Cancelling the awaiting coroutine sends CANCEL.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[CollaborationMessage] = loop.create_future()
        handle = self.start_request(
            to_agent,
            tool_name,
            parameters,
            timeout,
            on_done=lambda answer: loop.call_soon_threadsafe(set_once, future, answer),
            on_progress=_progress_sink(on_progress),
            from_agent=from_agent,
        )
        try:
            answer = await future
        except asyncio.CancelledError:
            handle.cancel()
            raise
        return answer.content

    def ask(
        self,
        to_agent: str,
        tool_name: str,
        parameters: dict[str, Any] | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        on_progress: Callable[[float | None, str | None], None] | None = None,
    ) -> Any:
        """Blocking form for sync code: the result, or ``CollaborationError`` with the error type."""
        done = threading.Event()
        box: list[CollaborationMessage] = []

        def finish(answer: CollaborationMessage) -> None:
            box.append(answer)
            done.set()

        self.start_request(to_agent, tool_name, parameters, timeout, finish, _progress_sink(on_progress))
        # The request's own timer answers by ``timeout``; the extra bound only guards against a bug.
        if not done.wait((timeout if is_time(timeout) and timeout > 0 else 0) + 30.0):
            raise CollaborationError("timeout", f"no response within {timeout} s")
        return result_of(box[0].content)

    def open_requests(self) -> list[str]:
        """The ids of the requests still waiting for their RESPONSE."""
        with self._lock:
            return list(self._pending)

    def close(self) -> None:
        """End every open request with a ``cancelled`` error (and send CANCEL for each)."""
        for request_id in self.open_requests():
            self.cancel_request(request_id)


def _progress_sink(
    on_progress: Callable[[float | None, str | None], None] | None,
) -> Callable[[float | None, str | None], None]:
    """PROGRESS handling for a request made from inside a task: the task's progress follows the handler's."""
    manager, task_id = get_task_manager(), get_current_task_id()

    def sink(fraction: float | None, message: str | None) -> None:
        if manager is not None and task_id is not None:
            manager.report_progress(task_id, fraction, message)
        if on_progress is not None:
            on_progress(fraction, message)

    return sink
