"""The durable journal of a TaskManager: ``TaskManager(journal=URL)``.

Every task's submission and transitions are written to the platform store (table
``journal_tasks``, one row per task holding its latest state), so that what was in flight survives
a crash and results dropped from memory stay readable. Built on the manager's public API only:
``add_listener`` (a snapshot after each change), ``set_archive`` (reads for dropped tasks),
``id_prefix``, ``add_shutdown_callback``, ``submit`` and ``targets``.

Recording. The listener only puts the snapshot in a dict keyed by task id (a few microseconds, in
the thread that made the change); one writer thread takes what is there -- at most
``batch_size`` tasks -- and upserts them in one transaction. Queue policy:

* updates of a task that is still waiting to be written replace its entry (coalesced: the row
  holds the latest state, so nothing is lost);
* a new task's first snapshot when ``max_pending`` distinct tasks wait blocks the thread that
  made the change until the writer makes room, at most ``put_timeout`` seconds (back-pressure on
  submitters, never an unbounded queue). After that it is dropped, counted in ``dropped`` and
  logged; the task's next change writes its whole row again.
* when the database fails, the writer keeps its batch, retries with a back-off (up to 5 s) and
  the same rules apply.

Recovery. ``journal.recover()`` on a new manager (same URL) finds the prefixes of managers that
are gone (closed, a process of this host that no longer exists, or no heartbeat for
``stale_after`` seconds), marks their unfinished tasks ``interrupted`` in the store, and
re-submits those that allow it (the target is registered here, an attempt is left, no
dependency on the dead manager's tasks).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .._records import new_id_prefix
from ..tasks import TaskError, TaskInfo, TaskKind, TaskStatus
from .store import INTERRUPTED, LIVE_STATUSES, JournalTask, Store, cap_text, utcnow

if TYPE_CHECKING:
    from ..manager import TaskManager

__all__ = ["Journal", "RecoveryReport", "encode_value"]

logger = logging.getLogger(__name__)

_DEFAULT_PREFIX = re.compile(r"task_[a-z2-9]{4}_")
_TERMINAL = ("completed", "failed", "cancelled")


@dataclass
class RecoveryReport:
    """What :meth:`Journal.recover` did: tasks it marked ``interrupted`` and what became of them."""

    prefixes: list[str] = field(default_factory=list)  # the dead managers' id prefixes
    interrupted: list[str] = field(default_factory=list)  # every task marked interrupted
    resubmitted: dict[str, str] = field(default_factory=dict)  # old task id -> new task id
    skipped: dict[str, str] = field(default_factory=dict)  # old task id -> why it was not re-submitted


def encode_value(value: Any, limit: int) -> tuple[Any, str | None, bool]:
    """``(json_value, text, truncated)`` for a stored value: the value itself when it is JSON of at
    most ``limit`` characters; else ``None`` and a readable text (its ``repr``, or its JSON when
    too long), cut to ``limit`` characters with ``truncated`` set when cut."""
    if value is None or value is True or value is False or type(value) is int:
        return value, None, False
    if type(value) is float and math.isfinite(value):
        return value, None, False
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        try:
            text = repr(value)
        except Exception:
            text = object.__repr__(value)
        return None, cap_text(text, limit), len(text) > limit
    if len(text) <= limit:
        return value, None, False
    return None, cap_text(value if isinstance(value, str) else text, limit), True


class Journal:
    """The ``journal`` extension: records a TaskManager's tasks in a store (see the module docstring).

    Built by ``TaskManager(journal=URL)`` (``manager.extension("journal")``) before the first task:
    it opens the store, reserves the manager's id prefix there (drawing another default prefix if
    the store has seen this one; an explicit ``id_prefix=`` the store already has is refused, since
    ids must never repeat in a journal), and starts the writer thread.

    Attributes: ``store`` (the :class:`~.store.Store`), ``prefix``, ``dropped`` (snapshots dropped
    because the queue stayed full), ``written`` (rows written).
    """

    max_pending = 50_000  # distinct tasks waiting to be written before submitters are held back
    put_timeout = 10.0  # seconds a change waits for room before its snapshot is dropped
    batch_size = 5_000  # tasks per transaction
    linger = 0.05  # seconds the writer waits after waking: gathers a batch, coalesces a task's quick changes
    max_result_chars = (
        64 * 1024
    )  # results (and arguments) longer than this as JSON are kept as truncated text
    heartbeat_interval = 10.0  # seconds between heartbeats of this manager's prefix row
    close_timeout = 30.0  # seconds shutdown waits for the last rows

    def __init__(self, manager: TaskManager, url: str | None = None) -> None:
        url = url or getattr(manager, "journal_url", None)
        if not url:
            raise ValueError("a journal needs a database URL: TaskManager(journal='sqlite:///tasks.db')")
        if manager.get_statistics()["total"]:
            raise RuntimeError("a journal must be attached before the manager's first task is submitted")
        self.store = Store(url)
        self.url = url
        self.prefix = self._reserve_prefix(manager)
        self.dropped = 0
        self.written = 0
        self._manager = weakref.ref(manager)
        self._cond = threading.Condition(threading.Lock())
        self._pending: dict[str, TaskInfo] = {}
        self._in_flight: dict[str, TaskInfo] = {}
        self._terminal_seen = 0
        self._flushers = 0  # threads in flush(): a finished task's snapshot wakes them
        self._writer_idle = False
        self._stopping = False
        self._closed = False
        self._failing = False
        self._writer = threading.Thread(target=self._run, name=f"journal-{self.prefix}", daemon=True)
        self._writer.start()
        self._remove_listener = manager.add_listener(self._on_change)
        manager.set_archive(self.get)
        manager.add_shutdown_callback(self.close)
        # A manager dropped without shutdown(): write what is queued, then let the thread end.
        weakref.finalize(manager, self._stop)

    # ------------------------------------------------------------------ prefix

    def _reserve_prefix(self, manager: TaskManager) -> str:
        prefix = manager.id_prefix
        for _ in range(1000):
            if self.store.prefixes.reserve(prefix):
                manager.id_prefix = prefix
                return prefix
            if not _DEFAULT_PREFIX.fullmatch(prefix):
                self.store.close()
                raise ValueError(
                    f"id prefix {prefix!r} was already used in the journal {self.store!r}: task ids must "
                    "never repeat in one journal; pass another id_prefix, or none to draw one"
                )
            prefix = new_id_prefix()
        raise RuntimeError("could not reserve a free task-id prefix in the journal")  # pragma: no cover

    # ------------------------------------------------------------------ recording

    def _on_change(self, info: TaskInfo) -> None:
        """The manager's listener: queue the snapshot for the writer (coalesced per task)."""
        with self._cond:
            if self._closed:
                return
            pending = self._pending
            if info.status.is_terminal:
                self._terminal_seen += 1
                if self._flushers:
                    self._cond.notify_all()
            if info.id not in pending and len(pending) >= self.max_pending:
                deadline = time.monotonic() + self.put_timeout
                while len(pending) >= self.max_pending and not self._closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        self.dropped += 1
                        logger.error(
                            "journal %s: %d tasks wait to be written; dropped a snapshot of %s (%s)",
                            self.prefix, len(pending), info.id, info.status.value,
                        )  # fmt: skip
                        return
                    self._cond.wait(remaining)
                    pending = self._pending
            pending[info.id] = info
            if self._writer_idle:
                self._writer_idle = False
                self._cond.notify_all()

    def _run(self) -> None:
        next_heartbeat = time.monotonic() + self.heartbeat_interval
        failures = 0
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    wait = next_heartbeat - time.monotonic()
                    if wait <= 0:
                        break
                    self._writer_idle = True
                    self._cond.wait(wait)
                self._writer_idle = False
                stopping = self._stopping
            if self._pending and self.linger and not stopping and len(self._pending) < self.batch_size:
                time.sleep(self.linger)
            with self._cond:
                batch = self._take_batch()
                self._in_flight = batch
                self._cond.notify_all()  # room for a blocked listener
            if batch:
                try:
                    now = utcnow()
                    self.store.journal.upsert([self._row(info, now) for info in batch.values()])
                    failures = 0
                    self._failing = False
                except Exception:
                    failures += 1
                    self._failing = True
                    logger.exception(
                        "journal %s: writing %d tasks failed (retrying)", self.prefix, len(batch)
                    )
                    with self._cond:
                        for task_id, info in batch.items():
                            self._pending.setdefault(task_id, info)  # a newer snapshot wins
                        self._in_flight = {}
                        if self._stopping and self._closed:
                            return  # close() gave up waiting
                        self._cond.wait(min(5.0, 0.05 * 2**failures))
                    continue
            with self._cond:
                self._in_flight = {}
                self.written += len(batch)
                self._cond.notify_all()  # flush() waiters
                done = self._stopping and not self._pending
            if time.monotonic() >= next_heartbeat and not done:
                next_heartbeat = time.monotonic() + self.heartbeat_interval
                try:
                    self.store.prefixes.heartbeat(self.prefix)
                except Exception:
                    logger.warning("journal %s: heartbeat failed", self.prefix, exc_info=True)
            if done:
                return

    def _take_batch(self) -> dict[str, TaskInfo]:
        """Up to ``batch_size`` queued snapshots, oldest first (lock held)."""
        pending = self._pending
        if len(pending) <= self.batch_size:
            self._pending = {}
            return pending
        batch = dict(itertools.islice(pending.items(), self.batch_size))
        for task_id in batch:
            del pending[task_id]
        return batch

    def _row(self, info: TaskInfo, now: Any) -> dict[str, Any]:
        limit = self.max_result_chars
        result, result_text, truncated = encode_value(info.result, limit)
        arguments, arguments_text, _ = encode_value(info.arguments, limit)
        error = info.error
        return {
            "task_id": info.id,
            "prefix": self.prefix,
            "kind": info.kind.value,
            "name": cap_text(info.name, 250),
            "arguments": arguments if arguments_text is None else {"$repr": arguments_text},
            "arguments_complete": arguments_text is None,
            "status": info.status.value,
            "error_type": None if error is None else cap_text(error.type, 250),
            "error_message": None if error is None else cap_text(error.message, limit),
            "error_traceback": None if error is None else cap_text(error.traceback, limit),
            "result": result,
            "result_text": result_text,
            "result_truncated": truncated,
            "attempts": info.attempts,
            "retries": info.retries,
            "timeout": info.timeout,
            "depends_on": list(info.depends_on),
            "progress": info.progress,
            "progress_message": cap_text(info.progress_message, 1000),
            "created_at": info.created_at,
            "started_at": info.started_at,
            "finished_at": info.finished_at,
            "updated_at": now,
        }

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every change made so far is written: each finished task of the manager has been
        delivered to the journal and nothing waits to be written. False on timeout or after close."""
        manager = self._manager()
        target = 0
        if manager is not None:
            stats = manager.get_statistics()
            target = sum(stats[status] for status in _TERMINAL)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._flushers += 1
            try:
                while self._terminal_seen < target or self._pending or self._in_flight:
                    if not self._writer.is_alive():
                        return False
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    self._cond.wait(remaining)
            finally:
                self._flushers -= 1
        return True

    def _stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def close(self) -> None:
        """Write what is queued (at most ``close_timeout`` seconds), stop the writer, and mark the prefix
        closed when no task of the manager is left unfinished. Called at the manager's shutdown.
        The store stays readable: results dropped from memory can still be read afterwards."""
        if self._closed:
            return
        flushed = self.flush(self.close_timeout)
        self._remove_listener()
        with self._cond:
            self._closed = True
            self._stopping = True
            self._cond.notify_all()
        self._writer.join(self.close_timeout)
        if not flushed or self._pending:
            logger.error("journal %s: closed with %d tasks not written", self.prefix, len(self._pending))
        manager = self._manager()
        live = 0
        if manager is not None:
            stats = manager.get_statistics()
            live = sum(stats[status.value] for status in TaskStatus if not status.is_terminal)
        if flushed and not live:
            try:
                self.store.prefixes.close(self.prefix)
            except Exception:
                logger.warning("journal %s: could not mark the prefix closed", self.prefix, exc_info=True)
        self.store.close()

    # ------------------------------------------------------------------ reading

    def get(self, task_id: str) -> TaskInfo | None:
        """The recorded state of any task of this journal (of this manager or another), or ``None``.

        This is the manager's archive: ``results``/``check`` read dropped tasks through it.
        """
        with self._cond:
            queued = self._pending.get(task_id) or self._in_flight.get(task_id)
        if queued is not None:
            return queued.snapshot()
        try:
            row = self.store.journal.get(task_id)
        except Exception:
            logger.warning("journal %s: reading %s failed", self.prefix, task_id, exc_info=True)
            return None
        return None if row is None else info_from_row(row)

    def orphans(self, stale_after: float = 60.0) -> list[TaskInfo]:
        """Unfinished tasks of managers that are gone (see :meth:`recover`), without changing anything."""
        dead = self.store.prefixes.dead(stale_after, exclude=(self.prefix,))
        rows = self.store.journal.list(prefix=dead, status=LIVE_STATUSES) if dead else []
        return [info_from_row(row) for row in rows]

    # ------------------------------------------------------------------ recovery

    def recover(self, resubmit: bool = True, stale_after: float = 60.0) -> RecoveryReport:
        """Take over the unfinished tasks of managers that died: mark them ``interrupted`` and re-submit
        those that allow it on this manager. Returns a :class:`RecoveryReport`.

        A manager is gone when its prefix was closed, its process (on this host) no longer exists, or
        it sent no heartbeat for ``stale_after`` seconds (for other hosts: keep it well above
        ``heartbeat_interval``). Each task is claimed with a conditional update, so managers that
        recover at once never take the same task twice. A task is re-submitted (same kind, name,
        arguments and timeout; retries reduced by the attempts already made) when ``resubmit`` is
        true, its target is registered on this manager, it has an attempt left (one that never
        started always has; the interrupted attempt counts as made), its arguments were stored
        whole, and it depended on no other task.
        """
        manager = self._manager()
        if manager is None:
            raise RuntimeError("the journal's manager is gone")
        report = RecoveryReport()
        report.prefixes = self.store.prefixes.dead(stale_after, exclude=(self.prefix,))
        if not report.prefixes:
            return report
        targets = {(target.kind.value, target.name) for target in manager.targets()}
        for row in self.store.journal.list(prefix=report.prefixes, status=LIVE_STATUSES):
            message = f"its manager ({row.prefix}) stopped while the task was {row.status}"
            if not self.store.journal.interrupt(row.task_id, row.status, message):
                continue  # finished meanwhile, or another manager claimed it
            report.interrupted.append(row.task_id)
            if not resubmit:
                continue
            left = row.retries + 1 - row.attempts
            reason = _why_not(row, targets, left)
            if reason is not None:
                report.skipped[row.task_id] = reason
                continue
            try:
                new_id = manager.submit(
                    row.kind, row.name, row.arguments, timeout=row.timeout, retries=left - 1
                )
            except Exception as exc:
                report.skipped[row.task_id] = f"submit refused it: {exc}"
                continue
            self.store.journal.set_resubmitted(row.task_id, new_id)
            report.resubmitted[row.task_id] = new_id
        for prefix in report.prefixes:
            self.store.prefixes.close(prefix)
        return report

    def __repr__(self) -> str:
        return f"<Journal {self.prefix} {self.store!r} written={self.written} dropped={self.dropped}>"


def _why_not(row: JournalTask, targets: Iterable[tuple[str, str]], left: int) -> str | None:
    if (row.kind, row.name) not in targets:
        return f"no {row.kind} {row.name!r} is registered on this manager"
    if left < 1:
        return f"no attempt left (retries={row.retries}, attempts made={row.attempts})"
    if not row.arguments_complete:
        return "its arguments were not JSON and were stored only as text"
    if row.depends_on:
        return f"it depended on tasks of the dead manager ({', '.join(row.depends_on)})"
    return None


def info_from_row(row: JournalTask) -> TaskInfo:
    """A stored row as a :class:`TaskInfo`. ``interrupted`` reads as FAILED with error type
    ``interrupted``; a result kept as text reads as that text."""
    error = None
    if row.error_type is not None:
        error = TaskError(row.error_type, row.error_message or "", row.error_traceback)
    if row.status == INTERRUPTED:
        status = TaskStatus.FAILED
        error = error or TaskError(INTERRUPTED, "its manager stopped")
    else:
        status = TaskStatus(row.status)
    arguments = row.arguments if isinstance(row.arguments, dict) else {"$value": row.arguments}
    return TaskInfo(
        id=row.task_id,
        kind=TaskKind.register(row.kind),
        name=row.name,
        arguments=arguments,
        status=status,
        result=row.result_text if row.result_text is not None else row.result,
        error=error,
        created_at=row.created_at.timestamp(),
        started_at=None if row.started_at is None else row.started_at.timestamp(),
        finished_at=None if row.finished_at is None else row.finished_at.timestamp(),
        attempts=row.attempts,
        timeout=row.timeout,
        retries=row.retries,
        depends_on=tuple(row.depends_on or ()),
        progress=row.progress,
        progress_message=row.progress_message,
    )
