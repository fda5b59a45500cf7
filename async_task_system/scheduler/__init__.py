"""Schedules: run a tool later or repeatedly (once, interval, cron), with the LLM's tools to
manage them.

values (schedule types, times and durations as written, ScheduleError), triggers (next fire times),
clock (the wall clock, ManualClock), records (ScheduledTask, ScheduleRun), callbacks (run callbacks, outside the lock), policies (ScheduleLimits,
the run-rate cap, misfire and catch-up), validation (what ``schedule`` accepts), stores (the
ScheduleStore protocol, the memory store; the SQL store is the platform's, wired in by name),
engine (ToolScheduler), tools (the LLM's tools).
"""

from typing import Any

from .engine import (  # noqa: F401 - the package's names
    Clock,
    ManualClock,
    MemoryScheduleStore,
    ScheduledTask,
    ScheduleError,
    ScheduleLimits,
    ScheduleRun,
    ScheduleStore,
    ScheduleType,
    SystemClock,
    ToolScheduler,
    UnknownScheduleError,
    __all__,
    scheduler_extension,
)
from .stores import sql_store_class


def __getattr__(name: str) -> Any:
    # SqlScheduleStore is the platform's, wired in by name: looked up (and SQLAlchemy loaded) on first use.
    if name == "SqlScheduleStore":
        return sql_store_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
