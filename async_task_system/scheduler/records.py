"""A schedule and its runs as records: what it runs, when, under which policies, its state and history.

``to_record``/``from_record`` are the JSON-able dicts a :class:`~.stores.ScheduleStore` keeps;
``to_dict`` is what users read (ISO 8601 times in the schedule's time zone).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .triggers import Trigger
from .values import UTC, ScheduleError, ScheduleType, iso, zone

__all__ = ["ScheduleRun", "ScheduledTask", "HISTORY_LIMIT"]

HISTORY_LIMIT = 20  # runs kept per schedule (skipped and missed fires count as entries)


@dataclass
class ScheduleRun:
    """One fire of a schedule: the task it started (if any), and how it ended.

    ``status`` is a task status (``pending`` ... ``completed``/``failed``/``cancelled``), or
    ``skipped`` (overlap policy), ``missed`` (late beyond ``misfire_grace``, not caught up) or
    ``lost`` (in flight when the scheduler's process stopped).
    """

    scheduled_for: float
    status: str
    task_id: str | None = None
    started_at: float | None = None
    finished_at: float | None = None
    error: str | None = None
    catch_up: bool = False
    result: Any = field(default=None, repr=False, compare=False)  # in memory only, for the callback

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheduled_for": iso(self.scheduled_for),
            "status": self.status,
            "task_id": self.task_id,
            "started_at": iso(self.started_at),
            "finished_at": iso(self.finished_at),
            "error": self.error,
            "catch_up": self.catch_up,
        }

    def to_record(self) -> dict[str, Any]:
        record = dict(self.__dict__)
        del record["result"]  # any object: not stored
        return record


@dataclass
class ScheduledTask:
    """A schedule: what to run, when, under which policies, and its state (seed 001's ``ScheduledTask``)."""

    id: str
    name: str
    schedule_type: ScheduleType
    schedule_value: str
    tool_name: str
    parameters: dict[str, Any]
    kind: str = "tool"
    timezone: str | None = None
    start_at: float | None = None
    end_at: float | None = None
    max_runs: int | None = None
    misfire_grace: float = 1.0
    catch_up: str = "one"
    catch_up_window: float | None = None
    overlap: str = "skip"
    max_instances: int = 1
    jitter: float = 0.0
    timeout: float | None = None
    retries: int = 0
    enabled: bool = True
    state: str = "scheduled"  # scheduled | paused | finished
    anchor: float | None = None  # INTERVAL: the first fire, from which all others count
    next_run: float | None = None
    last_run: float | None = None
    run_count: int = 0
    created_at: float = 0.0
    history: deque[ScheduleRun] = field(default_factory=lambda: deque(maxlen=HISTORY_LIMIT))
    callback: Callable[..., Any] | None = None
    # Not stored: the runtime state of this process.
    active: set[str] = field(default_factory=set)
    queued: bool = False
    offset: float = 0.0  # this fire's jitter
    due: float | None = None  # next_run + offset: when the timer wakes for it
    loop: Any = None
    trigger: Trigger | None = None

    _STORED = (
        "id", "name", "schedule_value", "tool_name", "parameters", "kind", "timezone", "start_at", "end_at",
        "max_runs", "misfire_grace", "catch_up", "catch_up_window", "overlap", "max_instances", "jitter",
        "timeout", "retries", "enabled", "state", "anchor", "next_run", "last_run", "run_count", "created_at",
    )  # fmt: skip

    def to_record(self) -> dict[str, Any]:
        """A JSON-able dict of everything a store keeps."""
        record = {key: getattr(self, key) for key in self._STORED}
        record["schedule_type"] = self.schedule_type.value
        record["history"] = [run.to_record() for run in self.history]
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> ScheduledTask:
        values = {key: record[key] for key in cls._STORED if key in record}
        task = cls(schedule_type=ScheduleType(record["schedule_type"]), **values)
        task.history.extend(ScheduleRun(**run) for run in record.get("history", ()))
        return task

    def next_after(self, t: float) -> float | None:
        """The schedule's next fire strictly after ``t``, within start_at/end_at (its trigger is set)."""
        assert self.trigger is not None
        if self.start_at is not None and t < self.start_at:
            t = self.start_at - 1e-6
        fire = self.trigger.next_after(t)
        if fire is None or (self.end_at is not None and fire > self.end_at):
            return None
        return fire

    def to_dict(self) -> dict[str, Any]:
        """What ``list_tasks`` shows: the seed's fields first, then the policies and the last run."""
        try:
            tz = zone(self.timezone)
        except ScheduleError:  # a stored zone this machine does not know: shown in UTC
            tz = UTC
        last = self.history[-1] if self.history else None
        return {
            "id": self.id,
            "name": self.name,
            "type": self.schedule_type.value,
            "enabled": self.enabled,
            "next_run": iso(self.next_run, tz) if self.enabled else None,
            "run_count": self.run_count,
            "state": self.state,
            "schedule_value": self.schedule_value,
            "timezone": self.timezone or "UTC",
            "tool_name": self.tool_name,
            "parameters": self.parameters,
            "last_run": iso(self.last_run, tz),
            "last_status": last.status if last else None,
            "last_error": last.error if last else None,
            "running": sorted(self.active),
            "max_runs": self.max_runs,
        }
