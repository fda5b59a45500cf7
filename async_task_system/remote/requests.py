"""What a remote request is: the request and its outcome, the transport seam, the errors and the ``remote`` target's inputs.

Plain data shared by the bridge (:mod:`.pending`, :mod:`.bridge`), the router and the tool; no
state, no I/O.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol

from ..core.errors import AsyncTaskSystemError, RemoteExecutionError
from ..core.manager import Suspension, TimerHandle
from ..observe import tracing

__all__ = [
    "REMOTE_INPUTS",
    "REMOTE_TARGET_NAME",
    "LogListener",
    "RemoteExecutionError",
    "RemoteOutcome",
    "RemoteRequest",
    "RemoteTransport",
    "RemoteUnavailable",
    "StartListener",
    "UnknownRequestError",
    "failure_message",
    "unwrap",
]

REMOTE_TARGET_NAME = "remote_execute"
"""The name of the ``remote`` target: ``submit_task("remote", "remote_execute", {"command": ...})``."""

REMOTE_INPUTS: dict[str, dict[str, Any]] = {
    "command": {
        "type": "string",
        "description": "Shell command to run on a remote worker (or Python code with language='python').",
    },
    "timeout": {
        "type": "number",
        "description": "Seconds the command may run before it is killed (default 60).",
        "nullable": True,
    },
    "worker": {
        "type": "string",
        "description": "Name of the worker to run on; any free worker when omitted.",
        "nullable": True,
    },
    "language": {"type": "string", "description": "'shell' (default) or 'python'.", "nullable": True},
    "labels": {
        "type": "object",
        "description": "Label selector, e.g. {'region': 'eu', 'gpu': 'a100'}: run only on a worker that has all "
        "these labels (any such worker when 'worker' is omitted). Fails at once, listing the workers' labels, "
        "when no connected worker matches.",
        "nullable": True,
    },
}


class RemoteUnavailable(RemoteExecutionError):
    """Raised by a transport's ``send_request`` when nothing can take the request (no worker, hub stopped)."""


class UnknownRequestError(AsyncTaskSystemError, LookupError):
    """A request id this manager never issued or has forgotten."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class RemoteOutcome:
    """How a request ended: seed 000's ``success``/``result``/``error`` plus the kind of failure."""

    request_id: str
    success: bool
    result: Any = None
    error: str | None = None
    error_type: str | None = None
    worker: str | None = None
    """The executor the transport sent it to (from its authenticated connection), if one did."""


class RemoteRequest:
    """One command sent (or to be sent) to a remote executor."""

    __slots__ = (
        "request_id",
        "task_id",
        "command",
        "language",
        "timeout",
        "worker",
        "env",
        "inline",
        "created_at",
        "future",
        "timer",
        "logs",
        "trace",
        "suspension",
        "labels",
        "runtime",
        "started_at",
        "sent_at",
        "sent_to",
    )

    def __init__(
        self,
        request_id: str,
        task_id: str | None,
        command: str,
        language: str,
        timeout: float,
        worker: str | None,
        env: dict[str, str] | None,
        inline: bool,
        max_log_lines: int,
        *,
        labels: dict[str, str] | None = None,
        runtime: dict[str, Any] | None = None,
    ) -> None:
        self.request_id = request_id
        self.labels = dict(labels) if labels else None
        # a runtime-tool call ({runtime, entry, parameters}; ``command`` is the tool's command), or None
        self.runtime = runtime
        self.task_id = task_id
        self.command = command
        self.language = language
        self.timeout = timeout
        self.worker = worker
        self.env = env
        self.inline = inline
        self.created_at = time.time()
        self.future: Future[RemoteOutcome] = Future()
        # A RUNNING concurrent future cannot be cancelled, so a waiter that gives up (asyncio.wait_for,
        # wrap_future) never cancels the outcome other waiters and the task depend on.
        self.future.set_running_or_notify_cancel()
        self.timer: TimerHandle | None = None
        self.logs: deque[tuple[str, str]] = deque(maxlen=max_log_lines)
        # W3C trace context of the code that made the request (empty when tracing is off), so the
        # remote side can join the trace.
        self.trace: dict[str, str] = tracing.inject_context() if tracing.tracing_enabled() else {}
        self.suspension: Suspension | None = None
        # when the executor said its process started (epoch seconds; None until then), and when the
        # transport last handed it to an executor (for the bound on a dispatch that never starts)
        self.started_at: float | None = None
        self.sent_at: float | None = None
        self.sent_to: str | None = None  # the worker the transport handed it to last


class RemoteTransport(Protocol):
    """What carries requests to executors (the hub, or your own). Both methods must not block."""

    def send_request(self, request: RemoteRequest) -> None:
        """Route the request to an executor, or raise :class:`RemoteUnavailable`."""

    def cancel_request(self, request: RemoteRequest, reason: str) -> None:
        """Tell the executor running ``request`` to stop it (best effort)."""


LogListener = Callable[[str | None, str, str, str], None]
"""``(task_id, request_id, stream, line)``, called for each streamed output line."""

StartListener = Callable[[str | None, str, float], None]
"""``(task_id, request_id, started_at)``, called once when an executor's process started."""


def failure_message(outcome: RemoteOutcome) -> str:
    """The error of a failed outcome with the tails of its stderr and stdout (what a failed task reads)."""
    message = outcome.error or "remote execution failed"
    result = outcome.result
    if isinstance(result, dict):
        tails = []
        for stream in ("stderr", "stdout"):
            text = result.get(stream)
            if isinstance(text, str) and text.strip():
                tail = text.strip()[-500:]
                tails.append(f"{stream}: {tail}")
        if tails and not any(t in message for t in tails):
            message = f"{message}; " + "; ".join(tails)
    return message


def unwrap(outcome: RemoteOutcome) -> Any:
    """The result of a successful outcome; raises :class:`RemoteExecutionError` for a failed one."""
    if outcome.success:
        return outcome.result
    raise RemoteExecutionError(
        outcome.error_type or "remote_error",
        outcome.error or "remote execution failed",
        outcome.result,
        outcome.request_id,
    )
