"""Where schedules are kept across restarts: the :class:`ScheduleStore` protocol and the memory store.

The SQL store is not here: it is the platform's (``async_task_system.platform.schedule_store``), and
the scheduler never imports the platform. The package wires it in by name, as the ``schedule_store``
extension (``async_task_system/__init__.py``); :func:`sql_store_class` looks it up there, which is
how ``from async_task_system.scheduler import SqlScheduleStore`` and ``ToolScheduler(manager,
store="sqlite:///...")`` reach it. Any object with ``load``/``save``/``delete`` is a store.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Protocol, runtime_checkable

from ..core.registry import extension_factory

__all__ = ["ScheduleStore", "MemoryScheduleStore", "SQL_STORE_EXTENSION", "sql_store_class"]

SQL_STORE_EXTENSION = "schedule_store"  # the name the package registers the SQL schedule store under


@runtime_checkable
class ScheduleStore(Protocol):
    """Where schedules are kept across restarts: JSON-able records keyed by schedule id."""

    def load(self) -> list[dict[str, Any]]:
        """Every stored schedule record."""
        ...

    def save(self, record: dict[str, Any]) -> None:
        """Insert or replace the record with ``record['id']``."""
        ...

    def delete(self, schedule_id: str) -> None:
        """Forget a schedule (no error if it is not there)."""
        ...


class MemoryScheduleStore:
    """Keeps records in a dict (copies, as a database would): for tests, and the default."""

    def __init__(self) -> None:
        self._records: dict[str, str] = {}
        self._lock = threading.Lock()

    def load(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(text) for text in self._records.values()]

    def save(self, record: dict[str, Any]) -> None:
        text = json.dumps(record)
        with self._lock:
            self._records[record["id"]] = text

    def delete(self, schedule_id: str) -> None:
        with self._lock:
            self._records.pop(schedule_id, None)


def sql_store_class() -> type:
    """The SQL-backed store class wired in as the ``schedule_store`` extension (``SqlScheduleStore``:
    ``SqlScheduleStore(url)``, ``SqlScheduleStore(store)``); importing it loads SQLAlchemy."""
    try:
        factory = extension_factory(SQL_STORE_EXTENSION)
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise ImportError(
            "SqlScheduleStore needs SQLAlchemy 2 and Alembic: pip install 'async_task_system[platform]'"
        ) from exc
    except LookupError:
        raise LookupError(
            f"no SQL schedule store is wired in (extension {SQL_STORE_EXTENSION!r}): pass a ScheduleStore, "
            "e.g. async_task_system.platform.schedule_store.SqlScheduleStore(url)"
        ) from None
    assert isinstance(factory, type)
    return factory
