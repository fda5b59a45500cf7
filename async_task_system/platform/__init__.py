"""The fleet platform's persistence (seed 002): one store and the durable journal of a TaskManager.

``store`` holds the SQLAlchemy models, the Alembic-migrated :class:`~.store.Store` and small
repositories (:class:`~.store.PlatformTasks`, :class:`~.store.JournalRecords`,
:class:`~.store.IdPrefixes`) that the transports and the REST API build on; ``journal`` is the
``journal`` extension of a TaskManager (``TaskManager(journal=URL)``). Both need the ``platform``
extra (SQLAlchemy, Alembic, psycopg); nothing here is imported by the core or by a worker.
"""

from __future__ import annotations

__all__ = ["Store", "Journal", "RecoveryReport"]


def __getattr__(name: str) -> object:
    # Lazy, so that importing the package (e.g. for its docstring) does not load SQLAlchemy.
    if name == "Store":
        from .store import Store

        return Store
    if name in ("Journal", "RecoveryReport"):
        from . import journal

        return getattr(journal, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
