"""The one store of the platform: SQLAlchemy 2 models, Alembic-migrated schema, small repositories.

Embedded SQLite by default (a file: WAL, a busy timeout, ``BEGIN IMMEDIATE`` so that writers queue
instead of failing), PostgreSQL by URL (``postgresql+psycopg://user@host/db``, psycopg 3). Opening
a :class:`Store` brings the schema to the newest Alembic revision shipped in ``migrations/``
(programmatic configuration: no ``alembic.ini`` is needed), under a lock so that several processes
opening one database at once migrate it once.

Five tables:

* ``tasks`` -- seed 002's task record (a shell or Python script sent to a fleet agent) plus what
  operators need: attempt, queued/dispatched times, cancelled / timed_out / lost flags, a truncated
  flag for capped output, labels. :class:`PlatformTasks` reads and writes it.
* ``journal_tasks`` -- the latest state of every task of every TaskManager with a journal
  (:mod:`.journal`); :class:`JournalRecords`. Status ``interrupted`` exists only here: a task whose
  manager died while it was in flight.
* ``agents`` -- every fleet agent (worker daemon) the platform has seen: labels, capacity, version,
  transport, online/offline and when (:class:`PlatformAgents`).
* ``log_events`` -- tasks' output lines numbered per task, for live logs that resume after a
  reconnect (:class:`LogEvents`).
* ``id_prefixes`` -- one row per manager's id prefix (``task_k3m9_``), unique, so task ids never
  collide across managers or restarts; the row's host, pid, heartbeat and close time tell a dead
  manager from a live one (:class:`IdPrefixes`).

The repositories return detached ORM objects (read their attributes freely) and take plain values;
they hold no I/O other than the database, so a REST or gRPC front end can use them directly.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

__all__ = [
    "DEFAULT_URL",
    "MIGRATIONS",
    "INTERRUPTED",
    "LIVE_STATUSES",
    "PLATFORM_STATUSES",
    "Base",
    "PlatformTask",
    "PlatformAgent",
    "LogEvent",
    "JournalTask",
    "IdPrefix",
    "Store",
    "PlatformTasks",
    "PlatformAgents",
    "LogEvents",
    "JournalRecords",
    "JOURNAL_ROW_COLUMNS",
    "CompiledUpsert",
    "IdPrefixes",
    "cap_text",
    "utcnow",
    "write_records",
    "TERMINAL_STATUSES",
]

DEFAULT_URL = "sqlite:///async_task_system.db"
MIGRATIONS = Path(__file__).with_name("migrations")

#: The journal's extra status (the core's TaskStatus has no such value): in flight when its manager died.
INTERRUPTED = "interrupted"
#: Journal statuses of a task that has not finished (the core's non-terminal TaskStatus values).
LIVE_STATUSES = ("pending", "running", "waiting_remote")
#: Statuses of a seed 002 platform task.
PLATFORM_STATUSES = (
    "pending", "queued", "dispatched", "running", "completed", "failed", "cancelled", "timed_out", "lost",
)  # fmt: skip

#: Statuses a platform task ends in.
TERMINAL_STATUSES = ("completed", "failed", "cancelled", "timed_out", "lost")

_UTC = dt.timezone.utc
_NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC (what every time column holds)."""
    return dt.datetime.now(_UTC)


def cap_text(value: Any, limit: int | None = None) -> str | None:
    """``value`` as text a database accepts: NUL characters (refused by PostgreSQL) replaced, and
    cut to ``limit`` characters with a visible marker. ``None`` stays ``None``."""
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    if limit is not None and len(text) > limit:
        text = text[:limit] + f"... [truncated, {len(text)} chars]"
    return text


class UTCDateTime(sa.types.TypeDecorator):
    """A timezone-aware UTC datetime on every database (SQLite stores naive UTC text).

    Accepts datetimes (naive ones are taken as UTC) and POSIX timestamps (the core's ``time.time()``
    floats); always returns aware UTC datetimes.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if isinstance(value, (int, float)):
            value = dt.datetime.fromtimestamp(value, _UTC)
        elif value.tzinfo is None:
            value = value.replace(tzinfo=_UTC)
        if dialect.name == "sqlite":
            return value.astimezone(_UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=_UTC) if value.tzinfo is None else value.astimezone(_UTC)


class Base(DeclarativeBase):
    """The declarative base of the platform's models (constraint names fixed by a naming convention)."""

    metadata = sa.MetaData(naming_convention=_NAMING)


class PlatformTask(Base):
    """Seed 002's task: a script of ``type`` shell or python sent to agent ``agent_id``, and its outcome."""

    __tablename__ = "tasks"
    __table_args__ = (
        sa.CheckConstraint("type IN ('shell', 'python')", name="type"),
        sa.Index(None, "agent_id", "created_at"),
    )

    task_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    agent_id: Mapped[str | None] = mapped_column(sa.String(128))  # None until a label selector picks one
    type: Mapped[str] = mapped_column(sa.String(16))
    script: Mapped[str] = mapped_column(sa.Text)
    timeout: Mapped[float | None] = mapped_column(sa.Float)  # seconds
    status: Mapped[str] = mapped_column(sa.String(16), index=True, default="pending")
    exit_code: Mapped[int | None] = mapped_column(sa.Integer)
    stdout: Mapped[str] = mapped_column(sa.Text, default="")
    stderr: Mapped[str] = mapped_column(sa.Text, default="")
    truncated: Mapped[bool] = mapped_column(sa.Boolean, default=False)  # stdout/stderr were capped
    error: Mapped[str | None] = mapped_column(sa.Text)  # why it failed, in words (lost, refused, ...)
    attempt: Mapped[int] = mapped_column(sa.Integer, default=1)
    cancelled: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    timed_out: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    lost: Mapped[bool] = mapped_column(sa.Boolean, default=False)  # its agent stopped answering
    labels: Mapped[dict[str, Any]] = mapped_column(
        sa.JSON, default=dict
    )  # the label selector it was sent with
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    queued_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    dispatched_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # revision 0002
    source: Mapped[str] = mapped_column(sa.String(16), default="rest", server_default="rest")  # rest | llm
    error_type: Mapped[str | None] = mapped_column(sa.String(64))  # worker_lost, timeout, interrupted, ...
    retries: Mapped[int] = mapped_column(
        sa.Integer, default=0, server_default="0"
    )  # attempts allowed after the first
    request_id: Mapped[str | None] = mapped_column(sa.String(64))  # the remote request of the latest attempt
    log_truncated: Mapped[bool] = mapped_column(sa.Boolean, default=False, server_default=sa.false())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly view (times as ISO 8601 strings), the shape seed 002's REST API returns."""
        return _row_dict(self)


class PlatformAgent(Base):
    """A fleet agent (a worker daemon) the platform has seen, and whether it is connected now."""

    __tablename__ = "agents"

    agent_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    labels: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    capabilities: Mapped[list[str]] = mapped_column(sa.JSON, default=list)  # shell, python
    capacity: Mapped[int] = mapped_column(sa.Integer, default=1)  # scripts it runs at once
    version: Mapped[str | None] = mapped_column(sa.String(64))
    transport: Mapped[str | None] = mapped_column(sa.String(8))  # ws | grpc
    state: Mapped[str] = mapped_column(sa.String(16), index=True)  # online | offline
    first_seen: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    connected_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    disconnected_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_reason: Mapped[str | None] = mapped_column(sa.Text)  # why it last disconnected

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly view (times as ISO 8601 strings)."""
        return _row_dict(self)


class LogEvent(Base):
    """One output line of a platform task, numbered per task from 1 (the SSE event id)."""

    __tablename__ = "log_events"

    task_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    stream: Mapped[str] = mapped_column(sa.String(8))  # stdout | stderr
    line: Mapped[str] = mapped_column(sa.Text)
    ts: Mapped[float] = mapped_column(sa.Float)  # POSIX seconds


def _row_dict(row: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for column in row.__table__.columns:
        value = getattr(row, column.key)
        out[column.key] = value.isoformat() if isinstance(value, dt.datetime) else value
    return out


class JournalTask(Base):
    """The latest recorded state of one task of a TaskManager with a journal."""

    __tablename__ = "journal_tasks"
    __table_args__ = (sa.Index(None, "prefix", "status"),)

    task_id: Mapped[str] = mapped_column(sa.String(128), primary_key=True)
    prefix: Mapped[str] = mapped_column(sa.String(64))  # the id prefix of the manager that ran it
    kind: Mapped[str] = mapped_column(sa.String(64))
    name: Mapped[str] = mapped_column(sa.String(256))
    arguments: Mapped[Any] = mapped_column(sa.JSON)
    arguments_complete: Mapped[bool] = mapped_column(sa.Boolean, default=True)  # False: a readable stand-in
    status: Mapped[str] = mapped_column(sa.String(32), index=True)
    error_type: Mapped[str | None] = mapped_column(sa.String(256))
    error_message: Mapped[str | None] = mapped_column(sa.Text)
    error_traceback: Mapped[str | None] = mapped_column(sa.Text)
    result: Mapped[Any | None] = mapped_column(sa.JSON)  # the result when it is JSON within the size cap
    result_text: Mapped[str | None] = mapped_column(sa.Text)  # else its repr (or JSON text), truncated
    result_truncated: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    retries: Mapped[int] = mapped_column(sa.Integer, default=0)
    timeout: Mapped[float | None] = mapped_column(sa.Float)
    depends_on: Mapped[list[str]] = mapped_column(sa.JSON, default=list)
    progress: Mapped[float | None] = mapped_column(sa.Float)
    progress_message: Mapped[str | None] = mapped_column(sa.Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    resubmitted_as: Mapped[str | None] = mapped_column(sa.String(128))  # set by recovery


class IdPrefix(Base):
    """A reserved task-id prefix and the manager process that holds it."""

    __tablename__ = "id_prefixes"

    prefix: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    host: Mapped[str] = mapped_column(sa.String(255))
    pid: Mapped[int] = mapped_column(sa.Integer)
    reserved_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)  # a clean shutdown, or recovered


# ---------------------------------------------------------------------------------------------- engine


def _make_engine(
    url: sa.URL, schema: str | None, busy_timeout: float, echo: bool, *, immediate: bool = True
) -> Engine:
    if url.get_backend_name() == "sqlite":
        database = url.database
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, echo=echo, connect_args={"timeout": busy_timeout})
        milliseconds = int(busy_timeout * 1000)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            # The driver's own transaction handling off: we emit BEGIN ourselves (below).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout={milliseconds}")
            _enable_wal(cursor, busy_timeout)  # readers never block the writer, nor it them
            cursor.execute("PRAGMA synchronous=NORMAL")  # WAL: durable across a process crash
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection: Connection) -> None:
            # IMMEDIATE: take the write lock at BEGIN, so a transaction that reads then writes waits
            # (busy_timeout) instead of failing with "database is locked" when another writer is in.
            # The read engine's transactions are deferred: in WAL a reader never waits for the writer.
            connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    connect_args: dict[str, Any] = {}
    if schema is not None:
        connect_args["options"] = f"-csearch_path={schema}"
    return sa.create_engine(url, echo=echo, connect_args=connect_args, pool_pre_ping=True)


def _enable_wal(cursor: Any, busy_timeout: float) -> None:
    """``PRAGMA journal_mode=WAL``, retried: switching a new database's mode needs its exclusive lock,
    and SQLite answers "database is locked" at once (no busy wait) while another connection holds it."""
    deadline = time.monotonic() + busy_timeout
    delay = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)  # a bounded back-off on a lock, not a polling loop on a state
            delay = min(delay * 2, 0.1)


def _quote(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"schema names are letters, digits and underscores, got {name!r}")
    return f'"{name}"'


class Store:
    """An open database with the platform's schema at the newest revision.

    Args:
        url: a SQLAlchemy URL: ``sqlite:///path/to/file.db`` (the default, ``DEFAULT_URL``) or
            ``postgresql+psycopg://user:password@host:5432/database``.
        schema: PostgreSQL only: keep every table in this schema (created if missing), e.g. one
            per test or per tenant. Equivalent to ``?options=-csearch_path%3D<schema>`` in the URL.
        upgrade: bring the schema to the newest revision on open (the default); False to leave
            it (``upgrade()`` later, or manage it with Alembic yourself).
        busy_timeout: seconds a SQLite writer waits for another one before failing.

    ``store.tasks``, ``store.agents``, ``store.logs``, ``store.journal`` and ``store.prefixes`` are the
    repositories; ``store.session()`` a SQLAlchemy session for anything else. ``close()`` disposes of the connection pool.
    """

    def __init__(
        self,
        url: str | sa.URL = DEFAULT_URL,
        *,
        schema: str | None = None,
        upgrade: bool = True,
        busy_timeout: float = 30.0,
        echo: bool = False,
    ) -> None:
        self.url = sa.make_url(url)
        self.schema = schema
        self.dialect = self.url.get_backend_name()
        if schema is not None and self.dialect != "postgresql":
            raise ValueError("schema= is for PostgreSQL; a SQLite store is one file")
        self.engine = _make_engine(self.url, schema, busy_timeout, echo)
        self.reader = self.engine
        """The engine of reads: for a SQLite file, one whose transactions never take the write lock, so
        reads go on while another process holds it (WAL); otherwise :attr:`engine` itself."""
        database = str(self.url.database or "")
        if self.dialect == "sqlite" and database not in ("", ":memory:") and not database.startswith("file:"):
            self.reader = _make_engine(self.url, schema, busy_timeout, echo, immediate=False)
        self.sessions = sessionmaker(self.reader, expire_on_commit=False)
        """Read sessions (see :attr:`reader`); :meth:`session` is the one to write in."""
        self._write_sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.tasks = PlatformTasks(self)
        self.agents = PlatformAgents(self)
        self.logs = LogEvents(self)
        self.journal = JournalRecords(self)
        self.prefixes = IdPrefixes(self)
        if upgrade:
            self.upgrade()

    def alembic_config(self, connection: Connection | None = None) -> Any:
        """An Alembic ``Config`` for this store's migrations (no ini file); ``connection`` is used as is."""
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        url = self.url.render_as_string(hide_password=False)
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # configparser interpolation
        config.attributes["connection"] = connection
        return config

    def upgrade(self, revision: str = "head") -> None:
        """Migrate the schema to ``revision``, once even when several processes open the database at once.

        PostgreSQL: a transaction-scoped advisory lock; SQLite: ``BEGIN IMMEDIATE`` (the write lock).
        """
        from alembic import command

        with self.engine.begin() as connection:
            if self.dialect == "postgresql":
                connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7419001)")
                if self.schema is not None:
                    connection.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {_quote(self.schema)}")
            command.upgrade(self.alembic_config(connection), revision)

    def current_revision(self) -> str | None:
        """The Alembic revision the database is at (``None`` for an empty one)."""
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    @contextmanager
    def session(self) -> Any:
        """A session in a transaction: committed when the block ends, rolled back on an exception."""
        with self._write_sessions.begin() as session:
            yield session

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
        if self.reader is not self.engine:
            self.reader.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Store {self.url.render_as_string(hide_password=True)}>"


def _upsert_statement(dialect_name: str, table: sa.Table, columns: Iterable[str], keep: Iterable[str]) -> Any:
    """INSERT ... ON CONFLICT (primary key) DO UPDATE of ``columns`` but the key and ``keep``
    (PostgreSQL and SQLite); ``None`` for another database."""
    if dialect_name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect_name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        return None
    statement = insert(table)
    skip = {c.name for c in table.primary_key.columns} | set(keep)
    return statement.on_conflict_do_update(
        index_elements=list(table.primary_key.columns),
        set_={name: statement.excluded[name] for name in columns if name not in skip},
    )


def _upsert(
    connection: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]], keep: Iterable[str]
) -> None:
    """Insert ``rows`` or overwrite the existing ones with the same primary key (one statement, executemany).

    Columns in ``keep`` are written on insert only. ``rows`` must not repeat a key (PostgreSQL
    refuses to update one row twice in a statement).
    """
    statement = _upsert_statement(connection.dialect.name, table, rows[0].keys(), keep)
    if statement is None:  # pragma: no cover - other databases: slower, portable
        key = [c.name for c in table.primary_key.columns]
        for row in rows:
            updated = connection.execute(
                table.update().where(*(table.c[k] == row[k] for k in key)).values(**row)
            ).rowcount
            if not updated:
                connection.execute(table.insert().values(**row))
        return
    connection.execute(statement, list(rows))


_EPOCH = dt.datetime(1970, 1, 1)


def _sqlite_time(value: Any) -> str | None:
    """What SQLAlchemy's SQLite DATETIME stores for :class:`UTCDateTime`: naive UTC text."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        value = _EPOCH + dt.timedelta(seconds=value)  # faster than fromtimestamp, same microseconds
    elif value.tzinfo is not None:
        value = value.astimezone(_UTC).replace(tzinfo=None)
    return value.isoformat(" ", "microseconds")


def _postgres_time(value: Any) -> dt.datetime | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return dt.datetime.fromtimestamp(value, _UTC)
    return value if value.tzinfo is not None else value.replace(tzinfo=_UTC)


class CompiledUpsert:
    """One insert-or-update statement of a table, compiled once for positional values.

    ``sql`` takes one tuple per row with the values of ``columns`` in that order, as the driver
    binds them; :meth:`convert` turns rows whose times are POSIX seconds into those tuples, as the
    table's SQLAlchemy types would (times as :class:`UTCDateTime` binds them; JSON columns are
    passed as JSON text already). SQLAlchemy's own per-value bind processing cost 30 us of the 40 us
    a journal row took.
    """

    def __init__(
        self, dialect: sa.Dialect, table: sa.Table, columns: Sequence[str], keep: Iterable[str]
    ) -> None:
        # A positional paramstyle of the same driver (psycopg's default is named).
        positional = type(dialect)(paramstyle="qmark" if dialect.name == "sqlite" else "format")
        statement = _upsert_statement(dialect.name, table, columns, keep)
        statement = statement.values({name: sa.bindparam(name) for name in columns})
        compiled = statement.compile(dialect=positional)
        order = list(compiled.positiontup or ())
        if order != list(columns):  # pragma: no cover - the VALUES clause lists the columns as given
            raise RuntimeError(f"unexpected parameter order {order}")
        self.sql = str(compiled)
        self.dialect = dialect.name
        self.columns = tuple(columns)
        self.times = tuple(i for i, name in enumerate(columns) if isinstance(table.c[name].type, UTCDateTime))

    def convert(self, rows: Iterable[Sequence[Any]]) -> list[tuple[Any, ...]]:
        """Driver values of rows in ``columns`` order (times POSIX seconds or ``None``)."""
        convert = _postgres_time if self.dialect == "postgresql" else _sqlite_time
        times = self.times
        out = []
        for row in rows:
            values = list(row)
            for i in times:
                if values[i] is not None:
                    values[i] = convert(values[i])
            out.append(tuple(values))
        return out


# ---------------------------------------------------------------------------------------------- repositories


class PlatformTasks:
    """Seed 002's task records: create, read, list, update, append output, mark an agent's tasks lost."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def create(
        self,
        task_id: str,
        type: str,
        script: str,
        *,
        agent_id: str | None = None,
        timeout: float | None = None,
        labels: Mapping[str, Any] | None = None,
        status: str = "pending",
        source: str = "rest",
        retries: int = 0,
    ) -> PlatformTask:
        """Store a new task (``type`` is ``shell`` or ``python``); ``IntegrityError`` if the id exists."""
        if type not in ("shell", "python"):
            raise ValueError(f"type must be 'shell' or 'python', got {type!r}")
        if status not in PLATFORM_STATUSES:
            raise ValueError(f"unknown status {status!r}: use one of {', '.join(PLATFORM_STATUSES)}")
        now = utcnow()
        task = PlatformTask(
            task_id=task_id, agent_id=agent_id, type=type, script=cap_text(script), timeout=timeout,
            status=status, labels=dict(labels or {}), created_at=now, updated_at=now,
            queued_at=now if status == "queued" else None, source=source, retries=retries,
        )  # fmt: skip
        with self.store.session() as session:
            session.add(task)
        return task

    def get(self, task_id: str) -> PlatformTask | None:
        """One task, or ``None``."""
        with self.store.sessions() as session:
            return session.get(PlatformTask, task_id)

    def many(self, task_ids: Iterable[str]) -> list[PlatformTask]:
        """The stored tasks among ``task_ids`` (in no particular order; unknown ids are left out)."""
        ids = list(dict.fromkeys(task_ids))
        found: list[PlatformTask] = []
        with self.store.sessions() as session:
            for start in range(0, len(ids), 500):  # bounded IN lists
                query = sa.select(PlatformTask).where(PlatformTask.task_id.in_(ids[start : start + 500]))
                found.extend(session.scalars(query))
        return found

    def list(
        self,
        *,
        agent_id: str | None = None,
        status: str | Iterable[str] | None = None,
        type: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[PlatformTask]:
        """Tasks, newest first, optionally of one agent, of some statuses, of one type; ``limit``/``offset`` page."""
        query = _task_filters(sa.select(PlatformTask), agent_id, status, type)
        query = query.order_by(PlatformTask.created_at.desc(), PlatformTask.task_id.desc())
        with self.store.sessions() as session:
            return list(session.scalars(query.limit(limit).offset(offset)))

    def count(
        self,
        *,
        agent_id: str | None = None,
        status: str | Iterable[str] | None = None,
        type: str | None = None,
    ) -> int:
        """How many tasks :meth:`list` would page through with the same filters."""
        query = _task_filters(sa.select(sa.func.count()).select_from(PlatformTask), agent_id, status, type)
        with self.store.reader.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def reap(
        self, message: str, error_type: str = "interrupted", *, stale_after: float | None = None
    ) -> list[str]:
        """End unfinished tasks as ``lost`` (their platform died with them in flight); returns their ids.

        With ``stale_after`` only the tasks whose id prefix belongs to a process that is gone (see
        :meth:`IdPrefixes.dead`) or to no reservation at all: a platform that is still running on
        the same database keeps its tasks. Without it, every unfinished task.
        """
        now = utcnow()
        live = ("pending", "queued", "dispatched", "running")
        if stale_after is not None:  # read before the write transaction (SQLite: one writer at a time)
            known = set(self.store.prefixes.all())
            dead = set(self.store.prefixes.dead(stale_after))
        with self.store.session() as session:
            ids = list(session.scalars(sa.select(PlatformTask.task_id).where(PlatformTask.status.in_(live))))
            if ids and stale_after is not None:
                ids = [i for i in ids if (p := i.rstrip("0123456789")) in dead or p not in known]
            if ids:
                session.execute(
                    sa.update(PlatformTask)
                    .where(PlatformTask.task_id.in_(ids), PlatformTask.status.in_(live))
                    .values(
                        status="lost",
                        lost=True,
                        error=message,
                        error_type=error_type,
                        completed_at=now,
                        updated_at=now,
                    )  # fmt: skip
                )
        return ids

    def update(self, task_id: str, **fields: Any) -> bool:
        """Set columns of one task (``status="running", started_at=utcnow()``); False if there is none."""
        unknown = set(fields) - set(PlatformTask.__table__.columns.keys())
        if unknown or "task_id" in fields:
            raise ValueError(f"cannot set {sorted(unknown | ({'task_id'} & set(fields)))} on a task")
        if "status" in fields and fields["status"] not in PLATFORM_STATUSES:
            raise ValueError(
                f"unknown status {fields['status']!r}: use one of {', '.join(PLATFORM_STATUSES)}"
            )
        fields.setdefault("updated_at", utcnow())
        statement = sa.update(PlatformTask).where(PlatformTask.task_id == task_id).values(**fields)
        with self.store.engine.begin() as connection:
            return connection.execute(statement).rowcount == 1

    def append_output(self, task_id: str, stdout: str = "", stderr: str = "", limit: int = 1_000_000) -> bool:
        """Add live output to a task, keeping each stream at most ``limit`` characters (then ``truncated``)."""
        with self.store.session() as session:
            query = sa.select(PlatformTask).where(PlatformTask.task_id == task_id)
            if self.store.dialect == "postgresql":
                query = query.with_for_update()
            task = session.scalars(query).first()
            if task is None:
                return False
            for stream, text in (("stdout", stdout), ("stderr", stderr)):
                if not text:
                    continue
                combined = (getattr(task, stream) or "") + (cap_text(text) or "")
                if len(combined) > limit:
                    combined = combined[:limit]
                    task.truncated = True
                setattr(task, stream, combined)
            task.updated_at = utcnow()
        return True

    def mark_lost(self, agent_id: str, message: str = "the agent stopped answering") -> list[str]:
        """End the dispatched or running tasks of an agent that went away as ``lost``; returns their ids."""
        now = utcnow()
        live = ("queued", "dispatched", "running")
        with self.store.session() as session:
            ids = list(
                session.scalars(
                    sa.select(PlatformTask.task_id).where(
                        PlatformTask.agent_id == agent_id, PlatformTask.status.in_(live)
                    )
                )
            )
            if ids:
                session.execute(
                    sa.update(PlatformTask)
                    .where(PlatformTask.task_id.in_(ids), PlatformTask.status.in_(live))
                    .values(status="lost", lost=True, error=message, completed_at=now, updated_at=now)
                )
        return ids


def _task_filters(
    query: Any, agent_id: str | None, status: str | Iterable[str] | None, type: str | None
) -> Any:
    if agent_id is not None:
        query = query.where(PlatformTask.agent_id == agent_id)
    if status is not None:
        query = query.where(PlatformTask.status.in_([status] if isinstance(status, str) else list(status)))
    if type is not None:
        query = query.where(PlatformTask.type == type)
    return query


class PlatformAgents:
    """The agents table: written when a worker joins or leaves, read by ``GET /agents``."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.table: sa.Table = PlatformAgent.__table__  # type: ignore[assignment]

    def upsert(self, rows: Sequence[Mapping[str, Any]], connection: Connection | None = None) -> None:
        """Insert or overwrite agents (one row per agent id; ``first_seen`` is kept from the first insert)."""
        if not rows:
            return
        if connection is not None:
            _upsert(connection, self.table, rows, keep=("first_seen",))
            return
        with self.store.engine.begin() as own:
            _upsert(own, self.table, rows, keep=("first_seen",))

    def get(self, agent_id: str) -> PlatformAgent | None:
        """One agent, or ``None`` if it never connected."""
        with self.store.sessions() as session:
            return session.get(PlatformAgent, agent_id)

    def list(self, state: str | None = None) -> list[PlatformAgent]:
        """Every agent ever seen (or those in ``state``), by id."""
        query = sa.select(PlatformAgent).order_by(PlatformAgent.agent_id)
        if state is not None:
            query = query.where(PlatformAgent.state == state)
        with self.store.sessions() as session:
            return list(session.scalars(query))

    def mark_all_offline(self, reason: str) -> int:
        """Set every ``online`` agent ``offline`` (the platform that saw them connected is gone)."""
        now = utcnow()
        statement = (
            sa.update(PlatformAgent)
            .where(PlatformAgent.state == "online")
            .values(state="offline", disconnected_at=now, last_reason=reason)
        )
        with self.store.engine.begin() as connection:
            return int(connection.execute(statement).rowcount)


class LogEvents:
    """Tasks' output lines, numbered per task: appended in batches, read back after a sequence number."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def append(self, rows: Sequence[Mapping[str, Any]], connection: Connection | None = None) -> None:
        """Insert lines (``task_id, seq, stream, line, ts``); a line already stored is skipped."""
        if not rows:
            return
        if connection is not None:
            _insert_new(connection, LogEvent.__table__, rows)  # type: ignore[arg-type]
            return
        with self.store.engine.begin() as own:
            _insert_new(own, LogEvent.__table__, rows)  # type: ignore[arg-type]

    def after(self, task_id: str, seq: int = 0, limit: int = 1000) -> list[LogEvent]:
        """Up to ``limit`` lines of ``task_id`` numbered above ``seq``, in order."""
        query = (
            sa.select(LogEvent)
            .where(LogEvent.task_id == task_id, LogEvent.seq > seq)
            .order_by(LogEvent.seq)
            .limit(limit)
        )
        with self.store.sessions() as session:
            return list(session.scalars(query))


def _insert_new(connection: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``rows``, skipping those whose primary key exists (one statement, executemany)."""
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    connection.execute(insert(table).on_conflict_do_nothing(), list(rows))


def write_records(
    store: Store,
    *,
    new_tasks: Sequence[Mapping[str, Any]] = (),
    task_updates: Mapping[str, Mapping[str, Any]] | None = None,
    log_rows: Sequence[Mapping[str, Any]] = (),
    agent_rows: Sequence[Mapping[str, Any]] = (),
) -> None:
    """Write one batch of platform changes in one transaction: new task rows (kept if they exist),
    column updates per task, output lines, agents. The platform's record writer calls this."""
    with store.engine.begin() as connection:
        if new_tasks:
            _insert_new(connection, PlatformTask.__table__, new_tasks)  # type: ignore[arg-type]
        for task_id, fields in (task_updates or {}).items():
            connection.execute(
                sa.update(PlatformTask).where(PlatformTask.task_id == task_id).values(**fields)
            )
        if log_rows:
            _insert_new(connection, LogEvent.__table__, log_rows)  # type: ignore[arg-type]
        if agent_rows:
            _upsert(connection, PlatformAgent.__table__, agent_rows, keep=("first_seen",))  # type: ignore[arg-type]


JOURNAL_ROW_COLUMNS: tuple[str, ...] = (
    "task_id", "prefix", "kind", "name", "arguments", "arguments_complete", "status",
    "error_type", "error_message", "error_traceback", "result", "result_text", "result_truncated",
    "attempts", "retries", "timeout", "depends_on", "progress", "progress_message",
    "created_at", "started_at", "finished_at", "updated_at",
)  # fmt: skip
"""The columns of a journal row as :meth:`JournalRecords.write_rows` takes it, in order."""


class JournalRecords:
    """The journal's rows: written in batches by a manager's journal, read back by id or by prefix."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.table: sa.Table = JournalTask.__table__  # type: ignore[assignment]
        self._compiled: dict[str, CompiledUpsert] = {}

    def upsert_statement(self, dialect: sa.Dialect | None = None) -> CompiledUpsert | None:
        """The compiled insert-or-update of journal rows (``JOURNAL_ROW_COLUMNS`` order) for this
        store's database; ``None`` where only the portable path works (not SQLite or PostgreSQL)."""
        dialect = dialect or self.store.engine.dialect
        if dialect.name not in ("sqlite", "postgresql"):
            return None
        compiled = self._compiled.get(dialect.name)
        if compiled is None:
            compiled = self._compiled[dialect.name] = CompiledUpsert(
                dialect, self.table, JOURNAL_ROW_COLUMNS, keep=("resubmitted_as",)
            )
        return compiled

    def write_rows(self, rows: Sequence[Sequence[Any]]) -> None:
        """Write the latest state of several tasks in one transaction.

        A row is a tuple of the values of ``JOURNAL_ROW_COLUMNS`` in that order: times as POSIX
        seconds (or ``None``), ``arguments``, ``result`` and ``depends_on`` as JSON text.
        """
        if not rows:
            return
        with self.store.engine.begin() as connection:
            compiled = self.upsert_statement(connection.dialect)
            if compiled is not None:
                connection.exec_driver_sql(compiled.sql, compiled.convert(rows))  # type: ignore[arg-type]
                return
            json_columns = {"arguments", "result", "depends_on"}
            mapped = [
                {
                    name: json.loads(value) if name in json_columns else value
                    for name, value in zip(JOURNAL_ROW_COLUMNS, row, strict=True)
                }
                for row in rows
            ]
            _upsert(connection, self.table, mapped, keep=("resubmitted_as",))

    def get(self, task_id: str) -> JournalTask | None:
        """One task's row, or ``None``."""
        with self.store.sessions() as session:
            return session.get(JournalTask, task_id)

    def list(
        self,
        *,
        prefix: str | Iterable[str] | None = None,
        status: str | Iterable[str] | None = None,
        limit: int | None = None,
    ) -> list[JournalTask]:
        """Rows, oldest first, optionally of some prefixes and statuses."""
        query = sa.select(JournalTask)
        if prefix is not None:
            query = query.where(JournalTask.prefix.in_([prefix] if isinstance(prefix, str) else list(prefix)))
        if status is not None:
            query = query.where(JournalTask.status.in_([status] if isinstance(status, str) else list(status)))
        query = query.order_by(JournalTask.created_at, JournalTask.task_id)
        if limit is not None:
            query = query.limit(limit)
        with self.store.sessions() as session:
            return list(session.scalars(query))

    def count(self, prefix: str | None = None, status: str | Iterable[str] | None = None) -> int:
        """How many rows (of a prefix, of some statuses)."""
        query = sa.select(sa.func.count()).select_from(JournalTask)
        if prefix is not None:
            query = query.where(JournalTask.prefix == prefix)
        if status is not None:
            query = query.where(JournalTask.status.in_([status] if isinstance(status, str) else list(status)))
        with self.store.reader.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def interrupt(self, task_id: str, from_status: str, message: str) -> bool:
        """Mark a task ``interrupted`` if it is still ``from_status`` (so only one recovering manager claims it)."""
        now = utcnow()
        statement = (
            sa.update(JournalTask)
            .where(JournalTask.task_id == task_id, JournalTask.status == from_status)
            .values(
                status=INTERRUPTED,
                error_type=INTERRUPTED,
                error_message=message,
                finished_at=now,
                updated_at=now,
            )
        )
        with self.store.engine.begin() as connection:
            return connection.execute(statement).rowcount == 1

    def set_resubmitted(self, task_id: str, new_task_id: str) -> None:
        """Note the id of the task that re-runs an interrupted one."""
        statement = (
            sa.update(JournalTask)
            .where(JournalTask.task_id == task_id)
            .values(resubmitted_as=new_task_id, updated_at=utcnow())
        )
        with self.store.engine.begin() as connection:
            connection.execute(statement)


class IdPrefixes:
    """Reserved task-id prefixes: one row per manager that ever wrote to this store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def reserve(self, prefix: str, *, host: str | None = None, pid: int | None = None) -> bool:
        """Reserve ``prefix`` for this process; False if the store already has it (ever)."""
        now = utcnow()
        row = IdPrefix(
            prefix=prefix, host=host or socket.gethostname(), pid=os.getpid() if pid is None else pid,
            reserved_at=now, heartbeat_at=now,
        )  # fmt: skip
        try:
            with self.store.session() as session:
                session.add(row)
        except IntegrityError:
            return False
        return True

    def get(self, prefix: str) -> IdPrefix | None:
        """The reservation of ``prefix``, or ``None``."""
        with self.store.sessions() as session:
            return session.get(IdPrefix, prefix)

    def heartbeat(self, prefix: str) -> None:
        """Tell other processes that the manager holding ``prefix`` is alive."""
        statement = sa.update(IdPrefix).where(IdPrefix.prefix == prefix).values(heartbeat_at=utcnow())
        with self.store.engine.begin() as connection:
            connection.execute(statement)

    def close(self, prefix: str) -> None:
        """Mark ``prefix``'s manager as gone (a clean shutdown, or recovered by another manager)."""
        statement = (
            sa.update(IdPrefix)
            .where(IdPrefix.prefix == prefix, IdPrefix.closed_at.is_(None))
            .values(closed_at=utcnow())
        )
        with self.store.engine.begin() as connection:
            connection.execute(statement)

    def all(self) -> list[str]:
        """Every prefix ever reserved on this store."""
        with self.store.sessions() as session:
            return list(session.scalars(sa.select(IdPrefix.prefix)))

    def dead(self, stale_after: float, exclude: Iterable[str] = ()) -> list[str]:
        """Prefixes whose manager is gone: closed, or a process of this host that no longer exists,
        or no heartbeat for ``stale_after`` seconds (another host's)."""
        host = socket.gethostname()
        horizon = utcnow() - dt.timedelta(seconds=stale_after)
        excluded = set(exclude)
        with self.store.sessions() as session:
            rows = list(session.scalars(sa.select(IdPrefix)))
        return [
            row.prefix
            for row in rows
            if row.prefix not in excluded
            and (
                row.closed_at is not None
                or (row.host == host and not _process_exists(row.pid))
                or row.heartbeat_at < horizon
            )
        ]


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


# ---------------------------------------------------------------------------------------------- schedules
# The scheduler's persisted schedules (async_task_system.scheduler.engine, revision 0003): one row per
# schedule with its queryable fields and the full record as JSON, and its recent runs (the status
# and error of each) in schedule_runs. The scheduler's SqlScheduleStore reads and writes them
# through PlatformSchedules.


class Schedule(Base):
    """A persisted schedule of a ToolScheduler: queryable fields, and ``record`` (everything, as JSON)."""

    __tablename__ = "schedules"

    id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    schedule_type: Mapped[str] = mapped_column(sa.String(16))  # once | interval | cron
    tool_name: Mapped[str] = mapped_column(sa.String(256))
    enabled: Mapped[bool] = mapped_column(sa.Boolean, default=True)
    state: Mapped[str] = mapped_column(sa.String(16))  # scheduled | paused | finished
    next_run: Mapped[dt.datetime | None] = mapped_column(UTCDateTime, index=True)
    run_count: Mapped[int] = mapped_column(sa.Integer, default=0)
    record: Mapped[dict[str, Any]] = mapped_column(sa.JSON)  # ScheduledTask.to_record() without history
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class ScheduleRunRecord(Base):
    """One recent run of a schedule (``seq`` orders them, oldest first): its task, status and error."""

    __tablename__ = "schedule_runs"

    schedule_id: Mapped[str] = mapped_column(
        sa.String(64), sa.ForeignKey("schedules.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True)
    scheduled_for: Mapped[dt.datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(sa.String(32))  # a task status, or skipped / missed / lost
    task_id: Mapped[str | None] = mapped_column(sa.String(128))
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(sa.Text)
    catch_up: Mapped[bool] = mapped_column(sa.Boolean, default=False)


_RUN_TIMES = ("scheduled_for", "started_at", "finished_at")


def _epoch(value: dt.datetime | None) -> float | None:
    return None if value is None else value.timestamp()


class PlatformSchedules:
    """The scheduler's records: ``load()`` all, ``save(record)`` one (with its run history), ``delete(id)``.

    Records are the scheduler's JSON-able dicts (times in seconds since the epoch); a save
    replaces the schedule's row and its runs in one transaction.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    def load(self) -> list[dict[str, Any]]:
        with self.store.sessions() as session:
            schedules = list(session.scalars(sa.select(Schedule).order_by(Schedule.created_at)))
            runs = list(session.scalars(sa.select(ScheduleRunRecord).order_by(ScheduleRunRecord.seq)))
        history: dict[str, list[dict[str, Any]]] = {}
        for run in runs:
            values = {c.key: getattr(run, c.key) for c in ScheduleRunRecord.__table__.columns}
            del values["schedule_id"], values["seq"]
            for key in _RUN_TIMES:
                values[key] = _epoch(values[key])
            history.setdefault(run.schedule_id, []).append(values)
        return [{**row.record, "history": history.get(row.id, [])} for row in schedules]

    def save(self, record: Mapping[str, Any]) -> None:
        body = {key: value for key, value in record.items() if key != "history"}
        created = body.get("created_at") or time.time()
        row = {
            "id": body["id"], "name": cap_text(body["name"], 190), "schedule_type": body["schedule_type"],
            "tool_name": body["tool_name"], "enabled": bool(body.get("enabled", True)),
            "state": body.get("state", "scheduled"), "next_run": body.get("next_run"),
            "run_count": int(body.get("run_count", 0)), "record": body,
            "created_at": created, "updated_at": time.time(),
        }  # fmt: skip
        runs = [
            {
                "schedule_id": body["id"],
                "seq": seq,
                "scheduled_for": run["scheduled_for"],
                "status": run["status"],
                "task_id": run.get("task_id"),
                "started_at": run.get("started_at"),
                "finished_at": run.get("finished_at"),
                "error": cap_text(run.get("error"), 4000),
                "catch_up": bool(run.get("catch_up")),
            }  # fmt: skip
            for seq, run in enumerate(record.get("history", ()))
        ]
        with self.store.engine.begin() as connection:
            _upsert(connection, Schedule.__table__, [row], keep=("created_at",))
            connection.execute(
                sa.delete(ScheduleRunRecord).where(ScheduleRunRecord.schedule_id == body["id"])
            )
            if runs:
                connection.execute(sa.insert(ScheduleRunRecord), runs)

    def delete(self, schedule_id: str) -> None:
        with self.store.engine.begin() as connection:
            connection.execute(
                sa.delete(ScheduleRunRecord).where(ScheduleRunRecord.schedule_id == schedule_id)
            )
            connection.execute(sa.delete(Schedule).where(Schedule.id == schedule_id))

    def get(self, schedule_id: str) -> Schedule | None:
        with self.store.sessions() as session:
            return session.get(Schedule, schedule_id)

    def runs(self, schedule_id: str) -> list[ScheduleRunRecord]:
        """The schedule's stored runs, oldest first."""
        with self.store.sessions() as session:
            query = sa.select(ScheduleRunRecord).where(ScheduleRunRecord.schedule_id == schedule_id)
            return list(session.scalars(query.order_by(ScheduleRunRecord.seq)))


__all__ += ["Schedule", "ScheduleRunRecord", "PlatformSchedules"]
