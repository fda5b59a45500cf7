"""The handler side of collaboration: each REQUEST another agent sends runs as a task of kind ``collaboration``.

A :class:`HandlerHost` serves one agent's handlers on its ``TaskManager``: the task is named
``<agent>:<tool>``, bounded by the request's deadline and cancellable (a CANCEL cancels it through
the manager's public ``cancel``; an ``async`` handler's coroutine is really cancelled, a sync one sees
``cancellation_requested()``). The handler's ``report_progress(...)`` becomes PROGRESS messages, its
end the RESPONSE. The inbox is bounded (a full inbox answers ``busy`` at once), expired requests are
refused, and sync handlers left running past their deadline are bounded by ``max_stuck_handlers``.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ..core.errors import AsyncTaskSystemError
from ..core.manager import TaskManager
from ..core.targets import Target
from ..core.tasks import TaskInfo, TaskKind, TaskStatus
from .messages import CollaborationError, CollaborationMessage, MessageType, Reply, check_size, set_once

COLLABORATION = TaskKind.register(
    "collaboration", "a request another agent sent to this one (runs its handler)"
)


class HandlerDeadlineError(AsyncTaskSystemError, TimeoutError):
    """A sync handler was still running at its request's deadline: its worker stopped waiting for it
    (the handler's thread is left to finish; the requester gets ``timeout``)."""


@dataclass
class _Incoming:
    message: CollaborationMessage
    reply: Reply
    task_id: str | None = None
    coroutine_task: asyncio.Task | None = None
    progress: tuple[float | None, str | None] = (None, None)
    answered: bool = False
    ended: threading.Event = field(default_factory=threading.Event)  # the handler returned or its task ended


class HandlerHost:
    """One agent's handlers, served as tasks of its manager (the receiving half of a :class:`CollaborationProtocol`).

    Args:
        name: the agent's name (its handler tasks are named ``<name>:<tool>``).
        manager: runs the handlers.
        inbox_size: requests accepted and not yet answered, at most; more are answered ``busy``.
        max_stuck_handlers: sync handlers still running past their request's deadline, at most
            (see :class:`CollaborationProtocol`); while this many are, requests for sync handlers
            are answered ``busy``.
    """

    def __init__(self, name: str, manager: TaskManager, *, inbox_size: int, max_stuck_handlers: int) -> None:
        for what, value in (("inbox_size", inbox_size), ("max_stuck_handlers", max_stuck_handlers)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{what} must be a positive integer, got {value!r}")
        self.name = name
        self.manager = manager
        self.inbox_size = inbox_size
        self.max_stuck_handlers = max_stuck_handlers
        self.stuck_handlers = 0
        """Sync handlers left running past their deadline (their threads end when they return)."""
        self._handlers: dict[str, tuple[Callable[..., Any], str]] = {}
        self._lock = threading.Lock()
        self._incoming: dict[str, _Incoming] = {}
        self._remove_listener = manager.add_listener(self._on_task_change)

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
                loop.call_soon_threadsafe(set_once, future, answer)

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
            content = error_content(info)
        incoming.reply(message.reply(MessageType.RESPONSE, content))

    def close(self) -> None:
        """Stop following the manager's tasks (requests in hand get no further replies)."""
        self._remove_listener()


def error_content(info: TaskInfo) -> dict[str, Any]:
    """The RESPONSE content for a handler task that ended without a result."""
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
