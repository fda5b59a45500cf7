"""Schedules in the platform store (SQLite file and real PostgreSQL): restart, catch-up by policy,
run history with status and error, the scheduler extension on a manager with a journal database, and the
SQL store reached by name (a URL as the store, the ``schedule_store`` extension)."""

from __future__ import annotations

import subprocess
import sys

from test_scheduler import T0, boom, fired_at, make, ping, settle

from async_task_system import TaskManager
from async_task_system.platform.store import PlatformSchedules, Store
from async_task_system.scheduler.engine import ManualClock, SqlScheduleStore, ToolScheduler


def test_schedules_survive_a_restart_and_catch_up_by_policy(database_url):
    with TaskManager(functions=[ping, boom]) as first:
        clock = ManualClock(T0)
        store = SqlScheduleStore(database_url)
        s = ToolScheduler(first, store=store, clock=clock)
        one = make(s, "interval", "10", params={"x": 5}, catch_up="one")
        every = make(s, "interval", "10", catch_up="all", catch_up_window=1000)
        none = make(s, "interval", "10", catch_up="none")
        failing = make(s, "interval", "10", tool="boom", catch_up="none")
        gone = make(s, "cron", "* * * * *")
        s.cancel(gone)
        clock.advance(10)
        for sid in (one, every, none, failing):
            settle(s, sid)
        s.shutdown()
        store.close()
    # Down from 10 s to 45 s: a new process on the same database loads them and catches up.
    with TaskManager(functions=[ping, boom]) as second:
        clock = ManualClock(T0 + 45)
        store = SqlScheduleStore(database_url)
        s = ToolScheduler(second, store=store, clock=clock)
        assert {row["id"] for row in s.list_tasks()} == {one, every, none, failing}
        assert s.get(one)["parameters"] == {"x": 5} and s.get(one)["run_count"] == 1
        clock.advance(0)
        assert [(fired_at([r]), r["catch_up"]) for r in settle(s, one)] == [([10], False), ([20], True)]
        assert fired_at(settle(s, every)) == [10, 20, 30, 40]
        assert [r["status"] for r in settle(s, none)] == ["completed", "missed"]
        failed = settle(s, failing)[0]
        assert failed["status"] == "failed" and "the sensor is offline" in failed["error"]
        s.shutdown()
        store.close()


def test_run_history_rows_keep_status_and_error(database_url):
    with Store(database_url) as platform, TaskManager(functions=[ping, boom]) as manager:
        clock = ManualClock(T0)
        s = ToolScheduler(manager, store=SqlScheduleStore(platform), clock=clock)
        sid = make(s, "interval", "10", tool="boom")
        clock.advance(20)
        settle(s, sid)
        s.shutdown()
        runs = PlatformSchedules(platform).runs(sid)
        assert [r.status for r in runs] == ["failed", "failed"]
        assert all("the sensor is offline" in r.error and r.task_id for r in runs)
        assert runs[0].scheduled_for.timestamp() == T0 + 10
        row = PlatformSchedules(platform).get(sid)
        assert row.run_count == 2 and row.schedule_type == "interval" and row.next_run.timestamp() == T0 + 30
        s2 = ToolScheduler(manager, store=SqlScheduleStore(platform), clock=clock)
        s2.cancel(sid)
        assert PlatformSchedules(platform).get(sid) is None and PlatformSchedules(platform).runs(sid) == []
        s2.shutdown()


def test_in_flight_runs_are_lost_after_a_restart(database_url):
    import threading

    release = threading.Event()

    def hold() -> None:
        release.wait(30)

    with Store(database_url) as platform, TaskManager(functions=[hold]) as manager:
        clock = ManualClock(T0)
        s = ToolScheduler(manager, store=SqlScheduleStore(platform), clock=clock)
        sid = make(s, "interval", "10", tool="hold")
        clock.advance(10)
        s.shutdown()
        again = ToolScheduler(manager, store=SqlScheduleStore(platform), clock=clock)
        assert again.get(sid)["history"][0]["status"] == "lost"
        release.set()
        again.shutdown()


def test_the_scheduler_extension_persists_in_the_managers_journal_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'journal.db'}"
    with TaskManager(functions=[ping], journal=url) as manager:
        scheduler = manager.extension("scheduler")
        sid = scheduler.schedule("nightly", "cron", "0 3 * * *", "ping", kind="function")
    with Store(url) as platform:
        assert PlatformSchedules(platform).get(sid).name == "nightly"


def test_a_database_url_as_the_store_opens_the_sql_store(database_url):
    with TaskManager(functions=[ping]) as manager:
        s = ToolScheduler(manager, store=database_url, clock=ManualClock(T0))
        assert isinstance(s.store, SqlScheduleStore)
        sid = make(s, "interval", "10", params={"x": 2})
        s.shutdown()
    with Store(database_url) as platform:
        assert PlatformSchedules(platform).get(sid).run_count == 0
    with TaskManager(functions=[ping]) as manager:
        again = ToolScheduler(manager, store=database_url, clock=ManualClock(T0 + 1))
        assert again.get(sid)["parameters"] == {"x": 2}
        again.cancel(sid)
        again.shutdown()


def test_the_schedule_store_extension_is_the_sql_store_in_the_journal_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'journal.db'}"
    with TaskManager(functions=[ping], journal=url) as manager:
        store = manager.extension("schedule_store")
        assert isinstance(store, SqlScheduleStore) and store is manager.extension("schedule_store")
        s = ToolScheduler(manager, store=store, clock=ManualClock(T0))
        sid = make(s, "interval", "10")
        s.shutdown()
    with Store(url) as platform:
        assert PlatformSchedules(platform).get(sid).schedule_type == "interval"


def test_the_scheduler_reaches_the_sql_store_by_name_without_importing_the_platform():
    code = (
        "import sys\n"
        "import async_task_system.scheduler as scheduler, async_task_system.scheduler.engine as engine\n"
        "print('LOADED', sorted(m for m in sys.modules if m.startswith(('async_task_system.platform', 'sqlalchemy'))))\n"
        "from async_task_system.platform.schedule_store import SqlScheduleStore\n"
        "print(scheduler.SqlScheduleStore is SqlScheduleStore is engine.SqlScheduleStore)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["LOADED []", "True"], out.stdout
