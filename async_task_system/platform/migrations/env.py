"""Alembic environment of the platform store, configured in code (``Store.alembic_config``).

``Store.upgrade`` passes an open connection in ``config.attributes["connection"]`` (inside its
migration lock); the ``alembic`` command line works too when ``sqlalchemy.url`` is set.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from async_task_system.platform.store import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection: sa.engine.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # ALTER on SQLite: copy-and-move
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    """Emit the SQL instead of running it (``alembic upgrade --sql``)."""
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return
    engine = sa.create_engine(config.get_main_option("sqlalchemy.url"), poolclass=sa.pool.NullPool)
    with engine.begin() as own:
        _configure(own)
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
