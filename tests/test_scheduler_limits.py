"""The scheduler takes what an LLM writes: every value from the issue's attacks is refused with the
allowed range, runs are rate-capped, and no stored schedule breaks listing or loading."""

from __future__ import annotations

import json
import time

import pytest

from async_task_system import TaskManager
from async_task_system.scheduler import (
    ManualClock,
    ScheduleError,
    ScheduleLimits,
    SqlScheduleStore,
    ToolScheduler,
)
from async_task_system.scheduler.tools import ScheduleTaskTool


def ping(x: int = 0) -> int:
    """Returns x."""
    return x


def _check_site_tool():
    from smolagents import tool

    @tool
    def check_site(url: str) -> str:
        """Checks a site.

        Args:
            url: the address to check.
        """
        return url

    return check_site


@pytest.fixture(name="manager")
def manager_fixture():
    with TaskManager(functions=[ping], tools=[_check_site_tool()], max_workers=2) as manager:
        yield manager


def test_llm_values_out_of_range_are_refused_with_the_allowed_range(manager):
    scheduler = ToolScheduler(manager, clock=ManualClock())
    tool = ScheduleTaskTool(scheduler)
    cases = [
        ({"schedule_type": "interval", "schedule_value": "1e-300"}, "from 1 to 316224000"),
        ({"schedule_type": "interval", "schedule_value": "1e-12"}, "from 1 to 316224000"),
        ({"schedule_type": "interval", "schedule_value": "0.001", "max_runs": 1_000_000}, "from 1 to"),
        ({"schedule_type": "interval", "schedule_value": "1e300"}, "from 1 to 316224000"),
        ({"schedule_type": "interval", "schedule_value": "1e12"}, "from 1 to 316224000"),
        ({"schedule_type": "interval", "schedule_value": "nan"}, "from 1 to"),
        ({"schedule_type": "once", "schedule_value": "9999-12-31T23:59:59+00:00"}, "within max_horizon"),
        ({"schedule_type": "interval", "schedule_value": "60", "max_runs": 10**30}, "from 1 to 1000000"),
    ]
    for arguments, expected in cases:
        started = time.process_time()
        with pytest.raises(ScheduleError, match=expected):
            tool.forward(name="attack", tool_name="check_site", parameters={"url": "x"}, **arguments)
        assert time.process_time() - started < 5  # generous: refused, not computed (1e-300 took 10 s)
    for options, expected in [
        ({"jitter": 1e300}, "jitter must be a non-negative number of seconds from 0 to 86400"),
        ({"start_at": 1e300}, "start_at must be a time from"),
        ({"start_at": -1e300}, "start_at must be a time from"),
        ({"timeout": 1e300}, "timeout must be a positive number of seconds"),
        ({"max_instances": 10**9, "overlap": "allow"}, "max_instances must be an integer from 1 to 100"),
    ]:
        with pytest.raises(ScheduleError, match=expected):
            scheduler.schedule("attack", "interval", "60", "ping", {}, kind="function", **options)
    assert scheduler.list_tasks() == []


def test_limits_can_be_changed_by_the_operator(manager):
    limits = ScheduleLimits(min_interval=0.01, max_jitter=10.0, max_schedules=3)
    scheduler = ToolScheduler(manager, clock=ManualClock(), limits=limits)
    scheduler.schedule("fast", "interval", "0.01", "ping", {}, kind="function")
    with pytest.raises(ScheduleError, match="from 0 to 10"):
        scheduler.schedule("jittery", "interval", "1", "ping", {}, kind="function", jitter=11)
    scheduler.schedule("b", "interval", "1", "ping", {}, kind="function")
    scheduler.schedule("c", "interval", "1", "ping", {}, kind="function")
    with pytest.raises(ScheduleError, match=r"max_schedules=3\): cancel_schedule"):
        scheduler.schedule("d", "interval", "1", "ping", {}, kind="function")
    with pytest.raises(ValueError, match="min_interval"):
        ScheduleLimits(min_interval=0)


def test_schedules_per_owner_are_bounded(manager):
    scheduler = ToolScheduler(manager, clock=ManualClock(), limits=ScheduleLimits(max_schedules=200))
    made = 0
    with pytest.raises(ScheduleError, match="max_schedules=200"):
        for _ in range(20_000):  # the attack's count; bounded loop
            scheduler.schedule("spam", "interval", "3600", "ping", {}, kind="function")
            made += 1
    assert made == 200 and len(scheduler.list_tasks()) == 200


def test_the_run_rate_is_capped_across_schedules(manager):
    clock = ManualClock()
    limits = ScheduleLimits(min_interval=0.01, max_runs_per_second=5)
    scheduler = ToolScheduler(manager, clock=clock, limits=limits)
    fast = [scheduler.schedule(f"s{i}", "interval", "0.01", "ping", {}, kind="function") for i in range(3)]
    clock.advance(1.0)
    started = sum(scheduler.get(s)["run_count"] for s in fast)
    assert 1 <= started <= 5 + 5  # the bucket (5) plus what refills within the simulated second
    skipped = [
        run["error"] for s in fast for run in scheduler.get(s)["history"] if run["status"] == "skipped"
    ]
    assert any("max_runs_per_second=5" in error for error in skipped)
    assert len(manager.list()) == started


BAD_RECORDS = {
    "tiny": {"schedule_type": "interval", "schedule_value": "1e-300"},
    "huge": {"schedule_type": "interval", "schedule_value": "1e300", "next_run": 1e300},
    "far": {"schedule_type": "interval", "schedule_value": "1e12", "next_run": 1e12},
    "jitter": {"schedule_type": "interval", "schedule_value": "60", "jitter": 1e300},
    "runs": {"schedule_type": "interval", "schedule_value": "60", "max_runs": 10**30},
    "start": {"schedule_type": "interval", "schedule_value": "60", "start_at": 1e300, "anchor": 1e300},
    "year9999": {
        "schedule_type": "once",
        "schedule_value": "9999-12-31T23:59:59+00:00",
        "next_run": 253402300799.0,
    },
    "zone": {"schedule_type": "interval", "schedule_value": "60", "timezone": "Mars/Olympus"},
    "last": {"schedule_type": "interval", "schedule_value": "60", "last_run": -1e300},
}


def test_stored_schedules_outside_the_limits_cannot_break_listing_or_loading(database_url):
    import sqlalchemy as sa

    from async_task_system.platform.store import Schedule, Store

    now = time.time()
    store = Store(database_url)
    try:
        rows = []
        for key, values in {
            **BAD_RECORDS,
            "good": {"schedule_type": "interval", "schedule_value": "60"},
        }.items():
            record = {
                "id": f"sch_{key}", "name": key, "tool_name": "ping", "parameters": {}, "kind": "function",
                "enabled": True, "state": "scheduled", "anchor": now + 60, "next_run": now + 60,
                "run_count": 0, "created_at": now, **values,
            }  # fmt: skip
            rows.append(
                {
                    "id": record["id"],
                    "name": key,
                    "schedule_type": record["schedule_type"],
                    "tool_name": "ping",
                    "enabled": True,
                    "state": "scheduled",
                    "next_run": None,
                    "run_count": 0,
                    "record": json.loads(json.dumps(record)),
                }  # fmt: skip
            )
        broken = {"id": "sch_broken", "name": "broken", "schedule_type": "weird", "tool_name": "ping",
                  "enabled": True, "state": "scheduled", "next_run": None, "run_count": 0,
                  "record": {"id": "sch_broken", "schedule_type": "weird"}}  # fmt: skip
        with store.engine.begin() as connection:  # rows as an older version may have written them
            connection.execute(sa.insert(Schedule.__table__), [*rows, broken])
        with TaskManager(functions=[ping]) as manager:
            scheduler = ToolScheduler(manager, store=SqlScheduleStore(store))
            listed = {row["id"]: row for row in scheduler.list_tasks()}  # must not raise
            assert set(listed) == {
                f"sch_{key}" for key in [*BAD_RECORDS, "good"]
            }  # the unreadable one skipped
            assert listed["sch_good"]["state"] == "scheduled"
            for key in BAD_RECORDS:
                row = listed[f"sch_{key}"]
                assert row["state"] == "invalid" and row["enabled"] is False, (key, row)
                assert "cancel_schedule it" in row["last_error"], (key, row)
                scheduler.get(f"sch_{key}")  # one schedule's view works too
            with pytest.raises(ScheduleError, match="outside the limits"):
                scheduler.run_now("sch_tiny")
            assert scheduler.cancel("sch_huge") is True
            scheduler.shutdown()
    finally:
        store.close()
