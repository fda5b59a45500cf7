"""The one store of the platform: an Alembic-migrated database with its repositories.

Embedded SQLite by default (a file: WAL, a busy timeout, ``BEGIN IMMEDIATE`` so that writers queue
instead of failing), PostgreSQL by URL (``postgresql+psycopg://user@host/db``, psycopg 3). Opening
a :class:`Store` brings the schema to the newest Alembic revision shipped in ``migrations/``
(programmatic configuration: no ``alembic.ini`` is needed), under a lock so that several processes
opening one database at once migrate it once.

Its parts, one job each: :mod:`.schema` (the models of the tables -- ``tasks``, ``journal_tasks``,
``agents``, ``log_events``, ``id_prefixes``, ``schedules``, ``schedule_runs``,
``agent_credentials`` -- statuses, value helpers), :mod:`.database` (engine setup and migrations), :mod:`.writes` (upserts, the compiled
journal upsert, :func:`write_records`), :mod:`.repositories` (:class:`PlatformTasks`,
:class:`PlatformAgents`, :class:`LogEvents`, :class:`IdPrefixes`, :class:`PlatformSchedules`),
:mod:`.credentials` (:class:`AgentCredentials`: per-agent tokens, hashed) and
:mod:`.journal_records` (:class:`JournalRecords`). Every name is importable from here too.

The repositories return detached ORM objects (read their attributes freely) and take plain values;
they hold no I/O other than the database, so a REST or gRPC front end can use them directly.
"""

from __future__ import annotations

import sqlalchemy as sa

from .credentials import AgentCredentials
from .database import DEFAULT_URL, MIGRATIONS, Database
from .journal_records import JOURNAL_ROW_COLUMNS, JournalRecords
from .repositories import IdPrefixes, LogEvents, PlatformAgents, PlatformSchedules, PlatformTasks
from .schema import (
    INTERRUPTED,
    LIVE_STATUSES,
    PLATFORM_STATUSES,
    TERMINAL_STATUSES,
    AgentCredential,
    Base,
    IdPrefix,
    JournalTask,
    LogEvent,
    PlatformAgent,
    PlatformTask,
    Schedule,
    ScheduleRunRecord,
    UTCDateTime,
    cap_text,
    task_row_view,
    utcnow,
)
from .writes import CompiledUpsert, write_records

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
    "task_row_view",
    "utcnow",
    "write_records",
    "TERMINAL_STATUSES",
    "Schedule",
    "ScheduleRunRecord",
    "PlatformSchedules",
    "UTCDateTime",
    "Database",
    "AgentCredential",
    "AgentCredentials",
]


class Store(Database):
    """An open database with the platform's schema at the newest revision, and its repositories.

    Args:
        url: a SQLAlchemy URL: ``sqlite:///path/to/file.db`` (the default, ``DEFAULT_URL``) or
            ``postgresql+psycopg://user:password@host:5432/database``.
        schema: PostgreSQL only: keep every table in this schema (created if missing), e.g. one
            per test or per tenant. Equivalent to ``?options=-csearch_path%3D<schema>`` in the URL.
        upgrade: bring the schema to the newest revision on open (the default); False to leave
            it (``upgrade()`` later, or manage it with Alembic yourself).
        busy_timeout: seconds a SQLite writer waits for another one before failing.

    ``store.tasks``, ``store.agents``, ``store.logs``, ``store.journal``, ``store.prefixes`` and
    ``store.credentials`` are the repositories; ``store.session()`` a SQLAlchemy session for anything else. ``close()`` disposes of the connection pool.
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
        super().__init__(url, schema=schema, upgrade=False, busy_timeout=busy_timeout, echo=echo)
        self.tasks = PlatformTasks(self)
        self.agents = PlatformAgents(self)
        self.logs = LogEvents(self)
        self.journal = JournalRecords(self)
        self.prefixes = IdPrefixes(self)
        self.credentials = AgentCredentials(self)
        if upgrade:
            self.upgrade()
