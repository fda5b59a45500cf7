"""Agent-to-agent collaboration (seed 001 §3): REQUEST, RESPONSE, PROGRESS and CANCEL between named agents.

An agent offers tools to other agents through a :class:`CollaborationProtocol`
(``register_handler(tool_name, handler)``); another agent asks for one with
``request_collaboration(from_agent, to_agent, tool_name, parameters, timeout)``. The seed's sketch
never sends a message; here:

* **Delivery.** Agents are found by name in an :class:`AgentDirectory`: in process the entry is
  the receiving protocol itself; across processes it is a remote endpoint (the A2A client of
  :mod:`async_task_system.collab.a2a`, which speaks the A2A protocol over HTTP). Every endpoint has the
  same two calls, ``deliver(message, reply)`` and ``cancel(request_id)``; replies come back through
  ``reply`` as they happen, so a RESPONSE wakes the waiting request (a future or an event, never a
  poll) and PROGRESS reaches the requester while the handler runs.
* **Each request is a task.** The receiving agent runs the handler as a task of its own
  ``TaskManager`` (kind ``collaboration``, named ``<agent>:<tool>``), so it is traced, listed, bounded by the request's
  deadline and cancellable: a CANCEL cancels that task through the manager's public ``cancel``,
  and an ``async`` handler's coroutine is really cancelled (a sync handler sees
  ``cancellation_requested()``). The handler's ``report_progress(...)`` becomes PROGRESS messages.
* **On the requesting side** an agent's LLM writes ``submit_task("agent_request", "<agent>",
  {"tool": ..., "parameters": ...})``: the task waits in WAITING_REMOTE (no thread, no slot), its
  progress follows the remote handler's, cancelling it sends CANCEL, and the RESPONSE's payload
  is its result. The ``ask_agent`` tool does the same in one blocking call.
* **Hostile input is normal input.** A correlation id ties each reply to its request; the
  deadline (absolute, seconds since the epoch) travels with the request and the receiver refuses
  expired work; the inbox is bounded (a full inbox answers ``busy`` at once); an unknown tool is
  answered with the list of known ones; a handler that raises becomes an error response; a
  request nobody answers in time ends with a ``timeout`` error and its handler is cancelled.

Errors in a RESPONSE carry an ``error_type``: ``unknown_agent``, ``unknown_tool``, ``busy``,
``expired``, ``timeout``, ``cancelled``, ``handler_error``, ``bad_request``, ``transport``, ``input_required``
(a remote A2A agent asked for input).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import itertools
import json
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from functools import partial
from typing import Any, Protocol, runtime_checkable

from ..core.errors import AsyncTaskSystemError
from ..core.manager import TaskManager, call_later, get_current_task_id, get_task_manager
from ..core.targets import Target
from ..core.tasks import TaskInfo, TaskKind, TaskStatus

__all__ = [
    "AGENT_REQUEST",
    "COLLABORATION",
    "AgentDirectory",
    "AgentRequests",
    "CollaborationEndpoint",
    "CollaborationError",
    "CollaborationMessage",
    "CollaborationProtocol",
    "MessageType",
    "RequestHandle",
    "ask_agent_tool",
    "attach_collaboration",
    "COLLABORATION_GUIDANCE",
    "collaboration_extension",
    "default_directory",
]

COLLABORATION = TaskKind.register(
    "collaboration", "a request another agent sent to this one (runs its handler)"
)
AGENT_REQUEST = TaskKind.register(
    "agent_request",
    "ask another named agent to run one of its tools: {'tool': ..., 'parameters': {...}}",
    aliases=("ask_agent",),
)

DEFAULT_TIMEOUT = 60.0
MAX_MESSAGE_BYTES = 1 << 20  # a request's parameters or a response's result, JSON-encoded
ERROR_TYPES = (
    "unknown_agent", "unknown_tool", "busy", "expired", "timeout", "cancelled", "handler_error",
    "bad_request", "transport",
)  # fmt: skip


class MessageType(str, Enum):
    """The four messages of the seed's protocol."""

    REQUEST = "request"
    RESPONSE = "response"
    PROGRESS = "progress"
    CANCEL = "cancel"


@dataclass
class CollaborationMessage:
    """One message between agents; ``to_dict``/``from_dict`` is its JSON wire form.

    ``correlation_id`` is the id of the REQUEST a RESPONSE, PROGRESS or CANCEL belongs to;
    ``deadline`` (seconds since the epoch) is when a REQUEST's answer stops being useful.
    Contents: REQUEST ``{"tool", "parameters"}``; RESPONSE ``{"status": "success", "result"}`` or
    ``{"status": "error", "error", "error_type"[, "known_tools"]}``; PROGRESS ``{"fraction",
    "message"}``; CANCEL ``{}``.
    """

    id: str
    type: MessageType
    from_agent: str
    to_agent: str
    content: Any
    metadata: dict[str, Any] = field(default_factory=dict)
    timestamp: datetime | None = None
    correlation_id: str | None = None
    deadline: float | None = None

    def __post_init__(self) -> None:
        if self.timestamp is None:
            self.timestamp = datetime.now(timezone.utc)
        self.type = MessageType(self.type)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type.value,
            "from_agent": self.from_agent,
            "to_agent": self.to_agent,
            "content": self.content,
            "metadata": self.metadata,
            "timestamp": self.timestamp.isoformat() if self.timestamp else None,
            "correlation_id": self.correlation_id,
            "deadline": self.deadline,
        }

    @classmethod
    def from_dict(cls, data: Any) -> CollaborationMessage:
        """Parse the wire form; ``CollaborationError("bad_request")`` says what is wrong."""
        if not isinstance(data, dict):
            raise CollaborationError(
                "bad_request", f"a message must be a JSON object, got {type(data).__name__}"
            )
        try:
            stamp = data.get("timestamp")
            deadline = data.get("deadline")
            if deadline is not None and not _is_time(deadline):
                raise ValueError(f"deadline must be seconds since the epoch, got {deadline!r}")
            metadata = data.get("metadata") or {}
            if not isinstance(metadata, dict):
                raise ValueError("metadata must be an object")
            return cls(
                id=str(data["id"]),
                type=MessageType(data["type"]),
                from_agent=str(data["from_agent"]),
                to_agent=str(data["to_agent"]),
                content=data.get("content"),
                metadata=metadata,
                timestamp=datetime.fromisoformat(stamp) if isinstance(stamp, str) else None,
                correlation_id=data.get("correlation_id"),
                deadline=None if deadline is None else float(deadline),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise CollaborationError("bad_request", f"not a collaboration message: {exc!s}") from None

    def reply(self, type: MessageType, content: Any) -> CollaborationMessage:
        """A RESPONSE or PROGRESS to this REQUEST (same correlation id, sender and receiver swapped)."""
        return CollaborationMessage(
            id=uuid.uuid4().hex,
            type=type,
            from_agent=self.to_agent,
            to_agent=self.from_agent,
            content=content,
            correlation_id=self.id,
        )


def _is_time(value: Any) -> bool:
    """A finite number of seconds (not a bool, not NaN or infinity)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class CollaborationError(AsyncTaskSystemError, RuntimeError):
    """A collaboration request did not succeed; ``error_type`` says why (see the module docstring)."""

    def __init__(self, error_type: str, message: str, known_tools: list[str] | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.known_tools = known_tools

    def content(self) -> dict[str, Any]:
        """The RESPONSE content that reports this error."""
        content: dict[str, Any] = {"status": "error", "error": str(self), "error_type": self.error_type}
        if self.known_tools is not None:
            content["known_tools"] = self.known_tools
        return content

    @classmethod
    def from_content(cls, content: Any) -> CollaborationError:
        if not isinstance(content, dict):
            return cls("bad_request", f"malformed response content: {content!r:.200}")
        return cls(
            str(content.get("error_type") or "handler_error"),
            str(content.get("error") or "the collaborator reported an error"),
            content.get("known_tools"),
        )


Reply = Callable[[CollaborationMessage], None]


class HandlerDeadlineError(AsyncTaskSystemError, TimeoutError):
    """A sync handler was still running at its request's deadline: its worker stopped waiting for it
    (the handler's thread is left to finish; the requester gets ``timeout``)."""


@runtime_checkable
class CollaborationEndpoint(Protocol):
    """Where messages for one agent go: a protocol in this process, or a remote agent."""

    def deliver(self, message: CollaborationMessage, reply: Reply) -> None:
        """Take a REQUEST; send its PROGRESS and exactly one RESPONSE through ``reply`` (any thread)."""

    def cancel(self, request_id: str) -> None:
        """CANCEL: stop the work of a REQUEST delivered earlier (nothing if it has ended)."""


class AgentDirectory:
    """Agents by name: ``register(name, endpoint)``; ``resolve(name)`` or an error listing who exists."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._agents: dict[str, CollaborationEndpoint] = {}
        self._listeners: list[Callable[[str], None]] = []

    def register(self, name: str, endpoint: CollaborationEndpoint) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"an agent name must be a non-empty string, got {name!r}")
        if not isinstance(endpoint, CollaborationEndpoint):
            raise TypeError(f"{endpoint!r} has no deliver(message, reply) and cancel(request_id)")
        with self._lock:
            self._agents[name] = endpoint
            listeners = list(self._listeners)
        for listener in listeners:
            listener(name)

    def unregister(self, name: str) -> None:
        with self._lock:
            self._agents.pop(name, None)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._agents)

    def resolve(self, name: str) -> CollaborationEndpoint:
        with self._lock:
            endpoint = self._agents.get(name)
        if endpoint is None:
            known = ", ".join(self.names()) or "none are registered"
            raise CollaborationError("unknown_agent", f"No agent named {name!r}. Known agents: {known}.")
        return endpoint

    def add_listener(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(name)`` for every agent registered from now on (and now for those that are)."""
        with self._lock:
            self._listeners.append(callback)
            names = list(self._agents)
        for name in names:
            callback(name)


_default_directory = AgentDirectory()


def default_directory() -> AgentDirectory:
    """The process's directory, used when a protocol is given none."""
    return _default_directory


def check_size(value: Any, what: str, limit: int = MAX_MESSAGE_BYTES) -> None:
    """Raise ``CollaborationError("bad_request")`` if ``value`` is not JSON or encodes to more than ``limit`` bytes."""
    try:
        size = len(json.dumps(value, ensure_ascii=False, default=str).encode())
    except (TypeError, ValueError) as exc:
        raise CollaborationError("bad_request", f"{what} is not JSON: {exc}") from None
    if size > limit:
        raise CollaborationError("bad_request", f"{what} is {size} bytes encoded; the limit is {limit}")


class RequestHandle:
    """A REQUEST on its way: ``cancel()`` sends CANCEL and ends it with a ``cancelled`` error."""

    def __init__(self, protocol: CollaborationProtocol, request_id: str) -> None:
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


@dataclass
class _Incoming:
    message: CollaborationMessage
    reply: Reply
    task_id: str | None = None
    coroutine_task: asyncio.Task | None = None
    progress: tuple[float | None, str | None] = (None, None)
    answered: bool = False
    ended: threading.Event = field(default_factory=threading.Event)  # the handler returned or its task ended


class CollaborationProtocol:
    """One agent's end of the collaboration protocol: it serves its handlers and sends requests.

    Args:
        name: the agent's name in the directory (others send requests to it by this name).
        task_manager: runs the handlers (and ``agent_request`` tasks); an ``AsyncAgent`` is accepted
            too. Default: a new ``TaskManager`` of its own.
        directory: where agents are found (default: :func:`default_directory`); this protocol
            registers itself there under ``name`` unless ``register`` is False.
        inbox_size: requests accepted and not yet answered, at most; more are answered ``busy``.
        max_stuck_handlers: sync handlers still running past their request's deadline, at most.
            A sync handler runs on a thread of its own: at the deadline its task times out, its
            slot and the manager's worker thread are given back, and the handler's thread is left
            to finish (Python cannot stop a thread). While this many are left running, requests for
            sync handlers are answered ``busy`` (handler threads stay bounded: this plus the slots).
    """

    def __init__(
        self,
        name: str,
        task_manager: Any = None,
        directory: AgentDirectory | None = None,
        *,
        inbox_size: int = 64,
        register: bool = True,
        max_stuck_handlers: int = 32,
    ) -> None:
        for what, value in (("inbox_size", inbox_size), ("max_stuck_handlers", max_stuck_handlers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{what} must be a positive integer, got {value!r}")
        self.max_stuck_handlers = max_stuck_handlers
        self.stuck_handlers = 0
        """Sync handlers left running past their deadline (their threads end when they return)."""
        self.name = name
        manager = getattr(task_manager, "task_manager", task_manager)
        self.owns_manager = manager is None
        self.manager: TaskManager = manager if manager is not None else TaskManager(max_workers=8)
        self.directory = directory if directory is not None else default_directory()
        self.inbox_size = inbox_size
        self._handlers: dict[str, tuple[Callable[..., Any], str]] = {}
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self._incoming: dict[str, _Incoming] = {}
        self._ids = itertools.count(1)
        self._remove_listener = self.manager.add_listener(self._on_task_change)
        self.manager.extension("collaboration").adopt(self)
        if register:
            self.directory.register(name, self)

    # ------------------------------------------------------------------ serving

    def register_handler(self, tool_name: str, handler: Callable[..., Any], description: str = "") -> None:
        """Serve ``tool_name``: ``handler(**parameters)`` (sync or ``async def``) returns the result.

        It runs as a task of this agent's manager; it may call ``report_progress(fraction,
        message)`` (sent to the requester as PROGRESS) and, if sync, check ``cancellation_requested()``.
        """
        if not callable(handler):
            raise TypeError(f"handler for {tool_name!r} must be callable")
        description = description or (inspect.getdoc(handler) or "").split("\n")[0]
        is_async = inspect.iscoroutinefunction(handler)
        # One target per tool, named "<agent>:<tool>" (what list_tasks shows): an async handler runs
        # on the event loop, holding no thread; a plain one on the manager's worker threads.
        self.manager.register_target(
            Target(
                kind=COLLABORATION,
                name=f"{self.name}:{tool_name}",
                description=f"Runs tool {tool_name!r} of agent {self.name!r} for a request another agent sent.",
                inputs={
                    "request_id": {"type": "string", "description": "the REQUEST's id"},
                    "from_agent": {"type": "string", "description": "who asked"},
                },
                call=partial(self._run_async if is_async else self._run_sync, tool_name),
                is_async=is_async,
            )
        )
        self._handlers[tool_name] = (handler, description)

    def tools(self) -> dict[str, str]:
        """The tools this agent serves, with their descriptions."""
        return {name: description for name, (_, description) in sorted(self._handlers.items())}

    def deliver(self, message: CollaborationMessage, reply: Reply) -> None:
        """Accept a REQUEST (any thread, never blocks): answered at once if it must be refused, else run as a task."""
        incoming = _Incoming(message, reply)
        refusal = self._refusal(message) or self._stuck(message) or self._admit(incoming)
        if refusal is not None:
            reply(message.reply(MessageType.RESPONSE, refusal.content()))
            return
        timeout = None if message.deadline is None else max(message.deadline - time.time(), 0.001)
        try:
            task_id = self.manager.submit(
                COLLABORATION,
                f"{self.name}:{message.content['tool']}",
                {"request_id": message.id, "from_agent": message.from_agent},
                timeout=timeout,
            )
        except Exception as exc:  # the manager is shut down
            with self._lock:
                self._incoming.pop(message.id, None)
            reply(message.reply(MessageType.RESPONSE, CollaborationError("busy", str(exc)).content()))
            return
        with self._lock:
            incoming.task_id = task_id

    def _refusal(self, message: CollaborationMessage) -> CollaborationError | None:
        if message.type is not MessageType.REQUEST:
            return CollaborationError(
                "bad_request", f"expected a request, got a {message.type.value} message"
            )
        content = message.content
        if not isinstance(content, dict) or not isinstance(content.get("tool"), str):
            return CollaborationError(
                "bad_request", 'a request\'s content is {"tool": <name>, "parameters": {...}}'
            )
        parameters = content.setdefault("parameters", {})
        if parameters is None:
            content["parameters"] = parameters = {}
        if not isinstance(parameters, dict):
            return CollaborationError("bad_request", "a request's parameters must be an object")
        if content["tool"] not in self._handlers:
            known = sorted(self._handlers)
            return CollaborationError(
                "unknown_tool",
                f"Agent {self.name!r} has no tool {content['tool']!r}. Known tools: {', '.join(known) or 'none'}.",
                known,
            )
        if message.deadline is not None and message.deadline <= time.time():
            return CollaborationError(
                "expired", f"the request's deadline passed {time.time() - message.deadline:.3f} s ago"
            )
        return None

    def _stuck(self, message: CollaborationMessage) -> CollaborationError | None:
        """``busy`` for a sync handler while ``max_stuck_handlers`` are left running past their deadline."""
        handler = self._handlers[message.content["tool"]][0]
        if inspect.iscoroutinefunction(handler) or self.stuck_handlers < self.max_stuck_handlers:
            return None
        return CollaborationError(
            "busy",
            f"agent {self.name!r} has {self.stuck_handlers} handlers still running past their deadline "
            f"(max_stuck_handlers={self.max_stuck_handlers}); try again later",
        )

    def _admit(self, incoming: _Incoming) -> CollaborationError | None:
        """Put a request in the inbox, or say why not: full, or its id already there (one lock: no race)."""
        request_id = incoming.message.id
        with self._lock:
            if request_id in self._incoming:
                return CollaborationError(
                    "bad_request", f"a request with id {request_id!r} is already in hand"
                )
            if len(self._incoming) >= self.inbox_size:
                return CollaborationError(
                    "busy", f"agent {self.name!r} has {self.inbox_size} requests in hand; try again later"
                )
            self._incoming[request_id] = incoming
        return None

    def cancel(self, request_id: str) -> None:
        """CANCEL from the requester: cancel the handler's task (its coroutine is cancelled too)."""
        with self._lock:
            incoming = self._incoming.get(request_id)
        if incoming is not None and incoming.task_id is not None:
            self.manager.cancel(incoming.task_id)

    async def handle_request(self, message: CollaborationMessage) -> CollaborationMessage:
        """The seed's call: run a REQUEST here and return its RESPONSE (PROGRESS messages are dropped)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[CollaborationMessage] = loop.create_future()

        def reply(answer: CollaborationMessage) -> None:
            if answer.type is MessageType.RESPONSE:
                loop.call_soon_threadsafe(_set_once, future, answer)

        self.deliver(message, reply)
        return await future

    def _take(self, tool: str, arguments: dict[str, Any]) -> tuple[_Incoming, Callable[..., Any]]:
        with self._lock:
            incoming = self._incoming.get(arguments["request_id"])
        if incoming is None:
            raise CollaborationError("bad_request", f"no request {arguments['request_id']!r} is waiting here")
        return incoming, self._handlers[tool][0]

    def _run_sync(self, tool: str, arguments: dict[str, Any]) -> Any:
        incoming, handler = self._take(tool, arguments)
        parameters = incoming.message.content["parameters"]
        if incoming.message.deadline is None:
            result = handler(**parameters)
        else:
            result = self._run_bounded(incoming, handler, parameters)
        check_size(result, "the handler's result")
        return result

    def _run_bounded(self, incoming: _Incoming, handler: Callable[..., Any], parameters: dict) -> Any:
        """Run a sync handler on a thread of its own; give up at the deadline or when its task ends."""
        outcome: list[Any] = []
        gave_up = False

        def run() -> None:
            nonlocal gave_up
            try:
                outcome.append((True, handler(**parameters)))
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting worker
                outcome.append((False, exc))
            finally:
                with self._lock:
                    if gave_up:
                        self.stuck_handlers -= 1
                incoming.ended.set()

        context = contextvars.copy_context()  # the task's identity: report_progress, cancellation_requested
        thread = threading.Thread(
            target=context.run, args=(run,), name=f"collab-{self.name}-handler", daemon=True
        )
        thread.start()
        incoming.ended.wait(max(incoming.message.deadline - time.time(), 0.0))
        with self._lock:
            if not outcome:
                gave_up = True
                self.stuck_handlers += 1
        if gave_up:
            raise HandlerDeadlineError("the handler did not finish before the request's deadline")
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    async def _run_async(self, tool: str, arguments: dict[str, Any]) -> Any:
        incoming, handler = self._take(tool, arguments)
        incoming.coroutine_task = asyncio.current_task()  # cancelled with the task (see _on_task_change)
        result = await handler(**incoming.message.content["parameters"])
        check_size(result, "the handler's result")
        return result

    def _on_task_change(self, info: TaskInfo) -> None:
        """Handler tasks: progress -> PROGRESS; the end -> RESPONSE; cancelled or timed out -> stop the coroutine."""
        if info.kind is not COLLABORATION or not info.name.startswith(f"{self.name}:"):
            return
        request_id = info.arguments.get("request_id")
        with self._lock:
            incoming = self._incoming.get(request_id)
            if incoming is None or incoming.answered:
                return
            incoming.task_id = info.id
            if info.status.is_terminal:
                incoming.answered = True
                incoming.ended.set()  # a sync handler's worker stops waiting for it
                del self._incoming[request_id]
        message = incoming.message
        if not info.status.is_terminal:
            progress = (info.progress, info.progress_message)
            if progress != incoming.progress and progress != (None, None):
                incoming.progress = progress
                incoming.reply(
                    message.reply(MessageType.PROGRESS, {"fraction": progress[0], "message": progress[1]})
                )
            return
        if info.status is TaskStatus.COMPLETED:
            content: dict[str, Any] = {"status": "success", "result": info.result}
        else:
            coroutine_task = incoming.coroutine_task
            if coroutine_task is not None and not coroutine_task.done():
                coroutine_task.get_loop().call_soon_threadsafe(coroutine_task.cancel)
            content = _error_content(info)
        incoming.reply(message.reply(MessageType.RESPONSE, content))

    # ------------------------------------------------------------------ requesting

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
            on_done=lambda answer: loop.call_soon_threadsafe(_set_once, future, answer),
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
        if not done.wait((timeout if _is_time(timeout) and timeout > 0 else 0) + 30.0):
            raise CollaborationError("timeout", f"no response within {timeout} s")
        return result_of(box[0].content)

    def close(self) -> None:
        """Leave the directory, end our open requests (``cancelled``) and shut an own manager down."""
        if self._is_registered():
            self.directory.unregister(self.name)
        with self._lock:
            open_requests = list(self._pending)
        for request_id in open_requests:
            self.cancel_request(request_id)
        self._remove_listener()
        if self.owns_manager:
            self.manager.shutdown(wait=False, cancel_pending=True)

    def _is_registered(self) -> bool:
        try:
            return self.directory.resolve(self.name) is self
        except CollaborationError:
            return False

    def __enter__(self) -> CollaborationProtocol:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<CollaborationProtocol {self.name!r} tools={sorted(self._handlers)}>"


def result_of(content: Any) -> Any:
    """A RESPONSE content's result, or raise the ``CollaborationError`` it reports."""
    if isinstance(content, dict) and content.get("status") == "success":
        return content.get("result")
    raise CollaborationError.from_content(content)


def _error_content(info: TaskInfo) -> dict[str, Any]:
    error = info.error
    if info.status is TaskStatus.CANCELLED:
        return CollaborationError("cancelled", "the request was cancelled").content()
    if error is not None and error.type in ("timeout", HandlerDeadlineError.__name__):
        return CollaborationError(
            "timeout", "the handler did not finish before the request's deadline"
        ).content()
    if error is not None and error.type == "CollaborationError":
        return CollaborationError("bad_request", error.message).content()
    message = f"{error.type}: {error.message}" if error is not None else "the handler failed"
    return CollaborationError("handler_error", message).content()


def _set_once(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)


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


# ---------------------------------------------------------------------------------------------- agent_request


class AgentRequests:
    """The ``collaboration`` extension of a manager: the ``agent_request`` task kind and the ``ask_agent`` tool.

    Each agent in the directory is a target of kind ``agent_request``, so the LLM writes
    ``submit_task("agent_request", "<agent>", {"tool": ..., "parameters": {...}, "timeout": 60})``.
    The task suspends (WAITING_REMOTE: no thread, no slot) until the RESPONSE, whose result becomes
    the task's; an error RESPONSE fails it with the response's error type. Requests go out from
    the manager's own :class:`CollaborationProtocol` if one was made on it, else from an anonymous
    one that is in no directory (replies need no address).
    """

    def __init__(self, manager: TaskManager) -> None:
        self.manager = manager
        self.protocol: CollaborationProtocol | None = None
        self._watched: set[int] = set()
        self._lock = threading.Lock()

    def adopt(self, protocol: CollaborationProtocol) -> None:
        """The manager's agent has a protocol: requests go out in its name; its directory's agents become targets."""
        with self._lock:
            if self.protocol is None:
                self.protocol = protocol
        self.watch(protocol.directory)

    def requester(self) -> CollaborationProtocol:
        with self._lock:
            protocol = self.protocol
        if protocol is None:
            protocol = CollaborationProtocol(f"manager-{uuid.uuid4().hex[:8]}", self.manager, register=False)
        return protocol

    def watch(self, directory: AgentDirectory) -> None:
        """Make every agent of ``directory`` (now and later) a target of kind ``agent_request``."""
        with self._lock:
            if id(directory) in self._watched:
                return
            self._watched.add(id(directory))
        directory.add_listener(self._add_target)

    def _add_target(self, agent: str) -> None:
        self.manager.register_target(
            Target(
                kind=AGENT_REQUEST,
                name=agent,
                description=f"Asks agent {agent!r} to run one of its tools; the result is its answer.",
                inputs={
                    "tool": {"type": "string", "description": "the other agent's tool"},
                    "parameters": {"type": "object", "description": "its arguments", "nullable": True},
                    "timeout": {
                        "type": "number",
                        "description": "seconds to wait (default 60)",
                        "nullable": True,
                    },
                },
                call=partial(self._start, agent),
                runs_inline=True,
            )
        )

    def _start(self, agent: str, arguments: dict[str, Any]) -> None:
        task_id = get_current_task_id()
        if task_id is None:
            raise RuntimeError("an agent_request runs only as a task")
        handle: list[RequestHandle] = []
        suspension = self.manager.suspend(task_id, on_abandon=lambda _error: handle and handle[0].cancel())

        def done(answer: CollaborationMessage) -> None:
            content = answer.content
            if isinstance(content, dict) and content.get("status") == "success":
                suspension.complete(content.get("result"))
            else:
                error = CollaborationError.from_content(content)
                suspension.fail(
                    error.error_type, str(error), retryable=error.error_type in ("busy", "transport")
                )

        def progress(fraction: float | None, message: str | None) -> None:
            self.manager.report_progress(task_id, fraction, message)

        handle.append(
            self.requester().start_request(
                agent,
                arguments["tool"],
                arguments.get("parameters"),
                arguments.get("timeout"),
                done,
                progress,
            )
        )
        if not suspension.active:  # cancelled while the request was being sent
            handle[0].cancel()


COLLABORATION_GUIDANCE = """\
Other agents: submit_task('agent_request', '<agent name>', {{'tool': ..., 'parameters': {{...}}}}) asks another agent to
run one of its tools in the background (the task's result is its answer; check_task shows its progress), and
ask_agent(agent, tool, parameters) does it in one blocking call. Known agents: {agents}."""


def attach_collaboration(
    target: Any, name: str | None = None, directory: AgentDirectory | None = None, **options: Any
) -> CollaborationProtocol:
    """Make an ``AsyncAgent`` (or a ``TaskManager``) a named agent: its protocol, and the ``ask_agent`` tool.

    ``name`` registers it in ``directory`` (default: the process's) so others can ask it for its
    handlers (``protocol.register_handler``); without a name it only asks. The agent's LLM gets
    ``ask_agent`` and a paragraph of guidance naming the known agents; ``agent_request`` tasks go
    out under this protocol's name. ``options`` go to :class:`CollaborationProtocol`.
    """
    manager = getattr(target, "task_manager", target)
    if not isinstance(manager, TaskManager):
        raise TypeError(
            f"attach_collaboration expects an AsyncAgent or a TaskManager, got {type(target).__name__}"
        )
    protocol = CollaborationProtocol(
        name or f"agent-{uuid.uuid4().hex[:8]}", manager, directory, register=name is not None, **options
    )
    agent = getattr(target, "agent", None)
    if agent is not None and hasattr(agent, "tools"):
        tool = ask_agent_tool(manager)
        agent.tools[tool.name] = tool
        others = [n for n in protocol.directory.names() if n != protocol.name]
        guidance = COLLABORATION_GUIDANCE.format(agents=", ".join(others) or "none yet")
        instructions = getattr(agent, "instructions", None) or ""
        agent.instructions = f"{instructions}\n{guidance}" if instructions else guidance
    return protocol


def collaboration_extension(task_manager: TaskManager) -> AgentRequests:
    """The factory of the ``collaboration`` extension: watches the default directory, adds ``ask_agent``."""
    requests = AgentRequests(task_manager)
    requests.watch(default_directory())
    try:
        task_manager.extension("conversations").add_tool_provider("ask_agent", ask_agent_tool)
    except LookupError:
        pass
    return requests


def ask_agent_tool(task_manager: TaskManager) -> Any:
    """The ``ask_agent(agent, tool, parameters, timeout)`` smolagents tool, bound to a manager."""
    from smolagents import Tool

    requests: AgentRequests = task_manager.extension("collaboration")

    class AskAgentTool(Tool):
        name = "ask_agent"
        description = (
            "Asks another named agent to run one of its tools and returns its answer (blocks until then, at most "
            "`timeout` seconds). An unknown agent or tool fails with the list of known ones. For a request that "
            "runs in the background use submit_task('agent_request', agent, {'tool': ..., 'parameters': {...}})."
        )
        inputs = {
            "agent": {"type": "string", "description": "the other agent's name"},
            "tool": {"type": "string", "description": "its tool to run"},
            "parameters": {"type": "object", "description": "the tool's arguments", "nullable": True},
            "timeout": {"type": "number", "description": "seconds to wait (default 60)", "nullable": True},
        }
        output_type = "any"

        def forward(
            self, agent: str, tool: str, parameters: dict | None = None, timeout: float | None = None
        ) -> Any:
            return requests.requester().ask(agent, tool, parameters, timeout or DEFAULT_TIMEOUT)

    return AskAgentTool()
