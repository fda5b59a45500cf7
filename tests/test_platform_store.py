"""The platform store on a real SQLite file and the real PostgreSQL (``database_url`` in conftest):
Alembic migrations to head, models equal to the migrations, seed 002's task records, the journal's
rows and the reserved id prefixes."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
import time

import pytest

sa = pytest.importorskip("sqlalchemy")
pytest.importorskip("alembic")

from alembic.autogenerate import compare_metadata  # noqa: E402
from alembic.runtime.migration import MigrationContext  # noqa: E402
from alembic.script import ScriptDirectory  # noqa: E402

from async_task_system.platform.store import (  # noqa: E402
    INTERRUPTED,
    JOURNAL_ROW_COLUMNS,
    MIGRATIONS,
    Base,
    Store,
    utcnow,
)


def _head() -> str:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


def test_an_empty_database_is_upgraded_to_head_and_the_models_match_the_migrations(database_url):
    store = Store(database_url, upgrade=False)
    try:
        assert store.current_revision() is None
        store.upgrade()
        assert store.current_revision() == _head()
        with store.engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
            tables = set(sa.inspect(connection).get_table_names())
        assert {"tasks", "agents", "log_events", "journal_tasks", "id_prefixes", "alembic_version"} <= tables
        store.upgrade()  # at head already: nothing to do
        assert store.current_revision() == _head()
    finally:
        store.close()


def test_several_processes_opening_one_new_database_migrate_it_once(database_url):
    errors = []

    def open_store() -> None:
        try:
            Store(database_url).close()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    with Store(database_url) as store:
        assert store.current_revision() == _head()


def test_the_migrations_are_installed_with_the_package():
    assert (MIGRATIONS / "env.py").is_file()
    assert sorted(p.name for p in (MIGRATIONS / "versions").glob("*.py"))
    # A plain `alembic` command line works from the shipped directory too (no ini file needed).
    code = (
        "from alembic.config import Config; from alembic.script import ScriptDirectory;"
        "from async_task_system.platform.store import MIGRATIONS;"
        "c = Config(); c.set_main_option('script_location', str(MIGRATIONS));"
        "print(ScriptDirectory.from_config(c).get_current_head())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/")
    assert out.stdout.strip() == _head()


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'sub' / 'dir' / 'store.db'}", busy_timeout=7)
    with store, store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 7000


def test_seed_002_task_records(database_url):
    with Store(database_url) as store:
        tasks = store.tasks
        created = tasks.create(
            "t-1", "shell", "echo hi\x00there", agent_id="agent-1", timeout=30, labels={"os": "linux"}
        )
        assert created.status == "pending" and created.created_at.tzinfo is not None
        tasks.create("t-2", "python", "print(1)", agent_id="agent-1")
        tasks.create("t-3", "python", "print(2)", agent_id="agent-2", status="queued")
        with pytest.raises(ValueError):
            tasks.create("t-4", "ruby", "puts 1")
        with pytest.raises(sa.exc.IntegrityError):
            tasks.create("t-1", "shell", "again")

        task = tasks.get("t-1")
        assert task.script == "echo hi\\x00there"  # NUL is refused by PostgreSQL: kept visible
        assert task.labels == {"os": "linux"} and task.timeout == 30
        assert tasks.get("nope") is None

        now = utcnow()
        assert tasks.update("t-1", status="running", started_at=now, dispatched_at=now)
        assert not tasks.update("nope", status="running")
        with pytest.raises(ValueError):
            tasks.update("t-1", status="sleeping")
        with pytest.raises(ValueError):
            tasks.update("t-1", colour="red")
        assert tasks.append_output("t-1", stdout="a" * 6, stderr="warn\n", limit=10)
        assert tasks.append_output("t-1", stdout="b" * 6, limit=10)
        task = tasks.get("t-1")
        assert task.stdout == "aaaaaabbbb" and task.truncated and task.stderr == "warn\n"
        assert task.started_at.replace(microsecond=0) == now.replace(microsecond=0)
        assert tasks.update("t-1", status="completed", exit_code=0, completed_at=utcnow())
        view = tasks.get("t-1").to_dict()
        assert view["exit_code"] == 0 and dt.datetime.fromisoformat(view["completed_at"]).tzinfo is not None

        assert [t.task_id for t in tasks.list(agent_id="agent-1")] == ["t-2", "t-1"]  # newest first
        assert [t.task_id for t in tasks.list(status="queued")] == ["t-3"]
        assert [t.task_id for t in tasks.list(limit=1, offset=1)] == ["t-2"]

        tasks.update("t-2", status="running")
        assert tasks.mark_lost("agent-1") == ["t-2"]
        lost = tasks.get("t-2")
        assert lost.status == "lost" and lost.lost and lost.error and lost.completed_at is not None


def _row(task_id: str, prefix: str, status: str, **extra):
    """A journal row as ``write_rows`` takes it: JOURNAL_ROW_COLUMNS order, JSON as text, POSIX times."""
    row = {
        "task_id": task_id, "prefix": prefix, "kind": "function", "name": "f", "arguments": '{"x": 1}',
        "arguments_complete": True, "status": status, "error_type": None, "error_message": None,
        "error_traceback": None, "result": "null", "result_text": None, "result_truncated": False,
        "attempts": 0, "retries": 0, "timeout": None, "depends_on": "[]", "progress": None,
        "progress_message": None, "created_at": 1_700_000_000.5, "started_at": None,
        "finished_at": None, "updated_at": time.time(),
    }  # fmt: skip
    row.update(extra)
    return tuple(row[name] for name in JOURNAL_ROW_COLUMNS)


def test_journal_rows_are_upserted_in_batches_and_claimed_once(database_url):
    with Store(database_url) as store:
        journal = store.journal
        journal.write_rows([_row("p_1", "p_", "pending"), _row("p_2", "p_", "running", attempts=1)])
        journal.write_rows(
            [_row("p_1", "p_", "completed", result='{"a": [1, 2]}', finished_at=1_700_000_001.0)]
        )
        first = journal.get("p_1")
        assert first.status == "completed" and first.result == {"a": [1, 2]}
        assert first.arguments == {"x": 1} and first.depends_on == []
        assert first.created_at == dt.datetime.fromtimestamp(1_700_000_000.5, dt.timezone.utc)
        assert first.finished_at == dt.datetime.fromtimestamp(1_700_000_001.0, dt.timezone.utc)
        assert journal.get("p_2").result is None  # JSON null reads as None
        assert journal.count(prefix="p_") == 2
        assert [r.task_id for r in journal.list(prefix=["p_"], status=["running"])] == ["p_2"]

        assert journal.interrupt("p_2", "running", "its manager died")
        assert not journal.interrupt("p_2", "running", "a second recoverer")  # claimed once
        journal.set_resubmitted("p_2", "q_1")
        journal.write_rows([_row("p_2", "p_", INTERRUPTED)])  # a late write does not lose the new id
        row = journal.get("p_2")
        assert row.status == INTERRUPTED and row.resubmitted_as == "q_1"


def test_id_prefixes_are_reserved_once_and_dead_managers_are_told_apart(database_url):
    with Store(database_url) as store:
        prefixes = store.prefixes
        assert prefixes.reserve("task_aaaa_")
        assert not prefixes.reserve("task_aaaa_")
        assert prefixes.dead(60) == []  # this process, heartbeat fresh

        assert prefixes.reserve("task_bbbb_", pid=_dead_pid())
        assert prefixes.reserve("task_cccc_", host="elsewhere", pid=1)
        assert prefixes.reserve("task_dddd_", host="elsewhere", pid=1)
        prefixes.close("task_dddd_")
        assert sorted(prefixes.dead(60)) == ["task_bbbb_", "task_dddd_"]
        assert sorted(prefixes.dead(0, exclude=["task_aaaa_"])) == ["task_bbbb_", "task_cccc_", "task_dddd_"]
        prefixes.heartbeat("task_cccc_")
        assert "task_cccc_" not in prefixes.dead(60)


def test_a_store_url_names_its_postgresql_schema_or_takes_schema_argument(database_url):
    if not database_url.startswith("postgresql"):
        with pytest.raises(ValueError):
            Store(database_url, schema="other")
        return
    base, _, options = database_url.partition("?")
    schema = options.rsplit("%3D", 1)[1] + "_x"
    with Store(base, schema=schema) as store:
        store.tasks.create("s-1", "shell", "true")
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("SELECT current_schema()").scalar() == schema
        with store.engine.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    assert process.pid != os.getpid()
    return process.pid


def test_agents_log_events_and_platform_task_queries(database_url):
    from async_task_system.platform.store import write_records

    store = Store(database_url)
    try:
        row = {
            "agent_id": "a1", "labels": {"zone": "eu"}, "capabilities": ["shell"], "capacity": 2, "version": "1",
            "transport": "ws", "state": "online", "first_seen": 100.0, "last_seen": 100.0, "connected_at": 100.0,
            "disconnected_at": None, "last_reason": None,
        }  # fmt: skip
        store.agents.upsert([row])
        store.agents.upsert([{**row, "state": "offline", "first_seen": 200.0, "last_reason": "gone"}])
        agent = store.agents.get("a1")
        assert (agent.state, agent.last_reason, agent.labels) == ("offline", "gone", {"zone": "eu"})
        assert agent.first_seen.timestamp() == 100.0  # kept from the first insert
        store.agents.upsert([row])
        assert store.agents.mark_all_offline("restarted") == 1 and store.agents.list("online") == []

        store.tasks.create("t1", "shell", "echo", agent_id="a1", source="llm", retries=2)
        store.tasks.create("t2", "python", "print()", agent_id="a1")
        write_records(
            store,
            new_tasks=[],
            task_updates={"t1": {"status": "running"}},
            log_rows=[
                {"task_id": "t1", "seq": n, "stream": "stdout", "line": f"l{n}", "ts": 1.0} for n in (1, 2, 3)
            ],
        )
        store.logs.append(
            [{"task_id": "t1", "seq": 2, "stream": "stdout", "line": "again", "ts": 1.0}]
        )  # kept
        assert [(e.seq, e.line) for e in store.logs.after("t1", 1)] == [(2, "l2"), (3, "l3")]
        assert (
            store.tasks.count(type="python") == 1 and store.tasks.count(agent_id="a1", status="running") == 1
        )
        assert store.tasks.get("t1").source == "llm" and store.tasks.get("t1").retries == 2
        assert sorted(store.tasks.reap("platform died")) == ["t1", "t2"]
        dead = store.tasks.get("t1")
        assert (dead.status, dead.lost, dead.error_type, dead.error) == (
            "lost",
            True,
            "interrupted",
            "platform died",
        )
    finally:
        store.close()


def test_the_batch_writer_merges_a_new_row_with_its_changes_and_still_updates_a_row_that_exists(
    database_url,
):
    from async_task_system.core.tasks import TaskInfo, TaskKind
    from async_task_system.platform.recorder import new_task_row
    from async_task_system.platform.store import task_row_view
    from async_task_system.platform.writes import BatchWriter

    def row(task_id: str) -> dict:
        info = TaskInfo(
            id=task_id,
            kind=TaskKind.REMOTE,
            name="platform_script",
            arguments={"type": "shell", "script": "echo hi", "agent_id": "a1", "timeout": 5.0},
        )
        return new_task_row(info)

    store = Store(database_url)
    batches = BatchWriter(store)
    try:
        existing = row("old")
        batches.write(new_tasks=[existing])
        assert store.tasks.get("old").to_dict() == task_row_view(existing)  # the view is what is stored
        # One batch: a new row and its changes, and a "new" row whose id is stored already.
        done_at = time.time()
        batches.write(
            new_tasks=[row("new"), row("old")],
            task_updates={
                "new": {"status": "completed", "exit_code": 0, "completed_at": done_at, "labels": {"k": "v"}},
                "old": {"status": "failed", "exit_code": 3},
            },
        )
        new, old = store.tasks.get("new"), store.tasks.get("old")
        assert (new.status, new.exit_code, new.labels, new.script) == ("completed", 0, {"k": "v"}, "echo hi")
        assert abs(new.completed_at.timestamp() - done_at) < 1e-3
        assert (old.status, old.exit_code) == ("failed", 3)  # kept row, changes applied
        # Only new rows: each with its changes is one insert, no UPDATE runs (a trigger counts them).
        _count_updates(store)
        batches.write(new_tasks=[row("n2"), row("n3")], task_updates={"n2": {"status": "running"}})
        assert store.tasks.get("n2").status == "running" and _updates_seen(store) == 0
        batches.write(task_updates={"n3": {"status": "running"}})
        assert _updates_seen(store) == 1  # the trigger does count an update
        # A change without updated_at gets one (the column's onupdate), as the ORM would set it.
        before = store.tasks.get("old").updated_at
        batches.write(task_updates={"old": {"stdout": "x"}})
        assert store.tasks.get("old").updated_at > before
        # A connection the database dropped is replaced at the next batch.
        batches.close()
        batches.write(task_updates={"new": {"stderr": "after"}})
        assert store.tasks.get("new").stderr == "after"
    finally:
        batches.close()
        store.close()


def _count_updates(store: Store) -> None:
    """A trigger that counts the UPDATEs of the tasks table (in a table of its own)."""
    with store.engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE updates_seen (n INTEGER)")
        if store.engine.dialect.name == "sqlite":
            connection.exec_driver_sql(
                "CREATE TRIGGER count_updates AFTER UPDATE ON tasks BEGIN INSERT INTO updates_seen VALUES (1); END"
            )
        else:
            connection.exec_driver_sql(
                "CREATE FUNCTION count_update() RETURNS trigger AS $$ BEGIN INSERT INTO updates_seen VALUES (1); "
                "RETURN NEW; END $$ LANGUAGE plpgsql"
            )
            connection.exec_driver_sql(
                "CREATE TRIGGER count_updates AFTER UPDATE ON tasks FOR EACH ROW EXECUTE FUNCTION count_update()"
            )


def _updates_seen(store: Store) -> int:
    with store.engine.connect() as connection:
        return connection.exec_driver_sql("SELECT COUNT(*) FROM updates_seen").scalar()
