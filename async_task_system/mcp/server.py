"""One :class:`TaskManager` as an MCP server, built on the official SDK's low-level ``Server``.

What a client sees (see the README's MCP section):

* every registered target as an MCP tool (a tool by its name, other kinds as ``kind.name``, e.g.
  ``agent.researcher``), run as a task of the manager. A plain ``tools/call`` waits for the task and
  sends ``notifications/progress`` from ``report_progress`` when the call carries a progress
  token; a task-augmented call (MCP Tasks, spec 2025-11-25) returns a task at once, and
  ``tasks/get``, ``tasks/result``, ``tasks/list`` and ``tasks/cancel`` map onto the manager's
  ``check``, ``results``, ``list`` and ``cancel``;
* the LLM's own task tools ``submit_task``, ``wait_for_tasks``, ``get_task_results``, ``check_task``,
  ``list_tasks`` and ``cancel_task``, for clients without Tasks support.

Each MCP session sees only the tasks it created. The rule when a session ends (stdin closed, HTTP
``DELETE``, the HTTP session idle past its timeout): its unfinished tasks are cancelled. Bad input
gets a JSON-RPC error (``-32602``) that says how to fix the call.
"""

from __future__ import annotations

import asyncio
import json
import time
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any

import anyio
import jsonschema
import mcp.types as types
from anyio.abc import TaskGroup
from mcp.server.lowlevel import Server
from mcp.shared.exceptions import McpError

from .._version import __version__
from ..agents.tools import DEFAULT_MAX_WAIT_SECONDS, create_task_tools
from ..core.errors import AsyncTaskSystemError, TaskValidationError, UnknownTaskError
from ..core.manager import TaskManager
from ..core.targets import Target
from ..core.tasks import TaskFailure, TaskInfo, TaskKind, TaskStatus

__all__ = ["McpTaskServer", "DEFAULT_MAX_REQUEST_BYTES", "DEFAULT_MAX_TASKS_PER_SESSION", "RELATED_TASK"]

DEFAULT_MAX_REQUEST_BYTES = 1_000_000
"""Largest request (one JSON-RPC message) a client may send, in bytes."""
DEFAULT_MAX_TASKS_PER_SESSION = 1_000
"""Most unfinished tasks one session may have at once."""
RELATED_TASK = "io.modelcontextprotocol/related-task"
DEFAULT_TTL_MS = 3_600_000
"""The ``ttl`` reported for a task whose request asked for none (submit_task); a task lives until its session
ends, whatever the ttl."""

_TASK_TOOLS = ("submit_task", "wait_for_tasks", "get_task_results", "check_task", "list_tasks", "cancel_task")
_IDS = {"type": "array", "items": {"type": "string"}, "description": "Task ids returned by submit_task."}
_ID = {"type": "string", "description": "A task id returned by submit_task."}
_TASK_TOOL_SCHEMAS: dict[str, dict[str, Any]] = {
    "submit_task": {
        "properties": {
            "task_type": {"type": "string", "description": "'tool', 'agent', 'function' or another kind."},
            "name": {"type": "string", "description": "The tool, agent or function to run."},
            "arguments": {"type": ["object", "null"], "description": "Its keyword arguments."},
            "after": {"type": ["array", "null"], "items": {"type": "string"}},
        },
        "required": ["task_type", "name"],
    },
    "wait_for_tasks": {
        "properties": {"task_ids": _IDS, "max_wait_time": {"type": ["number", "null"], "minimum": 0}},
        "required": ["task_ids"],
    },
    "get_task_results": {"properties": {"task_ids": _IDS}, "required": ["task_ids"]},
    "check_task": {"properties": {"task_id": _ID}, "required": ["task_id"]},
    "list_tasks": {"properties": {"status": {"type": ["string", "null"]}}, "required": []},
    "cancel_task": {"properties": {"task_id": _ID}, "required": ["task_id"]},
}
_JSON_TYPES = {"string", "integer", "number", "boolean", "array", "object", "null"}


def invalid(message: str) -> McpError:
    """The error a client gets for a call it can fix: JSON-RPC ``-32602`` with how to fix it."""
    return McpError(types.ErrorData(code=types.INVALID_PARAMS, message=message))


def mcp_status(status: TaskStatus) -> str:
    """Our six statuses on MCP's five: pending, running and waiting_remote are all ``working``."""
    if status is TaskStatus.COMPLETED:
        return types.TASK_STATUS_COMPLETED
    if status is TaskStatus.FAILED:
        return types.TASK_STATUS_FAILED
    if status is TaskStatus.CANCELLED:
        return types.TASK_STATUS_CANCELLED
    return types.TASK_STATUS_WORKING


def _moment(seconds: float | None) -> datetime:
    return datetime.fromtimestamp(seconds if seconds is not None else time.time(), tz=timezone.utc)


def task_model(info: TaskInfo, ttl_ms: int = DEFAULT_TTL_MS, poll_interval_ms: int = 500) -> dict[str, Any]:
    """The MCP ``Task`` fields of one of our tasks."""
    if info.error is not None:
        message = str(info.error)
    elif info.progress_message or info.progress is not None:
        share = "" if info.progress is None else f"{info.progress:.0%} "
        message = f"{share}{info.progress_message or ''}".strip()
    else:
        message = info.status.value
    return {
        "taskId": info.id,
        "status": mcp_status(info.status),
        "statusMessage": message,
        "createdAt": _moment(info.created_at),
        "lastUpdatedAt": _moment(info.finished_at or info.started_at or info.created_at),
        "ttl": ttl_ms,
        "pollInterval": poll_interval_ms,
    }


def _json_schema(target: Target) -> dict[str, Any]:
    """A target's smolagents-style ``inputs`` as the JSON Schema of an MCP tool's ``inputSchema``."""
    properties: dict[str, Any] = {}
    for name, spec in target.inputs.items():
        prop: dict[str, Any] = {}
        kind = spec.get("type", "any")
        kinds = [k for k in (kind if isinstance(kind, list) else [kind]) if k in _JSON_TYPES]
        if kinds:
            prop["type"] = kinds[0] if len(kinds) == 1 else kinds
        if spec.get("description"):
            prop["description"] = str(spec["description"])
        properties[name] = prop
    required = [name for name, spec in target.inputs.items() if not spec.get("nullable")]
    schema: dict[str, Any] = {"type": "object", "properties": properties, "required": required}
    if not target.accepts_extra:
        schema["additionalProperties"] = False
    return schema


def call_result(value: Any, task_id: str) -> types.CallToolResult:
    """A task's result (or its :class:`TaskFailure`) as an MCP tool result."""
    meta = {RELATED_TASK: {"taskId": task_id}}
    if isinstance(value, TaskFailure):
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=str(value))], isError=True, _meta=meta
        )
    structured = None
    if isinstance(value, str):
        text = value
    else:
        try:
            text = json.dumps(value, ensure_ascii=False)
            structured = value if isinstance(value, dict) else {"result": value}
        except (TypeError, ValueError):
            text = str(value)
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        structuredContent=structured,
        isError=False,
        _meta=meta,
    )


class _Watcher:
    """Wakes coroutines on the server's event loop when a task changes (a manager listener; no polling)."""

    def __init__(self, manager: TaskManager, loop: asyncio.AbstractEventLoop) -> None:
        self.manager = manager
        self.loop = loop
        self.queues: dict[str, list[asyncio.Queue[TaskInfo]]] = {}
        self.remove = manager.add_listener(self._on_change)

    def _on_change(self, info: TaskInfo) -> None:  # in whichever thread changed the task
        if info.id in self.queues and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._dispatch, info)

    def _dispatch(self, info: TaskInfo) -> None:
        for queue in self.queues.get(info.id, ()):
            queue.put_nowait(info)

    async def until_done(
        self, task_id: str, on_change: Callable[[TaskInfo], Any] | None = None, timeout: float | None = None
    ) -> bool:
        """Wait until the task is terminal (True) or ``timeout`` seconds pass (False); ``await on_change(info)``
        for every change meanwhile."""
        queue: asyncio.Queue[TaskInfo] = asyncio.Queue()
        self.queues.setdefault(task_id, []).append(queue)
        try:
            if self.manager.wait(task_id, timeout=0).done:
                return True
            if on_change is not None:  # what happened before this subscription (an early progress report)
                await on_change(self.manager.check(task_id))
            with anyio.move_on_after(timeout):
                while True:
                    info = await queue.get()
                    if on_change is not None:
                        await on_change(info)
                    if info.status.is_terminal:
                        return True
            return False
        finally:
            listeners = self.queues[task_id]
            listeners.remove(queue)
            if not listeners:
                del self.queues[task_id]


class SessionTasks:
    """The tasks one MCP session created, and the task group its progress forwarders run in."""

    def __init__(self, task_group: TaskGroup) -> None:
        self.ids: dict[str, int] = {}  # task id -> ttl (ms) the client asked for, in creation order
        self.task_group = task_group


class McpTaskServer:
    """The MCP server of one manager; ``server`` is the SDK's low-level ``Server`` to run on a transport."""

    def __init__(
        self,
        manager: TaskManager,
        *,
        name: str = "async-task-system",
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_tasks_per_session: int = DEFAULT_MAX_TASKS_PER_SESSION,
        max_wait_cap: float = DEFAULT_MAX_WAIT_SECONDS,
    ) -> None:
        self.manager = manager
        self.max_request_bytes = max_request_bytes
        self.max_tasks_per_session = max_tasks_per_session
        self.max_wait_cap = max_wait_cap
        self.sessions: list[SessionTasks] = []
        self._tools = {tool.name: tool for tool in create_task_tools(manager, max_wait_cap)}
        self._watcher: _Watcher | None = None
        self.server: Server[SessionTasks, Any] = Server(
            name,
            version=__version__,
            instructions="Long tools run as tasks of one task manager: call them as MCP tasks, or use submit_task "
            "and wait_for_tasks. Progress arrives as notifications/progress when you pass a progress token.",
            lifespan=self._session,
        )
        self.server.request_handlers[types.ListToolsRequest] = self._list_tools
        self.server.request_handlers[types.CallToolRequest] = self._call_tool
        with warnings.catch_warnings():  # the SDK marks its Tasks API deprecated ahead of mcp 2.0
            warnings.simplefilter("ignore", DeprecationWarning)
            tasks = self.server.experimental
        tasks.get_task()(self._get_task)
        tasks.get_task_result()(self._get_task_result)
        tasks.list_tasks()(self._list_tasks)
        tasks.cancel_task()(self._cancel_task)

    # ------------------------------------------------------------------ sessions

    @asynccontextmanager
    async def _session(self, _server: Any) -> AsyncIterator[SessionTasks]:
        """One per MCP session (the SDK enters the lifespan per session): its tasks end with it."""
        if self._watcher is None:
            self._watcher = _Watcher(self.manager, asyncio.get_running_loop())
        async with anyio.create_task_group() as task_group:
            session = SessionTasks(task_group)
            self.sessions.append(session)
            try:
                yield session
            finally:
                self.sessions.remove(session)
                task_group.cancel_scope.cancel()
                for task_id in session.ids:
                    try:
                        self.manager.cancel(task_id)  # False for one that already finished
                    except UnknownTaskError:
                        pass

    def close(self) -> None:
        """Stop listening to the manager (the transports call it when they stop)."""
        if self._watcher is not None:
            self._watcher.remove()
            self._watcher = None

    @property
    def _tasks(self) -> SessionTasks:
        return self.server.request_context.lifespan_context

    def _own(self, task_id: Any) -> str:
        if not isinstance(task_id, str) or task_id not in self._tasks.ids:
            raise invalid(
                f"Unknown task {task_id!r} for this session: use a task id this session created "
                "(tasks/list or the list_tasks tool shows them)."
            )
        return task_id

    def _owned(self, task_ids: Any) -> list[str]:
        ids = [task_ids] if isinstance(task_ids, str) else task_ids
        return [self._own(task_id) for task_id in ids]

    # ------------------------------------------------------------------ tools

    def _target_tools(self) -> dict[str, Target]:
        named: dict[str, Target] = {}
        for target in self.manager.targets():
            plain = target.kind is TaskKind.TOOL and target.name not in _TASK_TOOLS
            named[target.name if plain else f"{target.kind.value}.{target.name}"] = target
        return named

    async def _list_tools(self, _request: types.ListToolsRequest) -> types.ServerResult:
        tools = [
            types.Tool(
                name=name,
                description=target.description,
                inputSchema=_json_schema(target),
                execution=types.ToolExecution(taskSupport=types.TASK_OPTIONAL),
            )
            for name, target in self._target_tools().items()
        ]
        for name in _TASK_TOOLS:
            schema = {"type": "object", "additionalProperties": False, **_TASK_TOOL_SCHEMAS[name]}
            tools.append(types.Tool(name=name, description=self._tools[name].description, inputSchema=schema))
        return types.ServerResult(types.ListToolsResult(tools=tools))

    async def _call_tool(self, request: types.CallToolRequest) -> types.ServerResult:
        params = request.params
        arguments = params.arguments or {}
        size = len(json.dumps(arguments, default=str))
        if size > self.max_request_bytes:
            raise invalid(
                f"The arguments of {params.name!r} are {size} bytes, over this server's limit of "
                f"{self.max_request_bytes}: pass large data by reference (a path or a URL) instead."
            )
        if params.name in _TASK_TOOLS:
            if params.task is not None:
                raise invalid(
                    f"{params.name!r} answers at once: call it without 'task' (no task augmentation)."
                )
            return types.ServerResult(await self._task_tool(params.name, arguments))
        target = self._target_tools().get(params.name)
        if target is None:
            known = ", ".join(sorted(self._target_tools())) or "none registered"
            raise invalid(f"Unknown tool {params.name!r}. Tools that run as tasks: {known}; see tools/list.")
        ttl = params.task.ttl if params.task is not None and params.task.ttl is not None else DEFAULT_TTL_MS
        task_id = self._submit(target.kind, target.name, arguments, ttl=ttl)
        meta = params.meta
        token = meta.progressToken if meta is not None else None
        session = self.server.request_context.session
        if params.task is not None:
            if token is not None:
                self._tasks.task_group.start_soon(self._forward_progress, session, task_id, token)
            return types.ServerResult(types.CreateTaskResult(task=self._task(task_id)))
        request_id = self.server.request_context.request_id
        try:
            on_change = self._progress_sender(session, token, request_id) if token is not None else None
            await self._watcher_of().until_done(task_id, on_change)
        except BaseException:
            self.manager.cancel(task_id)  # the client cancelled the request, or went away
            raise
        return types.ServerResult(call_result(self.manager.result(task_id), task_id))

    def _task(self, task_id: str, info: TaskInfo | None = None) -> types.Task:
        return types.Task(**task_model(info or self.manager.check(task_id), self._tasks.ids[task_id]))

    def _submit(
        self, kind: TaskKind | str, name: str, arguments: Any, after: Any = None, ttl: int = DEFAULT_TTL_MS
    ) -> str:
        tasks = self._tasks
        unfinished = len(self.manager.wait(list(tasks.ids), timeout=0).not_done) if tasks.ids else 0
        if unfinished >= self.max_tasks_per_session:
            raise invalid(
                f"This session has {unfinished} unfinished tasks, the most it may have: wait for some "
                "(tasks/result or wait_for_tasks) or cancel them first."
            )
        if after is not None:
            self._owned(after)
        try:
            task_id = self.manager.submit(kind, name, arguments, after=after)
        except (TaskValidationError, UnknownTaskError) as exc:
            raise invalid(str(exc)) from None
        except AsyncTaskSystemError as exc:
            raise McpError(types.ErrorData(code=types.INTERNAL_ERROR, message=str(exc))) from None
        tasks.ids[task_id] = ttl
        return task_id

    def _watcher_of(self) -> _Watcher:
        assert self._watcher is not None, "the watcher starts with the first session"
        return self._watcher

    def _progress_sender(
        self, session: Any, token: str | int, request_id: Any = None
    ) -> Callable[[TaskInfo], Any]:
        last: list[tuple[float | None, str | None]] = [(None, None)]

        async def send(info: TaskInfo) -> None:
            if info.progress is None or (info.progress, info.progress_message) == last[0]:
                return
            last[0] = (info.progress, info.progress_message)
            await session.send_progress_notification(
                token, info.progress, total=1.0, message=info.progress_message, related_request_id=request_id
            )

        return send

    async def _forward_progress(self, session: Any, task_id: str, token: str | int) -> None:
        """Progress of a task-augmented call: the request's token stays valid for the task's life."""
        try:
            await self._watcher_of().until_done(task_id, self._progress_sender(session, token))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass  # the client went away; the session's end cancels the task

    async def _task_tool(self, name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        """The plain task tools, for clients without MCP Tasks."""
        schema = {"type": "object", "additionalProperties": False, **_TASK_TOOL_SCHEMAS[name]}
        try:
            jsonschema.validate(arguments, schema)
        except jsonschema.ValidationError as exc:
            where = "/".join(map(str, exc.absolute_path)) or "arguments"
            hint = ", ".join(f"{k}{'' if k in schema['required'] else '?'}" for k in schema["properties"])
            raise invalid(
                f"Invalid arguments for {name!r} at {where}: {exc.message}. It takes ({hint})."
            ) from None
        tools = self._tools
        value: Any
        if name == "submit_task":
            after = arguments.get("after")
            value = {
                "task_id": self._submit(
                    arguments["task_type"], arguments["name"], arguments.get("arguments"), after
                )
            }
        elif name == "wait_for_tasks":
            ids = self._owned(arguments["task_ids"])
            wait = arguments.get("max_wait_time")
            wait = min(60.0 if wait is None else float(wait), self.max_wait_cap)
            started = time.monotonic()
            with anyio.move_on_after(wait):
                for task_id in ids:
                    await self._watcher_of().until_done(task_id)
            value = tools[name].forward(ids, max_wait_time=0)  # the LLM tool's own summary, no waiting
            value["waited_seconds"] = round(time.monotonic() - started, 3)
        elif name == "get_task_results":
            ids = self._owned(arguments["task_ids"])
            value = {
                task_id: str(v) if isinstance(v, TaskFailure) else v
                for task_id, v in self.manager.results(ids).items()
            }
        elif name == "list_tasks":
            try:
                listed = tools[name].forward(arguments.get("status"))
            except ValueError as exc:
                raise invalid(str(exc)) from None
            value = {"tasks": [entry for entry in listed if entry["task_id"] in self._tasks.ids]}
        else:  # check_task, cancel_task
            value = tools[name].forward(self._own(arguments["task_id"]))
        return _plain(value)

    # ------------------------------------------------------------------ MCP Tasks

    async def _get_task(self, request: types.GetTaskRequest) -> types.GetTaskResult:
        return types.GetTaskResult(**self._task(self._own(request.params.taskId)).model_dump())

    async def _get_task_result(self, request: types.GetTaskPayloadRequest) -> types.CallToolResult:
        task_id = self._own(request.params.taskId)
        await self._watcher_of().until_done(task_id)  # tasks/result blocks until the task is terminal
        return call_result(self.manager.result(task_id), task_id)

    async def _list_tasks(self, _request: types.ListTasksRequest) -> types.ListTasksResult:
        mine = self._tasks.ids
        listed = [self._task(info.id, info) for info in self.manager.list() if info.id in mine]
        return types.ListTasksResult(tasks=listed)

    async def _cancel_task(self, request: types.CancelTaskRequest) -> types.CancelTaskResult:
        task_id = self._own(request.params.taskId)
        if not self.manager.cancel(task_id):
            status = self.manager.check(task_id).status.value
            raise invalid(f"Task {task_id} already ended ({status}): a finished task cannot be cancelled.")
        return types.CancelTaskResult(**self._task(task_id).model_dump())


def _plain(value: Any) -> types.CallToolResult:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)], structuredContent=json.loads(text), isError=False
    )
