"""The scheduler's SQL store: schedules in the platform's store, handed to a ``ToolScheduler``.

The scheduler does not import the platform; the package registers :class:`SqlScheduleStore` as the
``schedule_store`` extension, so ``from async_task_system.scheduler import SqlScheduleStore`` and
``ToolScheduler(manager, store=URL)`` reach it by name, and ``manager.extension("schedule_store")``
is the store in the manager's journal database. The tables (``schedules``, ``schedule_runs``,
Alembic revision 0003) and their repository :class:`~.store.PlatformSchedules` are in ``store``.
"""

from __future__ import annotations

from typing import Any

from ..core.manager import TaskManager

__all__ = ["SqlScheduleStore"]


class SqlScheduleStore:
    """Schedules in the platform's store (:class:`async_task_system.platform.store.Store`).

    ``SqlScheduleStore()`` opens the default embedded SQLite file; ``SqlScheduleStore(url)`` any
    database by URL (``sqlite:///schedules.db``, ``postgresql+psycopg://user@host/db``), migrated to
    the newest Alembic revision on open; ``SqlScheduleStore(store)`` shares an open ``Store``
    (it is then not closed here); ``SqlScheduleStore(manager)`` opens the manager's journal
    database (``TaskManager(journal=URL)``; the default file if it has none). Tables ``schedules``
    (one row per schedule: queryable fields and the full record as JSON) and ``schedule_runs`` (its
    recent runs: task id, status, error), written in one transaction per save. SQLAlchemy is
    imported when the store is made, not when the scheduler is imported.
    """

    def __init__(self, store: Any = None, **store_options: Any) -> None:
        try:
            from .store import DEFAULT_URL, PlatformSchedules, Store
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise ImportError(
                "SqlScheduleStore needs SQLAlchemy 2 and Alembic: pip install 'async_task_system[platform]'"
            ) from exc
        if isinstance(store, TaskManager):
            store = store.journal_url
        self.owns_store = not isinstance(store, Store)
        self.store = Store(store or DEFAULT_URL, **store_options) if self.owns_store else store
        self.schedules = PlatformSchedules(self.store)

    def load(self) -> list[dict[str, Any]]:
        return self.schedules.load()

    def save(self, record: dict[str, Any]) -> None:
        self.schedules.save(record)

    def delete(self, schedule_id: str) -> None:
        self.schedules.delete(schedule_id)

    def close(self) -> None:
        if self.owns_store:
            self.store.close()
