"""The store's repositories: platform tasks, agents, output lines, id prefixes, the scheduler's schedules.

The repositories return detached ORM objects (read their attributes freely) and take plain values;
they hold no I/O other than the database, so a REST or gRPC front end can use them directly. Each
takes the :class:`~.database.Database` it works on (a :class:`~.store.Store` is one).
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from .database import Database
from .schema import (
    PLATFORM_STATUSES,
    IdPrefix,
    LogEvent,
    PlatformAgent,
    PlatformTask,
    Schedule,
    ScheduleRunRecord,
    cap_text,
    utcnow,
)
from .writes import insert_new, upsert_rows

__all__ = ["PlatformTasks", "PlatformAgents", "LogEvents", "IdPrefixes", "PlatformSchedules"]


class PlatformTasks:
    """Seed 002's task records: create, read, list, update, append output, mark an agent's tasks lost."""

    def __init__(self, store: Database) -> None:
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
            prefixes = IdPrefixes(self.store)
            known = set(prefixes.all())
            dead = set(prefixes.dead(stale_after))
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

    def __init__(self, store: Database) -> None:
        self.store = store
        self.table: sa.Table = PlatformAgent.__table__  # type: ignore[assignment]

    def upsert(self, rows: Sequence[Mapping[str, Any]], connection: Connection | None = None) -> None:
        """Insert or overwrite agents (one row per agent id; ``first_seen`` is kept from the first insert)."""
        if not rows:
            return
        if connection is not None:
            upsert_rows(connection, self.table, rows, keep=("first_seen",))
            return
        with self.store.engine.begin() as own:
            upsert_rows(own, self.table, rows, keep=("first_seen",))

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

    def __init__(self, store: Database) -> None:
        self.store = store

    def append(self, rows: Sequence[Mapping[str, Any]], connection: Connection | None = None) -> None:
        """Insert lines (``task_id, seq, stream, line, ts``); a line already stored is skipped."""
        if not rows:
            return
        if connection is not None:
            insert_new(connection, LogEvent.__table__, rows)  # type: ignore[arg-type]
            return
        with self.store.engine.begin() as own:
            insert_new(own, LogEvent.__table__, rows)  # type: ignore[arg-type]

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


class IdPrefixes:
    """Reserved task-id prefixes: one row per manager that ever wrote to this store."""

    def __init__(self, store: Database) -> None:
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


_RUN_TIMES = ("scheduled_for", "started_at", "finished_at")


def _epoch(value: dt.datetime | None) -> float | None:
    return None if value is None else value.timestamp()


class PlatformSchedules:
    """The scheduler's records: ``load()`` all, ``save(record)`` one (with its run history), ``delete(id)``.

    Records are the scheduler's JSON-able dicts (times in seconds since the epoch); a save
    replaces the schedule's row and its runs in one transaction.
    """

    def __init__(self, store: Database) -> None:
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
            upsert_rows(connection, Schedule.__table__, [row], keep=("created_at",))
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
