"""The store's write path: insert-or-update and insert-if-new statements, compiled upserts, batches.

PostgreSQL and SQLite get one ``INSERT ... ON CONFLICT`` statement run with executemany; another
database gets a slower portable path. :class:`CompiledUpsert` compiles one such statement once for
positional driver values (the journal's hot path); :func:`write_records` writes one batch of the
platform's changes in one transaction, and :class:`BatchWriter` does the same on a connection it
keeps, with the task statements compiled once (the platform's record writer uses it).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .database import Database
from .schema import LogEvent, PlatformAgent, PlatformTask, UTCDateTime

__all__ = ["BatchWriter", "CompiledUpsert", "insert_new", "upsert_rows", "upsert_statement", "write_records"]

_UTC = dt.timezone.utc


def upsert_statement(dialect_name: str, table: sa.Table, columns: Iterable[str], keep: Iterable[str]) -> Any:
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


def upsert_rows(
    connection: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]], keep: Iterable[str]
) -> None:
    """Insert ``rows`` or overwrite the existing ones with the same primary key (one statement, executemany).

    Columns in ``keep`` are written on insert only. ``rows`` must not repeat a key (PostgreSQL
    refuses to update one row twice in a statement).
    """
    statement = upsert_statement(connection.dialect.name, table, rows[0].keys(), keep)
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
        statement = upsert_statement(dialect.name, table, columns, keep)
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


def insert_new(connection: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert ``rows``, skipping those whose primary key exists (one statement, executemany)."""
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    connection.execute(insert(table).on_conflict_do_nothing(), list(rows))


_UPDATES: dict[tuple[str, ...], Any] = {}


def _update_statement(columns: tuple[str, ...]) -> Any:
    """``UPDATE tasks SET <columns> WHERE task_id = ?`` for executemany, built once per column set
    (one statement per task cost SQLAlchemy a cache key over its values each time: half the
    record writer's time under load)."""
    statement = _UPDATES.get(columns)
    if statement is None:
        table = PlatformTask.__table__
        statement = (
            sa.update(table)  # type: ignore[arg-type]
            .where(table.c.task_id == sa.bindparam("key_task_id"))  # type: ignore[attr-defined]
            .values({name: sa.bindparam(f"new_{name}") for name in columns})
        )
        _UPDATES[columns] = statement
    return statement


def _grouped_updates(updates: Mapping[str, Mapping[str, Any]]) -> list[tuple[Any, list[dict[str, Any]]]]:
    """The updates of a batch as (statement, parameter rows): one executemany per column set."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for task_id, fields in updates.items():
        columns = tuple(sorted(fields))
        row = {f"new_{name}": fields[name] for name in columns}
        row["key_task_id"] = task_id
        groups.setdefault(columns, []).append(row)
    return [(_update_statement(columns), rows) for columns, rows in groups.items()]


def write_records(
    store: Database,
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
            insert_new(connection, PlatformTask.__table__, new_tasks)  # type: ignore[arg-type]
        for statement, rows in _grouped_updates(task_updates or {}):
            connection.execute(statement, rows)
        if log_rows:
            insert_new(connection, LogEvent.__table__, log_rows)  # type: ignore[arg-type]
        if agent_rows:
            upsert_rows(connection, PlatformAgent.__table__, agent_rows, keep=("first_seen",))  # type: ignore[arg-type]


_TASK_TABLE: sa.Table = PlatformTask.__table__  # type: ignore[assignment]
_TASK_COLUMNS = tuple(column.key for column in _TASK_TABLE.columns)


class BatchWriter:
    """Writes the platform's batches (:func:`write_records`' arguments) on one connection kept open
    between batches, for the record writer's thread.

    Per batch this saves what :func:`write_records` pays each time: a connection from the pool with
    its ping, and SQLAlchemy's per-value bind processing of task rows (their statements are compiled
    once for positional driver values, times and JSON converted here as the column types would).
    A new task row and the changes to it in the same batch become one insert. After any error the
    connection is dropped (a new one is opened for the next batch), so a database that went away
    costs one failed batch, not a dead connection.
    """

    def __init__(self, store: Database) -> None:
        self.store = store
        self._connection: Connection | None = None
        dialect = self._dialect = store.engine.dialect
        self._driver_error: type[Exception] = dialect.dbapi.Error if dialect.dbapi is not None else Exception
        self._fast = dialect.name in ("sqlite", "postgresql")
        if self._fast:
            self._positional = type(dialect)(paramstyle="qmark" if dialect.name == "sqlite" else "format")
            self._insert_sql, self._insert_order = self._compile(insert_statement(dialect.name, _TASK_TABLE))
            self._convert = _postgres_time if dialect.name == "postgresql" else _sqlite_time
        self._updates: dict[tuple[str, ...], tuple[str, tuple[str, ...]]] = {}

    def write(
        self,
        *,
        new_tasks: Sequence[Mapping[str, Any]] = (),
        task_updates: Mapping[str, Mapping[str, Any]] | None = None,
        log_rows: Sequence[Mapping[str, Any]] = (),
        agent_rows: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """Write one batch in one transaction (raises what the database raised; nothing is kept)."""
        if not self._fast:  # pragma: no cover - other databases: the portable path
            write_records(
                self.store,
                new_tasks=new_tasks,
                task_updates=task_updates,
                log_rows=log_rows,
                agent_rows=agent_rows,
            )
            return
        updates = dict(task_updates or {})
        full, partial = [], []
        for row in new_tasks:
            if len(row) == len(_TASK_COLUMNS) and all(name in row for name in _TASK_COLUMNS):
                changes = updates.get(row["task_id"])
                full.append({**row, **changes} if changes else row)
            else:
                partial.append(row)
        merged = {row["task_id"] for row in full} & updates.keys()
        connection = self._connection or self.store.engine.connect()
        self._connection = None
        try:
            if partial or log_rows or agent_rows:
                with connection.begin():
                    if partial:
                        insert_new(connection, _TASK_TABLE, partial)

                    def executemany(sql: str, rows: list[tuple[Any, ...]]) -> int:
                        return connection.exec_driver_sql(sql, rows).rowcount

                    self._tasks(executemany, full, updates, merged)
                    if log_rows:
                        insert_new(connection, LogEvent.__table__, log_rows)  # type: ignore[arg-type]
                    if agent_rows:
                        upsert_rows(connection, PlatformAgent.__table__, agent_rows, keep=("first_seen",))  # type: ignore[arg-type]
            else:
                self._driver_transaction(connection, full, updates, merged)
        except self._driver_error as exc:  # from the driver itself: as SQLAlchemy would raise it
            connection.invalidate()
            connection.close()
            raise sa.exc.DBAPIError.instance(
                None, None, exc, self._driver_error, dialect=self._dialect
            ) from exc
        except BaseException:
            connection.close()
            raise
        self._connection = connection

    def _tasks(self, executemany: Any, full: list[Any], updates: dict[str, Any], merged: set[str]) -> None:
        """The task rows (merged with their changes) and the other changes, through ``executemany``."""
        if full:
            inserted = executemany(self._insert_sql, self._values(full, self._insert_order))
            if inserted == len(full):  # no row existed: their changes are in the inserts
                updates = {k: v for k, v in updates.items() if k not in merged}
        for sql, rows in self._grouped(updates):
            executemany(sql, rows)

    def _driver_transaction(
        self, connection: Connection, full: list[Any], updates: dict[str, Any], merged: set[str]
    ) -> None:
        """A batch of task rows alone, in a transaction of the driver's own connection: SQLAlchemy's
        ``begin()`` (its event emits SQLite's ``BEGIN IMMEDIATE``) and statement contexts were 40 %
        of the writer's time with batches of a few tasks."""
        raw: Any = connection.connection.driver_connection
        sqlite = self._dialect.name == "sqlite"
        cursor = raw.cursor()

        def executemany(sql: str, rows: list[tuple[Any, ...]]) -> int:
            cursor.executemany(sql, rows)
            return cursor.rowcount

        try:
            if sqlite:
                cursor.execute("BEGIN IMMEDIATE")  # as the engine's begin event does
            self._tasks(executemany, full, updates, merged)
            cursor.execute("COMMIT") if sqlite else raw.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                if not sqlite:
                    raw.rollback()
                elif raw.in_transaction:
                    cursor.execute("ROLLBACK")
            raise
        finally:
            cursor.close()

    def close(self) -> None:
        """Give the connection back (the next :meth:`write` opens another)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _compile(self, statement: Any) -> tuple[str, tuple[str, ...]]:
        """The SQL of ``statement`` for positional values, and the names of its values in order."""
        compiled = statement.compile(dialect=self._positional)
        return str(compiled), tuple(compiled.positiontup or ())

    def _update_sql(self, columns: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
        """``UPDATE tasks SET <columns> WHERE task_id = ?``, compiled once per column set."""
        compiled = self._updates.get(columns)
        if compiled is None:
            statement = (
                sa.update(_TASK_TABLE)
                .values({name: sa.bindparam(name) for name in columns})
                .where(_TASK_TABLE.c.task_id == sa.bindparam("key_task_id"))
            )
            compiled = self._updates[columns] = self._compile(statement)
        return compiled

    def _grouped(self, updates: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, list[tuple[Any, ...]]]]:
        """The updates as (SQL, driver values), one executemany per column set; ``updated_at`` is
        set when a change does not set it (the column's onupdate, as the ORM would)."""
        groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
        now = None
        for task_id, fields in updates.items():
            if "updated_at" not in fields:
                now = now if now is not None else _now()
                fields = {**fields, "updated_at": now}
            groups.setdefault(tuple(sorted(fields)), []).append({**fields, "key_task_id": task_id})
        out = []
        for columns, rows in groups.items():
            sql, order = self._update_sql(columns)
            out.append((sql, self._values(rows, order)))
        return out

    def _values(self, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> list[tuple[Any, ...]]:
        convert, table = self._convert, _TASK_TABLE.c
        kinds = [_kind(table[name].type) if name in table else "" for name in columns]
        out = []
        for row in rows:
            values = []
            for name, kind in zip(columns, kinds, strict=True):
                value = row[name]
                if value is not None and kind:
                    value = convert(value) if kind == "time" else json.dumps(value)
                values.append(value)
            out.append(tuple(values))
        return out


def insert_statement(dialect_name: str, table: sa.Table) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` of every column of ``table``, for positional values."""
    if dialect_name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    columns = [column.key for column in table.columns]
    return insert(table).values({name: sa.bindparam(name) for name in columns}).on_conflict_do_nothing()


def _kind(column_type: Any) -> str:
    if isinstance(column_type, UTCDateTime):
        return "time"
    if isinstance(column_type, sa.JSON):
        return "json"
    return ""


def _now() -> dt.datetime:
    return dt.datetime.now(_UTC)
