"""What :meth:`ToolScheduler.schedule <.engine.ToolScheduler.schedule>` accepts: every value of a new
schedule checked against the :class:`~.policies.ScheduleLimits` (schedules come from LLM calls:
hostile input), and stored schedules checked again when a scheduler loads them.
"""

from __future__ import annotations

import math
import secrets
from typing import Any

from ..core.errors import TaskValidationError
from ..core.manager import TaskManager
from ..core.tasks import TaskKind
from .policies import CATCH_UP, OVERLAP, ScheduleLimits
from .records import ScheduledTask
from .triggers import CronTrigger, IntervalTrigger, OnceTrigger, Trigger
from .values import UTC, ScheduleError, ScheduleType, check_choice, check_count, iso, seconds, to_epoch, zone

__all__ = ["ScheduleChecker"]


class ScheduleChecker:
    """Builds schedules from a caller's values within ``limits``; tools are looked up in ``manager``.

    Every refusal is a :class:`~.values.ScheduleError` saying how to fix the value.
    """

    def __init__(self, limits: ScheduleLimits, manager: TaskManager) -> None:
        self.limits = limits
        self.manager = manager

    def new_schedule(
        self,
        name: str,
        schedule_type: ScheduleType | str,
        schedule_value: str | float,
        tool_name: str,
        parameters: dict[str, Any] | None,
        now: float,
        *,
        held: int,
        **options: Any,
    ) -> ScheduledTask:
        """A checked schedule (``sch_<8 hex>``) with its trigger and first fire (``next_run``) set;
        ``held`` is how many schedules the scheduler holds already (``max_schedules`` bounds it).
        ``options`` are every keyword of :meth:`ToolScheduler.schedule <.engine.ToolScheduler.schedule>`
        from ``kind`` to ``enabled`` (their defaults are there)."""
        o = options
        kind, timezone = o["kind"], o["timezone"]
        stype = ScheduleType.parse(schedule_type)
        if not isinstance(name, str) or not name.strip():
            raise ScheduleError("name must be a non-empty string that says what the schedule is for")
        tz = zone(timezone)
        limits = self.limits
        horizon = limits.max_horizon
        if held >= limits.max_schedules:
            raise ScheduleError(
                f"this agent has {held} schedules, the most it may hold "
                f"(max_schedules={limits.max_schedules}): cancel_schedule the ones no longer needed first"
            )
        task = ScheduledTask(
            id=f"sch_{secrets.token_hex(4)}",
            name=name.strip()[:200],
            schedule_type=stype,
            schedule_value=str(schedule_value).strip(),
            tool_name=tool_name,
            parameters=self.target(kind, tool_name, parameters),
            kind=str(TaskKind.parse(kind).value),
            timezone=None if tz is UTC else timezone,
            start_at=None if o["start_at"] is None else self.time(o["start_at"], tz, "start_at", now),
            end_at=None if o["end_at"] is None else self.time(o["end_at"], tz, "end_at", now),
            max_runs=check_count(o["max_runs"], "max_runs", maximum=limits.max_runs),
            misfire_grace=seconds(o["misfire_grace"], "misfire_grace", positive=False, maximum=horizon),
            catch_up=check_choice(o["catch_up"], CATCH_UP, "catch_up"),
            catch_up_window=seconds(o["catch_up_window"], "catch_up_window", allow_none=True, maximum=horizon),
            overlap=check_choice(o["overlap"], OVERLAP, "overlap"),
            max_instances=check_count(o["max_instances"], "max_instances", maximum=limits.max_instances) or 1,
            jitter=seconds(o["jitter"], "jitter", positive=False, maximum=limits.max_jitter),
            timeout=seconds(o["timeout"], "timeout", allow_none=True, maximum=horizon),
            retries=check_count(o["retries"], "retries", zero=True, maximum=limits.max_instances) or 0,
            enabled=bool(o["enabled"]),
            created_at=now,
        )  # fmt: skip
        if task.overlap == "allow" and task.max_instances < 2:
            raise ScheduleError(
                "overlap='allow' lets runs overlap up to max_instances at once: give max_instances >= 2 "
                "(e.g. max_instances=3), or use overlap='skip' or 'queue'"
            )
        if task.start_at is not None and task.end_at is not None and task.end_at <= task.start_at:
            raise ScheduleError(f"end_at ({iso(task.end_at)}) must be after start_at ({iso(task.start_at)})")
        if stype is ScheduleType.ONCE:
            at = self.time(task.schedule_value, tz, "schedule_value for a 'once' schedule", now)
            if at <= now:
                raise ScheduleError(
                    f"the time {task.schedule_value!r} is in the past (now is {iso(now, tz)}): give a future ISO "
                    f"time such as {iso(now + 3600, tz)!r}, or use run_now for a run at once"
                )
            task.schedule_value = iso(at, tz) or task.schedule_value
        elif stype is ScheduleType.INTERVAL:
            interval = self.interval(task.schedule_value, "schedule_value for an 'interval' schedule")
            task.anchor = task.start_at if task.start_at is not None else now + interval
        task.trigger = self.trigger(task)
        first = task.next_after(now)  # strictly after now; start_at itself may be the first fire
        if first is None or (task.end_at is not None and first > task.end_at):
            raise ScheduleError(
                f"schedule {name!r} would never run: its first fire after now is past end_at ({iso(task.end_at, tz)})"
            )
        if first > now + horizon:
            raise ScheduleError(
                f"schedule {name!r} would first run at {iso(first, tz)}, beyond the horizon of "
                f"{horizon:.15g} s (until {iso(now + horizon, tz)}): choose an earlier time or a shorter interval"
            )
        task.next_run = first
        return task

    def time(self, value: Any, tz: Any, what: str, now: float) -> float:
        """An epoch time within ``max_horizon`` of now, or ScheduleError with the allowed range."""
        horizon = self.limits.max_horizon
        try:
            when = to_epoch(value, tz, what)
        except (OverflowError, OSError) as exc:  # a datetime beyond what the platform's clock holds
            raise ScheduleError(
                f"{what} is out of range ({exc}): give a time within {horizon:.15g} s of now"
            ) from None
        if not (math.isfinite(when) and abs(when - now) <= horizon):
            raise ScheduleError(
                f"{what} must be a time from {iso(now - horizon, tz)} to {iso(now + horizon, tz)} "
                f"(within max_horizon={horizon:.15g} s of now), got {value!r:.60}"
            )
        return when

    def interval(self, value: Any, what: str) -> float:
        """An interval in seconds from ``min_interval`` to ``max_horizon``."""
        number = seconds(value, what, minimum=self.limits.min_interval, maximum=self.limits.max_horizon)
        assert number is not None
        return number

    def target(self, kind: str, tool_name: str, parameters: dict[str, Any] | None) -> dict[str, Any]:
        """Refuse an unknown tool or bad parameters now, not at the first fire; a copy of the parameters."""
        if parameters is not None and not isinstance(parameters, dict):
            raise ScheduleError(
                f"parameters must be a dict of the tool's arguments, e.g. {{'city': 'Paris'}}, got {parameters!r}"
            )
        try:
            task_kind = TaskKind.parse(kind)
        except ValueError as exc:
            raise ScheduleError(str(exc)) from None
        targets = {target.name: target for target in self.manager.targets(task_kind)}
        target = targets.get(tool_name)
        if target is None:
            names = ", ".join(sorted(targets)) or "none are registered"
            raise ScheduleError(
                f"Unknown {task_kind.value} {tool_name!r}. Available {task_kind.value}s: {names}."
            )
        try:
            target.validate(parameters)
        except TaskValidationError as exc:
            raise ScheduleError(str(exc)) from None
        return dict(parameters or {})

    def trigger(self, task: ScheduledTask) -> Trigger:
        """The trigger of ``task`` by its type and value (a ``ScheduleError`` if they no longer hold)."""
        tz = zone(task.timezone)
        if task.schedule_type is ScheduleType.ONCE:
            return OnceTrigger(to_epoch(task.schedule_value, tz, "schedule_value"))
        if task.schedule_type is ScheduleType.INTERVAL:
            interval = self.interval(task.schedule_value, "schedule_value")
            assert task.anchor is not None
            return IntervalTrigger(task.anchor, interval)
        return CronTrigger(task.schedule_value, tz)

    def problem(self, task: ScheduledTask, now: float) -> str | None:
        """Why a stored schedule (maybe written by an older version) is outside the limits, or None."""
        limits = self.limits
        reach = 2 * limits.max_horizon  # stored times may be as old as the horizon, and as far ahead
        try:
            zone(task.timezone)
            if task.schedule_type is ScheduleType.INTERVAL:
                self.interval(task.schedule_value, "its interval")
            for what in ("start_at", "end_at", "anchor", "next_run", "last_run"):
                value = getattr(task, what)
                if value is not None and not (
                    isinstance(value, (int, float)) and math.isfinite(value) and abs(value - now) <= reach
                ):
                    return f"its {what} {value!r:.40} is not a time within {reach:.15g} s of now"
            seconds(task.jitter, "its jitter", positive=False, maximum=limits.max_jitter)
            seconds(task.misfire_grace, "its misfire_grace", positive=False, maximum=limits.max_horizon)
            seconds(task.catch_up_window, "its catch_up_window", allow_none=True, maximum=limits.max_horizon)
            seconds(task.timeout, "its timeout", allow_none=True, maximum=limits.max_horizon)
            check_count(task.max_runs, "its max_runs", maximum=limits.max_runs)
            check_count(task.max_instances, "its max_instances", maximum=limits.max_instances)
            check_count(task.retries, "its retries", zero=True, maximum=limits.max_instances)
            check_count(task.run_count, "its run_count", zero=True, maximum=10**15)
        except ScheduleError as exc:
            return str(exc)
        return None
