"""TaskManager: runs tools, managed agents and callables in the background, by name.

One lock guards every task record and every status change; waiters are woken by events set on
the transition that finishes their tasks, so nothing polls. Concurrency is bounded by the
manager's own slots (``max_workers``), not by the executor: a task that stops using its slot (it
timed out, was cancelled, or was handed to something else) hands it to the next pending task.

The executor receives a picklable :class:`~async_task_system.core._attempt.AttemptCall`; the task's
state changes here when the returned future completes. Code outside the manager hands a running
attempt to something else through :meth:`TaskManager.suspend`, whose :class:`Suspension` handle
finishes it later (``complete``/``fail``/``resume``); the retry-or-fail rule lives in
``_running.TaskRunner._end_attempt_locked`` alone. The records and waiting live in
:mod:`._records`, the running of attempts in :mod:`._running`; this module is the public API.
"""

from __future__ import annotations

import contextvars
import logging
import math
import time
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, Literal

from . import _timers
from ._attempt import AttemptCall
from ._dependencies import dependency_failure
from ._running import TaskRunner, call_quietly
from .changes import ChangeFeed
from .context import (
    active_manager,
    cancellation_requested,
    current_task,
    get_current_task_id,
    get_task_manager,
    report_progress,
)
from .errors import ManagerClosedError, TaskValidationError, UnknownTaskError
from .extension_api import ExtensionMethods
from .records import TaskRecord, WaitResult
from .registry import Extensions, TargetRegistry, register_extension
from .targets import Target, agent_target, function_target, tool_target
from .tasks import (
    InvalidTransition,
    TaskError,
    TaskInfo,
    TaskKind,
    TaskStatus,
)

if TYPE_CHECKING:
    from ..observe.timeline import Timeline

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


class Suspension:
    """A running attempt handed to something else, which finishes it later (for subsystem implementations).

    Made by :meth:`TaskManager.suspend`, modelled on ``concurrent.futures.Future.set_result``:
    :meth:`complete` and :meth:`fail` end the attempt, :meth:`resume` gives it back to the code
    that suspended it. Each returns False when the attempt is no longer suspended (it was
    cancelled, timed out, or already finished), so late and duplicate answers are harmless.
    """

    __slots__ = ("_manager", "_task", "task_id", "attempt", "on_abandon")

    def __init__(
        self, manager: TaskManager, task: TaskRecord, on_abandon: Callable[[TaskError], None] | None
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

    def resume_later(self, continuation: Callable[[], Any]) -> bool:
        """Continue the attempt on the next free slot: the task waits in the queue (still
        WAITING_REMOTE, holding nothing), then is RUNNING again while ``continuation()`` runs on the
        executor in the task's context. Its return completes the task, an exception fails it (through
        the retry rule), and it may suspend again. For work whose code has already returned, such as
        an agent conversation that resumes when a remote answer arrives."""
        return self._manager._settle(self, None, None, False, later=continuation)

    def __repr__(self) -> str:
        return f"<Suspension {self.task_id} attempt {self.attempt} active={self.active}>"


class TaskManager(TaskRunner, ExtensionMethods):
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
        journal: a database URL (``sqlite:///tasks.db``, ``postgresql+psycopg://...``) where every
            task's submission and transitions are recorded (the ``journal`` extension, from the
            ``platform`` extra): what was in flight survives a crash, and results dropped from
            memory stay readable.
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
        journal: str | None = None,
    ) -> None:
        super().__init__(max_workers, executor, retention, retry_backoff, id_prefix)
        self._registry = TargetRegistry()
        self._shutdown_callbacks: list[Callable[[], None]] = []
        self._extensions = Extensions(self)
        self.journal_url = journal
        if journal is not None:
            self.extension("journal")  # opens the store, reserves the id prefix, starts recording
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

    def tool_provider(self, tool: str) -> str | None:
        """The extension that provides tool ``tool`` to agent conversations (``"remote"`` for ``remote_execute``)."""
        return self._extensions.providing_tool(tool)

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
        try:
            task_kind = TaskKind.parse(kind)
        except ValueError as exc:
            providers = self._extensions.providing(kind) if isinstance(kind, str) else []
            if not providers:
                raise TaskValidationError(str(exc)) from None
            for extension in providers:  # its module defines the kind
                self._extensions.get(extension)
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
        task = TaskRecord(info, target, contextvars.copy_context())
        for feed in self._feeds:
            feed.admit()  # a recorder that falls behind holds new submissions back (bounded)
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
        self, task: TaskRecord, depends_on: tuple[str, ...]
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
        later: Callable[[], Any] | None = None,
    ) -> bool:
        with self._lock:
            if not suspension.active:
                return False
            task = suspension._task
            task.suspension = None
            starts: list[AttemptCall] = []
            if later is not None:  # stays WAITING_REMOTE until a slot is free (see _take_ready)
                task.continuation = later
                self._queue.append(task)
                starts = self._take_ready()
            elif resume:
                self._set_status(task, TaskStatus.RUNNING)
                self._snapshot(task)
                # May briefly exceed max_workers: no new task starts until it is back under.
                if not task.holds_slot:
                    task.holds_slot = True
                    self._free_slots -= 1
            else:
                self._set_status(task, TaskStatus.RUNNING)
                self._snapshot(task)  # seed 000: the task resumes, then finishes
                if error is None:
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

    # ------------------------------------------------------------------ listeners

    def add_listener(self, callback: Callable[[TaskInfo], None]) -> Callable[[], None]:
        """Call ``callback(snapshot)`` after every status change and progress report; returns a remover.

        Callbacks run outside the manager's lock, one at a time and in the order the changes
        happened, in whichever thread made a change; keep them short.
        """
        return self._listeners.add(callback)

    def _remove_feed(self, feed: ChangeFeed) -> None:
        with self._lock:
            self._feeds = tuple(f for f in self._feeds if f is not feed)

    def watch(self, max_pending: int = 50_000, put_timeout: float = 10.0) -> ChangeFeed:
        """A :class:`ChangeFeed` of this manager's task changes, coalesced per task, for a recorder.

        Unlike ``add_listener`` nothing is called per change: the feed notes which tasks changed
        and the recorder takes their latest state when it is ready (``feed.wait()``, then
        ``feed.drain()``), on its own thread. At most ``max_pending`` tasks wait; a submission that
        would add one more waits for the recorder at most ``put_timeout`` seconds (see
        :mod:`async_task_system.core.changes`). ``feed.close()`` stops it.
        """

        manager = weakref.ref(self)  # the feed's owner may outlive the manager: never keep it alive

        def remove(feed: ChangeFeed) -> None:
            owner = manager()
            if owner is not None:
                owner._remove_feed(feed)

        feed = ChangeFeed(self._lock, max_pending, put_timeout, remove)
        with self._lock:
            self._feeds = (*self._feeds, feed)
        return feed

    # ------------------------------------------------------------------ waiting

    def wait(
        self,
        task_ids: Iterable[str] | str,
        timeout: float | None = None,
        return_when: Literal["all", "first"] = "all",
    ) -> WaitResult:
        """Block until all (or the first) of ``task_ids`` reach a terminal status, or ``timeout`` seconds pass.

        Returns at once for tasks already finished (a task dropped after its result was read
        counts as done); wakes within the transition that finishes the last task. Raises
        ``UnknownTaskError`` for an id this manager never issued. A task that waits for other
        tasks of this manager lends its slot meanwhile, so that the tasks it submitted can run
        even when every slot is taken by waiting parents.
        """
        current = current_task.get()
        lender = self._tasks.get(current[1]) if current is not None and current[0] is self else None
        if lender is None:
            return self._wait(task_ids, timeout, return_when)

        def lend() -> None:
            with self._lock:
                starts = self._release_slot(lender)
            self._launch(starts)
            self._notify()

        try:
            return self._wait(task_ids, timeout, return_when, before_blocking=lend)
        finally:
            with self._lock:
                if not lender.holds_slot and lender.info.status is TaskStatus.RUNNING:
                    lender.holds_slot = True
                    self._free_slots -= 1

    def get_statistics(self) -> dict[str, int]:
        """Counts per status (``stats['running']``, ...), ``total`` submitted, ``retained`` records,
        ``max_workers`` and ``free_slots``. Terminal counts are cumulative: ``total`` is the sum of the six."""
        stats = super().get_statistics()
        with self._lock:
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

    # ------------------------------------------------------------------ seeing what ran

    def timeline(self, title: str | None = None) -> Timeline:
        """The tasks held now, laid out in time: one row per task, bars colored by status, dependencies
        and retries marked. Shows inline in Jupyter; ``to_svg()``, ``save(path)``, ``to_text(width)``."""
        from ..observe.timeline import (
            Timeline,  # core too (it reads TaskInfo only); loaded when first asked for
        )

        return Timeline(self.list(), title=title)

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
            call_quietly(callback)
        self._shutdown_callbacks.clear()
        if self._owns_executor:
            self._executor.shutdown(wait=wait, cancel_futures=not wait)

    def add_shutdown_callback(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` when the manager shuts down, after its tasks are waited for (last added runs first)."""
        with self._lock:
            self._shutdown_callbacks.append(callback)

    def __enter__(self) -> TaskManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(wait=True)

    def __repr__(self) -> str:
        stats = self.get_statistics()
        return f"<TaskManager max_workers={self.max_workers} running={stats['running']} pending={stats['pending']}>"
