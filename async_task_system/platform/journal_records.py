"""The journal's rows in the store: written in batches by a manager's journal, read back, claimed once."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa

from .database import Database
from .schema import INTERRUPTED, JournalTask, utcnow
from .writes import CompiledUpsert, upsert_rows

__all__ = ["JOURNAL_ROW_COLUMNS", "JournalRecords"]


JOURNAL_ROW_COLUMNS: tuple[str, ...] = (
    "task_id", "prefix", "kind", "name", "arguments", "arguments_complete", "status",
    "error_type", "error_message", "error_traceback", "result", "result_text", "result_truncated",
    "attempts", "retries", "timeout", "depends_on", "progress", "progress_message",
    "created_at", "started_at", "finished_at", "updated_at",
)  # fmt: skip
"""The columns of a journal row as :meth:`JournalRecords.write_rows` takes it, in order."""


class JournalRecords:
    """The journal's rows: written in batches by a manager's journal, read back by id or by prefix."""

    def __init__(self, store: Database) -> None:
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
            upsert_rows(connection, self.table, mapped, keep=("resubmitted_as",))

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
