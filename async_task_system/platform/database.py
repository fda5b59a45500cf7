"""The store's database: engine setup (SQLite pragmas and locking, PostgreSQL schema) and migrations.

Embedded SQLite by default (a file: WAL, a busy timeout, ``BEGIN IMMEDIATE`` so that writers queue
instead of failing), PostgreSQL by URL (``postgresql+psycopg://user@host/db``, psycopg 3). Opening
a :class:`Database` can bring the schema to the newest Alembic revision shipped in ``migrations/``
(programmatic configuration: no ``alembic.ini`` is needed), under a lock so that several processes
opening one database at once migrate it once. :class:`~.store.Store` is a ``Database`` with the
repositories.
"""

from __future__ import annotations

import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import sessionmaker

__all__ = ["DEFAULT_URL", "MIGRATIONS", "Database", "make_engine"]

_D = TypeVar("_D", bound="Database")

DEFAULT_URL = "sqlite:///async_task_system.db"
MIGRATIONS = Path(__file__).with_name("migrations")


def make_engine(
    url: sa.URL, schema: str | None, busy_timeout: float, echo: bool, *, immediate: bool = True
) -> Engine:
    """An engine for ``url``: SQLite with WAL, ``busy_timeout`` and ``BEGIN IMMEDIATE`` (deferred
    ``BEGIN`` when not ``immediate``: a read engine); PostgreSQL in ``schema`` when given."""
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


class Database:
    """An open database (engines, sessions) with the platform's schema at the newest revision.

    Args:
        url: a SQLAlchemy URL: ``sqlite:///path/to/file.db`` (the default, ``DEFAULT_URL``) or
            ``postgresql+psycopg://user:password@host:5432/database``.
        schema: PostgreSQL only: keep every table in this schema (created if missing), e.g. one
            per test or per tenant. Equivalent to ``?options=-csearch_path%3D<schema>`` in the URL.
        upgrade: bring the schema to the newest revision on open (the default); False to leave
            it (``upgrade()`` later, or manage it with Alembic yourself).
        busy_timeout: seconds a SQLite writer waits for another one before failing.

    ``session()`` is a SQLAlchemy session to write in, :attr:`sessions` read sessions;
    ``close()`` disposes of the connection pools.
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
        self.engine = make_engine(self.url, schema, busy_timeout, echo)
        self.reader = self.engine
        """The engine of reads: for a SQLite file, one whose transactions never take the write lock, so
        reads go on while another process holds it (WAL); otherwise :attr:`engine` itself."""
        database = str(self.url.database or "")
        if self.dialect == "sqlite" and database not in ("", ":memory:") and not database.startswith("file:"):
            self.reader = make_engine(self.url, schema, busy_timeout, echo, immediate=False)
        self.sessions = sessionmaker(self.reader, expire_on_commit=False)
        """Read sessions (see :attr:`reader`); :meth:`session` is the one to write in."""
        self._write_sessions = sessionmaker(self.engine, expire_on_commit=False)
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

    def __enter__(self: _D) -> _D:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url.render_as_string(hide_password=True)}>"
