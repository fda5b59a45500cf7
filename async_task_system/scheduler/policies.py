"""The policies and limits of schedules: what a scheduler accepts (:class:`ScheduleLimits`), the
run-rate cap, and which fires run when a schedule wakes late (misfire grace, catch-up).

* ``misfire_grace`` seconds a fire may be late and still count as on time; ``catch_up`` for fires
  missed beyond that (after downtime or a stall): ``"none"`` skips them, ``"one"`` runs once for all
  of them (unless an on-time fire runs anyway), ``"all"`` runs each one within ``catch_up_window``.
* ``overlap`` (applied by the engine when a run starts) when ``max_instances`` runs are still going:
  ``"skip"`` the fire, ``"queue"`` one run to start when a run ends, ``"allow"`` up to N at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .records import ScheduledTask, ScheduleRun
from .values import iso

__all__ = [
    "ScheduleLimits",
    "RunRateBucket",
    "FirePlan",
    "plan_fires",
    "CATCH_UP",
    "OVERLAP",
    "MAX_FIRES_PER_WAKE",
]

MAX_FIRES_PER_WAKE = 1000  # bound on the fires one schedule handles in one wake-up (catch-up, tiny intervals)
CATCH_UP = ("none", "one", "all")
OVERLAP = ("skip", "queue", "allow")


@dataclass(frozen=True)
class ScheduleLimits:
    """What a :class:`ToolScheduler` accepts (its schedules come from LLM calls: hostile input).

    Change them with ``ToolScheduler(manager, limits=ScheduleLimits(min_interval=0.1, ...))``.
    A refused value raises :class:`ScheduleError` naming the allowed range.
    """

    min_interval: float = 1.0
    """Seconds between fires of an 'interval' schedule, at least (a cron expression fires at most once a second)."""
    max_horizon: float = 10 * 366 * 86400.0
    """Seconds from now that times (once, start_at, end_at, the first fire) and durations (interval,
    timeout, misfire_grace, catch_up_window) may reach, at most: about ten years."""
    max_jitter: float = 86400.0
    """Seconds of random delay per fire, at most."""
    max_runs: int = 1_000_000
    """A schedule's ``max_runs``, at most."""
    max_instances: int = 100
    """A schedule's runs at once (``max_instances``), at most; also the bound of ``retries``."""
    max_schedules: int = 1000
    """Schedules one scheduler (one agent's manager: one owner) holds at once."""
    max_runs_per_second: float = 50.0
    """Runs all schedules of the scheduler start per second (a bucket of as many): fires beyond are
    recorded ``skipped`` with the reason."""

    def __post_init__(self) -> None:
        for name in ("min_interval", "max_horizon", "max_jitter", "max_runs_per_second"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"ScheduleLimits.{name} must be a positive finite number, got {value!r}")
        for name in ("max_runs", "max_instances", "max_schedules"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ScheduleLimits.{name} must be a positive integer, got {value!r}")
        if self.min_interval > self.max_horizon:
            raise ValueError("ScheduleLimits.min_interval must not exceed max_horizon")


class RunRateBucket:
    """The run-rate cap: a bucket of ``rate`` runs that refills at ``rate`` per second (not thread-safe:
    the scheduler calls it under its lock)."""

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)
        self.tokens = self.rate
        self.at: float | None = None

    def take(self, now: float) -> bool:
        """One run at ``now`` (epoch seconds); False when the cap is reached."""
        if self.at is not None:
            self.tokens = min(self.rate, self.tokens + max(now - self.at, 0.0) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass
class FirePlan:
    """What a late or on-time wake-up of a schedule does: the runs to start, the next fire, and
    the ``missed`` entry for fires neither run nor covered (None when there are none)."""

    catch_up: list[float] = field(default_factory=list)
    on_time: list[float] = field(default_factory=list)
    next_run: float | None = None
    missed: ScheduleRun | None = None


def plan_fires(task: ScheduledTask, now: float) -> FirePlan:
    """The fires of ``task`` due up to ``now`` (its ``next_run`` is the first), by its misfire policies."""
    effective = now - task.offset  # the jitter is a delay we chose, not lateness
    first = task.next_run
    assert first is not None
    on_time_from = effective - task.misfire_grace
    plan = FirePlan()
    catch_up = plan.catch_up
    missed_until = None
    if first < on_time_from:  # late beyond the grace time: missed fires
        if task.catch_up == "all":
            start = first
            if task.catch_up_window is not None:
                start = max(first, now - task.catch_up_window)
            fire = task.next_after(start - 1e-6)
            while fire is not None and fire < on_time_from and len(catch_up) < MAX_FIRES_PER_WAKE:
                catch_up.append(fire)
                fire = task.next_after(fire)
        elif task.catch_up == "one" and (task.catch_up_window is None or first >= now - task.catch_up_window):
            catch_up.append(first)
        missed_until = on_time_from
    on_time = plan.on_time
    fire = first if first >= on_time_from else task.next_after(on_time_from - 1e-6)
    while fire is not None and fire <= effective and len(on_time) < MAX_FIRES_PER_WAKE:
        on_time.append(fire)
        fire = task.next_after(fire)
    if fire is not None and fire <= effective:  # more than the bound: skip to the future
        fire = task.next_after(effective)
    plan.next_run = fire
    if missed_until is not None:
        if task.catch_up == "one" and on_time:
            catch_up.clear()  # the on-time run covers the missed fires
            covered = True
        else:
            covered = bool(catch_up) and catch_up[0] == first
        if not covered:
            plan.missed = ScheduleRun(
                first,
                "missed",
                error=(
                    f"missed the fires from {iso(first)} to {iso(missed_until)}: late by more than "
                    f"misfire_grace={task.misfire_grace}s (downtime or a stall); catch_up={task.catch_up!r}"
                ),
            )
    return plan
