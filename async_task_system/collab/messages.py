"""The collaboration protocol's messages: REQUEST, RESPONSE, PROGRESS, CANCEL, their wire form and checks.

A REQUEST's content is ``{"tool", "parameters"}``; a RESPONSE's ``{"status": "success", "result"}``
or ``{"status": "error", "error", "error_type"[, "known_tools"]}`` (:class:`CollaborationError`
makes and reads it); PROGRESS ``{"fraction", "message"}``; CANCEL ``{}``. Anything that delivers
messages to an agent is a :class:`CollaborationEndpoint`. Error types: ``unknown_agent``,
``unknown_tool``, ``busy``, ``expired``, ``timeout``, ``cancelled``, ``handler_error``,
``bad_request``, ``transport``, ``input_required`` (a remote A2A agent asked for input).
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Protocol, runtime_checkable

from ..core.errors import AsyncTaskSystemError

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
            if deadline is not None and not is_time(deadline):
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


def is_time(value: Any) -> bool:
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


@runtime_checkable
class CollaborationEndpoint(Protocol):
    """Where messages for one agent go: a protocol in this process, or a remote agent."""

    def deliver(self, message: CollaborationMessage, reply: Reply) -> None:
        """Take a REQUEST; send its PROGRESS and exactly one RESPONSE through ``reply`` (any thread)."""

    def cancel(self, request_id: str) -> None:
        """CANCEL: stop the work of a REQUEST delivered earlier (nothing if it has ended)."""


def check_size(value: Any, what: str, limit: int = MAX_MESSAGE_BYTES) -> None:
    """Raise ``CollaborationError("bad_request")`` if ``value`` is not JSON or encodes to more than ``limit`` bytes."""
    try:
        size = len(json.dumps(value, ensure_ascii=False, default=str).encode())
    except (TypeError, ValueError) as exc:
        raise CollaborationError("bad_request", f"{what} is not JSON: {exc}") from None
    if size > limit:
        raise CollaborationError("bad_request", f"{what} is {size} bytes encoded; the limit is {limit}")


def result_of(content: Any) -> Any:
    """A RESPONSE content's result, or raise the ``CollaborationError`` it reports."""
    if isinstance(content, dict) and content.get("status") == "success":
        return content.get("result")
    raise CollaborationError.from_content(content)


def set_once(future: asyncio.Future, value: Any) -> None:
    """Resolve ``future`` with ``value`` unless it is done already (a late or second answer is dropped)."""
    if not future.done():
        future.set_result(value)
