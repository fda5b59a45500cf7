"""The platform's schema: SQLAlchemy 2 models of every table, the statuses, and the value helpers.

Eight tables (revisions in ``migrations/``):

* ``tasks`` -- seed 002's task record (a shell or Python script sent to a fleet agent) plus what
  operators need: attempt, queued/dispatched times, cancelled / timed_out / lost flags, a truncated
  flag for capped output, labels (:class:`PlatformTask`).
* ``journal_tasks`` -- the latest state of every task of every TaskManager with a journal
  (:class:`JournalTask`). Status ``interrupted`` exists only here: a task whose manager died while
  it was in flight.
* ``agents`` -- every fleet agent (worker daemon) the platform has seen (:class:`PlatformAgent`).
* ``log_events`` -- tasks' output lines numbered per task (:class:`LogEvent`).
* ``id_prefixes`` -- one row per manager's id prefix (:class:`IdPrefix`).
* ``schedules`` and ``schedule_runs`` -- the scheduler's persisted schedules and their recent runs
  (:class:`Schedule`, :class:`ScheduleRunRecord`).
* ``agent_credentials`` -- per-agent tokens, stored as SHA-256 digests (:class:`AgentCredential`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "INTERRUPTED",
    "LIVE_STATUSES",
    "PLATFORM_STATUSES",
    "TERMINAL_STATUSES",
    "Base",
    "UTCDateTime",
    "PlatformTask",
    "PlatformAgent",
    "LogEvent",
    "JournalTask",
    "IdPrefix",
    "Schedule",
    "ScheduleRunRecord",
    "AgentCredential",
    "cap_text",
    "row_dict",
    "task_row_view",
    "utcnow",
]

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
        return row_dict(self)


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
        return row_dict(self)


class LogEvent(Base):
    """One output line of a platform task, numbered per task from 1 (the SSE event id)."""

    __tablename__ = "log_events"

    task_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    stream: Mapped[str] = mapped_column(sa.String(8))  # stdout | stderr
    line: Mapped[str] = mapped_column(sa.Text)
    ts: Mapped[float] = mapped_column(sa.Float)  # POSIX seconds


def row_dict(row: Any) -> dict[str, Any]:
    """A model row as a JSON-friendly dict (times as ISO 8601 strings)."""
    out: dict[str, Any] = {}
    for column in row.__table__.columns:
        value = getattr(row, column.key)
        out[column.key] = value.isoformat() if isinstance(value, dt.datetime) else value
    return out


def task_row_view(row: Any) -> dict[str, Any]:
    """A task row the platform holds in memory (times as POSIX seconds) as :meth:`PlatformTask.to_dict`
    shows it once stored: the same keys, times as ISO 8601 UTC strings."""
    out: dict[str, Any] = {}
    for key, is_time in _TASK_VIEW_COLUMNS:
        value = row.get(key)
        if is_time and isinstance(value, (int, float)):
            value = dt.datetime.fromtimestamp(value, dt.timezone.utc).isoformat()
        elif isinstance(value, dt.datetime):
            value = value.isoformat()
        out[key] = value
    return out


# Read once: walking the table's columns per call was 5 % of the platform's REST path.
_TASK_VIEW_COLUMNS = tuple(
    (column.key, isinstance(column.type, UTCDateTime)) for column in PlatformTask.__table__.columns
)


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


# The scheduler's persisted schedules (revision 0003): one row per
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


class AgentCredential(Base):
    """One token issued to agent ``agent_id`` (revision 0004): its SHA-256 digest, never the token.

    A live credential has no ``revoked_at``; issuing a new one revokes the agent's previous one, so
    an agent has at most one live credential (rows of revoked ones stay, for the record).
    """

    __tablename__ = "agent_credentials"
    __table_args__ = (sa.Index(None, "agent_id", "revoked_at"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    agent_id: Mapped[str] = mapped_column(sa.String(128))
    token_sha256: Mapped[str] = mapped_column(sa.String(64), unique=True)  # hex digest of the token
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
