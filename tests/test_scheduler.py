"""ToolScheduler: fire times on a manual clock (interval, once, cron with seconds and across DST),
misfire and catch-up, overlap, jitter, start/end, max runs, pause/resume, run now; a few runs on
the real timer; persistence across a restart in SQLite; bad input; the LLM tools on a CodeAgent."""

from __future__ import annotations

import asyncio
import random
import threading
from datetime import datetime, timezone

import pytest

from async_task_system import ScriptedModel, TaskManager, TaskStatus, create_async_agent
from async_task_system.agents.testing import message_text
from async_task_system.scheduler.engine import (
    ManualClock,
    MemoryScheduleStore,
    ScheduleError,
    ScheduleLimits,
    ScheduleType,
    SqlScheduleStore,
    ToolScheduler,
    UnknownScheduleError,
)
from async_task_system.scheduler.tools import attach_scheduler

T0 = datetime(2024, 1, 1, tzinfo=timezone.utc).timestamp()


def ping(x: int = 0) -> int:
    """Returns x."""
    return x


def boom() -> None:
    raise ValueError("the sensor is offline")


@pytest.fixture
def manager():
    with TaskManager(max_workers=8, functions=[ping, boom]) as m:
        yield m


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(T0)


def settle(scheduler: ToolScheduler, schedule_id: str) -> list[dict]:
    """Wait for every run started so far to end, then return the history."""
    assert scheduler.wait_idle(schedule_id, timeout=10)
    return scheduler.get(schedule_id)["history"]


def fired_at(history: list[dict], status: str = "completed") -> list[float]:
    return [
        datetime.fromisoformat(run["scheduled_for"]).timestamp() - T0
        for run in history
        if run["status"] == status
    ]


def make(scheduler, stype, value, **options):
    options.setdefault("kind", "function")
    if "overlap" not in options:  # fast runs fired back to back by the manual clock may overlap
        options.update(overlap="allow", max_instances=options.get("max_instances") or 50)
    return scheduler.schedule(
        "test", stype, value, options.pop("tool", "ping"), options.pop("params", None), **options
    )


# ---------------------------------------------------------------------------------------------- fire times


def test_interval_fires_anchored_on_one_timer(manager, clock):
    s = ToolScheduler(manager, clock=clock)
    sid = make(s, ScheduleType.INTERVAL, "10", params={"x": 1})
    other = make(s, "interval", 7)
    assert clock.armed == 1  # one timer for every schedule
    clock.advance(35)
    assert fired_at(settle(s, sid)) == [10, 20, 30]
    assert fired_at(settle(s, other)) == [7, 14, 21, 28, 35]
    [row] = [r for r in s.list_tasks() if r["id"] == sid]
    assert {k: row[k] for k in ("id", "name", "type", "enabled", "next_run", "run_count")} == {
        "id": sid, "name": "test", "type": "interval", "enabled": True,
        "next_run": "2024-01-01T00:00:40+00:00", "run_count": 3,
    }  # fmt: skip
    assert clock.armed == 1


def test_once_runs_once_then_finishes(manager, clock):
    s = ToolScheduler(manager, clock=clock)
    sid = make(s, "once", "2024-01-01T00:01:00Z")
    clock.advance(59)
    assert s.get(sid)["run_count"] == 0
    clock.advance(120)
    assert fired_at(settle(s, sid)) == [60]
    info = s.get(sid)
    assert info["state"] == "finished" and not info["enabled"] and info["next_run"] is None
    assert clock.armed == 0


def test_cron_five_and_six_fields(manager, clock):
    s = ToolScheduler(manager, clock=clock)
    every_ten_minutes = make(s, "cron", "*/10 * * * *")
    every_fifteen_seconds = make(s, "cron", "*/15 * * * * *")  # seconds first
    assert s.get(every_ten_minutes)["next_run"] == "2024-01-01T00:10:00+00:00"
    clock.advance(60)
    assert fired_at(settle(s, every_fifteen_seconds)) == [15, 30, 45, 60]
    clock.advance(1200)
    assert fired_at(settle(s, every_ten_minutes)) == [600, 1200]


def test_cron_in_a_time_zone_across_both_dst_changes(manager):
    new_york = "America/New_York"
    # Spring forward, 2024-03-10: 02:30 does not exist; the job runs at 03:00 (Vixie cron does the same).
    clock = ManualClock("2024-03-09T12:00:00-05:00")
    s = ToolScheduler(manager, clock=clock)
    sid = make(s, "cron", "30 2 * * *", timezone=new_york)
    clock.advance(3 * 86400)
    runs = [r["scheduled_for"] for r in settle(s, sid)]
    assert s.get(sid)["next_run"] == "2024-03-13T02:30:00-04:00"
    assert [datetime.fromisoformat(t).timestamp() for t in runs] == [
        datetime.fromisoformat(x).timestamp()
        for x in ("2024-03-10T03:00:00-04:00", "2024-03-11T02:30:00-04:00", "2024-03-12T02:30:00-04:00")
    ]
    # Fall back, 2024-11-03: 01:30 happens twice; a fixed-time job runs once, an every-30-minutes job by real time.
    clock = ManualClock("2024-11-02T12:00:00-04:00")
    s = ToolScheduler(manager, clock=clock)
    daily = make(s, "cron", "30 1 * * *", timezone=new_york)
    half_hourly = make(s, "cron", "*/30 1 * * *", timezone=new_york, overlap="allow", max_instances=9)
    clock.advance(86400)
    assert [datetime.fromisoformat(r["scheduled_for"]).timestamp() for r in settle(s, daily)] == [
        datetime.fromisoformat("2024-11-03T01:30:00-04:00").timestamp()
    ]
    assert len(settle(s, half_hourly)) == 2  # 01:00, 01:30 of EDT (fixed hour: the repeat is skipped)
    # A wildcard hour follows real time: at 01:30 EDT the next full hour is 01:00 EST (the repeated hour).
    s = ToolScheduler(manager, clock=ManualClock("2024-11-03T01:30:00-04:00"))
    hourly = make(s, "cron", "0 * * * *", timezone=new_york)
    assert s.get(hourly)["next_run"] == "2024-11-03T01:00:00-05:00"


# ---------------------------------------------------------------------------------------------- policies


def test_misfire_grace_counts_a_little_lateness_as_on_time(manager, clock):
    s = ToolScheduler(manager, clock=clock)
    sid = make(s, "interval", "10", misfire_grace=1.0, catch_up="none")
    clock.jump(10.5)
    assert [(r["status"], r["catch_up"]) for r in settle(s, sid)] == [("completed", False)]


@pytest.mark.parametrize(
    ("catch_up", "window", "expected_runs", "missed"),
    [
        ("none", None, [], True),
        ("one", None, [10], False),
        ("all", None, [10, 20, 30], False),
        ("all", 12, [30], True),
    ],
)
def test_catch_up_after_a_stall(manager, clock, catch_up, window, expected_runs, missed):
    s = ToolScheduler(manager, clock=clock)
    sid = make(
        s, "interval", "10", catch_up=catch_up, catch_up_window=window, overlap="allow", max_instances=5
    )
    clock.jump(35)  # the process stalled from 0 to 35 s: fires at 10, 20, 30 are late beyond the grace time
    history = settle(s, sid)
    assert fired_at(history) == expected_runs
    assert all(r["catch_up"] for r in history if r["status"] == "completed")
    assert any(r["status"] == "missed" and "misfire_grace" in r["error"] for r in history) is missed
    assert s.get(sid)["next_run"] == "2024-01-01T00:00:40+00:00"


def test_catch_up_one_is_covered_by_an_on_time_run(manager, clock):
    s = ToolScheduler(manager, clock=clock)
    sid = make(s, "interval", "10", misfire_grace=5.0)
    clock.jump(32)  # 10 and 20 missed, 30 on time (2 s late, grace 5 s): one run, not two
    assert [(fired_at([r]), r["catch_up"]) for r in settle(s, sid)] == [([30], False)]


def _blocking(manager: TaskManager) -> threading.Event:
    release = threading.Event()

    def hold() -> str:
        release.wait(10)
        return "done"

    manager.register_function(hold)
    return release


@pytest.mark.parametrize("overlap", ["skip", "queue", "allow"])
def test_overlap_policies(manager, clock, overlap):
    release = _blocking(manager)
    s = ToolScheduler(manager, clock=clock)
    sid = make(
        s, "interval", "10", tool="hold", overlap=overlap, max_instances=2 if overlap == "allow" else None
    )
    clock.advance(30)  # three fires while the first run holds
    statuses = [r["status"] for r in s.get(sid)["history"]]
    if overlap == "skip":
        assert statuses.count("skipped") == 2 and len(s.get(sid)["running"]) == 1
    elif overlap == "queue":
        assert (
            statuses.count("skipped") == 1 and "a run is queued already" in s.get(sid)["history"][-1]["error"]
        )
    else:
        assert statuses.count("skipped") == 1 and len(s.get(sid)["running"]) == 2
    release.set()
    history = settle(s, sid)
    if overlap == "queue":  # the queued run started when the first ended
        history = settle(s, sid)
        assert [r["status"] for r in history].count("completed") == 2
    assert s.get(sid)["running"] == []


def test_jitter_delays_each_fire_within_its_bound(manager, clock):
    s = ToolScheduler(manager, clock=clock, rng=random.Random(7))
    ids = [make(s, "interval", "10", jitter=4.0) for _ in range(30)]
    clock.advance(14.5)
    delays = []
    for sid in ids:
        for run in settle(s, sid):
            started = datetime.fromisoformat(run["started_at"]).timestamp()
            delays.append(started - datetime.fromisoformat(run["scheduled_for"]).timestamp())
    assert delays and all(0 <= d <= 4.0 for d in delays)
    assert max(delays) - min(delays) > 1  # really spread


def test_start_end_and_max_runs(manager, clock):
    s = ToolScheduler(manager, clock=clock)
    window = make(s, "interval", "10", start_at=T0 + 100, end_at="2024-01-01T00:02:05+00:00")
    capped = make(s, "interval", "10", max_runs=2)
    clock.advance(300)
    assert fired_at(settle(s, window)) == [100, 110, 120]
    assert fired_at(settle(s, capped)) == [10, 20]
    assert {s.get(i)["state"] for i in (window, capped)} == {"finished"}
    assert clock.armed == 0  # nothing left to wake for


def test_pause_resume_and_run_now(manager, clock):
    s = ToolScheduler(manager, clock=clock)
    sid = make(s, "interval", "10")
    s.pause(sid)
    assert s.get(sid)["enabled"] is False and clock.armed == 0
    clock.advance(35)
    assert s.get(sid)["run_count"] == 0
    s.resume(sid)
    assert (
        s.get(sid)["next_run"] == "2024-01-01T00:00:40+00:00"
    )  # fires missed while paused are not caught up
    task_id = s.run_now(sid)
    assert not manager.wait([task_id], timeout=5).not_done and manager.result(task_id) == 0
    clock.advance(5)
    assert fired_at(settle(s, sid)) == [35, 40]


# ---------------------------------------------------------------------------------------------- errors


def test_a_failing_tool_and_a_hanging_one(manager, clock):
    ended = []
    s = ToolScheduler(manager, clock=clock)
    failing = make(s, "interval", "10", tool="boom", callback=lambda schedule, run: ended.append(run))
    release = _blocking(manager)
    hanging = make(s, "interval", "10", tool="hold", timeout=0.2)
    clock.advance(10)
    [run] = settle(s, failing)
    assert run["status"] == "failed" and "the sensor is offline" in run["error"]
    assert ended and ended[0].status == "failed"
    [run] = settle(s, hanging)
    assert run["status"] == "failed" and run["error"].startswith("timeout")
    assert s.list_tasks()[0]["last_status"] == "failed"
    release.set()


def test_bad_input_says_how_to_fix_it(manager, clock):
    s = ToolScheduler(manager, clock=clock)
    cases = [
        (("cron", "61 * * * *"), {}, "invalid cron expression"),
        (("cron", "* * *"), {}, "use 5"),
        (("once", "2023-12-31T23:00:00Z"), {}, "is in the past"),
        (("once", "tomorrow"), {}, "ISO 8601"),
        (("interval", "0"), {}, "positive number of seconds"),
        (("interval", "ten"), {}, "positive number of seconds"),
        (("weekly", "1"), {}, "'once', 'interval', 'cron'"),
        (("cron", "0 9 * * *"), {"timezone": "Mars/Olympus"}, "IANA"),
        (("interval", "10"), {"catch_up": "some"}, "catch_up must be one of"),
        (("interval", "10"), {"overlap": "allow"}, "max_instances >= 2"),
        (("interval", "10"), {"tool": "nope"}, "Available functions: boom, ping"),
        (("interval", "10"), {"params": {"y": 1}}, "y"),
    ]
    for (stype, value), options, expected in cases:
        with pytest.raises(ScheduleError, match=expected):
            make(s, stype, value, **options)
    with pytest.raises(UnknownScheduleError, match="Known schedule ids"):
        s.pause("sch_missing")
    assert s.cancel("sch_missing") is False
    assert isinstance(ScheduleError("x"), ValueError)


# ---------------------------------------------------------------------------------------------- persistence


def test_schedules_survive_a_restart_and_catch_up(tmp_path):
    url = f"sqlite:///{tmp_path / 'schedules.db'}"
    with TaskManager(functions=[ping]) as first:
        clock = ManualClock(T0)
        s = ToolScheduler(first, store=SqlScheduleStore(url), clock=clock)
        kept = make(s, "interval", "10", params={"x": 5}, catch_up="one")
        dropped = make(s, "interval", "10", catch_up="none")
        gone = make(s, "cron", "* * * * *")
        s.cancel(gone)
        clock.advance(10)
        settle(s, kept)
        settle(s, dropped)
    # The process was down from 10 s to 105 s; a new one loads the schedules and catches up by policy.
    with TaskManager(functions=[ping]) as second:
        clock = ManualClock(T0 + 105)
        s = ToolScheduler(second, store=SqlScheduleStore(url), clock=clock)
        assert {row["id"] for row in s.list_tasks()} == {kept, dropped}
        clock.advance(0)
        history = settle(s, kept)
        assert [(fired_at([r]), r["status"], r["catch_up"]) for r in history] == [
            ([10], "completed", False),
            ([20], "completed", True),  # one run for the fires at 20 ... 100
        ]
        assert s.get(kept)["run_count"] == 2 and s.get(kept)["parameters"] == {"x": 5}
        assert [r["status"] for r in settle(s, dropped)] == ["completed", "missed"]
        assert s.get(kept)["next_run"] == "2024-01-01T00:01:50+00:00"


def test_memory_store_round_trip_marks_runs_in_flight_as_lost(manager, clock):
    store = MemoryScheduleStore()
    release = _blocking(manager)
    s = ToolScheduler(manager, store=store, clock=clock)
    sid = make(s, "interval", "10", tool="hold")
    clock.advance(10)
    s.shutdown()
    again = ToolScheduler(manager, store=store, clock=clock)
    assert again.get(sid)["history"][0]["status"] == "lost"
    release.set()
    again.shutdown()


# ---------------------------------------------------------------------------------------------- real timer


def test_real_timer_runs_interval_and_once_schedules():
    done = threading.Event()
    runs = []

    def record(schedule, run):
        runs.append((schedule["id"], run.status, run.result))
        if len(runs) == 4:
            done.set()

    with TaskManager(functions=[ping]) as manager:
        s = manager.extension("scheduler")
        assert manager.extension("scheduler") is s
        s.limits = ScheduleLimits(min_interval=0.01)  # an operator's choice: fast schedules
        every = s.schedule("fast", "interval", 0.05, "ping", {"x": 2}, record, kind="function", max_runs=3)
        soon = datetime.fromtimestamp(datetime.now().timestamp() + 0.1, timezone.utc).isoformat()
        once = s.schedule("once", "once", soon, "ping", {"x": 9}, record, kind="function")
        assert done.wait(5), runs
        assert sorted(runs) == sorted([(every, "completed", 2)] * 3 + [(once, "completed", 9)])
        assert {row["state"] for row in s.list_tasks()} == {"finished"}
        infos = manager.list()
        assert len(infos) == 4 and all(i.status is TaskStatus.COMPLETED for i in infos)  # runs are tasks


def test_async_code_and_an_async_callback():
    async def main() -> list:
        seen: list = []
        finished = asyncio.Event()
        loop = asyncio.get_running_loop()

        async def on_run(schedule, run):
            assert asyncio.get_running_loop() is loop  # the loop that made the schedule
            seen.append(run.result)
            finished.set()

        with TaskManager(functions=[ping]) as manager:
            async with ToolScheduler(manager, limits=ScheduleLimits(min_interval=0.01)) as s:
                s.schedule("a", "interval", "0.05", "ping", {"x": 3}, on_run, kind="function", max_runs=1)
                await asyncio.wait_for(finished.wait(), 5)
        return seen

    assert asyncio.run(main()) == [3]


# ---------------------------------------------------------------------------------------------- LLM tools


def test_llm_tools_on_a_code_agent():
    from smolagents import tool

    @tool
    def check_site(url: str) -> str:
        """Checks a site.

        Args:
            url: the address to check.
        """
        return f"{url} is up"

    model = ScriptedModel(
        [
            "<code>\n"
            "s = schedule_task('check site', 'interval', '600', 'check_site', {'url': 'https://example.com'})\n"
            "print(s['id'], s['next_run'])\n"
            "try:\n"
            "    schedule_task('bad', 'cron', 'every monday', 'check_site', {'url': 'x'})\n"
            "except Exception as e:\n"
            "    print('ERR', e)\n"
            "</code>",
            "<code>\n"
            "rows = list_schedules()\n"
            "cancelled = cancel_schedule(rows[0]['id'])\n"
            "final_answer([len(rows), rows[0]['name'], rows[0]['type'], cancelled['cancelled'], len(list_schedules())])\n"
            "</code>",
        ]
    )
    with create_async_agent(tools=[check_site], model=model, verbosity_level=0) as agent:
        scheduler = attach_scheduler(agent)
        assert scheduler is agent.task_manager.extension("scheduler")
        answer = agent.run("Check example.com every 10 minutes.")
    assert answer == [1, "check site", "interval", True, 0]
    observation = "\n".join(message_text(m) for m in model.calls[1])
    assert "ERR" in observation and "has 2 fields: use 5" in observation
    assert "Schedules: schedule_task(" in message_text(model.calls[0][0])  # the guidance
