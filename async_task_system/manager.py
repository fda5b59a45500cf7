"""TaskManager: runs tools, managed agents and callables in the background, by name.

One lock guards every task record and every status change; waiters are woken by events set on
the transition that finishes their tasks, so nothing polls. Concurrency is bounded by the
manager's own slots (``max_workers``), not by the executor: a task that stops using its slot (it
timed out, was cancelled, or was handed to something else) hands it to the next pending task.

The executor receives a picklable :class:`~async_task_system._attempt.AttemptCall`; the task's
state changes here when the returned future completes. Code outside the manager hands a running
attempt to something else through :meth:`TaskManager.suspend`, whose :class:`Suspension` handle
finishes it later (``complete``/``fail``/``resume``); the retry-or-fail rule lives in
:meth:`TaskManager._end_attempt_locked` alone.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import math
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError, Executor, Future
from functools import partial
from typing import Any, Literal, NamedTuple

from . import _timers
from ._attempt import AttemptCall
from ._context import (
    active_manager,
    cancellation_requested,
    current_task,
    get_current_task_id,
    get_task_manager,
    report_progress,
)
from ._dependencies import DependencyGraph, dependency_failure
from ._listeners import ListenerQueue
from ._loop import background_loop, spawn
from ._pool import ChainingThreadPool
from ._registry import Extensions, TargetRegistry, register_extension
from ._targets import Target, agent_target, function_target, tool_target
from .errors import ManagerClosedError, TaskValidationError, UnknownTaskError
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
    "Suspension",
    "WaitResult",
    "UnknownTaskError",
    "TaskValidationError",
    "get_current_task_id",
    "get_task_manager",
    "cancellation_requested",
    "report_progress",
    "register_extension",
    "active_manager",
    "call_later",
    "TimerHandle",
]

call_later = _timers.call_later
TimerHandle = _timers.TimerHandle

logger = logging.getLogger(__name__)

_used_prefixes: set[str] = set()
_prefix_lock = threading.Lock()
_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"


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

    __slots__ = (
        "info", "target", "context", "waiters", "timer", "cancel_requested", "holds_slot",
        "read", "future", "suspension", "resolved",
    )  # fmt: skip

    def __init__(self, info: TaskInfo, target: Target, context: contextvars.Context | None) -> None:
        self.info = info
        self.target = target
        self.context = context
        self.waiters: list[_Waiter] = []
        self.timer: _timers.TimerHandle | None = None
        self.cancel_requested = False  # per attempt; read by cancellation_requested()
        self.holds_slot = False
        self.read = False
        self.future: Future[Any] | None = None
        self.suspension: Suspension | None = None
        self.resolved: dict[str, Any] = {}  # results of the tasks its arguments refer to


class Suspension:
    """A running attempt handed to something else, which finishes it later (for subsystem implementations).

    Made by :meth:`TaskManager.suspend`, modelled on ``concurrent.futures.Future.set_result``:
    :meth:`complete` and :meth:`fail` end the attempt, :meth:`resume` gives it back to the code
    that suspended it. Each returns False when the attempt is no longer suspended (it was
    cancelled, timed out, or already finished), so late and duplicate answers are harmless.
    """

    __slots__ = ("_manager", "_task", "task_id", "attempt", "on_abandon")

    def __init__(
        self, manager: TaskManager, task: _Task, on_abandon: Callable[[TaskError], None] | None
    ) -> None:
        self._manager = manager
        self._task = task
        self.task_id = task.info.id
        self.attempt = task.info.attempts
        self.on_abandon = on_abandon

    @property
    def active(self) -> bool:
        """True while the attempt waits for this handle."""
        return self._task.suspension is self and self._task.info.status is TaskStatus.WAITING_REMOTE

    def complete(self, result: Any) -> bool:
        """The attempt succeeded with ``result``: the task completes."""
        return self._manager._settle(self, result, None, False)

    def fail(
        self, error_type: str, message: str, *, retryable: bool = True, traceback: str | None = None
    ) -> bool:
        """The attempt failed: retried if ``retryable`` and the task has retries left, else the task fails."""
        return self._manager._settle(self, None, TaskError(error_type, message, traceback), retryable)

    def resume(self) -> bool:
        """RUNNING again, with a slot: the code that suspended carries on and its return ends the attempt."""
        return self._manager._settle(self, None, None, False, resume=True)

    def __repr__(self) -> str:
        return f"<Suspension {self.task_id} attempt {self.attempt} active={self.active}>"


class TaskManager:
    """Runs named targets as background tasks and tracks them through one state machine.

    Args:
        max_workers: how many tasks run at once. Pending tasks wait in FIFO order.
        tools: smolagents ``Tool`` objects (or ``@tool`` functions) to register.
        managed_agents: smolagents agents to register; each run uses a fresh copy.
        functions: plain callables to register, by their ``__name__``.
        executor: any ``concurrent.futures.Executor``: threads (the default: a pool a little larger
            than ``max_workers``, so tasks that hand back their slot never starve it), a
            ``ProcessPoolExecutor`` or a Dask client's executor for picklable tool and function
            targets. Coroutine targets always run on the package's event loop. An executor you
            pass is not shut down by the manager.
        retention: how many finished tasks *whose results were read* are kept. A finished task
            nobody has read is never dropped; past ``retention`` read ones, the oldest read go first.
        retry_backoff: seconds before the first retry; doubled per attempt, capped at 30 s.
        id_prefix: the prefix of this manager's task ids (default ``task_<4 random letters>_``,
            unique within the process; a journal reserves it in its store across processes).
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
        id_prefix: str | None = None,
    ) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        if retention < 0:
            raise ValueError("retention must be >= 0")
        self.max_workers = max_workers
        self.retention = retention
        self.retry_backoff = retry_backoff
        self._owns_executor = executor is None
        self._executor: Executor = executor or ChainingThreadPool(max_workers + max(4, max_workers))
        self._lock = threading.Lock()
        self._registry = TargetRegistry()
        self._tasks: dict[str, _Task] = {}
        self._queue: deque[_Task] = deque()
        self._free_slots = max_workers
        self._finished_read: OrderedDict[str, None] = OrderedDict()
        self._counts = dict.fromkeys(TaskStatus, 0)
        self._submitted = 0
        self.id_prefix = id_prefix or _new_prefix()
        self._ids = itertools.count(1)
        self._last_id = 0
        self._graph = DependencyGraph()
        self._listeners = ListenerQueue()
        self._deferred: deque[Callable[[], Any]] = deque()
        self._all_done = threading.Condition(self._lock)
        self._closed = False
        self._shutdown_callbacks: list[Callable[[], None]] = []
        self._extensions = Extensions(self)
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
        return self.register_target(tool_target(tool, name))

    def register_agent(self, agent: Any, name: str | None = None, description: str | None = None) -> str:
        """Register a managed agent, or a zero-argument factory returning one (then ``name`` is required)."""
        return self.register_target(agent_target(agent, name, description))

    def register_function(
        self, fn: Callable[..., Any], name: str | None = None, description: str | None = None
    ) -> str:
        """Register a plain callable; it is called with the task's arguments as keywords."""
        return self.register_target(function_target(fn, name, description))

    def register_target(self, target: Target) -> str:
        """Register a prepared :class:`Target` of any kind (subsystems register their own kinds this way)."""
        return self._registry.add(target)

    def targets(self, kind: TaskKind | str | None = None) -> list[Target]:
        """The registered targets, optionally of one kind."""
        return self._registry.list(kind)

    def extension(self, name: str) -> Any:
        """The subsystem registered as ``name`` for this manager, built on first use (see ``register_extension``)."""
        return self._extensions.get(name)

    # ------------------------------------------------------------------ submitting

    def submit(
        self,
        kind: TaskKind | str,
        name: str,
        arguments: dict[str, Any] | None = None,
        timeout: float | None = None,
        retries: int = 0,
        *,
        after: Iterable[str] | None = None,
    ) -> str:
        """Validate, queue and return the new task's id at once.

        ``timeout`` (seconds) counts from each attempt's start; ``retries`` re-runs a failed
        attempt after an exponential back-off. ``after`` lists task ids that must complete
        first; an argument ``{"$result": "<task_id>"}`` is replaced by that task's result when
        this one starts (and implies ``after``). If a dependency fails or is cancelled, this task
        ends with error type ``dependency_failed``.

        Raises ``TaskValidationError`` (a ``ValueError``) for an unknown name, bad arguments or an
        unknown dependency, with a message that says how to fix the call, and
        ``ManagerClosedError`` (a ``RuntimeError``) after ``shutdown``.
        """
        task_kind = TaskKind.parse(kind)
        if not self._registry.has_kind(task_kind):
            for extension in self._extensions.providing(task_kind):
                self._extensions.get(extension)  # registers its targets
        if timeout is not None and (
            isinstance(timeout, bool)
            or not isinstance(timeout, (int, float))
            or not timeout > 0
            or math.isinf(timeout)
        ):
            raise TaskValidationError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if retries and (isinstance(retries, bool) or not isinstance(retries, int) or retries < 0):
            raise TaskValidationError(f"retries must be a non-negative integer, got {retries!r}")
        target = self._registry.resolve(task_kind, name)
        checked = target.validate(arguments)
        depends_on = self._graph.collect(checked, after) if (after or checked) else ()
        number = next(self._ids)
        task_id = f"{self.id_prefix}{number}"
        info = TaskInfo(
            id=task_id, kind=task_kind, name=target.name, arguments=checked, timeout=timeout, retries=retries,
            depends_on=depends_on,
        )  # fmt: skip
        task = _Task(info, target, contextvars.copy_context())
        with self._lock:
            if self._closed:
                raise ManagerClosedError("TaskManager is shut down: no new tasks are accepted")
            unfinished, failure = self._check_dependencies(task, depends_on) if depends_on else ((), None)
            self._tasks[task_id] = task
            if number > self._last_id:
                self._last_id = number
            self._submitted += 1
            self._counts[TaskStatus.PENDING] += 1
            self._snapshot(task)
            if failure is not None:
                starts = self._finish_locked(task, failure[0], None, failure[1])
            elif unfinished:
                self._graph.add(task_id, unfinished)  # starts when the last one completes
                starts = []
            else:
                starts = self._make_ready(task)
        self._launch(starts)
        self._notify()
        return task_id

    def _check_dependencies(
        self, task: _Task, depends_on: tuple[str, ...]
    ) -> tuple[list[str], tuple[TaskStatus, TaskError] | None]:
        """Unfinished dependencies, or how the task ends because one already did not complete (lock held)."""
        unfinished = []
        for dependency_id in depends_on:
            dependency = self._tasks.get(dependency_id)
            if dependency is None:
                if self._is_evicted(dependency_id):
                    problem = (
                        "finished and was dropped after its result was read (it can no longer be waited on)"
                    )
                else:
                    problem = "is not a task id of this manager (use ids returned by submit_task)"
                raise TaskValidationError(f"Dependency {dependency_id!r} {problem}.")
            status = dependency.info.status
            if status is TaskStatus.COMPLETED:
                task.resolved[dependency_id] = dependency.info.result
            elif status.is_terminal:
                return [], dependency_failure(dependency.info)
            else:
                unfinished.append(dependency_id)
        return unfinished, None

    # ------------------------------------------------------------------ running

    def _make_ready(self, task: _Task) -> list[AttemptCall]:
        """A task whose dependencies are met: start it inline, or queue it for a slot (lock held)."""
        if task.target.runs_inline:
            return [self._start_locked(task)]
        self._queue.append(task)
        return self._take_ready()

    def _take_ready(self) -> list[AttemptCall]:
        """Start queued tasks while slots are free (lock held); the caller launches them outside the lock."""
        starts = []
        while self._free_slots > 0 and self._queue:
            task = self._queue.popleft()
            if task.info.status is not TaskStatus.PENDING:
                continue  # cancelled while queued
            self._free_slots -= 1
            task.holds_slot = True
            starts.append(self._start_locked(task))
        return starts

    def _start_locked(self, task: _Task) -> AttemptCall:
        info = task.info
        self._set_status(task, TaskStatus.RUNNING)
        info.attempts += 1
        info.started_at = time.time()
        task.cancel_requested = False
        attempt = info.attempts
        if info.timeout is not None:
            task.timer = _timers.call_later(info.timeout, lambda: self._on_timeout(task, attempt))
        arguments = self._graph.substitute(info.arguments, task.resolved) if task.resolved else info.arguments
        context = task.context if attempt == 1 else task.context.copy()  # type: ignore[union-attr]
        self._snapshot(task)
        return AttemptCall(task.target.call, arguments, info, attempt, context, self)

    def _launch(self, starts: list[AttemptCall]) -> None:
        """Hand started attempts to where they run (outside the lock)."""
        for call in starts:
            task = self._tasks.get(call.info.id)
            if task is None:
                continue
            if task.target.runs_inline:
                self._run_inline(task, call)
            elif task.target.is_async:
                background_loop().call_soon_threadsafe(
                    self._start_coroutine, task, call, None, context=call.context
                )
            else:
                try:
                    future = self._executor.submit(call)
                except Exception as exc:  # executor shut down or refusing work
                    self._attempt_ended(
                        task, call.attempt, TaskError("executor_error", f"could not start task: {exc}")
                    )
                    continue
                task.future = future
                future.add_done_callback(lambda f, t=task, c=call: self._on_future_done(t, c, f))

    def _run_inline(self, task: _Task, call: AttemptCall) -> None:
        try:
            result = call()
        except Exception as exc:
            self._attempt_ended(task, call.attempt, TaskError.from_exception(exc))
        else:
            self._attempt_ended(task, call.attempt, None, result)

    def _on_future_done(self, task: _Task, call: AttemptCall, future: Future[Any]) -> None:
        try:
            result = future.result(0)  # one look at the future (each of its methods takes its lock)
        except CancelledError:
            self._attempt_ended(
                task, call.attempt, TaskError("cancelled", "the executor cancelled the task"), final=True
            )
        except BaseException as exc:
            self._attempt_ended(task, call.attempt, TaskError.from_exception(exc))
        else:
            if _is_coroutine(result):  # an async target: it runs on the loop, holding no thread
                loop = background_loop()
                loop.call_soon_threadsafe(self._start_coroutine, task, call, result, context=call.context)
            else:
                self._attempt_ended(task, call.attempt, None, result)

    def _start_coroutine(self, task: _Task, call: AttemptCall, coroutine: Any) -> None:
        # On the loop, inside the attempt's context, which create_task copies for the coroutine.
        spawn(self._drive_coroutine(task, call, coroutine))

    async def _drive_coroutine(self, task: _Task, call: AttemptCall, coroutine: Any) -> None:
        try:
            result = await (coroutine if coroutine is not None else call.run_in_current_context())
        except Exception as exc:
            self._attempt_ended(task, call.attempt, TaskError.from_exception(exc))
        except BaseException as exc:  # the loop's own cancellation: record it, then let it through
            self._attempt_ended(task, call.attempt, TaskError.from_exception(exc), final=True)
            raise
        else:
            self._attempt_ended(task, call.attempt, None, result)

    def _attempt_ended(
        self, task: _Task, attempt: int, error: TaskError | None, result: Any = None, final: bool = False
    ) -> None:
        """The attempt's code returned or raised: complete, retry or fail, unless it was already ended."""
        with self._lock:
            info = task.info
            if info.attempts != attempt or info.status is not TaskStatus.RUNNING:
                # Ended already (timed out, cancelled), or suspended: the Suspension finishes it.
                if info.attempts == attempt and info.status is TaskStatus.WAITING_REMOTE:
                    task.future = None
                return
            task.future = None
            if error is None:
                starts = self._finish_locked(task, TaskStatus.COMPLETED, result, None)
            else:
                starts = self._end_attempt_locked(task, error, not final)
        self._launch(starts)
        self._notify()

    def _end_attempt_locked(self, task: _Task, error: TaskError, retryable: bool) -> list[AttemptCall]:
        """The one retry-or-fail rule (lock held): back to PENDING after the back-off, or FAILED."""
        info = task.info
        if not (retryable and info.attempts <= info.retries and not self._closed):
            return self._finish_locked(task, TaskStatus.FAILED, None, error)
        info.error = error  # the last attempt's error stays visible while the retry waits
        self._abandon(task, error)
        self._set_status(task, TaskStatus.PENDING)
        delay = min(self.retry_backoff * (2 ** (info.attempts - 1)), 30.0)
        task.timer = _timers.call_later(delay, lambda: self._requeue(task))
        self._snapshot(task)
        return self._release_slot(task)

    def _requeue(self, task: _Task) -> None:
        with self._lock:
            task.timer = None
            if task.info.status is not TaskStatus.PENDING:
                return
            starts = self._make_ready(task)
        self._launch(starts)
        self._notify()

    def _on_timeout(self, task: _Task, attempt: int) -> None:
        with self._lock:
            info = task.info
            if info.attempts != attempt or info.status not in (TaskStatus.RUNNING, TaskStatus.WAITING_REMOTE):
                return
            task.timer = None
            error = TaskError("timeout", f"task exceeded its timeout of {info.timeout:g} s")
            starts = self._end_attempt_locked(task, error, True)
        self._launch(starts)
        self._notify()

    def _release_slot(self, task: _Task) -> list[AttemptCall]:
        """Give the task's slot back and start the next pending tasks (lock held)."""
        if task.holds_slot:
            task.holds_slot = False
            self._free_slots += 1
        return self._take_ready()

    def _abandon(self, task: _Task, error: TaskError) -> None:
        """The attempt is over: stop its timer, flag its code, drop its suspension, un-queue its future (lock held)."""
        if task.timer is not None:
            task.timer.cancel()
            task.timer = None
        task.cancel_requested = True
        suspension, task.suspension = task.suspension, None
        # Both run by _notify, outside the lock: cancelling a future runs its done callbacks at once.
        if suspension is not None and suspension.on_abandon is not None:
            self._deferred.append(partial(suspension.on_abandon, error))
        future, task.future = task.future, None
        if future is not None:
            self._deferred.append(future.cancel)  # only takes effect while it waits in the executor's queue

    # ------------------------------------------------------------------ task control (public)

    def suspend(
        self, task_id: str | None = None, on_abandon: Callable[[TaskError], None] | None = None
    ) -> Suspension:
        """Hand a running task's attempt to something else: RUNNING -> WAITING_REMOTE, its slot given back.

        ``task_id`` defaults to the current task. The returned :class:`Suspension` finishes the
        attempt later from any thread. The attempt's code may return meanwhile (its return value
        is then ignored) or block and call ``resume()`` itself. ``on_abandon(error)`` is called
        (on the timer thread) if the manager ends the attempt first: cancel, timeout, shutdown.
        Raises ``InvalidTransition`` unless the task is running.
        """
        task_id = task_id or get_current_task_id()
        if task_id is None:
            raise InvalidTransition("suspend() needs a task id outside a running task")
        with self._lock:
            task = self._get(task_id)
            if task.info.status is not TaskStatus.RUNNING:
                raise InvalidTransition(
                    f"task {task_id} is {task.info.status.value}: only a running task can be suspended"
                )
            suspension = Suspension(self, task, on_abandon)
            task.suspension = suspension
            self._set_status(task, TaskStatus.WAITING_REMOTE)
            self._snapshot(task)
            starts = self._release_slot(task)
        self._launch(starts)
        self._notify()
        return suspension

    def suspension(self, task_id: str) -> Suspension | None:
        """The active suspension of a task, if it is waiting on one."""
        with self._lock:
            task = self._tasks.get(task_id)
            return (
                None
                if task is None or task.suspension is None or not task.suspension.active
                else task.suspension
            )

    def _settle(
        self,
        suspension: Suspension,
        result: Any,
        error: TaskError | None,
        retryable: bool,
        resume: bool = False,
    ) -> bool:
        with self._lock:
            if not suspension.active:
                return False
            task = suspension._task
            task.suspension = None
            self._set_status(task, TaskStatus.RUNNING)
            self._snapshot(task)  # seed 000: the task resumes, then finishes
            if resume:
                if (
                    not task.holds_slot
                ):  # may briefly exceed max_workers: no new task starts until it is back under
                    task.holds_slot = True
                    self._free_slots -= 1
                starts: list[AttemptCall] = []
            elif error is None:
                starts = self._finish_locked(task, TaskStatus.COMPLETED, result, None)
            else:
                starts = self._end_attempt_locked(task, error, retryable)
        self._launch(starts)
        self._notify()
        return True

    def report_progress(
        self, task_id: str, fraction: float | None = None, message: str | None = None
    ) -> bool:
        """Record a running task's progress (``fraction`` in [0, 1], ``message`` a short text); False once it ended."""
        if fraction is not None and (
            isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1
        ):
            raise ValueError(f"fraction must be a number from 0 to 1, got {fraction!r}")
        if message is not None:
            message = str(message)[:500]
        with self._lock:
            task = self._get(task_id)
            if task.info.status.is_terminal:
                return False
            if fraction is not None:
                task.info.progress = float(fraction)
            if message is not None:
                task.info.progress_message = message
            self._snapshot(task)
        self._notify()
        return True

    def call_later(self, delay: float, callback: Callable[[], None]) -> _timers.TimerHandle:
        """Run ``callback()`` after ``delay`` seconds on the shared timer thread (keep it short); ``.cancel()`` it."""
        return _timers.call_later(delay, callback)

    # ------------------------------------------------------------------ state changes

    def _set_status(self, task: _Task, status: TaskStatus) -> None:
        """The single place a status changes (lock held)."""
        current = task.info.status
        if status not in ALLOWED_TRANSITIONS[current]:
            raise InvalidTransition(f"{task.info.id}: {current.value} -> {status.value} is not allowed")
        self._counts[current] -= 1
        self._counts[status] += 1
        task.info.status = status

    def _finish_locked(
        self, task: _Task, status: TaskStatus, result: Any, error: TaskError | None
    ) -> list[AttemptCall]:
        """Move a task to a terminal status, wake its waiters, settle its dependents (lock held)."""
        info = task.info
        self._set_status(task, status)
        info.result = result
        info.error = error
        info.finished_at = time.time()
        self._abandon(task, error or TaskError("completed", "the task completed"))
        task.cancel_requested = status is not TaskStatus.COMPLETED
        for waiter in task.waiters:
            waiter.remaining -= 1
            if waiter.remaining <= 0:
                waiter.event.set()
        task.waiters.clear()
        task.context = None  # drop references to the submitter's context
        task.resolved = {}
        if self._closed:
            self._all_done.notify_all()
        self._snapshot(task)
        starts = self._release_slot(task)
        for dependent_id in self._graph.finished(info.id):
            dependent = self._tasks.get(dependent_id)
            if dependent is None or dependent.info.status is not TaskStatus.PENDING:
                continue
            if status is TaskStatus.COMPLETED:
                dependent.resolved[info.id] = result
                if self._graph.satisfied(dependent_id, info.id):
                    starts += self._make_ready(dependent)
            else:
                end_status, failure = dependency_failure(info)
                starts += self._finish_locked(dependent, end_status, None, failure)
        return starts

    def _evict(self) -> None:
        while len(self._finished_read) > self.retention:
            task_id, _ = self._finished_read.popitem(last=False)
            self._tasks.pop(task_id, None)

    def _mark_read(self, task: _Task) -> None:
        if not task.read and task.info.status.is_terminal:
            task.read = True
            self._finished_read[task.info.id] = None

    def _is_evicted(self, task_id: str) -> bool:
        """Issued by this manager but no longer held: it finished, was read, and retention dropped it."""
        suffix = task_id[len(self.id_prefix) :] if task_id.startswith(self.id_prefix) else ""
        return suffix.isdigit() and 0 < int(suffix) <= self._last_id and task_id not in self._tasks

    # ------------------------------------------------------------------ listeners

    def add_listener(self, callback: Callable[[TaskInfo], None]) -> Callable[[], None]:
        """Call ``callback(snapshot)`` after every status change and progress report; returns a remover.

        Callbacks run outside the manager's lock, one at a time and in the order the changes
        happened, in whichever thread made a change; keep them short.
        """
        return self._listeners.add(callback)

    def _snapshot(self, task: _Task) -> None:
        """Queue a copy of the task's record for the listeners (lock held); ``_notify`` delivers it."""
        listeners = self._listeners
        if listeners.active:
            listeners.put(task.info.snapshot())

    def _notify(self) -> None:
        """After a change, outside the lock: deferred actions (cancel a future, tell a suspension's owner), then listeners."""
        while self._deferred:
            try:
                action = self._deferred.popleft()
            except IndexError:
                break
            _call_quietly(action)
        self._listeners.deliver()

    # ------------------------------------------------------------------ waiting and reading

    def _get(self, task_id: str) -> _Task:
        task = self._tasks.get(task_id)
        if task is not None:
            return task
        if self._is_evicted(task_id):
            raise UnknownTaskError(
                f"Task {task_id!r} finished and its result was read; it was dropped to keep at most "
                f"{self.retention} read tasks."
            )
        known = list(self._tasks)
        shown = ", ".join(known[-10:]) if known else "none yet"
        more = f" (and {len(known) - 10} earlier)" if len(known) > 10 else ""
        raise UnknownTaskError(
            f"Unknown task id {task_id!r}. Known task ids: {shown}{more}. Use the ids that submit_task returned."
        )

    def wait(
        self,
        task_ids: Iterable[str] | str,
        timeout: float | None = None,
        return_when: Literal["all", "first"] = "all",
    ) -> WaitResult:
        """Block until all (or the first) of ``task_ids`` reach a terminal status, or ``timeout`` seconds pass.

        Returns at once for tasks already finished (a task dropped after its result was read
        counts as done); wakes within the transition that finishes the last task. Raises
        ``UnknownTaskError`` for an id this manager never issued.
        """
        if return_when not in ("all", "first"):
            raise ValueError("return_when must be 'all' or 'first'")
        ids = [task_ids] if isinstance(task_ids, str) else list(dict.fromkeys(task_ids))
        with self._lock:
            tasks = [self._tasks.get(i) or (None if self._is_evicted(i) else self._get(i)) for i in ids]
            pending = [task for task in tasks if task is not None and not task.info.status.is_terminal]
            satisfied = not pending or (return_when == "first" and len(pending) < len(tasks))
            waiter = None
            if not satisfied:
                waiter = _Waiter(1 if return_when == "first" else len(pending))
                for task in pending:
                    task.waiters.append(waiter)
        if waiter is not None:
            # A task waiting for other tasks of this manager lends its slot meanwhile, so that
            # tasks it submitted can run even when every slot is taken by waiting parents.
            current = current_task.get()
            lender = self._tasks.get(current[1]) if current is not None and current[0] is self else None
            if lender is not None:
                with self._lock:
                    starts = self._release_slot(lender)
                self._launch(starts)
                self._notify()
            try:
                waiter.event.wait(timeout)
            finally:
                with self._lock:
                    for task in pending:
                        if waiter in task.waiters:
                            task.waiters.remove(waiter)
                    if (
                        lender is not None
                        and not lender.holds_slot
                        and lender.info.status is TaskStatus.RUNNING
                    ):
                        lender.holds_slot = True
                        self._free_slots -= 1
        with self._lock:
            finished = [t is None or t.info.status.is_terminal for t in tasks]
        done = [i for i, f in zip(ids, finished, strict=True) if f]
        not_done = [i for i, f in zip(ids, finished, strict=True) if not f]
        return WaitResult(done, not_done)

    def results(self, task_ids: Iterable[str] | str) -> dict[str, Any]:
        """``{task_id: result}``. A failed, cancelled, unfinished or dropped task maps to a
        :class:`TaskFailure` string that says what happened; raises only for ids never issued here."""
        ids = [task_ids] if isinstance(task_ids, str) else list(task_ids)
        out: dict[str, Any] = {}
        with self._lock:
            for task_id in ids:
                if self._is_evicted(task_id):
                    out[task_id] = TaskFailure.dropped(task_id)
                    continue
                task = self._get(task_id)
                info = task.info
                out[task_id] = (
                    info.result if info.status is TaskStatus.COMPLETED else TaskFailure.for_task(info)
                )
                self._mark_read(task)
            self._evict()
        return out

    def result(self, task_id: str) -> Any:
        """One task's result (or its :class:`TaskFailure`)."""
        return self.results([task_id])[task_id]

    def check(self, task_id: str) -> TaskInfo:
        """A snapshot of one task's record (this counts as reading its result)."""
        with self._lock:
            task = self._get(task_id)
            self._mark_read(task)
            snapshot = task.info.snapshot()
            self._evict()
            return snapshot

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
            stats["free_slots"] = self._free_slots
            return stats

    # ------------------------------------------------------------------ cancelling

    def cancel(self, task_id: str) -> bool:
        """Cancel a task and what depends on it. A pending one never runs; a running one is marked
        cancelled at once and its code can see ``cancellation_requested()``. False if it had finished."""
        with self._lock:
            task = self._get(task_id)
            if task.info.status.is_terminal:
                return False
            starts = self._finish_locked(
                task, TaskStatus.CANCELLED, None, TaskError("cancelled", "task was cancelled")
            )
        self._launch(starts)
        self._notify()
        return True

    def is_cancel_requested(self, task_id: str) -> bool:
        with self._lock:
            task = self._tasks.get(task_id)
            return task is not None and task.cancel_requested

    # ------------------------------------------------------------------ seed 000's remote API (the "remote" extension)

    @property
    def remote_manager(self) -> Any:
        """The :class:`~async_task_system.remote.RemoteExecutionManager` of this manager (created on first use)."""
        return self.extension("remote")

    async def suspend_task_for_remote(self, task_id: str, command: str, timeout: float | None = None) -> str:
        """Move a running task to WAITING_REMOTE (its slot is given back), send ``command``; returns the request id."""
        return self.remote_manager.suspend(task_id, command, timeout)

    async def resume_task_with_result(self, task_id: str, result: Any) -> bool:
        """WAITING_REMOTE -> COMPLETED with ``result``; False if the task was not waiting."""
        return self.remote_manager.resume(task_id, result)

    def handle_websocket_response(
        self, request_id: str, success: bool, result: Any = None, error: str | None = None
    ) -> bool:
        """Deliver a remote response (seed 000); safe from any thread; unknown and late ones are ignored."""
        return self.remote_manager.handle_remote_response(request_id, success, result, error)

    # ------------------------------------------------------------------ lifecycle

    def shutdown(self, wait: bool = True, cancel_pending: bool = False, timeout: float | None = None) -> None:
        """Stop accepting tasks. ``cancel_pending`` cancels tasks not yet started; ``wait`` blocks until
        every task is finished (at most ``timeout`` seconds). Retries stop: a task waiting for its
        retry fails with its last error."""
        starts: list[AttemptCall] = []
        with self._lock:
            self._closed = True
            for task in [t for t in self._tasks.values() if t.info.status is TaskStatus.PENDING]:
                if task.info.status is not TaskStatus.PENDING:
                    continue  # finished meanwhile as a dependent of an earlier one
                if cancel_pending:
                    error = TaskError("cancelled", "cancelled at shutdown")
                    starts += self._finish_locked(task, TaskStatus.CANCELLED, None, error)
                elif task.info.attempts and task.info.error is not None:  # waiting for its retry
                    error = TaskError(
                        task.info.error.type, f"{task.info.error.message} (no retry: the manager shut down)"
                    )
                    starts += self._finish_locked(task, TaskStatus.FAILED, None, error)
        self._launch(starts)
        self._notify()
        if wait:
            deadline = None if timeout is None else time.monotonic() + timeout
            with self._lock:
                while self._live_count():
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        break
                    self._all_done.wait(remaining)
        for callback in reversed(self._shutdown_callbacks):
            _call_quietly(callback)
        self._shutdown_callbacks.clear()
        if self._owns_executor:
            self._executor.shutdown(wait=wait, cancel_futures=not wait)

    def _live_count(self) -> int:
        counts = self._counts
        return counts[TaskStatus.PENDING] + counts[TaskStatus.RUNNING] + counts[TaskStatus.WAITING_REMOTE]

    def add_shutdown_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` when the manager shuts down, after its tasks are waited for (last added runs first)."""
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


def _new_prefix() -> str:
    with _prefix_lock:
        while True:
            prefix = "task_" + "".join(secrets.choice(_ALPHABET) for _ in range(4)) + "_"
            if prefix not in _used_prefixes:
                _used_prefixes.add(prefix)
                return prefix


def _is_coroutine(value: Any) -> bool:
    return hasattr(value, "__await__") and hasattr(value, "send")


def _call_quietly(callback: Callable[..., Any], *args: Any) -> None:
    try:
        callback(*args)
    except Exception:
        logger.exception("callback %r failed", callback)
