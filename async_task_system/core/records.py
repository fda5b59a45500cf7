"""A manager's task records: ids, statuses, reading and waiting. No running happens here.

:class:`TaskRecords` holds every task the manager still keeps, the one lock that guards them,
the per-status counts and the retention rule; :class:`~async_task_system.core.manager.TaskManager`
builds the running of tasks (slots, executors, timeouts, retries, task control) on top of it.

Retention: a finished task is dropped only after its result was read (``results``, ``result``
or ``check``), and only while more than ``retention`` read tasks are held, the oldest read
first. A task nobody has read is never dropped. An id that was issued here and dropped still
counts as done for ``wait`` and reads as an ``EXPIRED:`` :class:`TaskFailure`.
"""

from __future__ import annotations

import contextvars
import itertools
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from .errors import InvalidTransition, UnknownTaskError
from .tasks import ALLOWED_TRANSITIONS, TaskFailure, TaskInfo, TaskStatus

if TYPE_CHECKING:
    from ._timers import TimerHandle
    from .targets import Target

__all__ = ["TaskRecords", "TaskRecord", "WaitResult", "new_id_prefix"]

_used_prefixes: set[str] = set()
_prefix_lock = threading.Lock()
_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"


class WaitResult(NamedTuple):
    """What ``TaskManager.wait`` returns: ids that reached a terminal status, and the rest."""

    done: list[str]
    not_done: list[str]


class _Waiter:
    __slots__ = ("remaining", "event")

    def __init__(self, remaining: int) -> None:
        self.remaining = remaining
        self.event = threading.Event()


class TaskRecord:
    """A task's live record: the public ``TaskInfo`` plus what the manager needs to run it."""

    __slots__ = (
        "info", "target", "context", "waiters", "timer", "cancel_requested", "holds_slot",
        "read", "future", "suspension", "resolved", "turn", "continuation", "busy", "cancel_event",
    )  # fmt: skip

    def __init__(self, info: TaskInfo, target: Target, context: contextvars.Context | None) -> None:
        self.info = info
        self.target = target
        self.context = context
        self.waiters: list[_Waiter] = []
        self.timer: TimerHandle | None = None
        self.cancel_requested = False  # per attempt; read by cancellation_requested()
        self.holds_slot = False
        self.read = False
        self.future: Future[Any] | None = None
        self.suspension: Any = None  # the manager's Suspension handle while it waits on one
        self.resolved: dict[str, Any] = {}  # results of the tasks its arguments refer to
        self.turn = 0  # how often the current attempt was continued after a suspension
        self.continuation: Callable[[], Any] | None = None  # queued by Suspension.resume_later
        self.busy = False  # the current turn's code is still running (a continuation waits for it)
        self.cancel_event: threading.Event | None = None  # made on demand by wait_cancelled


class TaskRecords:
    """The records of one manager's tasks (see the module docstring for the retention rule)."""

    def __init__(self, retention: int, id_prefix: str | None) -> None:
        if retention < 0:
            raise ValueError("retention must be >= 0")
        self.retention = retention
        self.id_prefix = id_prefix or new_id_prefix()
        self._lock = threading.Lock()
        self._tasks: dict[str, TaskRecord] = {}
        self._finished_read: OrderedDict[str, None] = OrderedDict()
        self._counts = dict.fromkeys(TaskStatus, 0)
        self._submitted = 0
        self._ids = itertools.count(1)
        self._last_id = 0
        self._all_done = threading.Condition(self._lock)
        self._closed = False
        self._archive: Callable[[str], TaskInfo | None] | None = None

    def set_archive(self, lookup: Callable[[str], TaskInfo | None] | None) -> None:
        """Where tasks dropped from memory can still be read (a journal): ``lookup(task_id)`` returns
        the stored record or ``None``. ``results`` and ``check`` consult it for dropped ids, outside
        the lock."""
        self._archive = lookup

    def _set_status(self, task: TaskRecord, status: TaskStatus) -> None:
        """The single place a status changes (lock held)."""
        current = task.info.status
        if status not in ALLOWED_TRANSITIONS[current]:
            raise InvalidTransition(f"{task.info.id}: {current.value} -> {status.value} is not allowed")
        self._counts[current] -= 1
        self._counts[status] += 1
        task.info.status = status

    def _evict(self) -> None:
        while len(self._finished_read) > self.retention:
            task_id, _ = self._finished_read.popitem(last=False)
            self._tasks.pop(task_id, None)

    def _mark_read(self, task: TaskRecord) -> None:
        if not task.read and task.info.status.is_terminal:
            task.read = True
            self._finished_read[task.info.id] = None

    def _is_evicted(self, task_id: str) -> bool:
        """Issued by this manager but no longer held: it finished, was read, and retention dropped it."""
        suffix = task_id[len(self.id_prefix) :] if task_id.startswith(self.id_prefix) else ""
        return suffix.isdigit() and 0 < int(suffix) <= self._last_id and task_id not in self._tasks

    def _get(self, task_id: str) -> TaskRecord:
        task = self._tasks.get(task_id)
        if task is not None:
            return task
        if self._is_evicted(task_id):
            raise UnknownTaskError(
                f"Task {task_id!r} finished and its result was read; it was dropped to keep at most "
                f"{self.retention} read tasks."
            )
        known = list(self._tasks)
        shown = ", ".join(known[-10:]) if known else "none yet"
        more = f" (and {len(known) - 10} earlier)" if len(known) > 10 else ""
        raise UnknownTaskError(
            f"Unknown task id {task_id!r}. Known task ids: {shown}{more}. Use the ids that submit_task returned."
        )

    def _wait(
        self,
        task_ids: Iterable[str] | str,
        timeout: float | None,
        return_when: Literal["all", "first"],
        before_blocking: Callable[[], None] | None = None,
    ) -> WaitResult:
        if return_when not in ("all", "first"):
            raise ValueError("return_when must be 'all' or 'first'")
        ids = [task_ids] if isinstance(task_ids, str) else list(dict.fromkeys(task_ids))
        with self._lock:
            tasks = [self._tasks.get(i) or (None if self._is_evicted(i) else self._get(i)) for i in ids]
            pending = [task for task in tasks if task is not None and not task.info.status.is_terminal]
            satisfied = not pending or (return_when == "first" and len(pending) < len(tasks))
            waiter = None
            if not satisfied:
                waiter = _Waiter(1 if return_when == "first" else len(pending))
                for task in pending:
                    task.waiters.append(waiter)
        if waiter is not None:
            if before_blocking is not None:
                before_blocking()
            try:
                waiter.event.wait(timeout)
            finally:
                with self._lock:
                    for task in pending:
                        if waiter in task.waiters:
                            task.waiters.remove(waiter)
        with self._lock:
            finished = [t is None or t.info.status.is_terminal for t in tasks]
        done = [i for i, f in zip(ids, finished, strict=True) if f]
        not_done = [i for i, f in zip(ids, finished, strict=True) if not f]
        return WaitResult(done, not_done)

    def results(self, task_ids: Iterable[str] | str) -> dict[str, Any]:
        """``{task_id: result}``. A failed, cancelled, unfinished or dropped task maps to a
        :class:`TaskFailure` string that says what happened; raises only for ids never issued here."""
        ids = [task_ids] if isinstance(task_ids, str) else list(task_ids)
        out: dict[str, Any] = {}
        dropped = []
        with self._lock:
            for task_id in ids:
                if self._is_evicted(task_id):
                    dropped.append(task_id)
                    continue
                task = self._get(task_id)
                out[task_id] = _value_of(task.info)
                self._mark_read(task)
            self._evict()
        archive = self._archive
        for task_id in dropped:
            stored = archive(task_id) if archive is not None else None
            out[task_id] = TaskFailure.dropped(task_id) if stored is None else _value_of(stored)
        return {task_id: out[task_id] for task_id in ids}

    def result(self, task_id: str) -> Any:
        """One task's result (or its :class:`TaskFailure`)."""
        return self.results([task_id])[task_id]

    def check(self, task_id: str) -> TaskInfo:
        """A snapshot of one task's record (this counts as reading its result)."""
        archive = self._archive
        if archive is not None and task_id not in self._tasks and self._is_evicted(task_id):
            stored = archive(task_id)
            if stored is not None:
                return stored
        with self._lock:
            task = self._get(task_id)
            self._mark_read(task)
            snapshot = task.info.snapshot()
            self._evict()
            return snapshot

    def list(self, status: TaskStatus | str | None = None) -> list[TaskInfo]:
        """Snapshots of the tasks still held, oldest first, optionally of one status."""
        wanted = None
        if status is not None and status != "":
            try:
                wanted = TaskStatus(str(status.value if isinstance(status, TaskStatus) else status).lower())
            except ValueError:
                names = ", ".join(s.value for s in TaskStatus)
                raise ValueError(f"Unknown status {status!r}: use one of {names}.") from None
        with self._lock:
            return [
                t.info.snapshot() for t in self._tasks.values() if wanted is None or t.info.status is wanted
            ]

    def get_statistics(self) -> dict[str, int]:
        """Counts per status (``stats['running']``, ...), plus ``total`` submitted and ``retained`` records.

        Terminal counts are cumulative, so ``total`` always equals the sum of the six statuses.
        """
        with self._lock:
            stats = {status.value: count for status, count in self._counts.items()}
            stats["total"] = self._submitted
            stats["retained"] = len(self._tasks)
            return stats

    def wait_cancelled(self, task_id: str, timeout: float | None) -> bool:
        """Block until the task's current attempt is cancelled or timed out (True) or ``timeout``
        seconds pass (False): a sleep that a cancel cuts short, with no polling."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or task.cancel_requested:
                return task is not None
            if task.cancel_event is None:
                task.cancel_event = threading.Event()
            event = task.cancel_event
        return event.wait(timeout)

    def is_cancel_requested(self, task_id: str) -> bool:
        with self._lock:
            task = self._tasks.get(task_id)
            return task is not None and task.cancel_requested

    def _live_count(self) -> int:
        counts = self._counts
        return counts[TaskStatus.PENDING] + counts[TaskStatus.RUNNING] + counts[TaskStatus.WAITING_REMOTE]

    @property
    def closed(self) -> bool:
        return self._closed


def new_id_prefix() -> str:
    """``task_<4 letters>_``: short for the LLM, unique among the managers of this process."""
    with _prefix_lock:
        while True:
            prefix = "task_" + "".join(secrets.choice(_ALPHABET) for _ in range(4)) + "_"
            if prefix not in _used_prefixes:
                _used_prefixes.add(prefix)
                return prefix


def _value_of(info: TaskInfo) -> Any:
    return info.result if info.status is TaskStatus.COMPLETED else TaskFailure.for_task(info)
