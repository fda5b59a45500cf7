"""The work of one task attempt, as handed to an executor: a picklable call plus its arguments.

In the manager's own process the attempt runs inside a copy of the submitter's ``contextvars``
context (tracing, ``get_current_task_id``), under the task's span. Pickled for another process
(``ProcessPoolExecutor``, Dask) it carries only the target's call, the arguments, the task's
identity and a W3C trace carrier: the other side opens its span as a child of the submitter's
and knows which task it runs, but not the manager (progress reports and cancellation checks are
no-ops there). The manager changes the task's state when the executor's future completes,
never inside the executor.
"""

from __future__ import annotations

import contextvars
import inspect
from collections.abc import Callable
from typing import Any

from ..observe import tracing
from .context import current_task
from .tasks import TaskInfo

__all__ = ["AttemptCall"]


class AttemptCall:
    """``call(arguments)`` for attempt ``attempt`` of a task; callable with no arguments."""

    __slots__ = ("call", "arguments", "info", "attempt", "context", "manager", "turn")

    def __init__(
        self,
        call: Callable[[dict[str, Any]], Any],
        arguments: dict[str, Any],
        info: TaskInfo,
        attempt: int,
        context: contextvars.Context | None,
        manager: Any,
        turn: int = 0,
    ) -> None:
        self.call = call
        self.turn = turn  # 0 for the attempt itself, n for its n-th continuation after a suspension
        self.arguments = arguments
        self.info = info  # the live record in this process: the span reads how the attempt ended
        self.attempt = attempt
        self.context = context
        self.manager = manager

    def __call__(self) -> Any:
        if self.context is not None:
            return self.context.run(self.run_in_current_context)
        return self.run_in_current_context()

    def run_in_current_context(self) -> Any:
        """Run the attempt in the context that is current now (the caller entered the task's)."""
        current_task.set((self.manager, self.info.id))
        with tracing.task_span(self.info, self.attempt) as span:
            result = self.call(self.arguments)
            if inspect.iscoroutine(result):  # the span stays open until the loop has run it
                return span.wrap_coroutine(result)
            span.set_result(result)
            return result

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled for another process: no context, no manager; the trace context goes as a carrier.
        info = self.info.snapshot()
        info.result = None
        detached = (AttemptCall, (self.call, self.arguments, info, self.attempt, None, None))
        if self.context is None:
            return detached
        carrier = self.context.run(tracing.inject_context) if tracing.tracing_enabled() else {}
        return (_RemoteAttempt, (AttemptCall(*detached[1]), carrier))

    def __repr__(self) -> str:
        return (
            f"<AttemptCall {self.info.id} attempt {self.attempt} {self.info.kind.value} {self.info.name!r}>"
        )


class _RemoteAttempt:
    """An attempt unpickled in another process: runs under the carried trace context."""

    def __init__(self, attempt_call: AttemptCall, carrier: dict[str, str]) -> None:
        self.attempt_call = attempt_call
        self.carrier = carrier

    def __call__(self) -> Any:
        def run() -> Any:
            with tracing.attached_context(self.carrier):
                return self.attempt_call.run_in_current_context()

        return contextvars.copy_context().run(run)
