"""A2A adapter: serve a :class:`~async_task_system.collab.collaboration.CollaborationProtocol` as an A2A agent,
and call remote A2A agents as collaborators. Built on the official ``a2a-sdk`` (1.x, JSON-RPC binding).

This is also the collaboration protocol's transport between processes: :class:`A2AServer` puts a
protocol on HTTP (``127.0.0.1`` and a bearer token by default), and :class:`A2AAgent` is a
directory entry for a remote agent, so ``directory.register("billing", A2AAgent(url, token))``
lets any agent of this process ``request_collaboration(..., "billing", ...)`` as if it were local.

Mapping (one table, both directions; ``TO_A2A`` / ``FROM_A2A``):

    ours (TaskStatus)   A2A (TaskState)        collaboration message
    PENDING             submitted              (request accepted)
    RUNNING             working                PROGRESS while it runs
    WAITING_REMOTE      working                (our handler waits on other work; A2A has no such state)
    --                  input-required         a remote agent asking for input: our request fails,
                        auth-required          error_type "input_required" (a tool call takes no dialogue)
    COMPLETED           completed              RESPONSE success (the result is an artifact "result")
    FAILED              failed / rejected      RESPONSE error (error_type kept in the status message)
    CANCELLED           canceled               CANCEL -> RESPONSE error "cancelled"

Wire details. A request is a user message whose part is JSON text (media type
``application/json``) ``{"tool": ..., "parameters": {...}}`` (a data part is accepted too, for
foreign clients; JSON text keeps integers integers, which ``google.protobuf.Value`` does not) and
whose metadata ``"ats"`` carries our message (id, from_agent, deadline). PROGRESS is a ``working``
status update whose message holds ``{"fraction", "message"}``; the result is an artifact named
``result`` holding JSON text. Hostile input: the HTTP front is :mod:`.http_front`'s (shared with
the platform): a request head must arrive within ``header_timeout``, half-open connections make
room for real ones, ``Content-Length`` with ``Transfer-Encoding`` is refused (400), the token is
checked before the body is read, and a body over ``max_body_bytes`` (declared or chunked) gets 413.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from ..core.loop import background_loop
from ..core.tasks import TaskStatus
from ..http_front import FrontGuard, FrontLimits, listen, start_server
from .collaboration import (
    DEFAULT_TIMEOUT,
    MAX_MESSAGE_BYTES,
    CollaborationError,
    CollaborationMessage,
    CollaborationProtocol,
    MessageType,
)

__all__ = ["A2AAgent", "A2AServer", "FROM_A2A", "TO_A2A", "agent_card"]

JSON_MEDIA = "application/json"
RESULT_ARTIFACT = "result"


def _states() -> tuple[dict[TaskStatus, Any], dict[Any, TaskStatus | None]]:
    from a2a.types import TaskState

    to_a2a = {
        TaskStatus.PENDING: TaskState.TASK_STATE_SUBMITTED,
        TaskStatus.RUNNING: TaskState.TASK_STATE_WORKING,
        TaskStatus.WAITING_REMOTE: TaskState.TASK_STATE_WORKING,
        TaskStatus.COMPLETED: TaskState.TASK_STATE_COMPLETED,
        TaskStatus.FAILED: TaskState.TASK_STATE_FAILED,
        TaskStatus.CANCELLED: TaskState.TASK_STATE_CANCELED,
    }
    from_a2a: dict[Any, TaskStatus | None] = {
        TaskState.TASK_STATE_SUBMITTED: TaskStatus.PENDING,
        TaskState.TASK_STATE_WORKING: TaskStatus.RUNNING,
        TaskState.TASK_STATE_INPUT_REQUIRED: None,  # no dialogue in a tool call: the request fails
        TaskState.TASK_STATE_AUTH_REQUIRED: None,
        TaskState.TASK_STATE_COMPLETED: TaskStatus.COMPLETED,
        TaskState.TASK_STATE_FAILED: TaskStatus.FAILED,
        TaskState.TASK_STATE_REJECTED: TaskStatus.FAILED,
        TaskState.TASK_STATE_CANCELED: TaskStatus.CANCELLED,
    }
    return to_a2a, from_a2a


TO_A2A, FROM_A2A = _states()


def _json_part(value: Any) -> Any:
    from a2a.types import Part

    return Part(text=json.dumps(value, ensure_ascii=False, default=str), media_type=JSON_MEDIA)


def _read_parts(parts: Any) -> Any:
    """The first JSON text part or data part, decoded; ``None`` if there is none."""
    from google.protobuf.json_format import MessageToDict

    for part in parts:
        if part.HasField("text") and part.media_type == JSON_MEDIA:
            return json.loads(part.text)
        if part.HasField("data"):
            return MessageToDict(part.data)
    for part in parts:
        if part.HasField("text"):
            return part.text
    return None


def _agent_message(value: Any, task_id: str, context_id: str) -> Any:
    from a2a.types import Message, Role

    return Message(
        message_id=uuid.uuid4().hex, role=Role.ROLE_AGENT, parts=[_json_part(value)],
        task_id=task_id, context_id=context_id,
    )  # fmt: skip


def agent_card(protocol: CollaborationProtocol, url: str, description: str = "") -> Any:
    """The A2A agent card of a protocol: one skill per registered tool, bearer auth, streaming."""
    from a2a.types import (
        AgentCapabilities,
        AgentCard,
        AgentInterface,
        AgentSkill,
        HTTPAuthSecurityScheme,
        SecurityRequirement,
        SecurityScheme,
        StringList,
    )

    return AgentCard(
        name=protocol.name,
        description=description
        or f"Agent {protocol.name!r} (async_task_system): tools run as background tasks.",
        version="1",
        supported_interfaces=[AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0")],
        capabilities=AgentCapabilities(streaming=True),
        security_schemes={
            "bearer": SecurityScheme(http_auth_security_scheme=HTTPAuthSecurityScheme(scheme="bearer"))
        },
        security_requirements=[SecurityRequirement(schemes={"bearer": StringList(list=[])})],
        default_input_modes=[JSON_MEDIA],
        default_output_modes=[JSON_MEDIA],
        skills=[
            AgentSkill(
                id=name,
                name=name,
                tags=["tool"],
                description=(text or f"tool {name}")
                + ' Send {"tool": "'
                + name
                + '", "parameters": {...}} as JSON.',
            )  # fmt: skip
            for name, text in protocol.tools().items()
        ],
    )


# ---------------------------------------------------------------------------------------------- server


class _Executor:
    """The SDK's AgentExecutor for a protocol: each A2A task is one collaboration request."""

    def __init__(self, protocol: CollaborationProtocol, default_timeout: float) -> None:
        self.protocol = protocol
        self.default_timeout = default_timeout
        self.requests: dict[str, str] = {}  # A2A task id -> our request id

    async def execute(self, context: Any, event_queue: Any) -> None:
        from a2a.server.tasks import TaskUpdater
        from a2a.types import Task, TaskState
        from a2a.types import TaskStatus as A2AStatus

        task_id, context_id = context.task_id, context.context_id
        updater = TaskUpdater(event_queue, task_id, context_id)
        await event_queue.enqueue_event(
            Task(id=task_id, context_id=context_id, status=A2AStatus(state=TaskState.TASK_STATE_SUBMITTED))
        )
        try:
            message = self._request(context)
        except CollaborationError as exc:
            await updater.failed(_agent_message(exc.content(), task_id, context_id))
            return
        loop = asyncio.get_running_loop()
        replies: asyncio.Queue[CollaborationMessage] = asyncio.Queue()
        self.requests[task_id] = message.id
        await updater.start_work()
        try:
            self.protocol.deliver(message, lambda reply: loop.call_soon_threadsafe(replies.put_nowait, reply))
            while True:
                reply = await replies.get()
                if reply.type is MessageType.PROGRESS:
                    await updater.update_status(
                        TaskState.TASK_STATE_WORKING, _agent_message(reply.content, task_id, context_id)
                    )
                    continue
                content = reply.content
                if content.get("status") == "success":
                    await updater.add_artifact([_json_part(content.get("result"))], name=RESULT_ARTIFACT)
                    await updater.complete()
                elif content.get("error_type") == "cancelled":
                    await updater.cancel(_agent_message(content, task_id, context_id))
                else:
                    await updater.failed(_agent_message(content, task_id, context_id))
                return
        except asyncio.CancelledError:
            self.protocol.cancel(message.id)  # the SDK cancels execute() on tasks/cancel
            raise
        finally:
            self.requests.pop(task_id, None)

    def _request(self, context: Any) -> CollaborationMessage:
        from google.protobuf.json_format import MessageToDict

        a2a_message = context.message
        body = _read_parts(a2a_message.parts) if a2a_message is not None else None
        if not isinstance(body, dict) or not isinstance(body.get("tool"), str):
            known = sorted(self.protocol.tools())
            raise CollaborationError(
                "bad_request",
                'send {"tool": <name>, "parameters": {...}} as JSON text or a data part; known tools: '
                + (", ".join(known) or "none"),
                known,
            )
        ours = MessageToDict(a2a_message.metadata).get("ats", {}) if a2a_message.HasField("metadata") else {}
        ours = ours if isinstance(ours, dict) else {}
        deadline = ours.get("deadline")
        if (
            not isinstance(deadline, (int, float))
            or isinstance(deadline, bool)
            or not math.isfinite(deadline)
        ):
            deadline = time.time() + self.default_timeout
        return CollaborationMessage(
            id=str(ours.get("id") or context.task_id),
            type=MessageType.REQUEST,
            from_agent=str(ours.get("from_agent") or "a2a-client")[:200],
            to_agent=self.protocol.name,
            content={"tool": body["tool"], "parameters": body.get("parameters") or {}},
            deadline=float(deadline),
        )

    async def cancel(self, context: Any, event_queue: Any) -> None:
        from a2a.server.tasks import TaskUpdater

        request_id = self.requests.get(context.task_id)
        if request_id is not None:
            self.protocol.cancel(request_id)
        await TaskUpdater(event_queue, context.task_id, context.context_id).cancel()


def _bounded_task_store(limit: int) -> Any:
    """The SDK's in-memory task store, forgetting the oldest finished tasks beyond ``limit``.

    (Without a bound a long-running server would keep every task it ever ran.)
    """
    from collections import OrderedDict

    from a2a.server.tasks import InMemoryTaskStore
    from a2a.types import TaskState

    terminal = {
        TaskState.TASK_STATE_COMPLETED, TaskState.TASK_STATE_FAILED, TaskState.TASK_STATE_CANCELED,
        TaskState.TASK_STATE_REJECTED,
    }  # fmt: skip

    class BoundedTaskStore(InMemoryTaskStore):
        def __init__(self) -> None:
            super().__init__()
            self.finished: OrderedDict[str, Any] = OrderedDict()

        async def save(self, task: Any, context: Any) -> None:
            await super().save(task, context)
            if task.status.state in terminal:
                self.finished[task.id] = context
                self.finished.move_to_end(task.id)
            while len(self.finished) > limit:
                old_id, old_context = self.finished.popitem(last=False)
                await self.delete(old_id, old_context)

    return BoundedTaskStore()


class A2AServer:
    """Serve a protocol's handlers as an A2A agent over HTTP (JSON-RPC binding, SSE streaming).

    Binds ``127.0.0.1`` and a free port by default; every call but the agent card needs
    ``Authorization: Bearer <token>`` (a random token is made when none is given). ``start()``
    returns once it listens; ``url`` and ``token`` say how to reach it; ``close()`` stops it.
    It keeps the last ``max_finished_tasks`` finished A2A tasks readable (``tasks/get``).
    """

    def __init__(
        self,
        protocol: CollaborationProtocol,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        *,
        max_body_bytes: int = MAX_MESSAGE_BYTES + 64 * 1024,
        default_timeout: float = DEFAULT_TIMEOUT,
        description: str = "",
        max_finished_tasks: int = 1000,
        http_limits: FrontLimits | None = None,
        max_requests: int = 256,
    ) -> None:
        self.protocol = protocol
        self.host = host
        self.port = port
        self.token = token or secrets.token_urlsafe(24)
        self.max_body_bytes = max_body_bytes
        self.default_timeout = default_timeout
        self.description = description
        self.max_finished_tasks = max_finished_tasks
        self.http_limits = http_limits
        self.max_requests = max_requests
        self._server: Any = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def build_app(self) -> Any:
        """The ASGI app (Starlette): agent card, JSON-RPC endpoint, token and size guard."""
        from a2a.server.request_handlers import DefaultRequestHandler
        from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
        from a2a.utils.constants import AGENT_CARD_WELL_KNOWN_PATH
        from starlette.applications import Starlette

        card = agent_card(self.protocol, self.url, self.description)
        handler = DefaultRequestHandler(
            agent_executor=_Executor(self.protocol, self.default_timeout),
            task_store=_bounded_task_store(self.max_finished_tasks),
            agent_card=card,
        )
        app = Starlette(routes=[*create_agent_card_routes(card), *create_jsonrpc_routes(handler, "/")])

        def public(method: str, path: str) -> bool:
            return method == "GET" and path == AGENT_CARD_WELL_KNOWN_PATH

        return FrontGuard(
            app,
            token=self.token,
            max_body_bytes=self.max_body_bytes,
            public=public,
            max_requests=self.max_requests,
            body_timeout=(self.http_limits or FrontLimits()).body_timeout,
        )

    @property
    def http_server(self) -> Any:
        """The :class:`~.http_front.HttpServer` once started (``stats()``: connections), else None."""
        return self._server

    def start(self, timeout: float = 30.0) -> A2AServer:
        sock = listen(self.host, self.port, self.http_limits)
        self.port = sock.getsockname()[1]
        self._server = start_server(
            self.build_app(), sock, limits=self.http_limits, name=f"a2a-{self.protocol.name}"
        )
        try:
            self._server.wait_started(timeout)
        except RuntimeError:
            self._server.stop(1.0)
            raise RuntimeError(f"the A2A server for {self.protocol.name!r} did not start") from None
        return self

    def close(self, timeout: float = 10.0) -> None:
        if self._server is not None:
            self._server.stop(timeout)

    def __enter__(self) -> A2AServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------- client


class A2AAgent:
    """A remote A2A agent as a collaboration endpoint: ``directory.register(name, A2AAgent(url, token))``.

    Each REQUEST is one streaming ``message/send`` through the SDK's client (on the package's
    background event loop); ``working`` updates become PROGRESS, the terminal state the RESPONSE;
    ``cancel`` sends ``tasks/cancel``. Works with any A2A agent: for foreign ones, the request's
    JSON is what their skill receives.
    """

    def __init__(self, url: str, token: str | None = None, *, connect_timeout: float = 10.0) -> None:
        self.url = url
        self.token = token
        self.connect_timeout = connect_timeout
        self._client: Any = None
        self._client_lock = asyncio.Lock()
        self._tasks: dict[str, str] = {}  # our request id -> A2A task id
        self._cancelled: set[str] = set()  # requests cancelled before their A2A task id was known

    def deliver(self, message: CollaborationMessage, reply: Callable[[CollaborationMessage], None]) -> None:
        asyncio.run_coroutine_threadsafe(self._start(message, reply), background_loop())

    def cancel(self, request_id: str) -> None:
        asyncio.run_coroutine_threadsafe(self._cancel(request_id), background_loop())

    async def _start(
        self, message: CollaborationMessage, reply: Callable[[CollaborationMessage], None]
    ) -> None:
        # Bounded: the stream ends by the request's deadline (plus a grace for the final events).
        budget = None if message.deadline is None else max(message.deadline - time.time(), 0) + 5.0
        try:
            await asyncio.wait_for(self._run(message, reply), budget)
        except asyncio.TimeoutError:
            reply(
                message.reply(
                    MessageType.RESPONSE, CollaborationError("timeout", "no answer by the deadline").content()
                )
            )
        except Exception as exc:  # connection refused, HTTP error, bad stream: the request gets an answer
            reason = f"{type(exc).__name__}: {exc}"
            reply(message.reply(MessageType.RESPONSE, CollaborationError("transport", reason).content()))
        finally:
            self._tasks.pop(message.id, None)
            self._cancelled.discard(message.id)

    async def client(self) -> Any:
        """The SDK client (made on first use, on the background loop, with the bearer token)."""
        async with self._client_lock:
            if self._client is None:
                import httpx
                from a2a.client import ClientConfig, ClientFactory

                headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
                http = httpx.AsyncClient(
                    headers=headers, timeout=httpx.Timeout(None, connect=self.connect_timeout)
                )
                factory = ClientFactory(ClientConfig(streaming=True, httpx_client=http))
                self._client = await factory.create_from_url(self.url)
            return self._client

    async def _run(
        self, message: CollaborationMessage, reply: Callable[[CollaborationMessage], None]
    ) -> None:
        from a2a.types import Message, Role, SendMessageRequest, TaskState

        client = await self.client()
        request = SendMessageRequest(
            message=Message(
                message_id=message.id,
                role=Role.ROLE_USER,
                parts=[_json_part(message.content)],
                metadata={
                    "ats": {"id": message.id, "from_agent": message.from_agent, "deadline": message.deadline}
                },
            )
        )
        result: Any = None
        async for event in client.send_message(request):
            if event.HasField("task") or event.HasField("status_update"):
                task_id = event.task.id if event.HasField("task") else event.status_update.task_id
                status = event.task.status if event.HasField("task") else event.status_update.status
                if message.id not in self._tasks:
                    self._tasks[message.id] = task_id
                    if message.id in self._cancelled:  # CANCEL came before the task id: send it now
                        await self._send_cancel(task_id)
            elif event.HasField("artifact_update"):
                result = _read_parts(event.artifact_update.artifact.parts)
                continue
            else:  # a bare message: a foreign agent's whole answer
                reply(
                    message.reply(
                        MessageType.RESPONSE,
                        {"status": "success", "result": _read_parts(event.message.parts)},
                    )
                )
                return
            note = _read_parts(status.message.parts) if status.HasField("message") else None
            state = status.state
            if (
                state == TaskState.TASK_STATE_WORKING
                and isinstance(note, dict)
                and ("fraction" in note or "message" in note)
            ):
                reply(message.reply(MessageType.PROGRESS, note))
            elif state == TaskState.TASK_STATE_COMPLETED:
                reply(message.reply(MessageType.RESPONSE, {"status": "success", "result": result}))
                return
            elif state in (TaskState.TASK_STATE_INPUT_REQUIRED, TaskState.TASK_STATE_AUTH_REQUIRED):
                error = CollaborationError("input_required", f"the agent asks for input: {note!r:.300}")
                reply(message.reply(MessageType.RESPONSE, error.content()))
                return
            elif FROM_A2A.get(state) in (TaskStatus.FAILED, TaskStatus.CANCELLED):
                if isinstance(note, dict) and note.get("status") == "error":
                    content = note
                else:
                    kind = "cancelled" if FROM_A2A[state] is TaskStatus.CANCELLED else "handler_error"
                    content = CollaborationError(
                        kind, str(note or f"the agent's task ended {state}")
                    ).content()
                reply(message.reply(MessageType.RESPONSE, content))
                return
        raise CollaborationError("transport", "the agent's stream ended without a final state")

    async def _cancel(self, request_id: str) -> None:
        task_id = self._tasks.get(request_id)
        if task_id is None:
            self._cancelled.add(request_id)  # _run sends it when the task id arrives
        else:
            await self._send_cancel(task_id)

    async def _send_cancel(self, task_id: str) -> None:
        from a2a.types import CancelTaskRequest

        try:
            client = await self.client()
            await asyncio.wait_for(client.cancel_task(CancelTaskRequest(id=task_id)), self.connect_timeout)
        except Exception:  # noqa: BLE001 - it may have ended meanwhile; the stream still ends by the deadline
            pass

    def close(self) -> None:
        """Close the HTTP client (from any thread)."""
        if self._client is not None:
            future: Future = asyncio.run_coroutine_threadsafe(self._client.close(), background_loop())
            future.result(10)
            self._client = None
