"""ToolScheduler: run a tool once (ISO time), at an interval (seconds) or on a cron expression.

Seed 001 §4 names the API (``ScheduleType.ONCE/INTERVAL/CRON``, ``schedule(...) -> id``,
``cancel(id)``, ``list_tasks()``); its sketch polls every second and leaves cron as a TODO. Here:

* **No polling.** The scheduler keeps a heap of due times and arms *one* timer (the clock's
  ``call_at``; by default the manager's shared timer thread) for the earliest of them. Adding,
  pausing or cancelling a schedule re-arms it. 1,000 schedules cost one timer, not 1,000.
* **Each run is a task** of the ``TaskManager`` (``submit("tool", tool_name, parameters)``), so
  it is traced, listed by ``list_tasks``, cancellable and bounded by ``timeout``. A manager
  listener records how each run ended (status and error) in a bounded per-schedule history.
* **Policies** (APScheduler / Celery beat / Temporal vocabulary): ``misfire_grace`` seconds a
  fire may be late and still count as on time; ``catch_up`` for fires missed beyond that (after
  downtime or a stall): ``"none"`` skips them, ``"one"`` runs once for all of them (unless an
  on-time fire runs anyway), ``"all"`` runs each one within ``catch_up_window`` seconds;
  ``overlap`` when ``max_instances`` runs are still going: ``"skip"`` the fire, ``"queue"`` one
  run to start when a run ends, ``"allow"`` (with ``max_instances`` > 1) up to N at once;
  ``jitter`` (a random delay of up to that many seconds per fire); ``start_at``/``end_at``;
  ``max_runs``; ``pause``/``resume``; ``run_now``.
* **Cron** through ``croniter``: 5 fields, or 6 with *seconds first* (``*/15 * * * * *``, the
  Quartz / Spring order), evaluated in an IANA time zone (``zoneinfo``). Across a daylight-saving
  change it behaves like Vixie cron: a fixed-time job whose wall time is skipped runs at the first
  time after the gap, and one whose wall time repeats runs once; a job with a wildcard hour
  (``*/15 * * * *``) follows real time, so it also fires in the repeated hour.
* **Persistence** through a :class:`ScheduleStore`: :class:`MemoryScheduleStore` (the default)
  or :class:`SqlScheduleStore`, the platform's store (SQLite by default, PostgreSQL by URL; tables
  ``schedules`` and ``schedule_runs``, Alembic revision 0003). Schedules are saved at every
  change; a new scheduler on the same store loads them and catches up by each one's policy.
  Callbacks are code and are not stored: pass them again with :meth:`ToolScheduler.set_callback`.
* **Time** is seconds since the epoch (floats) inside; ISO 8601 strings in what users read.
  The clock is injectable (:class:`ManualClock` in tests), so fire times are tested exactly.

All methods are thread-safe and never block on a run, so sync and async code call them alike
(``callback`` may be an ``async def``: it runs on the loop that was running when the schedule was
made, or on the package's background loop).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
import math
import random
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Protocol, runtime_checkable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..core.errors import AsyncTaskSystemError, ManagerClosedError, TaskValidationError
from ..core.manager import TaskManager, call_later
from ..core.tasks import TaskInfo, TaskKind, TaskStatus

__all__ = [
    "ScheduleType",
    "ScheduledTask",
    "ScheduleRun",
    "ToolScheduler",
    "ScheduleError",
    "ScheduleLimits",
    "UnknownScheduleError",
    "Clock",
    "SystemClock",
    "ManualClock",
    "ScheduleStore",
    "MemoryScheduleStore",
    "SqlScheduleStore",
    "scheduler_extension",
]

logger = logging.getLogger(__name__)

HISTORY_LIMIT = 20  # runs kept per schedule (skipped and missed fires count as entries)
MAX_FIRES_PER_WAKE = 1000  # bound on the fires one schedule handles in one wake-up (catch-up, tiny intervals)
MAX_SLEEP = 3600.0  # the timer re-checks the wall clock at least hourly (a clock set forward or back)
CATCH_UP = ("none", "one", "all")
_UTC = timezone.utc  # ToolScheduler.schedule has a parameter named timezone
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


class ScheduleError(TaskValidationError):
    """A schedule was refused: the message says which value is wrong and how to write it."""


class UnknownScheduleError(AsyncTaskSystemError, LookupError):
    """No schedule has this id (it was never made, or was cancelled)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ScheduleType(str, Enum):
    """How ``schedule_value`` is read (seed 001 §4)."""

    ONCE = "once"  # an ISO 8601 time
    INTERVAL = "interval"  # seconds
    CRON = "cron"  # 5 fields, or 6 with seconds first

    @classmethod
    def parse(cls, value: ScheduleType | str) -> ScheduleType:
        """The type for ``value`` (case-insensitive), or a ``ScheduleError`` listing the valid ones."""
        if isinstance(value, ScheduleType):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise ScheduleError(
                f"schedule_type must be one of 'once', 'interval', 'cron', got {value!r}"
            ) from None


# ---------------------------------------------------------------------------------------------- clocks


@runtime_checkable
class Clock(Protocol):
    """Where the scheduler reads the time and arms its one timer."""

    def time(self) -> float:
        """Seconds since the epoch (UTC)."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> Any:
        """Call ``callback()`` at ``when`` (epoch seconds); the result has ``cancel()``."""
        ...


class SystemClock:
    """The wall clock, with the manager's shared timer thread (sleeps at most an hour, to follow clock changes)."""

    def time(self) -> float:
        return time.time()

    def call_at(self, when: float, callback: Callable[[], None]) -> Any:
        return call_later(min(MAX_SLEEP, max(0.0, when - time.time())), callback)


class _ManualTimer:
    __slots__ = ("when", "callback")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback: Callable[[], None] | None = callback

    def cancel(self) -> None:
        self.callback = None


class ManualClock:
    """A clock that moves only when told: for tests of fire times, misfires and catch-up.

    :meth:`advance` steps through every timer due on the way, at its own time (a process that
    was on time throughout); :meth:`jump` moves the time first and then fires what is due, all of
    it late (a process that was stopped or stalled). Callbacks run in the calling thread.
    """

    def __init__(self, start: float | datetime | str = "2024-01-01T00:00:00+00:00") -> None:
        self._now = _to_epoch(start, timezone.utc, "start")
        self._timers: list[tuple[float, int, _ManualTimer]] = []
        self._counter = itertools.count()
        self._lock = threading.RLock()

    def time(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> _ManualTimer:
        timer = _ManualTimer(when, callback)
        with self._lock:
            heapq.heappush(self._timers, (when, next(self._counter), timer))
        return timer

    @property
    def armed(self) -> int:
        """How many timers wait (the scheduler keeps at most one)."""
        with self._lock:
            return sum(1 for _, _, timer in self._timers if timer.callback is not None)

    def advance(self, seconds: float) -> None:
        """Move forward ``seconds``, firing each timer at its due time on the way."""
        self._move(self._now + seconds, on_time=True)

    def jump(self, seconds: float) -> None:
        """Move forward ``seconds`` at once, then fire every timer now due (late)."""
        self._move(self._now + seconds, on_time=False)

    def _move(self, target: float, on_time: bool) -> None:
        if not on_time:
            self._now = max(self._now, target)
        while True:
            with self._lock:
                while self._timers and self._timers[0][2].callback is None:
                    heapq.heappop(self._timers)
                if not self._timers or self._timers[0][0] > target:
                    break
                when, _, timer = heapq.heappop(self._timers)
                callback, timer.callback = timer.callback, None
                self._now = max(self._now, when)
            if callback is not None:
                callback()
        self._now = max(self._now, target)


# ---------------------------------------------------------------------------------------------- time values


def _to_epoch(value: Any, tz: Any, what: str) -> float:
    """Epoch seconds from an ISO string, a datetime (naive = ``tz``) or a number."""
    if isinstance(value, bool):
        raise ScheduleError(f"{what} must be an ISO 8601 time, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):  # fromisoformat accepts 'Z' only from Python 3.11
            text = text[:-1] + "+00:00"
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise ScheduleError(
                f"{what} must be an ISO 8601 time such as '2030-01-31T09:30:00+00:00' "
                f"(without an offset it is read in the schedule's timezone), got {value!r}"
            ) from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=tz)
        return value.timestamp()
    raise ScheduleError(f"{what} must be an ISO 8601 time, got {type(value).__name__} {value!r}")


def _iso(when: float | None, tz: Any = timezone.utc) -> str | None:
    if when is None:
        return None
    try:
        return datetime.fromtimestamp(when, tz).isoformat()
    except (OverflowError, ValueError, OSError, TypeError):  # a stored value no datetime can hold
        return f"out of range ({when!r})"


def _zone(name: str | None) -> Any:
    if name is None or name in ("UTC", "utc", "Z"):
        return timezone.utc
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(
            f"Unknown timezone {name!r}: use an IANA name such as 'UTC', 'Europe/Berlin' or "
            "'America/New_York' (on Windows install the tzdata package)"
        ) from None


def _seconds(
    value: Any,
    what: str,
    *,
    positive: bool = True,
    allow_none: bool = False,
    maximum: float = math.inf,
    minimum: float = 0.0,
) -> float | None:
    if value is None and allow_none:
        return None
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if (
        math.isnan(number)
        or math.isinf(number)
        or (number <= 0 if positive else number < 0)
        or number < minimum
        or number > maximum
    ):
        bound = "a positive number of seconds" if positive else "a non-negative number of seconds"
        if maximum < math.inf or minimum > 0:
            low = f"{minimum:.15g}" if minimum > 0 else ("just above 0" if positive else "0")
            bound += f" from {low} to {maximum:.15g}"
        raise ScheduleError(f"{what} must be {bound}, got {value!r}")
    return number


# ---------------------------------------------------------------------------------------------- triggers


class _Trigger:
    def next_after(self, t: float) -> float | None:
        """The first fire strictly after ``t``, or None when there is none."""
        raise NotImplementedError


class _OnceTrigger(_Trigger):
    def __init__(self, at: float) -> None:
        self.at = at

    def next_after(self, t: float) -> float | None:
        return self.at if self.at > t else None


class _IntervalTrigger(_Trigger):
    """Fires at ``anchor + k * interval``: anchored, so fire times never drift with lateness."""

    def __init__(self, anchor: float, interval: float) -> None:
        self.anchor = anchor
        self.interval = interval

    def next_after(self, t: float) -> float | None:
        if t < self.anchor:
            return self.anchor
        k = math.floor((t - self.anchor) / self.interval) + 1
        fire = self.anchor + k * self.interval
        while fire <= t:  # float rounding
            k += 1
            fire = self.anchor + k * self.interval
        return fire


class _CronTrigger(_Trigger):
    def __init__(self, expression: str, tz: Any) -> None:
        from croniter import croniter  # the 'scheduler' extra; only schedules with cron need it

        fields = expression.split()
        if len(fields) not in (5, 6):
            raise ScheduleError(
                f"cron expression {expression!r} has {len(fields)} fields: use 5 (minute hour day month weekday, "
                "e.g. '*/10 * * * *' for every 10 minutes) or 6 with seconds first ('*/15 * * * * *')"
            )
        seconds_first = len(fields) == 6
        if not croniter.is_valid(expression, second_at_beginning=seconds_first):
            raise ScheduleError(
                f"invalid cron expression {expression!r}: fields are "
                f"{'second ' if seconds_first else ''}minute(0-59) hour(0-23) day(1-31) month(1-12) "
                "weekday(0-6, 0=Sunday), each '*', a number, a list '1,5', a range '1-5' or a step '*/15'; "
                "e.g. '0 9 * * 1-5' is 09:00 on weekdays"
            )
        self._croniter = croniter
        self.expression = expression
        self.seconds_first = seconds_first
        self.tz = tz
        hour = fields[2 if seconds_first else 1]
        self.fixed_hour = not hour.startswith("*")  # Vixie cron: fixed-time jobs run once when a time repeats

    def next_after(self, t: float) -> float | None:
        it = self._croniter(
            self.expression, datetime.fromtimestamp(t, self.tz), second_at_beginning=self.seconds_first
        )
        for _ in range(4):
            fire = it.get_next(datetime)
            if self.fixed_hour and fire.fold == 1 and fire.replace(fold=0).utcoffset() != fire.utcoffset():
                continue  # the second occurrence of a repeated wall time: the first one already ran
            return fire.timestamp()
        return None


# ---------------------------------------------------------------------------------------------- records


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
            "scheduled_for": _iso(self.scheduled_for),
            "status": self.status,
            "task_id": self.task_id,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
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
    trigger: _Trigger | None = None

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

    def to_dict(self) -> dict[str, Any]:
        """What ``list_tasks`` shows: the seed's fields first, then the policies and the last run."""
        try:
            tz = _zone(self.timezone)
        except ScheduleError:  # a stored zone this machine does not know: shown in UTC
            tz = _UTC
        last = self.history[-1] if self.history else None
        return {
            "id": self.id,
            "name": self.name,
            "type": self.schedule_type.value,
            "enabled": self.enabled,
            "next_run": _iso(self.next_run, tz) if self.enabled else None,
            "run_count": self.run_count,
            "state": self.state,
            "schedule_value": self.schedule_value,
            "timezone": self.timezone or "UTC",
            "tool_name": self.tool_name,
            "parameters": self.parameters,
            "last_run": _iso(self.last_run, tz),
            "last_status": last.status if last else None,
            "last_error": last.error if last else None,
            "running": sorted(self.active),
            "max_runs": self.max_runs,
        }


# ---------------------------------------------------------------------------------------------- stores


@runtime_checkable
class ScheduleStore(Protocol):
    """Where schedules are kept across restarts: JSON-able records keyed by schedule id."""

    def load(self) -> list[dict[str, Any]]:
        """Every stored schedule record."""
        ...

    def save(self, record: dict[str, Any]) -> None:
        """Insert or replace the record with ``record['id']``."""
        ...

    def delete(self, schedule_id: str) -> None:
        """Forget a schedule (no error if it is not there)."""
        ...


class MemoryScheduleStore:
    """Keeps records in a dict (copies, as a database would): for tests, and the default."""

    def __init__(self) -> None:
        self._records: dict[str, str] = {}
        self._lock = threading.Lock()

    def load(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(text) for text in self._records.values()]

    def save(self, record: dict[str, Any]) -> None:
        text = json.dumps(record)
        with self._lock:
            self._records[record["id"]] = text

    def delete(self, schedule_id: str) -> None:
        with self._lock:
            self._records.pop(schedule_id, None)


class SqlScheduleStore:
    """Schedules in the platform's store (:class:`async_task_system.platform.store.Store`).

    ``SqlScheduleStore()`` opens the default embedded SQLite file; ``SqlScheduleStore(url)`` any
    database by URL (``sqlite:///schedules.db``, ``postgresql+psycopg://user@host/db``), migrated to
    the newest Alembic revision on open; ``SqlScheduleStore(store)`` shares an open ``Store``
    (it is then not closed here). Tables ``schedules`` (one row per schedule: queryable fields and
    the full record as JSON) and ``schedule_runs`` (its recent runs: task id, status, error), written
    in one transaction per save. SQLAlchemy is imported here, not when the scheduler is imported.
    """

    def __init__(self, store: Any = None, **store_options: Any) -> None:
        try:
            from ..platform.store import DEFAULT_URL, PlatformSchedules, Store
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise ImportError(
                "SqlScheduleStore needs SQLAlchemy 2 and Alembic: pip install 'async_task_system[platform]'"
            ) from exc
        self.owns_store = not isinstance(store, Store)
        self.store = Store(store or DEFAULT_URL, **store_options) if self.owns_store else store
        self.schedules = PlatformSchedules(self.store)

    def load(self) -> list[dict[str, Any]]:
        return self.schedules.load()

    def save(self, record: dict[str, Any]) -> None:
        self.schedules.save(record)

    def delete(self, schedule_id: str) -> None:
        self.schedules.delete(schedule_id)

    def close(self) -> None:
        if self.owns_store:
            self.store.close()


# ---------------------------------------------------------------------------------------------- the scheduler


class ToolScheduler:
    """Runs tools of a :class:`TaskManager` on schedules, with one timer for all of them.

    Args:
        task_manager: runs each fire as a task (``submit(kind, tool_name, parameters)``).
        store: a :class:`ScheduleStore`; its schedules are loaded (and caught up) at once.
            Default: in memory.
        clock: a :class:`Clock`; default the wall clock and the manager's timer thread.
        rng: the random source for ``jitter`` (seed it in tests).
        limits: what :meth:`schedule` accepts and how fast runs start (:class:`ScheduleLimits`).

    The scheduler stops when the manager shuts down (or with :meth:`shutdown`).
    """

    def __init__(
        self,
        task_manager: TaskManager,
        store: ScheduleStore | None = None,
        clock: Clock | None = None,
        *,
        rng: random.Random | None = None,
        limits: ScheduleLimits | None = None,
    ) -> None:
        self.limits = limits or ScheduleLimits()
        self._tokens = float(self.limits.max_runs_per_second)  # the run-rate bucket
        self._tokens_at: float | None = None
        self.manager = task_manager
        self.store: ScheduleStore = store if store is not None else MemoryScheduleStore()
        self.clock: Clock = clock if clock is not None else SystemClock()
        self._rng = rng or random.Random()
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)  # notified when a run ends
        self._schedules: dict[str, ScheduledTask] = {}
        self._runs: dict[str, tuple[str, ScheduleRun]] = {}  # task id -> (schedule id, run)
        self._heap: list[tuple[float, int, str]] = []
        self._counter = itertools.count()
        self._timer: Any = None
        self._timer_when: float | None = None
        self._closed = False
        self._submitting = False  # inside manager.submit (lock held): see _on_task_change
        self._early: dict[str, TaskInfo] = {}
        self._callbacks_due: deque[tuple[ScheduledTask, ScheduleRun]] = deque()
        self._remove_listener = task_manager.add_listener(self._on_task_change)
        task_manager.add_shutdown_callback(self.shutdown)
        for record in self.store.load():
            self._restore(record)
        with self._lock:
            self._rearm()

    @classmethod
    def for_manager(cls, task_manager: TaskManager) -> ToolScheduler:
        """The ``scheduler`` extension: schedules persist in the manager's journal database if it has one."""
        url = getattr(task_manager, "journal_url", None)
        return cls(task_manager, store=SqlScheduleStore(url) if url else None)

    # ------------------------------------------------------------------ making schedules

    def schedule(
        self,
        name: str,
        schedule_type: ScheduleType | str,
        schedule_value: str | float,
        tool_name: str,
        parameters: dict[str, Any] | None = None,
        callback: Callable[..., Any] | None = None,
        *,
        kind: str = "tool",
        timezone: str | None = None,
        start_at: str | float | datetime | None = None,
        end_at: str | float | datetime | None = None,
        max_runs: int | None = None,
        misfire_grace: float = 1.0,
        catch_up: str = "one",
        catch_up_window: float | None = None,
        overlap: str = "skip",
        max_instances: int | None = None,
        jitter: float = 0.0,
        timeout: float | None = None,
        retries: int = 0,
        enabled: bool = True,
    ) -> str:
        """Make a schedule and return its id (``sch_<8 hex>``).

        ``schedule_value`` is an ISO time for ONCE (it must be in the future; without an offset it
        is read in ``timezone``, default UTC), seconds for INTERVAL (the first run one interval
        from now, or at ``start_at``), a cron expression for CRON. ``callback(schedule, run)`` is
        called when each run ends, with the schedule's ``to_dict()`` and the :class:`ScheduleRun`
        (plain or ``async def``). Raises ``ScheduleError`` (a ``ValueError``) saying how to fix a
        bad value, an unknown tool or bad parameters.
        """
        stype = ScheduleType.parse(schedule_type)
        if not isinstance(name, str) or not name.strip():
            raise ScheduleError("name must be a non-empty string that says what the schedule is for")
        tz = _zone(timezone)
        now = self.clock.time()
        limits = self.limits
        horizon = limits.max_horizon
        with self._lock:
            if len(self._schedules) >= limits.max_schedules:
                raise ScheduleError(
                    f"this agent has {len(self._schedules)} schedules, the most it may hold "
                    f"(max_schedules={limits.max_schedules}): cancel_schedule the ones no longer needed first"
                )
        task = ScheduledTask(
            id=f"sch_{secrets.token_hex(4)}",
            name=name.strip()[:200],
            schedule_type=stype,
            schedule_value=str(schedule_value).strip(),
            tool_name=tool_name,
            parameters=self._check_target(kind, tool_name, parameters),
            kind=str(TaskKind.parse(kind).value),
            timezone=None if tz is _UTC else timezone,
            start_at=None if start_at is None else self._time(start_at, tz, "start_at", now),
            end_at=None if end_at is None else self._time(end_at, tz, "end_at", now),
            max_runs=_check_count(max_runs, "max_runs", maximum=limits.max_runs),
            misfire_grace=_seconds(misfire_grace, "misfire_grace", positive=False, maximum=horizon),
            catch_up=_check_choice(catch_up, CATCH_UP, "catch_up"),
            catch_up_window=_seconds(catch_up_window, "catch_up_window", allow_none=True, maximum=horizon),
            overlap=_check_choice(overlap, OVERLAP, "overlap"),
            max_instances=_check_count(max_instances, "max_instances", maximum=limits.max_instances) or 1,
            jitter=_seconds(jitter, "jitter", positive=False, maximum=limits.max_jitter),
            timeout=_seconds(timeout, "timeout", allow_none=True, maximum=horizon),
            retries=_check_count(retries, "retries", zero=True, maximum=limits.max_instances) or 0,
            enabled=bool(enabled),
            created_at=now,
            callback=callback,
        )  # fmt: skip
        if task.overlap == "allow" and task.max_instances < 2:
            raise ScheduleError(
                "overlap='allow' lets runs overlap up to max_instances at once: give max_instances >= 2 "
                "(e.g. max_instances=3), or use overlap='skip' or 'queue'"
            )
        if task.start_at is not None and task.end_at is not None and task.end_at <= task.start_at:
            raise ScheduleError(
                f"end_at ({_iso(task.end_at)}) must be after start_at ({_iso(task.start_at)})"
            )
        if stype is ScheduleType.ONCE:
            at = self._time(task.schedule_value, tz, "schedule_value for a 'once' schedule", now)
            if at <= now:
                raise ScheduleError(
                    f"the time {task.schedule_value!r} is in the past (now is {_iso(now, tz)}): give a future ISO "
                    f"time such as {_iso(now + 3600, tz)!r}, or use run_now for a run at once"
                )
            task.schedule_value = _iso(at, tz) or task.schedule_value
        elif stype is ScheduleType.INTERVAL:
            interval = self._interval(task.schedule_value, "schedule_value for an 'interval' schedule")
            task.anchor = task.start_at if task.start_at is not None else now + interval
        task.trigger = self._trigger(task)
        first = self._next_after(task, now)  # strictly after now; start_at itself may be the first fire
        if first is None or (task.end_at is not None and first > task.end_at):
            raise ScheduleError(
                f"schedule {name!r} would never run: its first fire after now is past end_at ({_iso(task.end_at, tz)})"
            )
        if first > now + horizon:
            raise ScheduleError(
                f"schedule {name!r} would first run at {_iso(first, tz)}, beyond the horizon of "
                f"{horizon:.15g} s (until {_iso(now + horizon, tz)}): choose an earlier time or a shorter interval"
            )
        task.loop = _running_loop()
        with self._lock:
            self._check_open()
            if len(self._schedules) >= limits.max_schedules:
                raise ScheduleError(
                    f"this agent holds {len(self._schedules)} schedules (max_schedules={limits.max_schedules}): "
                    "cancel_schedule the ones no longer needed first"
                )
            task.next_run = first
            task.state = "scheduled" if task.enabled else "paused"
            self._schedules[task.id] = task
            self._arm(task)
            self._save(task)
            self._rearm()
        return task.id

    # seed 001 names --------------------------------------------------------------------------

    def cancel(self, schedule_id: str, *, cancel_running: bool = False) -> bool:
        """Delete a schedule (and from the store); with ``cancel_running`` also cancel its running tasks.

        False if there is no such schedule (seed 001's contract).
        """
        with self._lock:
            task = self._schedules.pop(schedule_id, None)
            if task is None:
                return False
            running = sorted(task.active)
            self.store.delete(schedule_id)
            self._rearm()
        if cancel_running:
            for task_id in running:
                self.manager.cancel(task_id)
        return True

    def list_tasks(self) -> list[dict[str, Any]]:
        """Every schedule as a dict: id, name, type, enabled, next_run (ISO), run_count, and more."""
        with self._lock:
            return [task.to_dict() for task in self._schedules.values()]

    # control ----------------------------------------------------------------------------------

    def get(self, schedule_id: str) -> dict[str, Any]:
        """One schedule as in ``list_tasks``, plus its policies and ``history`` (oldest first)."""
        with self._lock:
            task = self._get(schedule_id)
            info = task.to_dict()
            info["history"] = [run.to_dict() for run in task.history]
            for key in ("misfire_grace", "catch_up", "catch_up_window", "overlap", "max_instances", "jitter"):
                info[key] = getattr(task, key)
            info["start_at"], info["end_at"] = _iso(task.start_at), _iso(task.end_at)
            return info

    def history(self, schedule_id: str) -> list[ScheduleRun]:
        """The last runs of a schedule (at most ``HISTORY_LIMIT``), oldest first."""
        with self._lock:
            return list(self._get(schedule_id).history)

    def pause(self, schedule_id: str) -> None:
        """Stop firing (runs in flight go on); :meth:`resume` starts again from the next fire after then."""
        with self._lock:
            task = self._get(schedule_id)
            if task.state == "scheduled":
                task.enabled, task.state, task.due = False, "paused", None
                self._save(task)
                self._rearm()

    def resume(self, schedule_id: str) -> None:
        """Fire again; fires that fell while paused are not caught up."""
        with self._lock:
            task = self._get(schedule_id)
            if task.state != "paused":
                return
            assert task.trigger is not None
            task.next_run = self._next_after(task, self.clock.time() - 1e-6)
            task.enabled = True
            task.state = "scheduled" if task.next_run is not None else "finished"
            self._arm(task)
            self._save(task)
            self._rearm()

    def run_now(self, schedule_id: str) -> str | None:
        """Start a run at once (overlap applies; it counts in ``run_count``); its task id, or None if skipped."""
        with self._lock:
            task = self._get(schedule_id)
            if task.state == "invalid":
                raise ScheduleError(
                    f"schedule {schedule_id} is outside the limits and does not run: {task.history[-1].error}"
                )
            run = self._start_run(task, self.clock.time(), catch_up=False)
            self._save(task)
        self._flush_callbacks()
        return run.task_id if run is not None else None

    def wait_idle(self, schedule_id: str | None = None, timeout: float | None = None) -> bool:
        """Block until no run of ``schedule_id`` (default: of any schedule) is in flight or queued,
        and its history says how each ended; False after ``timeout`` seconds. Wakes when a run ends."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._idle:
            while True:
                tasks = (
                    [self._get(schedule_id)] if schedule_id is not None else list(self._schedules.values())
                )
                if not any(task.active or task.queued for task in tasks):
                    return True
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._idle.wait(remaining)

    def set_callback(self, schedule_id: str, callback: Callable[..., Any] | None) -> None:
        """(Re)attach the callback of a schedule, e.g. after loading it from a store."""
        with self._lock:
            task = self._get(schedule_id)
            task.callback, task.loop = callback, _running_loop()

    def shutdown(self) -> None:
        """Stop the timer and stop listening; runs in flight go on as tasks of the manager."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self._remove_listener()

    def close(self) -> None:
        """:meth:`shutdown` (for ``with`` and ``contextlib.closing``)."""
        self.shutdown()

    def __enter__(self) -> ToolScheduler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    async def __aenter__(self) -> ToolScheduler:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ internals

    def _time(self, value: Any, tz: Any, what: str, now: float) -> float:
        """An epoch time within ``max_horizon`` of now, or ScheduleError with the allowed range."""
        horizon = self.limits.max_horizon
        try:
            when = _to_epoch(value, tz, what)
        except (OverflowError, OSError) as exc:  # a datetime beyond what the platform's clock holds
            raise ScheduleError(
                f"{what} is out of range ({exc}): give a time within {horizon:.15g} s of now"
            ) from None
        if not (math.isfinite(when) and abs(when - now) <= horizon):
            raise ScheduleError(
                f"{what} must be a time from {_iso(now - horizon, tz)} to {_iso(now + horizon, tz)} "
                f"(within max_horizon={horizon:.15g} s of now), got {value!r:.60}"
            )
        return when

    def _interval(self, value: Any, what: str) -> float:
        number = _seconds(value, what, minimum=self.limits.min_interval, maximum=self.limits.max_horizon)
        assert number is not None
        return number

    def _problem(self, task: ScheduledTask) -> str | None:
        """Why a stored schedule (maybe written by an older version) is outside the limits, or None."""
        limits, now = self.limits, self.clock.time()
        reach = 2 * limits.max_horizon  # stored times may be as old as the horizon, and as far ahead
        try:
            _zone(task.timezone)
            if task.schedule_type is ScheduleType.INTERVAL:
                self._interval(task.schedule_value, "its interval")
            for what in ("start_at", "end_at", "anchor", "next_run", "last_run"):
                value = getattr(task, what)
                if value is not None and not (
                    isinstance(value, (int, float)) and math.isfinite(value) and abs(value - now) <= reach
                ):
                    return f"its {what} {value!r:.40} is not a time within {reach:.15g} s of now"
            _seconds(task.jitter, "its jitter", positive=False, maximum=limits.max_jitter)
            _seconds(task.misfire_grace, "its misfire_grace", positive=False, maximum=limits.max_horizon)
            _seconds(task.catch_up_window, "its catch_up_window", allow_none=True, maximum=limits.max_horizon)
            _seconds(task.timeout, "its timeout", allow_none=True, maximum=limits.max_horizon)
            _check_count(task.max_runs, "its max_runs", maximum=limits.max_runs)
            _check_count(task.max_instances, "its max_instances", maximum=limits.max_instances)
            _check_count(task.retries, "its retries", zero=True, maximum=limits.max_instances)
            _check_count(task.run_count, "its run_count", zero=True, maximum=10**15)
        except ScheduleError as exc:
            return str(exc)
        return None

    def _take_token(self) -> bool:
        """One run from the run-rate bucket (lock held); False when the cap is reached."""
        now = self.clock.time()
        rate = self.limits.max_runs_per_second
        if self._tokens_at is not None:
            self._tokens = min(rate, self._tokens + max(now - self._tokens_at, 0.0) * rate)
        self._tokens_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _check_open(self) -> None:
        if self._closed:
            raise ManagerClosedError("the scheduler is shut down: make a new ToolScheduler")

    def _get(self, schedule_id: str) -> ScheduledTask:
        task = self._schedules.get(schedule_id)
        if task is None:
            known = ", ".join(sorted(self._schedules)) or "none"
            raise UnknownScheduleError(
                f"No schedule {schedule_id!r}. Known schedule ids: {known} (see list_schedules())."
            )
        return task

    def _check_target(self, kind: str, tool_name: str, parameters: dict[str, Any] | None) -> dict[str, Any]:
        """Refuse an unknown tool or bad parameters now, not at the first fire."""
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

    def _trigger(self, task: ScheduledTask) -> _Trigger:
        tz = _zone(task.timezone)
        if task.schedule_type is ScheduleType.ONCE:
            return _OnceTrigger(_to_epoch(task.schedule_value, tz, "schedule_value"))
        if task.schedule_type is ScheduleType.INTERVAL:
            interval = self._interval(task.schedule_value, "schedule_value")
            assert task.anchor is not None
            return _IntervalTrigger(task.anchor, interval)
        return _CronTrigger(task.schedule_value, tz)

    def _next_after(self, task: ScheduledTask, t: float) -> float | None:
        """The schedule's next fire strictly after ``t``, within start_at/end_at."""
        assert task.trigger is not None
        if task.start_at is not None and t < task.start_at:
            t = task.start_at - 1e-6
        fire = task.trigger.next_after(t)
        if fire is None or (task.end_at is not None and fire > task.end_at):
            return None
        return fire

    def _restore(self, record: dict[str, Any]) -> None:
        try:
            task = ScheduledTask.from_record(record)
        except Exception as exc:  # noqa: BLE001 - a record this version cannot read: the others still load
            logger.error("a stored schedule %r cannot be read: %s", str(record.get("id"))[:40], exc)
            return
        problem = self._problem(task)
        if problem is not None:  # kept, listed and cancellable, never fired
            logger.error("schedule %s (%s) is outside the limits: %s", task.id, task.name, problem)
            task.enabled, task.state, task.next_run = False, "invalid", None
            task.history.append(
                ScheduleRun(
                    self.clock.time(),
                    "failed",
                    error=f"not run: {problem}; cancel_schedule it and make a new one within the limits",
                )
            )
            with self._lock:
                self._schedules[task.id] = task
            return
        try:
            task.trigger = self._trigger(task)
        except ScheduleError as exc:  # e.g. a time zone this machine does not know
            logger.error("schedule %s (%s) cannot be loaded: %s", task.id, task.name, exc)
            return
        for run in task.history:
            if run.status in ("pending", "running", "waiting_remote"):
                run.status, run.error = "lost", "in flight when the scheduler's process stopped"
        with self._lock:
            self._schedules[task.id] = task
            self._arm(task)

    def _arm(self, task: ScheduledTask) -> None:
        """Draw this fire's jitter and put it on the heap (lock held)."""
        if not task.enabled or task.next_run is None:
            task.due = None
            return
        task.offset = self._rng.uniform(0, task.jitter) if task.jitter else 0.0
        task.due = task.next_run + task.offset
        heapq.heappush(self._heap, (task.due, next(self._counter), task.id))

    def _rearm(self) -> None:
        """Point the one timer at the earliest due schedule (lock held)."""
        while self._heap:
            due, _, schedule_id = self._heap[0]
            task = self._schedules.get(schedule_id)
            if task is not None and task.due == due:
                break
            heapq.heappop(self._heap)  # cancelled, paused or re-armed since
        when = self._heap[0][0] if self._heap and not self._closed else None
        if when == self._timer_when and (self._timer is not None or when is None):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_when = when
        self._timer = None if when is None else self.clock.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        """The timer fired: handle every schedule now due, then sleep until the next one."""
        with self._lock:
            self._timer = None
            self._timer_when = None
            if self._closed:
                return
            now = self.clock.time()
            while self._heap and self._heap[0][0] <= now:
                due, _, schedule_id = heapq.heappop(self._heap)
                task = self._schedules.get(schedule_id)
                if task is None or task.due != due:
                    continue
                try:
                    self._fire(task, now)
                except Exception as exc:  # one schedule's failure must not stop the others
                    logger.exception("schedule %s failed to fire", schedule_id)
                    task.enabled, task.state = False, "paused"
                    task.history.append(ScheduleRun(task.next_run or now, "failed", error=f"paused: {exc!r}"))
                self._arm(task)
                self._save(task)
            self._rearm()
        self._flush_callbacks()

    def _fire(self, task: ScheduledTask, now: float) -> None:
        """Start the runs of every fire of ``task`` up to ``now`` by its policies (lock held)."""
        effective = now - task.offset  # the jitter is a delay we chose, not lateness
        first = task.next_run
        assert first is not None
        on_time_from = effective - task.misfire_grace
        catch_up: list[float] = []
        missed_until = None
        if first < on_time_from:  # late beyond the grace time: missed fires
            if task.catch_up == "all":
                start = first
                if task.catch_up_window is not None:
                    start = max(first, now - task.catch_up_window)
                fire = self._next_after(task, start - 1e-6)
                while fire is not None and fire < on_time_from and len(catch_up) < MAX_FIRES_PER_WAKE:
                    catch_up.append(fire)
                    fire = self._next_after(task, fire)
            elif task.catch_up == "one" and (
                task.catch_up_window is None or first >= now - task.catch_up_window
            ):
                catch_up.append(first)
            missed_until = on_time_from
        on_time: list[float] = []
        fire = first if first >= on_time_from else self._next_after(task, on_time_from - 1e-6)
        while fire is not None and fire <= effective and len(on_time) < MAX_FIRES_PER_WAKE:
            on_time.append(fire)
            fire = self._next_after(task, fire)
        if fire is not None and fire <= effective:  # more than the bound: skip to the future
            fire = self._next_after(task, effective)
        if missed_until is not None:
            if task.catch_up == "one" and on_time:
                catch_up = []  # the on-time run covers the missed fires
                covered = True
            else:
                covered = bool(catch_up) and catch_up[0] == first
            if not covered:
                task.history.append(
                    ScheduleRun(
                        first,
                        "missed",
                        error=(
                            f"missed the fires from {_iso(first)} to {_iso(missed_until)}: late by more than "
                            f"misfire_grace={task.misfire_grace}s (downtime or a stall); catch_up={task.catch_up!r}"
                        ),
                    )
                )
        task.next_run = fire
        for when in catch_up:
            self._start_run(task, when, catch_up=True)
        for when in on_time:
            self._start_run(task, when, catch_up=False)
        if task.next_run is None or (task.max_runs is not None and task.run_count >= task.max_runs):
            task.next_run, task.enabled, task.state = None, False, "finished"

    def _start_run(self, task: ScheduledTask, when: float, catch_up: bool) -> ScheduleRun | None:
        """Submit one run of ``task`` unless max_runs or the overlap policy says no (lock held)."""
        if task.max_runs is not None and task.run_count >= task.max_runs:
            return None
        if not self._take_token():
            task.history.append(
                ScheduleRun(
                    when,
                    "skipped",
                    error=f"the scheduler's run rate cap (max_runs_per_second={self.limits.max_runs_per_second:g}) "
                    "was reached",
                    catch_up=catch_up,
                )
            )
            return None
        if len(task.active) >= task.max_instances:
            if task.overlap == "queue" and not task.queued:
                task.queued = True
                return None
            reason = "a run is queued already" if task.overlap == "queue" else f"overlap={task.overlap!r}"
            task.history.append(
                ScheduleRun(
                    when,
                    "skipped",
                    error=f"{len(task.active)} run(s) still going ({', '.join(sorted(task.active))}); {reason}",
                    catch_up=catch_up,
                )
            )
            return None
        now = self.clock.time()
        run = ScheduleRun(when, "pending", started_at=now, catch_up=catch_up)
        task.run_count += 1
        task.last_run = now
        task.history.append(run)
        self._submitting = True
        try:
            task_id = self.manager.submit(
                task.kind, task.tool_name, dict(task.parameters), timeout=task.timeout, retries=task.retries
            )
        except (TaskValidationError, ManagerClosedError) as exc:
            run.status, run.error, run.finished_at = "failed", f"{type(exc).__name__}: {exc}", now
            return run
        finally:
            self._submitting = False
        run.task_id = task_id
        task.active.add(task_id)
        self._runs[task_id] = (task.id, run)
        early = self._early.pop(task_id, None)
        self._early.clear()  # snapshots of other tasks delivered meanwhile are not ours
        if early is not None:  # it ended within submit, and this thread delivered that news
            self._on_task_change(early)
        return run

    def _on_task_change(self, info: TaskInfo) -> None:
        """Manager listener: record the status of our runs; when one ends, history, queue and callback."""
        with self._lock:
            entry = self._runs.get(info.id)
            if entry is None:
                if self._submitting and info.status.is_terminal:
                    self._early[info.id] = info  # our own submit, delivered in this thread before it returned
                return
            schedule_id, run = entry
            if not info.status.is_terminal:
                run.status = info.status.value
                return
            del self._runs[info.id]
            run.status = info.status.value
            run.finished_at = self.clock.time()
            if info.status is TaskStatus.COMPLETED:
                run.result = info.result
            elif info.error is not None:
                run.error = f"{info.error.type}: {info.error.message}"
            task = self._schedules.get(schedule_id)
            if task is None:  # cancelled meanwhile
                return
            task.active.discard(info.id)
            self._idle.notify_all()
            if task.callback is not None:
                self._callbacks_due.append((task, run))
            if task.queued:
                task.queued = False
                self._start_run(task, self.clock.time(), catch_up=False)
            self._save(task)
        self._flush_callbacks()

    def _flush_callbacks(self) -> None:
        """Call the callbacks of ended runs, outside the lock (in the thread that saw the end)."""
        while self._callbacks_due:
            try:
                task, run = self._callbacks_due.popleft()
            except IndexError:
                return
            self._call_back(task, run)

    def _call_back(self, task: ScheduledTask, run: ScheduleRun) -> None:
        callback = task.callback
        if callback is None:
            return
        try:
            outcome = callback(task.to_dict(), run)
            if asyncio.iscoroutine(outcome):
                loop = task.loop
                if loop is None or loop.is_closed():
                    from ..core.loop import background_loop

                    loop = background_loop()
                asyncio.run_coroutine_threadsafe(outcome, loop)
        except Exception:
            logger.exception("callback of schedule %s failed", task.id)

    def _save(self, task: ScheduledTask) -> None:
        if task.id not in self._schedules:
            return
        try:
            self.store.save(task.to_record())
        except Exception:  # a store outage must not stop the schedules
            logger.exception("could not save schedule %s", task.id)


def _check_choice(value: Any, choices: Iterable[str], what: str) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise ScheduleError(f"{what} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return str(value)


def _check_count(value: Any, what: str, *, zero: bool = False, maximum: int | None = None) -> int | None:
    if value is None:
        return None
    low = 0 if zero else 1
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (maximum is not None and value > maximum)
    ):
        if maximum is not None:
            raise ScheduleError(
                f"{what} must be an integer from {low} to {maximum} (or omitted), got {value!r:.40}"
            )
        bound = "a non-negative" if zero else "a positive"
        raise ScheduleError(f"{what} must be {bound} integer (or omitted), got {value!r:.40}")
    return value


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def scheduler_extension(task_manager: TaskManager) -> ToolScheduler:
    """The factory of the ``scheduler`` extension (``manager.extension("scheduler")``): one per manager."""
    return ToolScheduler.for_manager(task_manager)
