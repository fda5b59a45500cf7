"""TaskManager: runs tools, managed agents and callables in the background, by name.

One lock guards every task record and every status change; waiters are woken by events set on
the transition that finishes their tasks, so nothing polls. Concurrency is bounded by the
manager's own slots (``max_workers``), not by the executor: a task that stops using its slot (it
timed out, was cancelled, or suspended on a remote result) hands it to the next pending task.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import itertools
import logging
import threading
import time
import traceback
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any, Literal, NamedTuple

from . import tracing
from ._loop import background_loop, spawn
from ._targets import Target, TaskValidationError, agent_target, function_target, tool_target
from ._timers import TimerHandle, TimerQueue
from .tasks import (
    ALLOWED_TRANSITIONS,
    InvalidTransition,
    TaskError,
    TaskFailure,
    TaskInfo,
    TaskKind,
    TaskStatus,
)

__all__ = [
    "TaskManager",
    "WaitResult",
    "UnknownTaskError",
    "TaskValidationError",
    "get_current_task_id",
    "get_task_manager",
    "cancellation_requested",
]

logger = logging.getLogger(__name__)
_remote_init_lock = threading.Lock()

_current: contextvars.ContextVar[tuple[TaskManager, str] | None] = contextvars.ContextVar(
    "async_task_system_current_task", default=None
)
_active_manager: contextvars.ContextVar[TaskManager | None] = contextvars.ContextVar(
    "async_task_system_active_manager", default=None
)


def get_current_task_id() -> str | None:
    """The id of the task whose code is running in this context, or ``None`` outside a task."""
    current = _current.get()
    return None if current is None else current[1]


def get_task_manager() -> TaskManager | None:
    """The manager running the current task, else the one an ``AsyncAgent`` run made active."""
    current = _current.get()
    if current is not None:
        return current[0]
    return _active_manager.get()


def cancellation_requested() -> bool:
    """True when the current task was cancelled or timed out; long-running code may check it and stop."""
    current = _current.get()
    if current is None:
        return False
    manager, task_id = current
    return manager.is_cancel_requested(task_id)


class UnknownTaskError(LookupError):
    """A task id this manager does not know (never submitted, or dropped by the retention limit)."""

    def __str__(self) -> str:  # LookupError would print the repr of its argument
        return str(self.args[0]) if self.args else ""


class WaitResult(NamedTuple):
    """What ``TaskManager.wait`` returns: ids that reached a terminal status, and the rest."""

    done: list[str]
    not_done: list[str]


class _Waiter:
    __slots__ = ("remaining", "event")

    def __init__(self, remaining: int) -> None:
        self.remaining = remaining
        self.event = threading.Event()


class _Task:
    """A task's live record: the public ``TaskInfo`` plus what the manager needs to run it."""

    __slots__ = ("info", "target", "context", "waiters", "timer", "cancel_requested", "holds_slot", "read")

    def __init__(self, info: TaskInfo, target: Target | None, context: contextvars.Context) -> None:
        self.info = info
        self.target = target
        self.context = context
        self.waiters: list[_Waiter] = []
        self.timer: TimerHandle | None = None
        self.cancel_requested = False  # per attempt; read by cancellation_requested()
        self.holds_slot = False
        self.read = False


class TaskManager:
    """Runs named targets as background tasks and tracks them through one state machine.

    Args:
        max_workers: how many tasks run at once. Pending tasks wait in FIFO order.
        tools: smolagents ``Tool`` objects (or ``@tool`` functions) to register.
        managed_agents: smolagents agents to register; each run uses a fresh copy.
        functions: plain callables to register, by their ``__name__``.
        executor: any thread-based ``concurrent.futures.Executor``. By default a thread pool that
            grows on demand a little past ``max_workers``, so tasks that hand back their slot
            (timed out, cancelled, suspended) never starve the pool. An executor you pass is not
            shut down by the manager.
        retention: how many finished tasks are kept. Past it, the oldest finished tasks whose
            results were read are dropped first, then the oldest unread ones.
        retry_backoff: seconds before the first retry; doubled per attempt, capped at 30 s.
    """

    def __init__(
        self,
        max_workers: int = 3,
        *,
        tools: Iterable[Any] | None = None,
        managed_agents: Iterable[Any] | None = None,
        functions: Iterable[Callable[..., Any]] | None = None,
        executor: Executor | None = None,
        retention: int = 1000,
        retry_backoff: float = 0.5,
    ) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        if retention < 0:
            raise ValueError("retention must be >= 0")
        self.max_workers = max_workers
        self.retention = retention
        self.retry_backoff = retry_backoff
        self._owns_executor = executor is None
        self._executor: Executor = executor or ThreadPoolExecutor(
            max_workers=max_workers + max(4, max_workers), thread_name_prefix="async-task"
        )
        self._lock = threading.Lock()
        self._targets: dict[tuple[TaskKind, str], Target] = {}
        self._tasks: dict[str, _Task] = {}
        self._queue: deque[_Task] = deque()
        self._free_slots = max_workers
        self._finished_unread: OrderedDict[str, None] = OrderedDict()
        self._finished_read: OrderedDict[str, None] = OrderedDict()
        self._counts = dict.fromkeys(TaskStatus, 0)
        self._submitted = 0
        self._ids = itertools.count(1)
        self._timers = TimerQueue()
        self._listeners: list[Callable[[TaskInfo], None]] = []
        self._event_queue: deque[TaskInfo] = deque()
        self._delivering = False
        self._all_done = threading.Condition(self._lock)
        self._closed = False
        self._handoff = threading.local()
        self._shutdown_callbacks: list[Callable[[], None]] = []
        self._remote: Any = None  # RemoteExecutionManager, created on first use of remote_manager
        for item in tools or ():
            self.register_tool(item)
        for item in managed_agents or ():
            self.register_agent(item)
        for item in functions or ():
            self.register_function(item)

    # ------------------------------------------------------------------ registration

    def register_tool(self, tool: Any, name: str | None = None) -> str:
        """Register a smolagents ``Tool`` (or ``@tool`` function); a plain callable becomes a function target."""
        if not hasattr(tool, "forward") or not hasattr(tool, "inputs"):
            if callable(tool):
                return self.register_function(tool, name=name)
            raise TypeError(f"Cannot register {tool!r} as a tool: expected a smolagents Tool or a callable")
        return self._register(tool_target(tool, name))

    def register_agent(self, agent: Any, name: str | None = None, description: str | None = None) -> str:
        """Register a managed agent, or a zero-argument factory returning one (then ``name`` is required)."""
        return self._register(agent_target(agent, name, description))

    def register_function(
        self, fn: Callable[..., Any], name: str | None = None, description: str | None = None
    ) -> str:
        """Register a plain callable; it is called with the task's arguments as keywords."""
        return self._register(function_target(fn, name, description))

    def register_target(self, target: Target) -> str:
        """Register a prepared :class:`Target` (subsystems use this for their own kinds)."""
        return self._register(target)

    def _register(self, target: Target) -> str:
        with self._lock:
            self._targets[(target.kind, target.name)] = target
        return target.name

    def targets(self, kind: TaskKind | str | None = None) -> list[Target]:
        """The registered targets, optionally of one kind."""
        wanted = None if kind is None else TaskKind.parse(kind)
        with self._lock:
            return [t for (k, _), t in self._targets.items() if wanted is None or k is wanted]

    def _resolve(self, kind: TaskKind, name: str) -> Target:
        target = self._targets.get((kind, name))
        if target is not None:
            return target
        elsewhere = [k for (k, n) in self._targets if n == name]
        if elsewhere:
            other = elsewhere[0]
            example = self._targets[(other, name)].signature_hint()
            raise TaskValidationError(
                f"{name!r} is a {other.value}, not a {kind.value}: call submit_task({other.value!r}, {name!r}, {example})."
            )
        names = sorted(n for (k, n) in self._targets if k is kind)
        available = ", ".join(names) if names else "none are registered"
        raise TaskValidationError(f"Unknown {kind.value} {name!r}. Available {kind.value}s: {available}.")

    # ------------------------------------------------------------------ submitting

    def submit(
        self,
        kind: TaskKind | str,
        name: str,
        arguments: dict[str, Any] | None = None,
        timeout: float | None = None,
        retries: int = 0,
    ) -> str:
        """Validate, queue and return the new task's id at once.

        Raises ``TaskValidationError`` (a ``ValueError``) for an unknown name or bad arguments,
        with a message that says how to fix the call, and ``RuntimeError`` after ``shutdown``.
        ``timeout`` (seconds) counts from each attempt's start; ``retries`` re-runs a failed
        attempt after an exponential back-off.
        """
        task_kind = TaskKind.parse(kind)
        if task_kind is TaskKind.REMOTE:
            _ = self.remote_manager  # registers the "remote" target on first use
        if timeout is not None and (not isinstance(timeout, (int, float)) or timeout <= 0):
            raise TaskValidationError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if not isinstance(retries, int) or retries < 0:
            raise TaskValidationError(f"retries must be a non-negative integer, got {retries!r}")
        with self._lock:
            target = self._resolve(task_kind, name)
        checked = target.validate(arguments)
        return self._enqueue(task_kind, target.name, checked, target, timeout, retries)

    def _enqueue(
        self,
        kind: TaskKind,
        name: str,
        arguments: dict[str, Any],
        target: Target | None,
        timeout: float | None,
        retries: int,
    ) -> str:
        # Built before taking the lock, to keep the time other threads wait for it short
        # (next() on itertools.count is atomic).
        task_id = f"task_{next(self._ids)}"
        info = TaskInfo(
            id=task_id, kind=kind, name=name, arguments=arguments, timeout=timeout, retries=retries
        )
        task = _Task(info, target, contextvars.copy_context())
        with self._lock:
            if self._closed:
                raise RuntimeError("TaskManager is shut down: no new tasks are accepted")
            self._tasks[task_id] = task
            self._submitted += 1
            self._counts[TaskStatus.PENDING] += 1
            # A remote command holds no slot: its first attempt only sends the request and suspends,
            # so it starts at once in the caller's thread and the request id exists when submit returns.
            starts_now = kind is TaskKind.REMOTE
            if not starts_now:
                self._queue.append(task)
            ready = self._take_ready()
            events = self._snapshot(task)
        self._dispatch(ready)
        self._notify(events)
        if starts_now:
            self._run_attempt(task)
        return task_id

    # ------------------------------------------------------------------ running

    def _take_ready(self) -> list[_Task]:
        """Pop pending tasks while slots are free (lock held)."""
        ready = []
        while self._free_slots > 0 and self._queue:
            task = self._queue.popleft()
            if task.info.status is not TaskStatus.PENDING:
                continue  # cancelled while queued
            self._free_slots -= 1
            task.holds_slot = True
            ready.append(task)
        return ready

    def _dispatch(self, ready: list[_Task]) -> None:
        # A worker thread that is just finishing an attempt keeps the first ready task and runs it
        # next itself (see _work): no executor round trip, and no other thread woken for it.
        handoff: list[_Task] | None = getattr(self._handoff, "slot", None)
        for task in ready:
            if handoff is not None and not handoff:
                handoff.append(task)
                continue
            try:
                self._executor.submit(self._work, task)
            except Exception as exc:  # executor shut down or refusing work
                self._finish(task, None, TaskError("executor_error", f"could not start task: {exc}"))

    def _work(self, task: _Task) -> None:
        """What the executor runs: the task's attempt, then any task handed over as it finished."""
        next_task: _Task | None = task
        while next_task is not None:
            next_task = self._run_attempt(next_task, take_next=self._owns_executor)

    @contextlib.contextmanager
    def _taking_next(self, enabled: bool) -> Iterator[list[_Task]]:
        handoff: list[_Task] = []
        if not enabled:
            yield handoff
            return
        self._handoff.slot = handoff
        try:
            yield handoff
        finally:
            self._handoff.slot = None

    def _release_slot(self, task: _Task) -> list[_Task]:
        """Give the task's slot back and take the next pending tasks (lock held)."""
        if task.holds_slot:
            task.holds_slot = False
            self._free_slots += 1
        return self._take_ready()

    def _reclaim_slot(self, task: _Task) -> None:
        """Take a slot back for a task that lent it and carries on running (lock held).

        If every slot was given away meanwhile the count briefly goes past ``max_workers``; no
        pending task starts until it is back under.
        """
        if not task.holds_slot and not task.info.status.is_terminal:
            task.holds_slot = True
            self._free_slots -= 1

    def _run_attempt(self, task: _Task, take_next: bool = False) -> _Task | None:
        """Run one attempt in this thread; with ``take_next``, return a ready task to run next here."""
        with self._lock:
            info = task.info
            if info.status is not TaskStatus.PENDING:
                ready = self._release_slot(task)
                attempt = 0
            else:
                self._set_status(task, TaskStatus.RUNNING)
                info.attempts += 1
                info.started_at = time.time()
                task.cancel_requested = False
                attempt = info.attempts
                if info.timeout is not None:
                    task.timer = self._timers.call_later(
                        info.timeout, lambda: self._on_timeout(task, attempt)
                    )
                ready = []
                events = self._snapshot(task)
        if not attempt:
            with self._taking_next(take_next) as handoff:
                self._dispatch(ready)
            return handoff[0] if handoff else None
        self._notify(events)
        try:
            context = task.context if attempt == 1 else task.context.copy()
            result = context.run(self._invoke, task, attempt)
        except BaseException as exc:
            with self._taking_next(take_next and isinstance(exc, Exception)) as handoff:
                self._attempt_failed(task, attempt, exc)
        else:
            if inspect.iscoroutine(result):  # an async target: it runs on the loop, holding no thread
                background_loop().call_soon_threadsafe(
                    self._start_coroutine, task, attempt, result, context=context
                )
                return None
            with self._taking_next(take_next) as handoff:
                self._attempt_succeeded(task, attempt, result)
        return handoff[0] if handoff else None

    def _start_coroutine(self, task: _Task, attempt: int, coroutine: Any) -> None:
        # Runs on the background loop inside the task's context, which create_task copies for the coroutine.
        spawn(self._drive_coroutine(task, attempt, coroutine))

    async def _drive_coroutine(self, task: _Task, attempt: int, coroutine: Any) -> None:
        try:
            result = await coroutine
        except BaseException as exc:
            self._attempt_failed(task, attempt, exc)
        else:
            self._attempt_succeeded(task, attempt, result)

    def _invoke(self, task: _Task, attempt: int) -> Any:
        _current.set((self, task.info.id))
        with tracing.task_span(task.info, attempt) as span:
            if task.target is None:
                raise RuntimeError(f"task {task.info.id} has nothing to run")
            result = task.target.call(task.info.arguments)
            if inspect.iscoroutine(result):  # the span stays open until the loop has run it
                return span.wrap_coroutine(result)
            span.set_result(result)
            return result

    def _attempt_succeeded(self, task: _Task, attempt: int, result: Any) -> None:
        with self._lock:
            if not self._is_live_attempt(task, attempt) or task.info.status is TaskStatus.WAITING_REMOTE:
                # (waiting: the attempt handed its work to a remote executor; the response finishes it)
                ready, events = self._release_slot(task), []
            else:
                ready, events = self._finish_locked(task, TaskStatus.COMPLETED, result, None)
        self._dispatch(ready)
        self._notify(events)

    def _attempt_failed(self, task: _Task, attempt: int, exc: BaseException) -> None:
        error = TaskError(
            type=type(exc).__name__,
            message=str(exc) or type(exc).__name__,
            traceback="".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
        )
        with self._lock:
            if not self._is_live_attempt(task, attempt):
                ready, events = self._release_slot(task), []
            elif attempt <= task.info.retries and not self._closed:
                ready, events = self._schedule_retry(task, attempt, error)
            else:
                ready, events = self._finish_locked(task, TaskStatus.FAILED, None, error)
        self._dispatch(ready)
        self._notify(events)
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: recorded, then let through
            raise exc

    def _is_live_attempt(self, task: _Task, attempt: int) -> bool:
        info = task.info
        status = info.status
        return info.attempts == attempt and (
            status is TaskStatus.RUNNING or status is TaskStatus.WAITING_REMOTE
        )

    def _schedule_retry(
        self, task: _Task, attempt: int, error: TaskError
    ) -> tuple[list[_Task], list[TaskInfo]]:
        """Back to PENDING, re-queued after the back-off (lock held)."""
        info = task.info
        info.error = error  # the last attempt's error stays visible while the retry waits
        self._cancel_timer(task)
        self._set_status(task, TaskStatus.PENDING)
        delay = min(self.retry_backoff * (2 ** (attempt - 1)), 30.0)
        task.timer = self._timers.call_later(delay, lambda: self._requeue(task))
        return self._release_slot(task), self._snapshot(task)

    def _requeue(self, task: _Task) -> None:
        with self._lock:
            if task.info.status is not TaskStatus.PENDING:
                return
            self._queue.append(task)
            ready = self._take_ready()
        self._dispatch(ready)

    def _on_timeout(self, task: _Task, attempt: int) -> None:
        with self._lock:
            if not self._is_live_attempt(task, attempt):
                return
            task.cancel_requested = True
            error = TaskError("timeout", f"task exceeded its timeout of {task.info.timeout:g} s")
            if attempt <= task.info.retries and not self._closed:
                ready, events = self._schedule_retry(task, attempt, error)
            else:
                ready, events = self._finish_locked(task, TaskStatus.FAILED, None, error)
        self._dispatch(ready)
        self._notify(events)

    # ------------------------------------------------------------------ state changes

    def _set_status(self, task: _Task, status: TaskStatus) -> None:
        """The single place a status changes (lock held)."""
        current = task.info.status
        if status not in ALLOWED_TRANSITIONS[current]:
            raise InvalidTransition(f"{task.info.id}: {current.value} -> {status.value} is not allowed")
        self._counts[current] -= 1
        self._counts[status] += 1
        task.info.status = status

    def _finish(
        self, task: _Task, result: Any, error: TaskError | None, status: TaskStatus | None = None
    ) -> bool:
        """Move a task to a terminal status from outside the lock; False if it had already finished."""
        final = status or (TaskStatus.FAILED if error is not None else TaskStatus.COMPLETED)
        with self._lock:
            if task.info.status.is_terminal:
                return False
            ready, events = self._finish_locked(task, final, result, error)
        self._dispatch(ready)
        self._notify(events)
        return True

    def _finish_locked(
        self, task: _Task, status: TaskStatus, result: Any, error: TaskError | None
    ) -> tuple[list[_Task], list[TaskInfo]]:
        info = task.info
        self._set_status(task, status)
        info.result = result
        info.error = error
        info.finished_at = time.time()
        self._cancel_timer(task)
        if status is not TaskStatus.COMPLETED:
            task.cancel_requested = True
        for waiter in task.waiters:
            waiter.remaining -= 1
            if waiter.remaining <= 0:
                waiter.event.set()
        task.waiters.clear()
        task.context = None  # type: ignore[assignment]  # drop references to the submitter's context
        self._finished_unread[info.id] = None
        self._evict()
        if self._closed:
            self._all_done.notify_all()
        return self._release_slot(task), self._snapshot(task)

    def _cancel_timer(self, task: _Task) -> None:
        if task.timer is not None:
            task.timer.cancel()
            task.timer = None

    def _evict(self) -> None:
        while len(self._finished_read) + len(self._finished_unread) > self.retention:
            source = self._finished_read if self._finished_read else self._finished_unread
            task_id, _ = source.popitem(last=False)
            self._tasks.pop(task_id, None)

    def _mark_read(self, task: _Task) -> None:
        if not task.read and task.info.status.is_terminal:
            task.read = True
            if self._finished_unread.pop(task.info.id, 0) is None:
                self._finished_read[task.info.id] = None

    # ------------------------------------------------------------------ listeners

    def add_listener(self, callback: Callable[[TaskInfo], None]) -> Callable[[], None]:
        """Call ``callback(snapshot)`` after every status change; returns a function that removes it.

        Callbacks run outside the manager's lock, one at a time and in the order the changes
        happened, in whichever thread made a change; keep them short.
        """
        with self._lock:
            self._listeners.append(callback)

        def remove() -> None:
            with self._lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)

        return remove

    def _snapshot(self, task: _Task) -> list[TaskInfo]:
        """Queue a copy of the task's record for the listeners (lock held).

        Snapshots are queued under the lock and delivered by ``_notify`` outside it, one thread
        at a time, so every listener sees each task's changes in the order they happened.
        """
        if not self._listeners:
            return []
        info = task.info.snapshot()
        self._event_queue.append(info)
        return [info]

    def _notify(self, events: list[TaskInfo]) -> None:
        if not events:
            return
        with self._lock:
            if self._delivering:
                return  # the thread delivering now will take these too
            self._delivering = True
        while True:
            with self._lock:
                if not self._event_queue:
                    self._delivering = False
                    return
                batch = list(self._event_queue)
                self._event_queue.clear()
                callbacks = list(self._listeners)
            for info in batch:
                for callback in callbacks:
                    try:
                        callback(info)
                    except Exception:
                        logger.exception("task listener failed")

    # ------------------------------------------------------------------ waiting and reading

    def _get(self, task_id: str) -> _Task:
        task = self._tasks.get(task_id)
        if task is None:
            known = list(self._tasks)
            shown = ", ".join(known[-10:]) if known else "none yet"
            more = f" (and {len(known) - 10} earlier)" if len(known) > 10 else ""
            raise UnknownTaskError(
                f"Unknown task id {task_id!r}. Known task ids: {shown}{more}. Use the ids that submit_task returned."
            )
        return task

    def wait(
        self,
        task_ids: Iterable[str] | str,
        timeout: float | None = None,
        return_when: Literal["all", "first"] = "all",
    ) -> WaitResult:
        """Block until all (or the first) of ``task_ids`` reach a terminal status, or ``timeout`` seconds pass.

        Returns at once for tasks already finished; wakes within the transition that finishes
        the last task. Raises ``UnknownTaskError`` for an id it does not know.
        """
        if return_when not in ("all", "first"):
            raise ValueError("return_when must be 'all' or 'first'")
        ids = [task_ids] if isinstance(task_ids, str) else list(dict.fromkeys(task_ids))
        with self._lock:
            tasks = [self._get(task_id) for task_id in ids]
            pending = [task for task in tasks if not task.info.status.is_terminal]
            satisfied = not pending or (return_when == "first" and len(pending) < len(tasks))
            waiter = None
            if not satisfied:
                waiter = _Waiter(1 if return_when == "first" else len(pending))
                for task in pending:
                    task.waiters.append(waiter)
        if waiter is not None:
            # A task waiting for other tasks of this manager lends its slot meanwhile, so that
            # tasks it submitted can run even when every slot is taken by waiting parents.
            current = _current.get()
            lender = self._tasks.get(current[1]) if current is not None and current[0] is self else None
            if lender is not None:
                with self._lock:
                    ready = self._release_slot(lender)
                self._dispatch(ready)
            try:
                waiter.event.wait(timeout)
            finally:
                with self._lock:
                    for task in pending:
                        if waiter in task.waiters:
                            task.waiters.remove(waiter)
                    if lender is not None:
                        self._reclaim_slot(lender)
        with self._lock:
            done = [t.info.id for t in tasks if t.info.status.is_terminal]
            not_done = [t.info.id for t in tasks if not t.info.status.is_terminal]
        return WaitResult(done, not_done)

    def results(self, task_ids: Iterable[str] | str) -> dict[str, Any]:
        """``{task_id: result}``. Never raises for a failed, cancelled or unfinished task: its value
        is a :class:`TaskFailure` string that says what happened. Raises only for unknown ids."""
        ids = [task_ids] if isinstance(task_ids, str) else list(task_ids)
        out: dict[str, Any] = {}
        with self._lock:
            for task_id in ids:
                task = self._get(task_id)
                info = task.info
                if info.status is TaskStatus.COMPLETED:
                    out[task_id] = info.result
                else:
                    out[task_id] = _failure_value(info)
                self._mark_read(task)
        return out

    def result(self, task_id: str) -> Any:
        """One task's result (or its :class:`TaskFailure`)."""
        return self.results([task_id])[task_id]

    def check(self, task_id: str) -> TaskInfo:
        """A snapshot of one task's record."""
        with self._lock:
            task = self._get(task_id)
            self._mark_read(task)
            return task.info.snapshot()

    def list(self, status: TaskStatus | str | None = None) -> list[TaskInfo]:
        """Snapshots of the tasks still held, oldest first, optionally of one status."""
        wanted = None
        if status is not None and status != "":
            try:
                wanted = TaskStatus(str(status.value if isinstance(status, TaskStatus) else status).lower())
            except ValueError:
                names = ", ".join(s.value for s in TaskStatus)
                raise ValueError(f"Unknown status {status!r}: use one of {names}.") from None
        with self._lock:
            return [
                t.info.snapshot() for t in self._tasks.values() if wanted is None or t.info.status is wanted
            ]

    def get_statistics(self) -> dict[str, int]:
        """Counts per status (``stats['running']``, ...), plus ``total`` submitted and ``retained`` records.

        Terminal counts are cumulative, so ``total`` always equals the sum of the six statuses.
        """
        with self._lock:
            stats = {status.value: count for status, count in self._counts.items()}
            stats["total"] = self._submitted
            stats["retained"] = len(self._tasks)
            stats["max_workers"] = self.max_workers
            return stats

    # ------------------------------------------------------------------ cancelling

    def cancel(self, task_id: str) -> bool:
        """Cancel a task. A pending one never runs; a running one is marked cancelled at once and
        its code can see ``cancellation_requested()``. False if it had already finished."""
        with self._lock:
            task = self._get(task_id)
            if task.info.status.is_terminal:
                return False
            ready, events = self._finish_locked(
                task, TaskStatus.CANCELLED, None, TaskError("cancelled", "task was cancelled")
            )
        self._dispatch(ready)
        self._notify(events)
        return True

    def is_cancel_requested(self, task_id: str) -> bool:
        with self._lock:
            task = self._tasks.get(task_id)
            return task is not None and task.cancel_requested

    # ------------------------------------------------------------------ remote execution (seed 000)

    @property
    def remote_manager(self) -> Any:
        """The :class:`~async_task_system.remote.bridge.RemoteExecutionManager` of this manager (created on first use)."""
        if self._remote is None:
            from .remote.bridge import RemoteExecutionManager  # the core does not import subsystems up front

            with _remote_init_lock:
                if self._remote is None:
                    self._remote = RemoteExecutionManager(self)
        return self._remote

    async def suspend_task_for_remote(self, task_id: str, command: str, timeout: float | None = None) -> str:
        """Move a running task to WAITING_REMOTE (its slot is given back), send ``command``; returns the request id.

        The task's code may return afterwards: the response completes the task with the remote result.
        """
        return self.remote_manager.suspend(task_id, command, timeout)

    async def resume_task_with_result(self, task_id: str, result: Any) -> bool:
        """WAITING_REMOTE -> RUNNING -> COMPLETED with ``result``; False if the task was not waiting."""
        return self.remote_manager.resume(task_id, result)

    def handle_websocket_response(
        self, request_id: str, success: bool, result: Any = None, error: str | None = None
    ) -> bool:
        """Deliver a remote response (seed 000): resumes the waiting task, or fails it with the remote error.

        Safe from any thread or event loop; unknown, late and duplicate responses are logged and ignored.
        """
        return self.remote_manager.handle_remote_response(request_id, success, result, error)

    # ------------------------------------------------------------------ lifecycle

    def shutdown(self, wait: bool = True, cancel_pending: bool = False, timeout: float | None = None) -> None:
        """Stop accepting tasks. ``cancel_pending`` cancels queued tasks; ``wait`` blocks until
        every task is finished (at most ``timeout`` seconds)."""
        with self._lock:
            self._closed = True
            pending = [t for t in self._tasks.values() if t.info.status is TaskStatus.PENDING]
        if cancel_pending:
            for task in pending:
                self._finish(
                    task, None, TaskError("cancelled", "cancelled at shutdown"), TaskStatus.CANCELLED
                )
        if wait:
            deadline = None if timeout is None else time.monotonic() + timeout
            with self._lock:
                while any(not t.info.status.is_terminal for t in self._tasks.values()):
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        break
                    self._all_done.wait(remaining)
        for callback in reversed(self._shutdown_callbacks):
            try:
                callback()
            except Exception:
                logger.exception("shutdown callback failed")
        self._shutdown_callbacks.clear()
        self._timers.close()
        if self._owns_executor:
            self._executor.shutdown(wait=wait, cancel_futures=not wait)

    def add_shutdown_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` when the manager shuts down, after its tasks are waited for (last added runs first).

        Subsystems use it to stop what they started for this manager, e.g. a remote hub.
        """
        with self._lock:
            self._shutdown_callbacks.append(callback)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> TaskManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(wait=True)

    def __repr__(self) -> str:
        stats = self.get_statistics()
        return f"<TaskManager max_workers={self.max_workers} running={stats['running']} pending={stats['pending']}>"


def _failure_value(info: TaskInfo) -> TaskFailure:
    label = f"Task {info.id} ({info.kind.value} {info.name!r})"
    if info.status is TaskStatus.FAILED:
        error = info.error or TaskError("error", "unknown error")
        text = f"ERROR: {label} failed: {error.type}: {error.message}"
    elif info.status is TaskStatus.CANCELLED:
        text = f"CANCELLED: {label} was cancelled"
    else:
        text = f"NOT FINISHED: {label} is {info.status.value}; call wait_for_tasks([{info.id!r}]) first"
    return TaskFailure(info.id, info.status, info.error, text)
