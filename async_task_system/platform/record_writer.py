"""The platform's record writer: one thread that writes task rows, output lines and agents in batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from ..core.compat import TIMEOUT_ERRORS
from .store import Store, write_records
from .writes import BatchWriter

__all__ = ["RecordWriter"]

logger = logging.getLogger(__name__)


class RecordWriter:
    """Writes the platform's changes on its own thread, in batches, one transaction per batch.

    Producers (task and log listeners, router events; any thread) only put changes in memory:
    a new task row, column updates per task (coalesced: the latest value of each column wins), log
    lines, agent rows. The thread takes everything queued, writes it, and repeats; under load the
    batches grow by themselves. If the database fails (it is unreachable, locked, ...), the batch is
    kept and retried with a back-off (up to 5 s). If a value in it is refused (a row the database
    cannot take), the batch is written piece by piece instead: every good row lands, a task row's
    refused columns are left out and the row is marked (``error_type`` ``record_error``, ``error``
    naming the columns), and a refused output line or agent row is dropped and counted
    (:attr:`rejected`), so one bad row never loses the others. Log lines beyond ``max_pending_logs`` waiting lines are refused
    (``log`` returns False) so that a flood cannot grow memory without bound.
    """

    def __init__(
        self,
        store: Store,
        on_committed: Callable[[list[str]], None] | None = None,
        *,
        max_pending_logs: int = 100_000,
    ) -> None:
        self.store = store
        self.on_committed = on_committed
        self.max_pending_logs = max_pending_logs
        # One lock, two conditions: a change wakes the writer thread alone, a written batch wakes
        # the flush() callers alone (one condition woke every waiting POST at every change).
        lock = threading.Lock()
        self._cond = threading.Condition(lock)
        self._written_cond = threading.Condition(lock)
        self._new: dict[str, dict[str, Any]] = {}
        self._updates: dict[str, dict[str, Any]] = {}
        self._logs: list[dict[str, Any]] = []
        self._agents: dict[str, dict[str, Any]] = {}
        self._ended: list[str] = []
        self._queued = 0  # changes handed in so far
        self._written = 0  # changes written so far
        self._closing = False
        # Who waits for a new task row to be written (created_written), and the ids of the rows
        # written most recently: a waiter that comes after its row was written returns at once.
        self._row_waiters: dict[str, list[_Waiter]] = {}
        self._recent_rows: deque[str] = deque(maxlen=_RECENT_ROWS)
        self._recent_row_ids: set[str] = set()
        self._stopped = False  # the thread ended
        self._batches = BatchWriter(store)  # the writer thread's connection and statements
        self.failures = 0
        self.rejected = 0  # output lines and agent rows the database refused (dropped)
        self.marked = 0  # task rows stored without refused columns (error_type record_error)
        self._thread = threading.Thread(target=self._run, name="platform-record-writer", daemon=True)
        self._thread.start()

    # producers (any thread; never block on the database)

    def create(self, row: dict[str, Any]) -> None:
        """Insert a task row (kept as is if the task id is already stored)."""
        with self._cond:
            self._new[row["task_id"]] = row
            self._bump()

    def update(self, task_id: str, fields: Mapping[str, Any], *, ended: bool = False) -> None:
        """Set columns of a task; ``ended``: tell ``on_committed`` once this is written."""
        with self._cond:
            current = self._updates.setdefault(task_id, {})
            current.update(fields)
            if ended:
                self._ended.append(task_id)
            self._bump()

    def log(self, row: dict[str, Any]) -> bool:
        """Queue one output line; False (and nothing queued) when too many lines wait already."""
        with self._cond:
            if len(self._logs) >= self.max_pending_logs:
                return False
            self._logs.append(row)
            self._bump()
            return True

    def agent(self, row: dict[str, Any]) -> None:
        """Insert or overwrite an agent row."""
        with self._cond:
            self._agents[row["agent_id"]] = row
            self._bump()

    def _bump(self) -> None:
        self._queued += 1
        self._cond.notify()  # the writer thread: the only one waiting on this condition

    # waiting

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Block until everything handed in before this call is written; False if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            mark = self._queued
            while self._written < mark and self._thread.is_alive():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._written_cond.wait(remaining)
            return self._written >= mark

    def created_written(self, task_id: str, timeout: float | None = 10.0) -> bool:
        """Block until the new row of ``task_id`` (:meth:`create`) is written; False if ``timeout``
        passed first. The row may be handed in after this call (a listener on another thread)."""
        done = threading.Event()
        known = self._when_row_written(task_id, done)
        if known is not None:
            return known
        if done.wait(timeout):
            return not self._stopped
        self._forget_waiter(task_id, done)
        return False

    async def created_written_async(self, task_id: str, timeout: float | None = 10.0) -> bool:
        """:meth:`created_written` for a coroutine: waits on its event loop, without a thread."""
        loop = asyncio.get_running_loop()
        waiter = _LoopWaiter(loop, loop.create_future())
        known = self._when_row_written(task_id, waiter)
        if known is not None:
            return known
        try:
            await asyncio.wait_for(waiter.future, timeout)
            return not self._stopped
        except TIMEOUT_ERRORS:
            self._forget_waiter(task_id, waiter)
            return False

    def _when_row_written(self, task_id: str, waiter: _Waiter) -> bool | None:
        """True if the row is written already, False if it never will be (the thread ended); else
        None, and ``waiter`` is woken (by the writer thread) once it is written."""
        with self._cond:
            if task_id in self._recent_row_ids:
                return True
            if self._stopped:
                return False
            self._row_waiters.setdefault(task_id, []).append(waiter)
            return None

    def _forget_waiter(self, task_id: str, waiter: _Waiter) -> None:
        with self._cond:
            waiting = self._row_waiters.get(task_id)
            if waiting is not None and waiter in waiting:
                waiting.remove(waiter)
                if not waiting:
                    del self._row_waiters[task_id]

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued (at most ``timeout`` seconds), then stop the thread."""
        self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # the thread

    def _take(self) -> tuple[Any, ...]:
        batch = (self._new, self._updates, self._logs, self._agents, self._ended, self._queued)
        self._new, self._updates, self._logs, self._agents, self._ended = {}, {}, [], {}, []
        return batch

    def _put_back(self, batch: tuple[Any, ...]) -> None:
        new, updates, logs, agents, ended, _mark = batch
        self._new = {**new, **self._new}
        for task_id, fields in updates.items():
            self._updates[task_id] = {**fields, **self._updates.get(task_id, {})}
        self._logs = logs + self._logs
        self._agents = {**agents, **self._agents}
        self._ended = ended + self._ended

    def _run(self) -> None:
        try:
            self._write_batches()
        finally:
            with contextlib.suppress(Exception):
                self._batches.close()
            with self._cond:  # flush() callers see the thread gone
                self._stopped = True
                self._written_cond.notify_all()
                waiting, self._row_waiters = self._row_waiters, {}
            _wake([waiter for waiters in waiting.values() for waiter in waiters])

    def _write_batches(self) -> None:
        delay = 0.05
        while True:
            with self._cond:
                while self._written >= self._queued and not self._closing:
                    self._cond.wait()
                if self._written >= self._queued:
                    return  # closing, nothing left
                batch = self._take()
            new, updates, logs, agents, ended, mark = batch
            try:
                self._batches.write(
                    new_tasks=list(new.values()),
                    task_updates=updates,
                    log_rows=logs,
                    agent_rows=list(agents.values()),
                )
            except Exception as exc:
                isolated = False
                if not _transient(exc):
                    logger.warning("a platform record was refused (%s); writing the batch row by row", exc)
                    try:
                        self._write_isolated(new, updates, logs, agents)
                        isolated = True
                    except Exception:  # the database went away meanwhile: retry the whole batch
                        logger.warning("writing the batch row by row failed", exc_info=True)
                if isolated:
                    delay = 0.05
                    self._done(mark, ended, new)
                    continue
                self.failures += 1
                logger.exception("writing platform records failed; retrying in %.2f s", delay)
                with self._cond:
                    self._put_back(batch)
                    if self._closing:
                        return  # close() gave up waiting: nothing more can be done
                    self._cond.wait(delay)  # a back-off: close() wakes it
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.05
            self._done(mark, ended, new)

    def _done(self, mark: int, ended: list[str], new: Mapping[str, Any]) -> None:
        """A batch is written: wake ``flush()`` callers and those waiting for its new rows, tell
        ``on_committed`` which tasks ended."""
        woken: list[_Waiter] = []
        with self._cond:
            self._written = max(self._written, mark)
            self._written_cond.notify_all()
            recent, recent_ids = self._recent_rows, self._recent_row_ids
            for task_id in new:
                if len(recent) == recent.maxlen:
                    recent_ids.discard(recent[0])
                recent.append(task_id)
                recent_ids.add(task_id)
                woken += self._row_waiters.pop(task_id, ())
        _wake(woken)
        if ended and self.on_committed is not None:
            try:
                self.on_committed(ended)
            except Exception:
                logger.exception("the platform's on_committed callback failed")

    def _write_isolated(
        self,
        new: dict[str, dict[str, Any]],
        updates: dict[str, dict[str, Any]],
        logs: list[dict[str, Any]],
        agents: dict[str, dict[str, Any]],
    ) -> None:
        """Write a batch that the database refused, one row at a time (see the class docstring)."""
        store = self.store
        for row in new.values():
            if not self._try(lambda row=row: write_records(store, new_tasks=[row])):
                kept = self._columns(lambda fields: write_records(store, new_tasks=[fields]), row, "task_id")
                self._mark(row["task_id"], kept)
        for task_id, fields in updates.items():
            if not self._try(lambda t=task_id, f=fields: write_records(store, task_updates={t: f})):
                self._mark(task_id, self._columns(
                    lambda part, t=task_id: write_records(store, task_updates={t: part}), fields, None
                ))  # fmt: skip
        for row in logs:
            if not self._try(lambda row=row: write_records(store, log_rows=[row])):
                self.rejected += 1
        for row in agents.values():
            if not self._try(lambda row=row: write_records(store, agent_rows=[row])):
                self.rejected += 1

    @staticmethod
    def _try(write: Callable[[], None]) -> bool:
        try:
            write()
            return True
        except Exception as exc:
            if _transient(exc):
                raise
            return False

    def _columns(
        self, write: Callable[[dict[str, Any]], None], row: dict[str, Any], key: str | None
    ) -> list[str]:
        """Write ``row`` without the columns the database refuses; the names of those columns.

        For a new row (``key`` names its id) the refused columns are left at their defaults; for an
        update, each column is tried on its own."""
        refused: list[str] = []
        if key is not None:
            base = {k: v for k, v in row.items() if k == key or v is None or isinstance(v, (str, bool))}
            extra = [k for k in row if k not in base]
            for column in extra:  # numbers, times and JSON: find the ones that break the insert
                if not self._try(lambda c=column: write({**base, c: row[c]})):
                    refused.append(column)
            good = {k: v for k, v in row.items() if k not in refused}
            if not self._try(lambda: write(good)):
                refused = [k for k in row if k != key]
                self._try(lambda: write({key: row[key], "status": row.get("status", "pending")}))
            return refused
        for column, value in row.items():
            if not self._try(lambda c=column, v=value: write({c: v})):
                refused.append(column)
        return refused

    def _mark(self, task_id: str, refused: list[str]) -> None:
        self.marked += 1
        message = f"the platform could not store this record's column(s) {', '.join(refused) or '?'}"
        logger.warning("task %s: %s", task_id, message)
        self._try(lambda: write_records(
            self.store, task_updates={task_id: {"error": message, "error_type": "record_error"}}
        ))  # fmt: skip


_RECENT_ROWS = 8192
"""Ids of the newest rows written that the writer remembers for :meth:`RecordWriter.created_written`
(a waiter that comes this late after its row was written waits for its timeout instead)."""


class _LoopWaiter(NamedTuple):
    """A coroutine waiting for a row: its loop and the future to resolve there."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]


_Waiter = threading.Event | _LoopWaiter


def _wake(waiters: list[_Waiter]) -> None:
    """Wake threads at once and coroutines with one call into each of their loops (a batch
    written for many POSTs costs their loop one wake-up, not one per POST)."""
    futures: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for waiter in waiters:
        if isinstance(waiter, threading.Event):
            waiter.set()
        else:
            futures.setdefault(waiter.loop, []).append(waiter.future)
    for loop, waiting in futures.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_resolve, waiting)


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


def _transient(exc: BaseException) -> bool:
    """Whether a failed write may succeed as is later (the database is away, busy or locked), rather
    than a value the database refuses (too large, wrong type, a broken constraint)."""
    import sqlalchemy.exc as sa_exc

    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated or isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
            return True
        return not isinstance(exc, (sa_exc.DataError, sa_exc.IntegrityError, sa_exc.ProgrammingError))
    return isinstance(exc, (OSError, sa_exc.TimeoutError))
