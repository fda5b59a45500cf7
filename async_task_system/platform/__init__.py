"""The fleet platform (seed 002): one store, the durable journal of a TaskManager, the platform service.

``store`` is the Alembic-migrated :class:`~.store.Store` and re-exports its parts: the models
(``schema``), engine setup and migrations (``database``), the write path (``writes``) and small
repositories (``repositories``: :class:`~.store.PlatformTasks`, :class:`~.store.PlatformAgents`,
:class:`~.store.LogEvents`, :class:`~.store.IdPrefixes`, :class:`~.store.PlatformSchedules`;
``journal_records``: :class:`~.store.JournalRecords`);
``journal`` is the ``journal`` extension of a TaskManager (``TaskManager(journal=URL)``);
``service`` is :class:`~.service.Platform` (store + manager + WebSocket and gRPC hubs + REST API),
composed of ``record_writer``, ``recorder``, ``fleet``, ``live_logs`` and ``startup``; ``interface``
holds what it shares with ``rest``, its FastAPI app; ``cli`` is the ``async-agent platform`` command. They need the ``platform``
extra (SQLAlchemy, Alembic, psycopg, FastAPI, uvicorn); nothing here is imported by the core or by a
worker.
"""

from __future__ import annotations

__all__ = ["Store", "Journal", "RecoveryReport", "Platform", "create_app"]


def __getattr__(name: str) -> object:
    # Lazy, so that importing the package (e.g. for its docstring) does not load SQLAlchemy.
    if name == "Store":
        from .store import Store

        return Store
    if name == "Platform":
        from .service import Platform

        return Platform
    if name == "create_app":
        from .rest import create_app

        return create_app
    if name in ("Journal", "RecoveryReport"):
        from . import journal

        return getattr(journal, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
