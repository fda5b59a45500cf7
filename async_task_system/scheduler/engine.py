"""ToolScheduler: run a tool once (ISO time), at an interval (seconds) or on a cron expression.

Seed 001 §4 names the API (``ScheduleType.ONCE/INTERVAL/CRON``, ``schedule(...) -> id``,
``cancel(id)``, ``list_tasks()``); its sketch polls every second and leaves cron as a TODO. Here:

* **No polling.** The scheduler keeps a heap of due times and arms *one* timer (the clock's
  ``call_at``; by default the manager's shared timer thread) for the earliest of them. Adding,
  pausing or cancelling a schedule re-arms it. 1,000 schedules cost one timer, not 1,000.
* **Each run is a task** of the ``TaskManager`` (``submit("tool", tool_name, parameters)``), so
  it is traced, listed by ``list_tasks``, cancellable and bounded by ``timeout``. A manager
  listener records how each run ended (status and error) in a bounded per-schedule history.
* **Policies** (APScheduler / Celery beat / Temporal vocabulary, :mod:`.policies`):
  ``misfire_grace``, ``catch_up`` (``"none"``, ``"one"``, ``"all"`` within ``catch_up_window``),
  ``overlap`` (``"skip"``, ``"queue"``, ``"allow"`` up to ``max_instances``), ``jitter``,
  ``start_at``/``end_at``, ``max_runs``; ``pause``/``resume``; ``run_now``; limits in
  :class:`ScheduleLimits`, checked by :mod:`.validation`.
* **Cron** through ``croniter`` (:mod:`.triggers`): 5 fields, or 6 with *seconds first*, in an
  IANA time zone, Vixie-cron behaviour across daylight-saving changes.
* **Persistence** through a :class:`ScheduleStore` (:mod:`.stores`): :class:`MemoryScheduleStore`
  (the default), any object with ``load``/``save``/``delete``, or a database URL, which opens the
  SQL store the package wires in by name (``SqlScheduleStore``, the platform's: SQLite by default,
  PostgreSQL by URL). Schedules are saved at every change; a new scheduler on the same store loads
  them and catches up by each one's policy. Callbacks are code and are not stored: pass them again
  with :meth:`ToolScheduler.set_callback`.
* **Time** is seconds since the epoch (floats) inside; ISO 8601 strings in what users read.
  The clock is injectable (:class:`ManualClock` in tests), so fire times are tested exactly.

All methods are thread-safe and never block on a run, so sync and async code call them alike
(``callback`` may be an ``async def``: it runs on the loop that was running when the schedule was
made, or on the package's background loop).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from ..core.errors import ManagerClosedError, TaskValidationError
from ..core.manager import TaskManager
from ..core.tasks import TaskInfo, TaskStatus
from .callbacks import CallbackQueue, running_loop
from .clock import MAX_SLEEP as MAX_SLEEP  # re-exported: these constants were defined here
from .clock import Clock, ManualClock, SystemClock
from .policies import CATCH_UP as CATCH_UP
from .policies import MAX_FIRES_PER_WAKE as MAX_FIRES_PER_WAKE
from .policies import OVERLAP as OVERLAP
from .policies import RunRateBucket, ScheduleLimits, plan_fires
from .records import HISTORY_LIMIT as HISTORY_LIMIT
from .records import ScheduledTask, ScheduleRun
from .stores import MemoryScheduleStore, ScheduleStore, sql_store_class
from .validation import ScheduleChecker
from .values import ScheduleError, ScheduleType, UnknownScheduleError, iso

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
    "SqlScheduleStore",  # noqa: F822 - served by __getattr__
    "scheduler_extension",
]

logger = logging.getLogger(__name__)


def __getattr__(name: str) -> Any:
    # SqlScheduleStore is the platform's, wired in by name: looked up (and SQLAlchemy loaded) on first use.
    if name == "SqlScheduleStore":
        return sql_store_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ToolScheduler:
    """Runs tools of a :class:`TaskManager` on schedules, with one timer for all of them.

    Args:
        task_manager: runs each fire as a task (``submit(kind, tool_name, parameters)``).
        store: a :class:`ScheduleStore` (any object with ``load``/``save``/``delete``), or a
            database URL for the SQL store (``"sqlite:///ops.db"``; closed with the scheduler);
            its schedules are loaded (and caught up) at once. Default: in memory.
        clock: a :class:`Clock`; default the wall clock and the manager's timer thread.
        rng: the random source for ``jitter`` (seed it in tests).
        limits: what :meth:`schedule` accepts and how fast runs start (:class:`ScheduleLimits`).

    The scheduler stops when the manager shuts down (or with :meth:`shutdown`).
    """

    def __init__(
        self,
        task_manager: TaskManager,
        store: ScheduleStore | str | None = None,
        clock: Clock | None = None,
        *,
        rng: random.Random | None = None,
        limits: ScheduleLimits | None = None,
    ) -> None:
        self._limits = limits or ScheduleLimits()
        self._bucket = RunRateBucket(self._limits.max_runs_per_second)
        self._checker = ScheduleChecker(self._limits, task_manager)
        self.manager = task_manager
        self._owns_store = isinstance(store, str)
        if isinstance(store, str):
            store = sql_store_class()(store)
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
        self._ended = CallbackQueue()  # ended runs whose callbacks are called outside the lock
        self._remove_listener = task_manager.add_listener(self._on_task_change)
        task_manager.add_shutdown_callback(self.shutdown)
        for record in self.store.load():
            self._restore(record)
        with self._lock:
            self._rearm()

    @property
    def limits(self) -> ScheduleLimits:
        """What :meth:`schedule` accepts and how fast runs start; assign new limits to change them."""
        return self._limits

    @limits.setter
    def limits(self, limits: ScheduleLimits) -> None:
        with self._lock:
            self._limits = self._checker.limits = limits
            self._bucket.rate = float(limits.max_runs_per_second)

    @classmethod
    def for_manager(cls, task_manager: TaskManager) -> ToolScheduler:
        """The ``scheduler`` extension: schedules persist in the manager's journal database if it has one."""
        url = getattr(task_manager, "journal_url", None)
        return cls(task_manager, store=url or None)

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
        with self._lock:
            held = len(self._schedules)
        task = self._checker.new_schedule(
            name, schedule_type, schedule_value, tool_name, parameters, self.clock.time(), held=held,
            kind=kind, timezone=timezone, start_at=start_at, end_at=end_at, max_runs=max_runs,
            misfire_grace=misfire_grace, catch_up=catch_up, catch_up_window=catch_up_window, overlap=overlap,
            max_instances=max_instances, jitter=jitter, timeout=timeout, retries=retries, enabled=enabled,
        )  # fmt: skip
        task.callback = callback
        task.loop = running_loop()
        limits = self.limits
        with self._lock:
            self._check_open()
            if len(self._schedules) >= limits.max_schedules:
                raise ScheduleError(
                    f"this agent holds {len(self._schedules)} schedules (max_schedules={limits.max_schedules}): "
                    "cancel_schedule the ones no longer needed first"
                )
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
            info["start_at"], info["end_at"] = iso(task.start_at), iso(task.end_at)
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
            task.next_run = task.next_after(self.clock.time() - 1e-6)
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
        self._ended.flush()
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
            task.callback, task.loop = callback, running_loop()

    def shutdown(self) -> None:
        """Stop the timer and stop listening; runs in flight go on as tasks of the manager."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            owned, self._owns_store = self._owns_store, False
        self._remove_listener()
        close = getattr(self.store, "close", None) if owned else None
        if close is not None:
            close()

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

    def _take_token(self) -> bool:
        """One run from the run-rate bucket (lock held); False when the cap is reached."""
        return self._bucket.take(self.clock.time())

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

    def _restore(self, record: dict[str, Any]) -> None:
        try:
            task = ScheduledTask.from_record(record)
        except Exception as exc:  # noqa: BLE001 - a record this version cannot read: the others still load
            logger.error("a stored schedule %r cannot be read: %s", str(record.get("id"))[:40], exc)
            return
        problem = self._checker.problem(task, self.clock.time())
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
            task.trigger = self._checker.trigger(task)
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
        self._ended.flush()

    def _fire(self, task: ScheduledTask, now: float) -> None:
        """Start the runs of every fire of ``task`` up to ``now`` by its policies (lock held)."""
        plan = plan_fires(task, now)
        if plan.missed is not None:
            task.history.append(plan.missed)
        task.next_run = plan.next_run
        for when in plan.catch_up:
            self._start_run(task, when, catch_up=True)
        for when in plan.on_time:
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
                self._ended.add(task, run)
            if task.queued:
                task.queued = False
                self._start_run(task, self.clock.time(), catch_up=False)
            self._save(task)
        self._ended.flush()

    def _save(self, task: ScheduledTask) -> None:
        if task.id not in self._schedules:
            return
        try:
            self.store.save(task.to_record())
        except Exception:  # a store outage must not stop the schedules
            logger.exception("could not save schedule %s", task.id)


def scheduler_extension(task_manager: TaskManager) -> ToolScheduler:
    """The factory of the ``scheduler`` extension (``manager.extension("scheduler")``): one per manager."""
    return ToolScheduler.for_manager(task_manager)
