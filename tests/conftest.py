"""Shared test setup: make tests/ importable (stub servers) and keep litellm offline."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


# ---------------------------------------------------------------------------------------------- databases
# The platform store's tests run on a SQLite file and on the real PostgreSQL of this machine. Each
# PostgreSQL test gets its own schema (dropped afterwards), named in the URL's search_path, so that
# parallel runs never collide. No server: skipped with the reason; under CI=true: a failure.

import uuid  # noqa: E402

import pytest  # noqa: E402

POSTGRES_URL = os.environ.get("ATS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _postgres_schema_url(schema: str) -> str:
    return f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path):
    """A fresh, empty database: a SQLite file in tmp_path, or a new schema on the PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    pytest.importorskip("psycopg")
    sqlalchemy = pytest.importorskip("sqlalchemy")
    engine = sqlalchemy.create_engine(POSTGRES_URL, connect_args={"connect_timeout": 3})
    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    except Exception as exc:
        engine.dispose()
        reason = f"no PostgreSQL answers at {POSTGRES_URL}: {type(exc).__name__}: {str(exc).splitlines()[0]}"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"PostgreSQL is required under CI: {reason}")
        pytest.skip(reason)
    try:
        yield _postgres_schema_url(schema)
    finally:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        engine.dispose()
