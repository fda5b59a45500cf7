"""How a manager runs its tasks: slots, the pending queue, executors, timeouts, retries, dependents.

:class:`TaskRunner` sits between the records (:mod:`._records`) and the public API
(:class:`~async_task_system.core.manager.TaskManager`). Concurrency is bounded by the manager's own
slots (``max_workers``), not by the executor: a task that stops using its slot (it timed out,
was cancelled, or was handed to something else) hands it to the next pending task. The executor
receives a picklable :class:`~._attempt.AttemptCall`; the task's state changes here when the
returned future completes, never inside the executor. Every change happens under the records'
lock; what must not run under it (launching attempts, cancelling futures, callbacks, listeners)
is done right after by ``_launch`` and ``_notify``.
"""

from __future__ import annotations

import logging
import pickle
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Executor, Future
from functools import partial
from typing import Any

from . import _timers
from ._attempt import AttemptCall
from ._dependencies import DependencyGraph, dependency_failure
from ._listeners import ListenerQueue
from ._pool import ChainingThreadPool
from .changes import ChangeFeed
from .loop import background_loop, spawn
from .records import TaskRecord, TaskRecords
from .targets import UnsendableError
from .tasks import TaskError, TaskStatus

__all__ = ["TaskRunner", "call_quietly"]

logger = logging.getLogger("async_task_system.core.manager")


class TaskRunner(TaskRecords):
    """Runs the tasks of :class:`TaskRecords` (the manager's machinery; use ``TaskManager``)."""

    def __init__(
        self,
        max_workers: int,
        executor: Executor | None,
        retention: int,
        retry_backoff: float,
        id_prefix: str | None,
    ) -> None:
        if max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        super().__init__(retention, id_prefix)
        self.max_workers = max_workers
        self.retry_backoff = retry_backoff
        self._owns_executor = executor is None
        self._executor: Executor = executor or ChainingThreadPool(max_workers + max(4, max_workers))
        self._queue: deque[TaskRecord] = deque()
        self._free_slots = max_workers
        self._graph = DependencyGraph()
        self._listeners = ListenerQueue()
        self._feeds: tuple[ChangeFeed, ...] = ()
        self._deferred: deque[Callable[[], Any]] = deque()

    def _make_ready(self, task: TaskRecord) -> list[AttemptCall]:
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
            continuation = task.continuation
            if continuation is not None and task.info.status is TaskStatus.WAITING_REMOTE:
                if task.busy:
                    continue  # the suspending code is still returning: _attempt_ended queues it again
                self._free_slots -= 1
                task.holds_slot = True
                starts.append(self._continue_locked(task, continuation))
                continue
            if task.info.status is not TaskStatus.PENDING:
                continue  # cancelled while queued
            self._free_slots -= 1
            task.holds_slot = True
            starts.append(self._start_locked(task))
        return starts

    def _start_locked(self, task: TaskRecord) -> AttemptCall:
        info = task.info
        self._set_status(task, TaskStatus.RUNNING)
        info.attempts += 1
        info.started_at = time.time()
        task.busy = True
        task.cancel_requested = False
        attempt = info.attempts
        if info.timeout is not None:
            task.timer = _timers.call_later(info.timeout, lambda: self._on_timeout(task, attempt))
        arguments = self._graph.substitute(info.arguments, task.resolved) if task.resolved else info.arguments
        context = task.context if attempt == 1 else task.context.copy()  # type: ignore[union-attr]
        self._snapshot(task)
        return AttemptCall(task.target.call, arguments, info, attempt, context, self)

    def _continue_locked(self, task: TaskRecord, continuation: Callable[[], Any]) -> AttemptCall:
        """A suspended attempt got its slot back: RUNNING again, its continuation goes to the executor."""
        task.continuation = None
        task.turn += 1
        task.busy = True
        self._set_status(task, TaskStatus.RUNNING)
        self._snapshot(task)
        context = task.context.copy()  # type: ignore[union-attr]
        return AttemptCall(
            _Continuation(continuation), {}, task.info, task.info.attempts, context, self, task.turn
        )

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
                except Exception as exc:  # executor shut down, refusing work, or could not pickle it
                    error = _executor_error(exc)
                    if error.type != "unpicklable":
                        error = TaskError("executor_error", f"could not start task: {exc}")
                    self._attempt_ended(task, call, error)
                    continue
                task.future = future
                future.add_done_callback(lambda f, t=task, c=call: self._on_future_done(t, c, f))

    def _run_inline(self, task: TaskRecord, call: AttemptCall) -> None:
        try:
            result = call()
        except Exception as exc:
            self._attempt_ended(task, call, TaskError.from_exception(exc))
        else:
            self._attempt_ended(task, call, None, result)

    def _on_future_done(self, task: TaskRecord, call: AttemptCall, future: Future[Any]) -> None:
        try:
            result = future.result(0)  # one look at the future (each of its methods takes its lock)
        except CancelledError:
            self._attempt_ended(
                task, call, TaskError("cancelled", "the executor cancelled the task"), final=True
            )
        except BaseException as exc:
            self._attempt_ended(task, call, _executor_error(exc))
        else:
            if _is_coroutine(result):  # an async target: it runs on the loop, holding no thread
                loop = background_loop()
                loop.call_soon_threadsafe(self._start_coroutine, task, call, result, context=call.context)
            else:
                self._attempt_ended(task, call, None, result)

    def _start_coroutine(self, task: TaskRecord, call: AttemptCall, coroutine: Any) -> None:
        # On the loop, inside the attempt's context, which create_task copies for the coroutine.
        spawn(self._drive_coroutine(task, call, coroutine))

    async def _drive_coroutine(self, task: TaskRecord, call: AttemptCall, coroutine: Any) -> None:
        try:
            result = await (coroutine if coroutine is not None else call.run_in_current_context())
        except Exception as exc:
            self._attempt_ended(task, call, TaskError.from_exception(exc))
        except BaseException as exc:  # the loop's own cancellation: record it, then let it through
            self._attempt_ended(task, call, TaskError.from_exception(exc), final=True)
            raise
        else:
            self._attempt_ended(task, call, None, result)

    def _attempt_ended(
        self,
        task: TaskRecord,
        call: AttemptCall,
        error: TaskError | None,
        result: Any = None,
        final: bool = False,
    ) -> None:
        """The attempt's code returned or raised: complete, retry or fail, unless it was already ended."""
        with self._lock:
            info = task.info
            this_turn = info.attempts == call.attempt and task.turn == call.turn
            if this_turn:
                task.busy = False
                task.future = None
            if not this_turn or info.status is not TaskStatus.RUNNING:
                # Ended already (timed out, cancelled), or suspended: the Suspension finishes it. A
                # continuation queued while this code was still returning can start now.
                if this_turn and task.continuation is not None and info.status is TaskStatus.WAITING_REMOTE:
                    self._queue.appendleft(task)
                    starts = self._take_ready()
                else:
                    return
            elif error is None:
                starts = self._finish_locked(task, TaskStatus.COMPLETED, result, None)
            else:
                starts = self._end_attempt_locked(task, error, not final)
        self._launch(starts)
        self._notify()

    def _end_attempt_locked(self, task: TaskRecord, error: TaskError, retryable: bool) -> list[AttemptCall]:
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

    def _requeue(self, task: TaskRecord) -> None:
        with self._lock:
            task.timer = None
            if task.info.status is not TaskStatus.PENDING:
                return
            starts = self._make_ready(task)
        self._launch(starts)
        self._notify()

    def _on_timeout(self, task: TaskRecord, attempt: int) -> None:
        with self._lock:
            info = task.info
            if info.attempts != attempt or info.status not in (TaskStatus.RUNNING, TaskStatus.WAITING_REMOTE):
                return
            task.timer = None
            error = TaskError("timeout", f"task exceeded its timeout of {info.timeout:g} s")
            starts = self._end_attempt_locked(task, error, True)
        self._launch(starts)
        self._notify()

    def _release_slot(self, task: TaskRecord) -> list[AttemptCall]:
        """Give the task's slot back and start the next pending tasks (lock held)."""
        if task.holds_slot:
            task.holds_slot = False
            self._free_slots += 1
        return self._take_ready()

    def _abandon(self, task: TaskRecord, error: TaskError) -> None:
        """The attempt is over: stop its timer, flag its code, drop its suspension, un-queue its future (lock held)."""
        if task.timer is not None:
            task.timer.cancel()
            task.timer = None
        task.cancel_requested = True
        if task.cancel_event is not None:
            task.cancel_event.set()
            task.cancel_event = None
        task.continuation = None
        suspension, task.suspension = task.suspension, None
        # Both run by _notify, outside the lock: cancelling a future runs its done callbacks at once.
        if suspension is not None and suspension.on_abandon is not None:
            self._deferred.append(partial(suspension.on_abandon, error))
        future, task.future = task.future, None
        if future is not None:
            self._deferred.append(future.cancel)  # only takes effect while it waits in the executor's queue

    def _finish_locked(
        self, task: TaskRecord, status: TaskStatus, result: Any, error: TaskError | None
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

    def _snapshot(self, task: TaskRecord) -> None:
        """Queue a copy of the task's record for the listeners (lock held); ``_notify`` delivers it.
        Change feeds only note the live record: they copy it when drained."""
        listeners = self._listeners
        if listeners.active:
            listeners.put(task.info.snapshot())
        for feed in self._feeds:
            feed.record(task.info)

    def _notify(self) -> None:
        """After a change, outside the lock: deferred actions (cancel a future, tell a suspension's owner), then listeners."""
        while self._deferred:
            try:
                action = self._deferred.popleft()
            except IndexError:
                break
            call_quietly(action)
        self._listeners.deliver()


def _is_coroutine(value: Any) -> bool:
    return hasattr(value, "__await__") and hasattr(value, "send")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    cause: BaseException | None = exc
    for _ in range(32):  # a chain, bounded (a cycle of causes is possible)
        if cause is None:
            return
        yield cause
        cause = cause.__cause__ or cause.__context__


def _executor_error(exc: BaseException) -> TaskError:
    """The error of a failed future, with a how-to-fix message when the work could not be pickled."""
    text = str(exc)
    pickling = False
    cause: BaseException | None = exc
    while cause is not None and not pickling:  # Dask wraps the pickler's error in its own TypeError
        pickling = isinstance(cause, (pickle.PicklingError, AttributeError, TypeError)) and (
            "pickle" in str(cause).lower() or "Can't get local object" in str(cause)
        )
        cause = cause.__cause__ or cause.__context__
    unsendable = next((c for c in _causes(exc) if isinstance(c, UnsendableError)), None)
    if unsendable is not None:  # it names the callable and the fix itself
        return TaskError("unpicklable", str(unsendable), TaskError.from_exception(exc).traceback)
    if pickling:
        return TaskError(
            "unpicklable",
            f"the executor could not send this task to another process ({type(exc).__name__}: {text}); "
            "register a module-level function or tool (a managed agent: a module-level factory), "
            "or use the default thread pool",
            TaskError.from_exception(exc).traceback,
        )
    return TaskError.from_exception(exc)


class _Continuation:
    """The rest of a suspended attempt, run as an attempt's call (it takes no arguments)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn

    def __call__(self, _arguments: dict[str, Any]) -> Any:
        return self.fn()


def call_quietly(callback: Callable[..., Any], *args: Any) -> None:
    try:
        callback(*args)
    except Exception:
        logger.exception("callback %r failed", callback)
