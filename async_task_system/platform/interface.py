"""What the platform's parts share: its errors, the REST tasks' target name, label matching, a
record's final statuses, and :class:`PlatformAPI` -- what the REST API (:mod:`.rest`) needs of a
:class:`~.service.Platform`, so that the app and the service do not import each other."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Protocol

from ..core.errors import AsyncTaskSystemError
from ..core.manager import TaskManager
from ..core.tasks import TaskInfo
from ..http_front import FrontLimits
from .live_logs import LogBroker
from .record_writer import RecordWriter
from .store import TERMINAL_STATUSES, Store

__all__ = [
    "SCRIPT_TARGET",
    "PlatformAPI",
    "PlatformError",
    "NoAgentAvailable",
    "iso_time",
    "is_terminal",
    "labels_match",
]

SCRIPT_TARGET = "platform_script"
"""The ``remote`` target REST tasks run as: picks the agent per attempt, then sends the script."""


class PlatformError(AsyncTaskSystemError):
    """A request the platform cannot honour; ``status`` is the HTTP status the REST API answers with."""

    def __init__(self, status: int, error: str, detail: Any = None) -> None:
        # str() names what it was about, e.g. "agent not found: {'agent_id': 'agent-001'}"
        super().__init__(error if detail is None else f"{error}: {detail}")
        self.status = status
        self.error = error
        self.detail = detail


class NoAgentAvailable(AsyncTaskSystemError):
    """Raised by a REST task's attempt when no connected agent fits it (record error type ``no_agent``)."""


def labels_match(labels: Mapping[str, Any] | None, selector: Mapping[str, str]) -> bool:
    """Whether an agent with ``labels`` satisfies ``selector`` (every key present with the same value)."""
    labels = labels or {}
    return all(key in labels and str(labels[key]) == str(value) for key, value in selector.items())


def iso_time(value: float | None) -> str | None:
    """POSIX seconds as an ISO 8601 UTC string (``None`` stays ``None``)."""
    return None if value is None else dt.datetime.fromtimestamp(value, dt.timezone.utc).isoformat()


def is_terminal(status: str) -> bool:
    """Whether a record's status is final."""
    return status in TERMINAL_STATUSES


class PlatformAPI(Protocol):
    """What the REST app reads and calls on the platform it serves (:class:`~.service.Platform` is one)."""

    token: str
    max_body_bytes: int
    http_limits: FrontLimits | None
    max_requests: int
    sse_keepalive: float
    broker: LogBroker

    def require(self) -> tuple[TaskManager, Store, RecordWriter]: ...

    async def submit_script_async(
        self,
        type: str,
        script: str,
        *,
        timeout: float | None = None,
        agent_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        retries: int = 0,
    ) -> dict[str, Any]: ...

    def cancel(self, task_id: str) -> dict[str, Any]: ...

    def agents(self) -> list[dict[str, Any]]: ...

    def issue_token(self, name: str) -> dict[str, Any]: ...

    def revoke_token(self, name: str) -> dict[str, Any]: ...

    def timeline_overrides(self, tasks: list[TaskInfo]) -> dict[str, dict[str, Any]]: ...

    def live_fields(self, task_id: str) -> dict[str, Any] | None: ...

    def recent_lines(self, task_id: str, after: int) -> tuple[list[tuple[int, dict[str, Any]]], bool]: ...
