"""Coalesced, pull-based task changes for recorders: :meth:`TaskManager.watch`.

A listener (``add_listener``) gets a snapshot of every change, in the thread that made it: right
for reacting to a change, too dear for writing every task's state down (the journal): three
snapshots, three calls and three trips through the recorder's own lock per task, in the threads
that run the tasks. A :class:`ChangeFeed` instead marks a task as changed (a dict entry, under
the lock the manager already holds for the change) and lets the recorder take the latest state
of every changed task when it is ready (:meth:`ChangeFeed.drain`): one snapshot per task per
drain, however many times it changed meanwhile, made on the recorder's thread.

Every change a feed records gets the next number of its :attr:`~ChangeFeed.sequence`; a drained
:class:`ChangeBatch` says through which number the changes are all handed out, so a recorder
knows when "everything so far" is written (``flush``).

Bounded. A submission that finds ``max_pending`` tasks waiting waits (outside the manager's
lock, at most ``put_timeout`` seconds) until the recorder drains: back-pressure on submitters.
While the feed is that full, the change of a task that has not started yet is not kept (counted
in :attr:`~ChangeFeed.dropped`): nothing is lost, since the task's next change (it starts, or is
cancelled) carries its whole state. Other changes -- above all a task's end -- are kept past
``max_pending``, up to a hard limit of twice that, so that a recorder that fell behind still
learns how every task it knows of ended; only past the hard limit are they dropped too.
Changes of tasks already waiting never wait and are never dropped: they coalesce.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

from .tasks import TaskInfo, TaskStatus

__all__ = ["ChangeBatch", "ChangeFeed"]


class ChangeBatch(NamedTuple):
    """What :meth:`ChangeFeed.drain` hands out."""

    snapshots: list[TaskInfo]
    """The latest state of each task changed since the last drain, in the order of their first change."""
    through: int
    """Every change numbered up to this one (see :attr:`ChangeFeed.sequence`) is in this batch or an
    earlier one (or was dropped, see :attr:`ChangeFeed.dropped`)."""


class ChangeFeed:
    """The changed tasks of one manager, coalesced per task, taken by a recorder with :meth:`drain`.

    Made by :meth:`TaskManager.watch`; the manager records into it under its own lock, so a drain
    sees every change in order and a snapshot is always a state the task was in.
    """

    def __init__(
        self,
        lock: threading.Lock,
        max_pending: int,
        put_timeout: float,
        on_close: Callable[[ChangeFeed], None],
    ) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        if not put_timeout >= 0:
            raise ValueError("put_timeout must be a number of seconds >= 0")
        self.max_pending = max_pending
        self.put_timeout = put_timeout
        self.dropped = 0
        self._lock = lock  # the manager's: record() runs under it, drain() takes it
        self._pending: dict[
            str, tuple[TaskInfo, int]
        ] = {}  # task id -> (live record, its first waiting change)
        self._sequence = 0
        self._ready = threading.Event()  # set while changes wait (or once closed)
        self._room = threading.Condition(threading.Lock())
        self._waiting_for_room = 0
        self._on_close = on_close
        self.closed = False

    @property
    def sequence(self) -> int:
        """How many changes this feed has recorded so far (the number of the latest one)."""
        return self._sequence

    def __len__(self) -> int:
        """How many tasks have changes waiting."""
        return len(self._pending)

    # ------------------------------------------------------------------ the manager's side

    def record(self, info: TaskInfo) -> None:
        """Note a change of a task (the manager's lock is held; ``info`` is the live record)."""
        self._sequence = number = self._sequence + 1
        pending = self._pending
        if info.id in pending:
            return
        if len(pending) >= self.max_pending and (
            len(pending) >= 2 * self.max_pending or (info.status is TaskStatus.PENDING and not info.attempts)
        ):
            self.dropped += 1
            return
        if not pending:
            self._ready.set()
        pending[info.id] = (info, number)

    def admit(self) -> None:
        """Called before a submission (outside the manager's lock): wait for room, at most ``put_timeout``."""
        if len(self._pending) < self.max_pending or self.closed:
            return
        deadline = time.monotonic() + self.put_timeout
        with self._room:
            self._waiting_for_room += 1
            try:
                while len(self._pending) >= self.max_pending and not self.closed:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    self._room.wait(remaining)
            finally:
                self._waiting_for_room -= 1

    # ------------------------------------------------------------------ the recorder's side

    def wait(self, timeout: float | None = None) -> bool:
        """Block until changes wait (True) or ``timeout`` seconds pass (False); True at once once closed."""
        return self._ready.wait(timeout)

    def drain(self, limit: int | None = None) -> ChangeBatch:
        """Take the latest state of the tasks with waiting changes (at most ``limit``, oldest first)."""
        with self._lock:
            pending = self._pending
            if limit is None or len(pending) <= limit:
                taken = pending.values()
                self._pending = {}
                through = self._sequence
                if not self.closed:
                    self._ready.clear()
            else:
                taken = [pending.pop(task_id) for task_id in list(itertools.islice(pending, limit))]
                through = next(iter(pending.values()))[1] - 1
            snapshots = [info.snapshot() for info, _ in taken]
        if self._waiting_for_room:
            with self._room:
                self._room.notify_all()
        return ChangeBatch(snapshots, through)

    def peek(self, task_id: str) -> TaskInfo | None:
        """A snapshot of a task whose change waits in the feed, or ``None``."""
        with self._lock:
            entry = self._pending.get(task_id)
            return None if entry is None else entry[0].snapshot()

    def close(self) -> None:
        """Stop recording (what waits can still be drained); wakes :meth:`wait` and held submitters."""
        self._on_close(self)
        self.closed = True
        self._ready.set()
        with self._room:
            self._room.notify_all()
