"""The durable journal of a TaskManager: ``TaskManager(journal=URL)``.

Every task's submission and transitions are written to the platform store (table
``journal_tasks``, one row per task holding its latest state), so that what was in flight survives
a crash and results dropped from memory stay readable. Built on the manager's public API only:
``watch`` (a change feed, coalesced per task), ``set_archive`` (reads for dropped tasks),
``id_prefix``, ``add_shutdown_callback``, ``submit`` and ``targets``.

Recording. The journal watches the manager through a change feed (``manager.watch()``): a change
only marks its task as changed, under the lock the manager holds anyway; one writer thread takes
the latest state of every changed task -- at most ``batch_size`` at a time, however often each
changed meanwhile -- builds the rows and upserts them in one transaction. Queue policy:

* changes of a task that waits to be written coalesce (the row holds the latest state, so nothing
  is lost);
* when ``max_pending`` tasks wait, a new submission waits for room at most ``put_timeout``
  seconds (back-pressure on submitters, never an unbounded queue); while it is that full, the
  change of a task that has not started is dropped (counted in ``dropped``, logged): its next
  change writes its whole row. A task's end is kept past ``max_pending`` (up to twice that), so
  that no row is left ``running`` for a task that finished;
* when the database fails, the writer keeps its batch, retries it with a back-off (up to 5 s)
  while the feed fills, and the same rules apply.

Recovery. ``journal.recover()`` on a new manager (same URL) finds the prefixes of managers that
are gone (closed, a process of this host that no longer exists, or no heartbeat for
``stale_after`` seconds), marks their unfinished tasks ``interrupted`` in the store, and
re-submits those that allow it (the target is registered here, an attempt is left, no
dependency on the dead manager's tasks).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core.records import new_id_prefix
from ..core.tasks import TaskError, TaskInfo, TaskKind, TaskStatus
from ._journal_writer import WriterGone, WriterProcess
from .store import INTERRUPTED, LIVE_STATUSES, JournalTask, Store, cap_text

if TYPE_CHECKING:
    from ..core.manager import TaskManager

__all__ = ["Journal", "RecoveryReport", "encode_json"]

logger = logging.getLogger(__name__)

_DEFAULT_PREFIX = re.compile(r"task_[a-z2-9]{4}_")


@dataclass
class RecoveryReport:
    """What :meth:`Journal.recover` did: tasks it marked ``interrupted`` and what became of them."""

    prefixes: list[str] = field(default_factory=list)  # the dead managers' id prefixes
    interrupted: list[str] = field(default_factory=list)  # every task marked interrupted
    resubmitted: dict[str, str] = field(default_factory=dict)  # old task id -> new task id
    skipped: dict[str, str] = field(default_factory=dict)  # old task id -> why it was not re-submitted


def encode_json(value: Any, limit: int) -> tuple[str, str | None, bool]:
    """``(json_text, text, truncated)`` for a stored value: its JSON text when it is JSON of at most
    ``limit`` characters (``text`` None); else JSON ``null`` and a readable text (its ``repr``, or
    its JSON when too long), cut to ``limit`` characters with ``truncated`` set when cut."""
    if value is None:
        return "null", None, False
    if value is True or value is False or type(value) is int:
        return "true" if value is True else "false" if value is False else str(value), None, False
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        try:
            text = repr(value)
        except Exception:
            text = object.__repr__(value)
        return "null", cap_text(text, limit), len(text) > limit
    if len(text) <= limit:
        return text, None, False
    return "null", cap_text(value if isinstance(value, str) else text, limit), True


class Journal:
    """The ``journal`` extension: records a TaskManager's tasks in a store (see the module docstring).

    Built by ``TaskManager(journal=URL)`` (``manager.extension("journal")``) before the first task:
    it opens the store, reserves the manager's id prefix there (drawing another default prefix if
    the store has seen this one; an explicit ``id_prefix=`` the store already has is refused, since
    ids must never repeat in a journal), and starts the writer thread.

    Attributes: ``store`` (the :class:`~.store.Store`), ``prefix``, ``dropped`` (changes dropped
    because the queue stayed full), ``written`` (rows written), ``waiting``, ``failing`` and
    ``writer_pid`` (the writer process, if the rows go there).
    """

    max_pending = 50_000  # distinct tasks waiting to be written before submitters are held back
    put_timeout = 10.0  # seconds a new submission waits for room when max_pending tasks wait
    batch_size = 5_000  # tasks per transaction
    linger = 0.05  # seconds the writer waits after waking: gathers a batch, coalesces a task's quick changes
    max_result_chars = (
        64 * 1024
    )  # results (and arguments) longer than this as JSON are kept as truncated text
    heartbeat_interval = 10.0  # seconds between heartbeats of this manager's prefix row
    close_timeout = 30.0  # seconds shutdown waits for the last rows
    # A batch of this many rows moves the writes to a writer process (None: never), where they
    # cost the manager's GIL only their pickling; below it they are too cheap to be worth one.
    process_threshold: int | None = 200

    def __init__(self, manager: TaskManager, url: str | None = None) -> None:
        url = url or getattr(manager, "journal_url", None)
        if not url:
            raise ValueError("a journal needs a database URL: TaskManager(journal='sqlite:///tasks.db')")
        if manager.get_statistics()["total"]:
            raise RuntimeError("a journal must be attached before the manager's first task is submitted")
        self.store = Store(url)
        self.url = url
        self.prefix = self._reserve_prefix(manager)
        self.written = 0
        self._manager = weakref.ref(manager)
        self._cond = threading.Condition(threading.Lock())
        self._in_flight: dict[str, TaskInfo] = {}  # drained, not yet committed (read by get())
        self._written_through = 0  # every change of the feed numbered up to this one is committed
        self._stopping = False
        self._closed = False
        self._failing = False
        self._process: WriterProcess | None = None  # started when batches reach process_threshold
        self._process_starts = 0
        self._feed = manager.watch(self.max_pending, self.put_timeout)
        self._writer = threading.Thread(target=self._run, name=f"journal-{self.prefix}", daemon=True)
        self._writer.start()
        manager.set_archive(self.get)
        manager.add_shutdown_callback(self.close)
        # A manager dropped without shutdown(): write what is queued, then let the thread end.
        weakref.finalize(manager, self._stop)

    @property
    def waiting(self) -> int:
        """Tasks whose latest change waits to be taken by the writer."""
        return len(self._feed)

    @property
    def failing(self) -> bool:
        """True while the database refuses the writes (they are retried with a back-off)."""
        return self._failing

    @property
    def writer_pid(self) -> int | None:
        """The writer process's id while the rows are written there (see ``process_threshold``)."""
        process = self._process
        return None if process is None else process.pid

    @property
    def dropped(self) -> int:
        """Changes dropped because the feed was full (see the module docstring)."""
        return self._feed.dropped

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

    def _run(self) -> None:
        try:
            self._record()
        finally:
            process, self._process = self._process, None
            if process is not None:
                process.close(self.close_timeout)  # it commits what it has, then exits

    def _record(self) -> None:
        feed = self._feed
        next_heartbeat = time.monotonic() + self.heartbeat_interval
        reported_drops = 0
        while True:
            if not self._stopping:
                feed.wait(max(0.0, next_heartbeat - time.monotonic()))
            stopping = self._stopping
            if self.linger and not stopping and 0 < len(feed) < self.batch_size:
                time.sleep(self.linger)  # gathers a batch; a task's quick changes coalesce
            with self._cond:  # get() never misses a task between the feed and the batch
                batch = feed.drain(self.batch_size)
                self._in_flight = {info.id: info for info in batch.snapshots}
            if batch.snapshots and not self._write(batch.snapshots):
                return  # close() gave up on a failing database
            with self._cond:
                self._in_flight = {}
                self.written += len(batch.snapshots)
                self._written_through = batch.through
                self._cond.notify_all()  # flush() waiters
            if feed.dropped != reported_drops:
                logger.error(
                    "journal %s: %d changes dropped so far (more than %d tasks waited to be written)",
                    self.prefix, feed.dropped, self.max_pending,
                )  # fmt: skip
                reported_drops = feed.dropped
            if stopping and not len(feed):
                return
            if time.monotonic() >= next_heartbeat:
                next_heartbeat = time.monotonic() + self.heartbeat_interval
                try:
                    self.store.prefixes.heartbeat(self.prefix)
                except Exception:
                    logger.warning("journal %s: heartbeat failed", self.prefix, exc_info=True)

    def _write(self, snapshots: list[TaskInfo]) -> bool:
        """Write one batch, retrying with a back-off while the database fails; False if close() gave up."""
        now = time.time()
        rows = [self._row(info, now) for info in snapshots]
        if (
            self._process is None
            and self.process_threshold is not None
            and len(rows) >= self.process_threshold
        ):
            self._start_process()
        failures = 0
        while True:
            try:
                if self._process is not None:
                    self._process.write(rows)
                    self._process_starts = 0  # it works: deaths are counted in a row
                else:
                    self.store.journal.write_rows(rows)
                self._failing = False
                return True
            except WriterGone as exc:
                self._process_lost(exc)
                if self._closed:
                    return False  # close() stopped it: the writer was stuck
                self._start_process()
                continue  # at once: the database is not known to fail
            except Exception:
                failures += 1
                self._failing = True
                logger.exception("journal %s: writing %d tasks failed (retrying)", self.prefix, len(rows))
                with self._cond:
                    if self._closed:
                        return False
                    self._cond.wait(min(5.0, 0.05 * 2**failures))

    def _start_process(self) -> None:
        if self._process_starts >= 3:
            return  # it died three times in a row: this thread writes from now on
        self._process_starts += 1
        try:
            self._process = WriterProcess(self.url)
        except (OSError, WriterGone):
            logger.warning(
                "journal %s: no writer process, writing in this process", self.prefix, exc_info=True
            )
            self._process = None
        else:
            logger.info("journal %s: writer process %d started", self.prefix, self._process.pid)

    def _process_lost(self, exc: WriterGone) -> None:
        logger.warning("journal %s: %s; the batch is written again", self.prefix, exc)
        process, self._process = self._process, None
        if process is not None:
            process.close(1.0)

    def _row(self, info: TaskInfo, now: float) -> tuple[Any, ...]:
        """The task's row, in ``JOURNAL_ROW_COLUMNS`` order."""
        limit = self.max_result_chars
        result, result_text, truncated = encode_json(info.result, limit)
        arguments, arguments_text, _ = (
            encode_json(info.arguments, limit) if info.arguments else ("{}", None, False)
        )
        if arguments_text is not None:
            arguments = json.dumps({"$repr": arguments_text}, ensure_ascii=False)
        error = info.error
        return (
            info.id,
            self.prefix,
            info.kind.value,
            cap_text(info.name, 250),
            arguments,
            arguments_text is None,
            info.status.value,
            None if error is None else cap_text(error.type, 250),
            None if error is None else cap_text(error.message, limit),
            None if error is None else cap_text(error.traceback, limit),
            result,
            result_text,
            truncated,
            info.attempts,
            info.retries,
            info.timeout,
            json.dumps(info.depends_on) if info.depends_on else "[]",
            info.progress,
            cap_text(info.progress_message, 1000),
            info.created_at,
            info.started_at,
            info.finished_at,
            now,
        )

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every change made so far is committed. False on timeout, or when the writer
        has stopped with changes left."""
        target = self._feed.sequence
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._written_through < target:
                if not self._writer.is_alive():
                    return False
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def _stop(self) -> None:
        self._stopping = True
        self._feed.close()  # wakes the writer: it writes what waits, then ends

    def close(self) -> None:
        """Write what is queued (at most ``close_timeout`` seconds), stop the writer, and mark the prefix
        closed when no task of the manager is left unfinished. Called at the manager's shutdown.
        The store stays readable: results dropped from memory can still be read afterwards."""
        if self._closed:
            return
        flushed = self.flush(self.close_timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()  # a writer in its back-off gives up
        self._stop()
        self._writer.join(self.close_timeout)
        process = self._process
        if self._writer.is_alive() and process is not None:
            process.kill()  # stuck in a write past close_timeout: the writer thread then ends
        left = len(self._feed) + len(self._in_flight)
        if not flushed or left:
            logger.error("journal %s: closed with %d tasks not written", self.prefix, left)
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
            queued = self._feed.peek(task_id)
            if queued is None:
                in_flight = self._in_flight.get(task_id)
                queued = None if in_flight is None else in_flight.snapshot()
        if queued is not None:
            return queued
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
