"""What a request's run on an agent and its connection share: the hooks the run calls back
through, what it produces, and how it stops (cancelled, or a tool call denied)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core.errors import AsyncTaskSystemError
from .protocol import ResponseContent, TokenUsage

if TYPE_CHECKING:
    from .handle import AgentHandle

__all__ = [
    "AgentFactory",
    "Exchange",
    "ExecutionResult",
    "RequestCancelled",
    "RequestHooks",
    "ToolCallDenied",
]

AgentFactory = Callable[[], Any]
"""A callable returning a *fresh* agent (AsyncAgent or smolagents agent) for each request."""


class RequestCancelled(AsyncTaskSystemError):
    """The request was cancelled (client gone, time limit, server shutdown): stop working on it."""


class ToolCallDenied(AsyncTaskSystemError):
    """The client denied a tool call; the agent sees this message as the tool's error."""


@dataclass(frozen=True)
class Exchange:
    """One earlier request/answer pair of a connection, shown to later requests as context."""

    user: str
    assistant: str


@dataclass
class ExecutionResult:
    """What a request produced: the response content, token usage, and the exchange to remember."""

    content: ResponseContent
    token_usage: TokenUsage | None = None
    exchange: Exchange | None = None


@dataclass
class RequestHooks:
    """How a running request talks back to its connection (all called from the worker thread)."""

    cancel_event: threading.Event = field(default_factory=threading.Event)
    ask_approval: Callable[[str, Any], tuple[bool, str]] | None = None
    """(tool name, arguments) -> (approved, reason); raises RequestCancelled when the request ends."""
    send_partial: Callable[[str], None] | None = None
    """Send one incremental stream chunk (only set when the client opted in)."""
    on_handle: Callable[[AgentHandle], None] | None = None
    """Told about the agent instance once it exists, so a cancel can interrupt it."""

    def check(self) -> None:
        if self.cancel_event.is_set():
            raise RequestCancelled("request cancelled")
