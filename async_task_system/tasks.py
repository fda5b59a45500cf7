"""The data of a task: its status, its record and its error. No behaviour lives here.

Every transition between statuses happens in :class:`~async_task_system.manager.TaskManager`
under its lock; this module only names the states and which moves between them are legal.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

__all__ = [
    "TaskKind",
    "TaskStatus",
    "TaskError",
    "TaskInfo",
    "TaskFailure",
    "TERMINAL_STATUSES",
    "ALLOWED_TRANSITIONS",
    "InvalidTransition",
]


class TaskKind(str, Enum):
    """What a task runs: a smolagents tool, a managed agent, a plain callable, or a remote command."""

    TOOL = "tool"
    AGENT = "agent"
    FUNCTION = "function"
    REMOTE = "remote"

    __hash__ = str.__hash__  # as TaskStatus: fast, and equal to the plain value's hash

    @classmethod
    def parse(cls, value: str | TaskKind) -> TaskKind:
        """Accept the kind names an LLM is likely to write ("managed_agent", "callable", ...)."""
        if isinstance(value, TaskKind):
            return value
        exact = _KIND_BY_VALUE.get(value)
        if exact is not None:
            return exact
        normalized = str(value).strip().lower().replace("-", "_")
        aliases = {
            "tool": cls.TOOL,
            "tools": cls.TOOL,
            "agent": cls.AGENT,
            "managed_agent": cls.AGENT,
            "agents": cls.AGENT,
            "function": cls.FUNCTION,
            "callable": cls.FUNCTION,
            "func": cls.FUNCTION,
            "remote": cls.REMOTE,
        }
        try:
            return aliases[normalized]
        except KeyError:
            kinds = ", ".join(repr(k.value) for k in cls)
            raise ValueError(f"Unknown task type {value!r}: use one of {kinds}.") from None


_KIND_BY_VALUE: dict[str, TaskKind] = {kind.value: kind for kind in TaskKind}


class TaskStatus(str, Enum):
    """The one state machine every task moves through.

    ``PENDING -> RUNNING -> COMPLETED | FAILED | CANCELLED``; a running task may suspend in
    ``WAITING_REMOTE`` and return to ``RUNNING`` when its remote result arrives, and a failed
    attempt that will be retried goes back to ``PENDING``.
    """

    PENDING = "pending"
    RUNNING = "running"
    WAITING_REMOTE = "waiting_remote"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    # The C-level string hash (consistent with ``==`` against the plain value): Enum's default
    # hash is Python code, and the manager hashes statuses on every transition.
    __hash__ = str.__hash__

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})

ALLOWED_TRANSITIONS: dict[TaskStatus, frozenset[TaskStatus]] = {
    TaskStatus.PENDING: frozenset({TaskStatus.RUNNING, TaskStatus.CANCELLED, TaskStatus.FAILED}),
    TaskStatus.RUNNING: frozenset(
        {
            TaskStatus.WAITING_REMOTE,
            TaskStatus.COMPLETED,
            TaskStatus.FAILED,
            TaskStatus.CANCELLED,
            TaskStatus.PENDING,  # a failed attempt waiting for its retry
        }
    ),
    TaskStatus.WAITING_REMOTE: frozenset(
        {TaskStatus.RUNNING, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.COMPLETED}
    ),
    TaskStatus.COMPLETED: frozenset(),
    TaskStatus.FAILED: frozenset(),
    TaskStatus.CANCELLED: frozenset(),
}


class InvalidTransition(RuntimeError):
    """Raised when code asks the manager for a move the state machine does not allow."""


@dataclass(frozen=True)
class TaskError:
    """Why a task failed. ``type`` is ``"timeout"``, ``"cancelled"``, ``"worker_lost"``, ... or an exception class name."""

    type: str
    message: str
    traceback: str | None = None

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"


@dataclass
class TaskInfo:
    """One task's record. ``TaskManager.check`` and ``list`` hand out copies, never the live record."""

    id: str
    kind: TaskKind
    name: str
    arguments: dict[str, Any]
    status: TaskStatus = TaskStatus.PENDING
    result: Any = None
    error: TaskError | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    timeout: float | None = None
    retries: int = 0

    def snapshot(self) -> TaskInfo:
        """A copy that later changes to this record do not affect (cheaper than ``dataclasses.replace``)."""
        clone = object.__new__(TaskInfo)
        clone.__dict__.update(self.__dict__)
        clone.arguments = dict(self.arguments)
        return clone

    @property
    def duration(self) -> float | None:
        """Seconds from the last start to the end (or to now while it runs)."""
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at is not None else time.time()
        return end - self.started_at

    def to_dict(self, result_chars: int | None = None) -> dict[str, Any]:
        """A plain, JSON-friendly view; ``result_chars`` truncates the result's text for an LLM."""
        result: Any = self.result
        if result_chars is not None and result is not None:
            text = str(result)
            result = text if len(text) <= result_chars else text[:result_chars] + "... [truncated]"
        return {
            "task_id": self.id,
            "kind": self.kind.value,
            "name": self.name,
            "arguments": self.arguments,
            "status": self.status.value,
            "result": result,
            "error": None if self.error is None else dataclasses.asdict(self.error),
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration": self.duration,
            "attempts": self.attempts,
        }


class TaskFailure(str):
    """The value ``TaskManager.results`` gives for a task that did not complete.

    It is a ``str`` so that an LLM printing or formatting results reads a clear sentence, and it
    carries ``task_id``, ``status`` and ``error`` so that code can tell it apart from a result:
    ``isinstance(value, TaskFailure)``.
    """

    task_id: str
    status: TaskStatus
    error: TaskError | None

    def __new__(cls, task_id: str, status: TaskStatus, error: TaskError | None, text: str) -> TaskFailure:
        value = super().__new__(cls, text)
        value.task_id = task_id
        value.status = status
        value.error = error
        return value
