"""The data of a task: its status, its record and its error. No behaviour lives here.

Every transition between statuses happens in :class:`~async_task_system.core.manager.TaskManager`
under its lock; this module only names the states and which moves between them are legal.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .errors import InvalidTransition

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


class _KindRegistry(type):
    """Makes ``TaskKind`` iterable and callable like an Enum while staying open to new kinds."""

    _registry: dict[str, TaskKind]

    def __iter__(cls) -> Iterator[TaskKind]:
        return iter(list(cls._registry.values()))

    def __len__(cls) -> int:
        return len(cls._registry)

    def __call__(cls, value: str | TaskKind) -> TaskKind:  # type: ignore[override]
        kind = cls._registry.get(str(value))
        if kind is None:
            raise ValueError(f"{value!r} is not a registered TaskKind")
        return kind


class TaskKind(str, metaclass=_KindRegistry):
    """What a task runs. The core knows ``tool``, ``agent`` and ``function``; subsystems add theirs.

    Kinds are interned strings: ``TaskKind("tool") is TaskKind.TOOL`` and ``TaskKind.TOOL == "tool"``.
    A subsystem calls :meth:`register` once (``TaskKind.register("remote", "a command on a fleet
    worker")``) and then registers targets of that kind on a manager; the core is not edited.
    """

    TOOL: TaskKind
    AGENT: TaskKind
    FUNCTION: TaskKind
    REMOTE: TaskKind

    _registry: dict[str, TaskKind] = {}
    _aliases: dict[str, TaskKind] = {}

    description: str

    __hash__ = str.__hash__  # the C-level string hash: equal to the plain value's

    @classmethod
    def register(cls, name: str, description: str = "", aliases: Iterable[str] = ()) -> TaskKind:
        """Add a kind (idempotent: the same name returns the same object) and the names an LLM may use for it."""
        if not isinstance(name, str) or not name.isidentifier() or name != name.lower():
            raise ValueError(f"a task kind is a lowercase identifier, got {name!r}")
        kind = cls._registry.get(name)
        if kind is None:
            kind = str.__new__(cls, name)
            kind.description = description
            cls._registry[name] = kind
        elif description and not kind.description:
            kind.description = description
        for alias in (name, *aliases):
            cls._aliases.setdefault(alias.strip().lower().replace("-", "_"), kind)
        return kind

    @property
    def value(self) -> str:
        """The kind's name as a plain string (as an Enum member's ``value``)."""
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"TaskKind({self.value!r})"

    def __str__(self) -> str:
        return self.value

    def __reduce__(self) -> tuple[Any, ...]:
        # Unpickled in another process (a process pool, a Dask worker) the kind is re-registered there.
        return (_kind, (self.value, self.description))

    @classmethod
    def parse(cls, value: str | TaskKind) -> TaskKind:
        """Accept the kind names an LLM is likely to write ("managed_agent", "callable", ...)."""
        if isinstance(value, TaskKind):
            return value
        exact = cls._registry.get(value) if isinstance(value, str) else None
        if exact is not None:
            return exact
        normalized = str(value).strip().lower().replace("-", "_")
        kind = cls._aliases.get(normalized)
        if kind is None:
            kinds = ", ".join(repr(k.value) for k in cls._registry.values())
            raise ValueError(f"Unknown task type {value!r}: use one of {kinds}.")
        return kind


def _kind(name: str, description: str) -> TaskKind:
    return TaskKind.register(name, description)


TaskKind.TOOL = TaskKind.register("tool", "a smolagents tool", aliases=("tools",))
TaskKind.AGENT = TaskKind.register("agent", "a managed agent", aliases=("agents", "managed_agent"))
TaskKind.FUNCTION = TaskKind.register("function", "a registered function", aliases=("callable", "func"))
# Named here so that records from any process read the same, but targets of this kind exist only
# once the remote subsystem registered them (async_task_system.remote).
TaskKind.REMOTE = TaskKind.register("remote", "a command on a remote worker")


class TaskStatus(str, Enum):
    """The one state machine every task moves through.

    ``PENDING -> RUNNING -> COMPLETED | FAILED | CANCELLED``; a running task may suspend in
    ``WAITING_REMOTE`` (its attempt handed to something else: a remote worker, another agent)
    and return to ``RUNNING`` or finish from there, and a failed attempt that will be retried goes
    back to ``PENDING``.
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
        {
            TaskStatus.RUNNING,
            TaskStatus.FAILED,
            TaskStatus.CANCELLED,
            TaskStatus.COMPLETED,
            TaskStatus.PENDING,  # the remote attempt failed and will be retried
        }
    ),
    TaskStatus.COMPLETED: frozenset(),
    TaskStatus.FAILED: frozenset(),
    TaskStatus.CANCELLED: frozenset(),
}


@dataclass(frozen=True)
class TaskError:
    """Why a task failed. ``type`` is ``"timeout"``, ``"cancelled"``, ``"worker_lost"``, ... or an exception class name."""

    type: str
    message: str
    traceback: str | None = None

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"

    @classmethod
    def from_exception(cls, exc: BaseException) -> TaskError:
        """The record of an exception an attempt raised: its class name, message and traceback."""
        return cls(
            type=type(exc).__name__,
            message=str(exc) or type(exc).__name__,
            traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        )


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
    depends_on: tuple[str, ...] = ()
    progress: float | None = None
    progress_message: str | None = None

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
            "depends_on": list(self.depends_on),
            "progress": self.progress,
            "progress_message": self.progress_message,
        }


class TaskFailure(str):
    """The value ``TaskManager.results`` gives for a task that did not complete.

    It is a ``str`` so that an LLM printing or formatting results reads a clear sentence, and it
    carries ``task_id``, ``status`` and ``error`` so that code can tell it apart from a result:
    ``isinstance(value, TaskFailure)``.
    """

    task_id: str
    status: TaskStatus | None
    error: TaskError | None

    def __new__(
        cls, task_id: str, status: TaskStatus | None, error: TaskError | None, text: str
    ) -> TaskFailure:
        value = super().__new__(cls, text)
        value.task_id = task_id
        value.status = status
        value.error = error
        return value

    @classmethod
    def for_task(cls, info: TaskInfo) -> TaskFailure:
        """The failure value of a task that did not complete (``status`` is ``None`` for a dropped one)."""
        label = f"Task {info.id} ({info.kind.value} {info.name!r})"
        if info.status is TaskStatus.FAILED:
            error = info.error or TaskError("error", "unknown error")
            text = f"ERROR: {label} failed: {error.type}: {error.message}"
        elif info.status is TaskStatus.CANCELLED:
            reason = f": {info.error.message}" if info.error and info.error.type != "cancelled" else ""
            text = f"CANCELLED: {label} was cancelled{reason}"
        else:
            text = f"NOT FINISHED: {label} is {info.status.value}; call wait_for_tasks([{info.id!r}]) first"
        return cls(info.id, info.status, info.error, text)

    @classmethod
    def dropped(cls, task_id: str) -> TaskFailure:
        """The value for a task that finished, was read, and was dropped by the retention limit."""
        text = f"EXPIRED: Task {task_id} finished and its result was read before; it was dropped since."
        return cls(task_id, None, None, text)
