"""The A2A server: a :class:`~.protocol.CollaborationProtocol`'s handlers as an A2A agent over HTTP.

Each A2A task is one collaboration request (the SDK's agent executor delivers it to the protocol);
PROGRESS becomes ``working`` status updates, the RESPONSE the final state (the result an artifact
``result``). The HTTP front is :mod:`..http_front`'s: the token is checked before the body is read,
bodies are bounded, slow and half-open connections make room for real ones.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from typing import Any

from ..http_front import FrontGuard, FrontLimits, listen, start_server
from .a2a_wire import JSON_MEDIA, RESULT_ARTIFACT, agent_message, json_part, read_parts
from .messages import (
    DEFAULT_TIMEOUT,
    MAX_MESSAGE_BYTES,
    CollaborationError,
    CollaborationMessage,
    MessageType,
    is_time,
)
from .protocol import CollaborationProtocol


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
            await updater.failed(agent_message(exc.content(), task_id, context_id))
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
                        TaskState.TASK_STATE_WORKING, agent_message(reply.content, task_id, context_id)
                    )
                    continue
                content = reply.content
                if content.get("status") == "success":
                    await updater.add_artifact([json_part(content.get("result"))], name=RESULT_ARTIFACT)
                    await updater.complete()
                elif content.get("error_type") == "cancelled":
                    await updater.cancel(agent_message(content, task_id, context_id))
                else:
                    await updater.failed(agent_message(content, task_id, context_id))
                return
        except asyncio.CancelledError:
            self.protocol.cancel(message.id)  # the SDK cancels execute() on tasks/cancel
            raise
        finally:
            self.requests.pop(task_id, None)

    def _request(self, context: Any) -> CollaborationMessage:
        from google.protobuf.json_format import MessageToDict

        a2a_message = context.message
        body = read_parts(a2a_message.parts) if a2a_message is not None else None
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
        if not is_time(deadline):
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
