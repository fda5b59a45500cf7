"""The A2A client: a remote A2A agent as a collaboration endpoint (a directory entry)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from ..core.loop import background_loop
from ..core.tasks import TaskStatus
from .a2a_wire import FROM_A2A, json_part, read_parts
from .messages import CollaborationError, CollaborationMessage, MessageType


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
                parts=[json_part(message.content)],
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
                result = read_parts(event.artifact_update.artifact.parts)
                continue
            else:  # a bare message: a foreign agent's whole answer
                reply(
                    message.reply(
                        MessageType.RESPONSE,
                        {"status": "success", "result": read_parts(event.message.parts)},
                    )
                )
                return
            note = read_parts(status.message.parts) if status.HasField("message") else None
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
