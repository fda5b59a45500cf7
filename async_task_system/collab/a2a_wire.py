"""The A2A wire mapping: task states both ways (``TO_A2A`` / ``FROM_A2A``) and our JSON in A2A parts and messages.

A request or a result travels as a JSON text part (media type ``application/json``; JSON text keeps
integers integers, which ``google.protobuf.Value`` does not); a data part is read too, for foreign
agents. See :mod:`.a2a` for the whole table.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from ..core.tasks import TaskStatus

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


def json_part(value: Any) -> Any:
    """``value`` as a JSON text part."""
    from a2a.types import Part

    return Part(text=json.dumps(value, ensure_ascii=False, default=str), media_type=JSON_MEDIA)


def read_parts(parts: Any) -> Any:
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


def agent_message(value: Any, task_id: str, context_id: str) -> Any:
    """An agent-role A2A message of the task holding ``value`` as JSON."""
    from a2a.types import Message, Role

    return Message(
        message_id=uuid.uuid4().hex, role=Role.ROLE_AGENT, parts=[json_part(value)],
        task_id=task_id, context_id=context_id,
    )  # fmt: skip
