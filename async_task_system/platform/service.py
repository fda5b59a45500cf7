"""Platform: seed 002's fleet platform in one object -- store, task manager, both transports, REST API.

One :class:`Platform` composes:

* a :class:`~.store.Store` (SQLite file by default, PostgreSQL by URL) holding every task record,
  every agent ever seen, and tasks' output lines;
* a ``TaskManager`` (its own, or one passed in -- e.g. an agent's, so that what the LLM sends with
  ``remote_execute`` / ``submit_task("remote", ...)`` lands in the same records as REST tasks) and
  its remote bridge;
* the WebSocket hub and the gRPC hub on one :class:`~async_task_system.remote.router.WorkerRouter`;
* the REST API (:mod:`.rest`) on uvicorn in a thread, all on 127.0.0.1 by default, behind one token
  shared by workers and REST clients.

Records follow the manager's public task events (a listener) and the bridge's output lines (a log
listener); agents follow the router's joined/left events. None of those callbacks touch the
database: they hand changes to a :class:`RecordWriter` thread that coalesces and writes them in
batches, so the hubs' event loops never wait for a disk or a network round trip.

Statuses of a record: ``pending`` (stored, not started), ``queued`` (choosing an agent, or waiting for
a retry), ``dispatched`` (the command was handed to the router for its agent), ``running`` (the agent
said its process started -- ``started_at`` is that moment -- or, from an agent that sends no start
event, its first output line arrived), then ``completed``, ``failed``, ``cancelled``, ``timed_out`` or ``lost``
(its agent went away mid-task, or the platform died with it in flight).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import string
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..core.errors import AsyncTaskSystemError, ManagerClosedError, TaskValidationError
from ..core.manager import TaskManager, get_current_task_id
from ..core.targets import Target
from ..core.tasks import TaskInfo, TaskKind, TaskStatus
from ..http_front import FrontLimits
from ..remote.bridge import REMOTE_TARGET_NAME, RemoteExecutionManager
from .store import DEFAULT_URL, TERMINAL_STATUSES, Store, cap_text, write_records

if TYPE_CHECKING:
    from ..remote.hub import RemoteHub

__all__ = [
    "Platform",
    "PlatformError",
    "NoAgentAvailable",
    "RecordWriter",
    "LogBroker",
    "SCRIPT_TARGET",
    "labels_match",
]

logger = logging.getLogger(__name__)

SCRIPT_TARGET = "platform_script"
"""The ``remote`` target REST tasks run as: picks the agent per attempt, then sends the script."""

_SCRIPT_INPUTS: dict[str, dict[str, Any]] = {
    "type": {"type": "string", "description": "'shell' or 'python'."},
    "script": {"type": "string", "description": "The script to run on the agent."},
    "timeout": {"type": "number", "description": "Seconds the script may run.", "nullable": True},
    "agent_id": {"type": "string", "description": "The agent to run on.", "nullable": True},
    "labels": {
        "type": "object",
        "description": "Run on an online agent with these labels.",
        "nullable": True,
    },
    "env": {"type": "object", "description": "Environment variables of the script.", "nullable": True},
}

_LIVE_BUFFER = 2000  # recent output lines kept in memory per live task, for SSE catch-up


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


def _iso(value: float | None) -> str | None:
    import datetime as dt

    return None if value is None else dt.datetime.fromtimestamp(value, dt.timezone.utc).isoformat()


# ---------------------------------------------------------------------------------------------- writer


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
        self._cond = threading.Condition()
        self._new: dict[str, dict[str, Any]] = {}
        self._updates: dict[str, dict[str, Any]] = {}
        self._logs: list[dict[str, Any]] = []
        self._agents: dict[str, dict[str, Any]] = {}
        self._ended: list[str] = []
        self._queued = 0  # changes handed in so far
        self._written = 0  # changes written so far
        self._closing = False
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
        self._cond.notify_all()

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
                self._cond.wait(remaining)
            return self._written >= mark

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
                write_records(
                    self.store,
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
                    with self._cond:
                        self._written = max(self._written, mark)
                        self._cond.notify_all()
                    if ended and self.on_committed is not None:
                        try:
                            self.on_committed(ended)
                        except Exception:
                            logger.exception("the platform's on_committed callback failed")
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
            with self._cond:
                self._written = max(self._written, mark)
                self._cond.notify_all()
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


def _transient(exc: BaseException) -> bool:
    """Whether a failed write may succeed as is later (the database is away, busy or locked), rather
    than a value the database refuses (too large, wrong type, a broken constraint)."""
    import sqlalchemy.exc as sa_exc

    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated or isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)):
            return True
        return not isinstance(exc, (sa_exc.DataError, sa_exc.IntegrityError, sa_exc.ProgrammingError))
    return isinstance(exc, (OSError, sa_exc.TimeoutError))


# ---------------------------------------------------------------------------------------------- live logs


class _Subscriber:
    __slots__ = ("task_id", "loop", "queue", "overflow")

    def __init__(self, task_id: str, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.task_id = task_id
        self.loop = loop
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(size)
        self.overflow = False


class LogBroker:
    """Live output lines and end-of-task notices for SSE clients, at most ``max_clients`` at once.

    ``publish`` may be called from any thread; each subscriber's queue lives on its own event loop
    and holds at most ``queue_size`` items: a client that falls behind is marked ``overflow`` and
    its stream ends (the browser reconnects with ``Last-Event-ID`` and catches up from the store).
    """

    def __init__(self, max_clients: int = 64, queue_size: int = 1000) -> None:
        self.max_clients = max_clients
        self.queue_size = queue_size
        self._lock = threading.Lock()
        self._subscribers: dict[str, set[_Subscriber]] = {}
        self._count = 0

    @property
    def clients(self) -> int:
        """Streams open now."""
        return self._count

    def subscribe(self, task_id: str) -> _Subscriber | None:
        """A subscription on the running loop, or ``None`` when ``max_clients`` streams are open."""
        subscriber = _Subscriber(task_id, asyncio.get_running_loop(), self.queue_size)
        with self._lock:
            if self._count >= self.max_clients:
                return None
            self._count += 1
            self._subscribers.setdefault(task_id, set()).add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: _Subscriber) -> None:
        with self._lock:
            group = self._subscribers.get(subscriber.task_id)
            if group is not None and subscriber in group:
                group.discard(subscriber)
                self._count -= 1
                if not group:
                    del self._subscribers[subscriber.task_id]

    def publish(self, task_id: str, kind: str, payload: Any = None) -> None:
        """Hand ``(kind, payload)`` to every subscriber of ``task_id`` (``log``, ``end`` or ``close``)."""
        with self._lock:
            group = list(self._subscribers.get(task_id, ()))
        for subscriber in group:
            try:
                subscriber.loop.call_soon_threadsafe(self._put, subscriber, kind, payload)
            except RuntimeError:  # its loop is closed: the stream is gone
                self.unsubscribe(subscriber)

    def close_all(self) -> None:
        """End every stream (the platform stops)."""
        with self._lock:
            everyone = [s for group in self._subscribers.values() for s in group]
        for subscriber in everyone:
            try:
                subscriber.loop.call_soon_threadsafe(self._put, subscriber, "close", None)
            except RuntimeError:
                pass

    @staticmethod
    def _put(subscriber: _Subscriber, kind: str, payload: Any) -> None:
        if kind != "log":  # end / close always get through: make room by dropping a line
            if subscriber.queue.full():
                subscriber.overflow = True
                subscriber.queue.get_nowait()
            subscriber.queue.put_nowait((kind, payload))
            return
        try:
            subscriber.queue.put_nowait((kind, payload))
        except asyncio.QueueFull:
            subscriber.overflow = True


# ---------------------------------------------------------------------------------------------- platform


STORE_WAIT = 2.0
"""Seconds ``POST /tasks`` waits for its record to be written (a locked database): then it answers
201 with the record it holds, and the writer stores it when the database lets it."""


@dataclass
class _Live:
    """What the platform keeps in memory about an unfinished task of its manager."""

    status: str
    source: str
    agent_id: str | None = None
    seq: int = 0
    lines: int = 0
    log_truncated: bool = False
    request_id: str | None = None
    process_started: bool = False  # the agent reported the current attempt's process start
    started_at: float | None = None  # when, by the agent's report
    recent: deque[tuple[int, dict[str, Any]]] = field(default_factory=lambda: deque(maxlen=_LIVE_BUFFER))


class Platform:
    """Seed 002's management platform: store, task manager, WebSocket + gRPC hubs, REST API.

    Args:
        db: SQLAlchemy URL of the store (a SQLite file by default, ``postgresql+psycopg://...``).
        manager: a ``TaskManager`` or an ``AsyncAgent`` whose tasks the platform records (its
            ``remote_execute`` calls land in the same records as REST tasks); a new manager by default.
        token: the one secret of workers and REST clients; generated when not given (:attr:`token`).
        host: interface of every listener; loopback unless you mean to be reached from elsewhere.
        http_port, ws_port, grpc_port: ports (0 picks a free one; read back :attr:`http_url`, ...).
        grpc: also start the gRPC hub (when ``async_task_system.remote.grpc_hub`` is available).
        serve_http: run the REST API on uvicorn in a thread; False to serve ``create_app(platform)``
            yourself.
        max_body_bytes: larger REST request bodies are refused with 413 before being read.
        http_limits: the REST front's connection limits (:class:`~..http_front.FrontLimits`: head
            timeout, connections in all and per address); the defaults when not given.
        max_requests: REST requests served at once (more get 503 with ``Retry-After``).
        max_output_chars: stdout and stderr kept per task record (then ``truncated``).
        max_log_lines: output lines kept per task for live logs (then ``log_truncated``).
        max_sse_clients: live log streams open at once (more get 503).
        sse_keepalive: seconds between ``: keepalive`` comments on an idle log stream.
        default_timeout: seconds a script may run when a REST request gives none.
        heartbeat_interval, heartbeat_timeout, max_message_bytes, register_timeout: the hubs' limits.
        start_timeout: seconds an agent that sends start events may hold a task (with a free slot)
            without starting or answering it; then the attempt fails with ``start_timeout`` (retried
            if the task has retries left). Default: ``heartbeat_timeout + 5``.
        retention: finished REST tasks the platform's own manager keeps in memory (their records stay
            in the store); a manager passed in keeps its own setting.
        stale_after: at start, unfinished records of a platform that is gone are reaped (marked
            ``lost``): one whose process no longer exists on this host, that stopped cleanly, or that
            sent no heartbeat (every ``stale_after / 4`` seconds, at most 10) for this many seconds
            (another host's). A platform still running on the same database keeps its tasks.

    ``start()`` opens everything (and reaps records a dead platform left unfinished), ``stop()``
    closes it; a ``with`` block does both.
    """

    def __init__(
        self,
        db: str = DEFAULT_URL,
        *,
        manager: Any = None,
        token: str | None = None,
        host: str = "127.0.0.1",
        http_port: int = 8080,
        ws_port: int = 8765,
        grpc_port: int = 50051,
        grpc: bool = True,
        serve_http: bool = True,
        max_body_bytes: int = 1 << 20,
        http_limits: FrontLimits | None = None,
        max_requests: int = 256,
        max_output_chars: int = 1_000_000,
        max_log_lines: int = 10_000,
        max_sse_clients: int = 64,
        sse_keepalive: float = 15.0,
        default_timeout: float = 60.0,
        heartbeat_interval: float = 5.0,
        heartbeat_timeout: float = 15.0,
        max_message_bytes: int = 1 << 20,
        register_timeout: float = 10.0,
        start_timeout: float | None = None,
        retention: int = 1000,
        stale_after: float = 60.0,
    ) -> None:
        self.db = db
        self.stale_after = stale_after
        self.heartbeat_every = min(10.0, stale_after / 4)
        self.retention = retention
        self.token = token or secrets.token_urlsafe(24)
        self.host = host
        self.http_port = http_port
        self.ws_port = ws_port
        self.grpc_port = grpc_port
        self.grpc_enabled = grpc
        self.serve_http = serve_http
        self.max_body_bytes = max_body_bytes
        self.http_limits = http_limits
        self.max_requests = max_requests
        self.max_output_chars = max_output_chars
        self.max_log_lines = max_log_lines
        self.sse_keepalive = sse_keepalive
        self.default_timeout = default_timeout
        self.hub_options = {
            "heartbeat_interval": heartbeat_interval,
            "heartbeat_timeout": heartbeat_timeout,
            "max_message_bytes": max_message_bytes,
            "register_timeout": register_timeout,
            "start_timeout": start_timeout,
        }
        self._given = manager
        self.broker = LogBroker(max_sse_clients)
        self.store: Store | None = None
        self.manager: TaskManager | None = None
        self.bridge: RemoteExecutionManager | None = None
        self.ws_hub: RemoteHub | None = None
        self.grpc_hub: Any = None
        self.writer: RecordWriter | None = None
        self.reaped: list[str] = []
        self._owns_manager = manager is None
        self._lock = threading.Lock()
        self._live: dict[str, _Live] = {}
        self._chosen: dict[str, str] = {}  # task id -> the agent its current attempt was sent to
        self._removers: list[Callable[[], None]] = []
        self._http: Any = None
        self._started = False
        self._stopped = False
        self._stopping = threading.Event()
        self._heartbeat: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def http_url(self) -> str:
        return f"http://{_host(self.host)}:{self.http_port}"

    @property
    def ws_url(self) -> str:
        return self.ws_hub.url if self.ws_hub is not None else f"ws://{_host(self.host)}:{self.ws_port}"

    @property
    def grpc_url(self) -> str | None:
        return None if self.grpc_hub is None else self.grpc_hub.url

    @property
    def router(self) -> Any:
        """The worker registry both hubs feed."""
        assert self.ws_hub is not None, "start() the platform first"
        return self.ws_hub.router

    def start(self) -> Platform:
        """Open the store (reaping what a dead platform left unfinished), the hubs and the REST API."""
        if self._started:
            raise RuntimeError("this platform was already started; create a new one")
        self._started = True
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        from ..remote.hub import RemoteHub

        self.store = store = Store(self.db)
        # Only what a platform that is gone left unfinished: another one running on this database
        # (alive: its process exists here, or it heartbeats) keeps its tasks.
        self.reaped = store.tasks.reap(
            "the platform stopped while this task was in flight (its outcome is unknown); "
            "it was marked lost when the platform started again",
            stale_after=self.stale_after,
        )
        if self.reaped:
            logger.warning(
                "marked %d task(s) left unfinished by a previous platform as lost", len(self.reaped)
            )
        store.agents.mark_all_offline("the platform restarted")
        self.writer = RecordWriter(store, self._committed)
        self.manager = self._open_manager(store)
        self._heartbeat = threading.Thread(
            target=self._beat, args=(self.manager.id_prefix,), name="platform-heartbeat", daemon=True
        )
        self._heartbeat.start()
        self.bridge = self.manager.remote_manager
        self.bridge.default_timeout = self.default_timeout
        self.manager.register_target(self._script_target())
        self._removers.append(self.manager.add_listener(self._on_task))
        self._removers.append(self.bridge.add_log_listener(self._on_log))
        self._removers.append(self.bridge.add_start_listener(self._on_start))
        self.ws_hub = RemoteHub(
            self.manager, host=self.host, port=self.ws_port, token=self.token, **self.hub_options
        )
        self._removers.append(self.ws_hub.router.add_listener(self._on_agent))
        self.ws_hub.start()
        self.ws_port = self.ws_hub.port
        if self.grpc_enabled:
            self._start_grpc()
        if self.serve_http:
            self._start_http()

    def _open_manager(self, store: Store) -> TaskManager:
        given = self._given
        if given is None:
            return TaskManager(max_workers=8, retention=self.retention, id_prefix=_reserve_prefix(store))
        manager = getattr(given, "task_manager", given)
        if not isinstance(manager, TaskManager):
            raise TypeError(f"manager must be a TaskManager or an AsyncAgent, got {type(given).__name__}")
        if getattr(given, "agent", None) is not None:
            from ..remote.tools import attach_remote  # the agent gets the remote_execute tool

            attach_remote(given, hub=False)
        row = store.prefixes.get(manager.id_prefix)
        if row is None:
            store.prefixes.reserve(manager.id_prefix)
        elif row.pid != os.getpid() or row.host != socket.gethostname():
            raise ValueError(
                f"the manager's id prefix {manager.id_prefix!r} was used by another process on this database, "
                "so its task ids could repeat stored ones: create the manager with a new id_prefix, or let "
                "the Platform create its own manager"
            )
        return manager

    def _start_grpc(self) -> None:
        try:
            from ..remote.grpc_hub import GrpcHub
        except ImportError as exc:
            logger.warning("the gRPC transport is not available (%s): serving WebSocket workers only", exc)
            return
        self.grpc_hub = GrpcHub(
            self.manager,
            router=self.router,
            host=self.host,
            port=self.grpc_port,
            token=self.token,
            **self.hub_options,
        ).start()
        self.grpc_port = int(str(self.grpc_hub.url).rsplit(":", 1)[1])

    @property
    def http_server(self) -> Any:
        """The REST API's :class:`~..http_front.HttpServer` (``stats()``: connections), or None."""
        return self._http

    def _start_http(self) -> None:
        from ..http_front import listen, start_server
        from .rest import create_app

        sock = listen(self.host, self.http_port, self.http_limits)
        self.http_port = sock.getsockname()[1]
        self._http = start_server(create_app(self), sock, limits=self.http_limits, name="platform-http")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the REST API and the hubs (tasks in flight fail ``hub_stopped``), write what is queued."""
        if self._stopped:
            return
        self._stopped = True
        self.broker.close_all()
        if self._http is not None:
            self._http.stop(timeout)
        for hub in (self.grpc_hub, self.ws_hub):
            if hub is not None:
                try:
                    hub.stop()
                except Exception:
                    logger.exception("stopping %r failed", hub)
        if self._owns_manager and self.manager is not None:
            self.manager.shutdown(wait=True, cancel_pending=True, timeout=timeout)
        for remove in self._removers:
            remove()
        self._removers.clear()
        if self.writer is not None:
            self.writer.close(timeout)
        self._stopping.set()
        if self.store is not None:
            if self._heartbeat is not None:
                self._heartbeat.join(timeout)
            if self._owns_manager and self.manager is not None:
                try:  # a clean stop: the next platform need not wait to know this one is gone
                    self.store.prefixes.close(self.manager.id_prefix)
                except Exception:
                    logger.warning("could not mark the platform's id prefix closed", exc_info=True)
            self.store.close()

    def _beat(self, prefix: str) -> None:
        """Tell other platforms on this database that this one is alive (see ``stale_after``)."""
        while not self._stopping.wait(self.heartbeat_every):
            try:
                self.store.prefixes.heartbeat(prefix)  # type: ignore[union-attr]
            except Exception:
                logger.warning("platform heartbeat failed", exc_info=True)

    def __enter__(self) -> Platform:
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def worker_command(self, name: str = "<NAME>") -> str:
        """The command line that starts a worker for this platform (the token comes from the environment)."""
        return f"ASYNC_AGENT_TOKEN=<TOKEN> async-agent worker --hub {self.ws_url} --name {name}"

    # ------------------------------------------------------------------ REST operations

    def submit_script(
        self,
        type: str,
        script: str,
        *,
        timeout: float | None = None,
        agent_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        retries: int = 0,
    ) -> dict[str, Any]:
        """Store and start a script for ``agent_id`` (or an online agent matching ``labels``); the record.

        Raises :class:`PlatformError`: 404 for an agent never seen, 409 for an agent that is offline or
        cannot run ``type``, or when no online agent matches ``labels``.
        """
        manager, store, writer = self.require()
        if agent_id is not None:
            self._check_agent(agent_id, type)
        else:
            self._candidates(labels or {}, type, raise_if_none=True)
        arguments = {
            "type": type, "script": script, "timeout": timeout if timeout is not None else self.default_timeout,
            "agent_id": agent_id, "labels": dict(labels) if labels else None, "env": dict(env) if env else None,
        }  # fmt: skip
        try:
            task_id = manager.submit(TaskKind.REMOTE, SCRIPT_TARGET, arguments, retries=retries)
        except TaskValidationError as exc:
            raise PlatformError(422, f"invalid request: {exc}") from None
        except ManagerClosedError:
            raise PlatformError(503, "the platform is shutting down") from None
        writer.flush(STORE_WAIT)  # bounded: a locked database must not hold the client (see docs)
        record = store.tasks.get(task_id)
        return record.to_dict() if record is not None else {"task_id": task_id, "status": "pending"}

    def cancel(self, task_id: str) -> dict[str, Any]:
        """Cancel a task; its record. PlatformError 404 (unknown) or 409 (already finished)."""
        manager, store, writer = self.require()
        record = store.tasks.get(task_id)
        if record is None:
            raise PlatformError(404, "task not found", {"task_id": task_id})
        with self._lock:
            live = task_id in self._live
        if not live or not manager.cancel(task_id):
            writer.flush()
            record = store.tasks.get(task_id)
            status = record.status if record is not None else "unknown"
            raise PlatformError(409, "task already finished", {"task_id": task_id, "status": status})
        writer.flush()
        record = store.tasks.get(task_id)
        return record.to_dict() if record is not None else {"task_id": task_id}

    def agents(self) -> list[dict[str, Any]]:
        """Connected agents (from the router) then offline ones (from the store)."""
        _manager, store, _writer = self.require()
        out = []
        connected = set()
        for info in self.router.workers():
            connected.add(info["name"])
            out.append(
                {
                    "agent_id": info["name"],
                    "state": "online",
                    "labels": info.get("labels", {}),
                    "capabilities": info.get("capabilities", []),
                    "capacity": info.get("max_concurrent"),
                    "running": info.get("running", 0),
                    "in_flight": info.get("in_flight", 0),
                    "version": info.get("version"),
                    "transport": info.get("transport", "ws"),
                    "connected_at": _iso(info.get("connected_at")),
                    "last_seen": _iso(info.get("last_seen")),
                }  # fmt: skip
            )
        for row in store.agents.list():
            if row.agent_id in connected:
                continue
            out.append(
                {
                    "agent_id": row.agent_id,
                    "state": "offline",
                    "labels": row.labels,
                    "capabilities": row.capabilities,
                    "capacity": row.capacity,
                    "running": 0,
                    "in_flight": 0,
                    "version": row.version,
                    "transport": row.transport,
                    "connected_at": row.connected_at.isoformat() if row.connected_at else None,
                    "last_seen": row.last_seen.isoformat(),
                    "disconnected_at": row.disconnected_at.isoformat() if row.disconnected_at else None,
                    "last_reason": row.last_reason,
                }  # fmt: skip
            )
        return out

    def timeline_overrides(self, tasks: list[TaskInfo]) -> dict[str, dict[str, Any]]:
        """What ``/timeline`` shows of recorded tasks instead of the manager's view: the record's
        status (``running`` for a started platform task, not ``waiting_remote``), ``agent: first
        line of the script`` as the label, and the process's start as the bar's start."""
        _manager, store, _writer = self.require()
        recorded = [info for info in tasks if _recorded(info)]
        out: dict[str, dict[str, Any]] = {}
        for row in store.tasks.many(info.id for info in recorded):
            first = next((line.strip() for line in (row.script or "").splitlines() if line.strip()), "")
            out[row.task_id] = {
                "status": row.status,
                "label": f"{row.agent_id or '(any agent)'}: {first}",
                "started_at": row.started_at.timestamp() if row.started_at is not None else None,
            }
        with self._lock:  # live tasks: what the platform knows now (the store may be a batch behind)
            for info in recorded:
                live = self._live.get(info.id)
                if live is None:
                    continue
                entry = out.setdefault(info.id, {"label": f"{live.agent_id or '(any agent)'}: "})
                entry["status"] = live.status
                if live.process_started:
                    entry["started_at"] = live.started_at
                elif live.status in ("pending", "queued", "dispatched"):
                    entry["started_at"] = None  # not started yet: no bar
        return out

    def recent_lines(self, task_id: str, after: int) -> tuple[list[tuple[int, dict[str, Any]]], bool]:
        """Output lines of a live task still in memory numbered above ``after``, and whether it is live."""
        with self._lock:
            live = self._live.get(task_id)
            if live is None:
                return [], False
            return [(seq, payload) for seq, payload in live.recent if seq > after], True

    def require(self) -> tuple[TaskManager, Store, RecordWriter]:
        """The manager, store and writer of a running platform; PlatformError 503 otherwise."""
        if self.manager is None or self.store is None or self.writer is None or self._stopped:
            raise PlatformError(503, "the platform is not running")
        return self.manager, self.store, self.writer

    def _check_agent(self, agent_id: str, language: str) -> None:
        for info in self.router.workers():
            if info["name"] == agent_id:
                if language not in info.get("capabilities", [language]):
                    raise PlatformError(
                        409, f"agent cannot run {language} scripts",
                        {"agent_id": agent_id, "capabilities": info.get("capabilities")},
                    )  # fmt: skip
                return
        assert self.store is not None
        row = self.store.agents.get(agent_id)
        if row is None:
            raise PlatformError(404, "agent not found", {"agent_id": agent_id})
        raise PlatformError(
            409, "agent offline",
            {"agent_id": agent_id, "last_seen": row.last_seen.isoformat(), "last_reason": row.last_reason},
        )  # fmt: skip

    def _candidates(
        self, selector: Mapping[str, str], language: str, raise_if_none: bool
    ) -> list[dict[str, Any]]:
        found = [
            info
            for info in self.router.workers()
            if labels_match(info.get("labels", {}), selector)
            and language in info.get("capabilities", [language])
        ]
        if not found and raise_if_none:
            raise PlatformError(
                409, "no online agent matches the labels", {"labels": dict(selector), "type": language}
            )
        return found

    # ------------------------------------------------------------------ the REST tasks' target

    def _script_target(self) -> Target:
        def run(arguments: dict[str, Any]) -> None:
            task_id = get_current_task_id()
            if task_id is None:
                raise RuntimeError("platform_script runs only as a task")
            language = arguments["type"]
            agent = arguments.get("agent_id")
            if agent is None:
                found = self._candidates(arguments.get("labels") or {}, language, raise_if_none=False)
                if not found:
                    raise NoAgentAvailable(
                        f"no online agent matches the labels {arguments.get('labels') or {}} for a {language} script"
                    )
                agent = min(
                    found, key=lambda w: (w["in_flight"] / max(1, w["max_concurrent"]), w["assigned"])
                )["name"]
            with self._lock:  # the listener may not have seen this task yet: keep the choice apart
                self._chosen[task_id] = agent
            assert self.bridge is not None
            self.bridge.suspend(
                task_id, arguments["script"], arguments.get("timeout"), language=language, worker=agent,
                env=arguments.get("env"),
            )  # fmt: skip

        return Target(
            kind=TaskKind.REMOTE,
            name=SCRIPT_TARGET,
            description="Runs a REST task's script on the agent it names, or on an online agent matching its "
            "labels (chosen per attempt); the result is a dict with exit_code, stdout and stderr.",
            inputs=dict(_SCRIPT_INPUTS),
            call=run,
            runs_inline=True,
        )

    # ------------------------------------------------------------------ listeners (any thread)

    def _on_task(self, info: TaskInfo) -> None:
        if not _recorded(info):
            return
        writer = self.writer
        if writer is None:
            return
        status = info.status
        with self._lock:
            live = self._live.get(info.id)
            if live is None:
                live = self._new_record(info, writer)
            fields: dict[str, Any] = {"updated_at": time.time(), "attempt": max(1, info.attempts)}
            ended = status.is_terminal
            if status is TaskStatus.PENDING:
                if info.attempts:  # a failed attempt waits for its retry
                    live.status = "queued"
                    live.process_started = False
                    live.started_at = None
                    fields.update(status="queued", **_error_fields(info))
            elif status is TaskStatus.RUNNING:
                if live.status in ("pending", "queued"):
                    first = live.status == "pending"
                    live.status = "queued"
                    fields.update(status="queued")
                    if first and not live.process_started:
                        fields.update(queued_at=time.time(), started_at=info.started_at)
                    elif first:
                        fields.update(queued_at=time.time())
            elif status is TaskStatus.WAITING_REMOTE:
                live.agent_id = self._chosen.get(info.id, live.agent_id)
                fields.update(dispatched_at=time.time(), agent_id=live.agent_id)
                if live.status in ("pending", "queued"):  # not "running": its output may have come first
                    live.status = "dispatched"
                    fields["status"] = "dispatched"
            else:
                live.agent_id = self._chosen.pop(info.id, live.agent_id)
                fields.update(self._final_fields(info, live))
                self._live.pop(info.id, None)
            if status is not TaskStatus.PENDING or info.attempts:
                writer.update(info.id, fields, ended=ended)
        if ended and info.name == SCRIPT_TARGET:
            # A REST task's outcome lives in the store: reading it here lets the manager drop it from
            # memory past its retention (a task nobody read is kept forever). The LLM reads its own.
            self._check(info.id)

    def _new_record(self, info: TaskInfo, writer: RecordWriter) -> _Live:
        """Start tracking a task and queue its row (lock held)."""
        arguments = info.arguments
        if info.name == SCRIPT_TARGET:
            source, language, script = "rest", arguments.get("type", "shell"), arguments.get("script", "")
            agent, selector = arguments.get("agent_id"), arguments.get("labels") or {}
        else:
            source, language, script = (
                "llm",
                arguments.get("language") or "shell",
                arguments.get("command", ""),
            )
            agent, selector = arguments.get("worker"), arguments.get("labels") or {}
        live = _Live(status="pending", source=source, agent_id=agent)
        self._live[info.id] = live
        writer.create(
            {
                "task_id": info.id,
                "agent_id": agent,
                "type": language if language in ("shell", "python") else "shell",
                "script": cap_text(script),
                "timeout": arguments.get("timeout"),
                "status": "pending",
                "exit_code": None,
                "stdout": "",
                "stderr": "",
                "truncated": False,
                "error": None,
                "attempt": 1,
                "cancelled": False,
                "timed_out": False,
                "lost": False,
                "labels": dict(selector),
                "created_at": info.created_at,
                "updated_at": time.time(),
                "queued_at": None,
                "dispatched_at": None,
                "started_at": None,
                "completed_at": None,
                "source": source,
                "error_type": None,
                "retries": info.retries,
                "request_id": None,
                "log_truncated": False,
            }  # fmt: skip
        )
        return live

    def _final_fields(self, info: TaskInfo, live: _Live) -> dict[str, Any]:
        """The record's columns for a finished task (lock held)."""
        assert self.bridge is not None
        request_id = self.bridge.request_for_task(info.id)
        outcome = self.bridge.outcome(request_id) if request_id else None
        result = outcome.result if outcome is not None else info.result
        result = result if isinstance(result, dict) else {}
        error_type = info.error.type if info.error is not None else None
        if info.status is TaskStatus.COMPLETED:
            status = "completed"
        elif info.status is TaskStatus.CANCELLED or error_type == "cancelled":
            status = "cancelled"
        elif error_type == "worker_lost":
            status = "lost"
        elif error_type == "timeout" or result.get("timed_out"):
            status = "timed_out"
        else:
            status = "failed"
        fields: dict[str, Any] = {
            "status": status,
            "completed_at": info.finished_at or time.time(),
            "cancelled": status == "cancelled",
            "timed_out": status == "timed_out",
            "lost": status == "lost",
            # the agent it was sent to (from its connection), never what the answer claims
            # (the answer's own "worker" only when no transport sent it: a caller delivering itself)
            "agent_id": (outcome.worker if outcome is not None else None) or live.agent_id or _named(result),
            "request_id": request_id,
            **_error_fields(info),
        }
        if "exit_code" in result:
            fields["exit_code"] = result.get("exit_code")
        truncated = bool(result.get("truncated"))
        for stream in ("stdout", "stderr"):
            text = result.get(stream)
            if isinstance(text, str):
                if len(text) > self.max_output_chars:
                    text, truncated = text[: self.max_output_chars], True
                fields[stream] = cap_text(text)
        fields["truncated"] = truncated
        return fields

    def _live_for(self, task_id: str, writer: RecordWriter) -> _Live | None:
        """The live entry of an unfinished recorded task, started from the manager if the task's
        events have not reached this listener yet (lock held); None for a task not to record."""
        live = self._live.get(task_id)
        if live is None:
            # Task events reach listeners in order but possibly later than output lines and starts
            # reach these (another thread may be delivering): start the record from the manager.
            info = self._check(task_id)
            if info is None or not _recorded(info) or info.status.is_terminal:
                return None
            live = self._new_record(info, writer)
        return live

    def _on_start(self, task_id: str | None, request_id: str, started_at: float) -> None:
        """The agent spawned the process of the task's current attempt: ``running`` from that moment."""
        writer = self.writer
        if task_id is None or writer is None:
            return
        with self._lock:
            live = self._live_for(task_id, writer)
            if live is None:
                return
            live.process_started = True
            live.started_at = started_at
            live.request_id = request_id
            fields: dict[str, Any] = {
                "started_at": started_at,
                "request_id": request_id,
                "updated_at": time.time(),
            }
            changed = live.status in ("pending", "queued", "dispatched")
            if changed:
                live.status = "running"
                fields["status"] = "running"
            writer.update(task_id, fields)
        self.broker.publish(task_id, "status", {"status": "running", "started_at": _iso(started_at)})

    def _on_log(self, task_id: str | None, request_id: str, stream: str, line: str) -> None:
        writer = self.writer
        if task_id is None or writer is None:
            return
        now = time.time()
        became_running = False
        with self._lock:
            live = self._live_for(task_id, writer)
            if live is None:
                return
            fields: dict[str, Any] = {}
            if live.status in ("pending", "queued", "dispatched"):  # an agent that sends no start event
                live.status = "running"
                fields.update(status="running", updated_at=now)
                became_running = True
            if live.request_id != request_id:
                live.request_id = request_id
                fields["request_id"] = request_id
            if live.lines >= self.max_log_lines:
                if not live.log_truncated:
                    live.log_truncated = True
                    fields["log_truncated"] = True
                line = None  # type: ignore[assignment]
            if line is not None:
                live.seq += 1
                live.lines += 1
                seq = live.seq
                text = cap_text(line, 64 * 1024) or ""
                if not writer.log(
                    {"task_id": task_id, "seq": seq, "stream": stream, "line": text, "ts": now}
                ):
                    live.log_truncated = True
                    fields["log_truncated"] = True
                    line = None  # type: ignore[assignment]
                else:
                    payload = {"stream": stream, "line": text, "timestamp": now}
                    live.recent.append((seq, payload))
            if fields:
                writer.update(task_id, fields)
        if became_running:
            self.broker.publish(task_id, "status", {"status": "running", "started_at": None})
        if line is not None:
            self.broker.publish(task_id, "log", (seq, payload))

    def _check(self, task_id: str) -> TaskInfo | None:
        try:
            return self.manager.check(task_id) if self.manager is not None else None
        except Exception:  # unknown or dropped: not a task to record
            return None

    def _on_agent(self, event: str, info: dict[str, Any]) -> None:
        writer = self.writer
        if writer is None:
            return
        now = time.time()
        online = event == "joined"
        writer.agent(
            {
                "agent_id": info["name"],
                "labels": info.get("labels", {}),
                "capabilities": info.get("capabilities", []),
                "capacity": info.get("max_concurrent", 1),
                "version": info.get("version"),
                "transport": info.get("transport", "ws"),
                "state": "online" if online else "offline",
                "first_seen": now,
                "last_seen": info.get("last_seen", now),
                "connected_at": info.get("connected_at", now),
                "disconnected_at": None if online else now,
                "last_reason": None if online else info.get("reason"),
            }  # fmt: skip
        )

    def _committed(self, task_ids: list[str]) -> None:
        for task_id in task_ids:
            self.broker.publish(task_id, "end")

    def __repr__(self) -> str:
        return f"<Platform {self.http_url} ws={self.ws_url} grpc={self.grpc_url}>"


def _recorded(info: TaskInfo) -> bool:
    """Whether the platform keeps a record of this task: REST scripts and ``remote_execute`` commands."""
    return info.kind is TaskKind.REMOTE and info.name in (SCRIPT_TARGET, REMOTE_TARGET_NAME)


def _named(result: Mapping[str, Any]) -> str | None:
    worker = result.get("worker")
    return worker[:128] if isinstance(worker, str) and worker else None


def _error_fields(info: TaskInfo) -> dict[str, Any]:
    error = info.error
    if error is None:
        return {"error": None, "error_type": None}
    kind = "no_agent" if error.type == NoAgentAvailable.__name__ else error.type
    return {"error": cap_text(error.message, 4000), "error_type": kind[:64]}


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _reserve_prefix(store: Store) -> str:
    """A task-id prefix no manager ever used on this store, reserved for this process."""
    letters = string.ascii_lowercase + string.digits
    for _ in range(100):
        prefix = "task_" + "".join(secrets.choice(letters) for _ in range(8)) + "_"
        if store.prefixes.reserve(prefix):
            return prefix
    raise RuntimeError("could not reserve a task-id prefix on the store")  # pragma: no cover


def is_terminal(status: str) -> bool:
    """Whether a record's status is final."""
    return status in TERMINAL_STATUSES
