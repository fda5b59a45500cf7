"""RemoteExecutionManager: what a remote response does to its task (the bookkeeping is :mod:`.pending`).

Seed 000's API, with two ways for a task to wait:

* **Detached** (``suspend_task_for_remote``, ``submit_task("remote", ...)``, ``remote_execute`` called
  by the coordinating LLM): the task moves RUNNING -> WAITING_REMOTE, gives its worker slot back,
  and its code returns. No thread and no slot are held while it waits. The response completes
  it (RUNNING -> COMPLETED with the remote result) or fails it (``remote_error``, ``timeout``,
  ``worker_lost``, ``hub_stopped``, ``no_worker``).
* **Inline** (``remote_execute`` called inside a running task, e.g. a sub-agent's step): the task
  moves to WAITING_REMOTE and lends its slot back while the calling thread blocks on the request's
  future; the response moves it back to RUNNING (taking a slot again at once) and hands the result
  to the caller, so it enters the sub-agent's context as the tool's output.

Responses may arrive from any thread or event loop. Unknown, late and duplicate responses are
logged and ignored; nothing here raises into the transport that delivered them.

Every task transition goes through the manager's public task control: ``TaskManager.suspend``
hands the attempt over, and the request's :class:`~async_task_system.core.manager.Suspension` finishes
it (``complete``, ``fail`` with the manager's one retry rule, or ``resume`` for an inline wait).
A task cancelled or timed out while it waits abandons its suspension, which fails the request
and tells the executor to stop.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ..core.errors import RemoteExecutionError
from ..core.manager import get_current_task_id
from ..core.targets import Target
from ..core.tasks import TaskError, TaskKind
from .pending import PendingRequests
from .requests import (
    REMOTE_INPUTS,
    REMOTE_TARGET_NAME,
    RemoteOutcome,
    RemoteRequest,
    RemoteTransport,
    RemoteUnavailable,
    UnknownRequestError,
    failure_message,
    unwrap,
)

if TYPE_CHECKING:
    from ..core.manager import TaskManager

__all__ = [
    "RemoteExecutionManager",
    "RemoteExecutionError",
    "RemoteUnavailable",
    "RemoteOutcome",
    "RemoteRequest",
    "RemoteTransport",
    "UnknownRequestError",
    "REMOTE_TARGET_NAME",
    "REMOTE_INPUTS",
]


class RemoteExecutionManager(PendingRequests):
    """Tracks remote requests (:class:`~.pending.PendingRequests`) and turns their responses into task transitions.

    Args:
        task_manager: the manager whose tasks suspend on remote results (``None`` for a standalone
            bridge that only matches requests and responses).
        default_timeout: seconds a command may run when the caller gives no timeout.
        response_grace: extra seconds the bridge waits for a response after the command's own
            timeout (the worker kills the command at its timeout and still has to report it).
        max_log_lines: streamed lines kept per pending request for :meth:`get_logs`.
    """

    def __init__(
        self,
        task_manager: TaskManager | None = None,
        *,
        default_timeout: float = 60.0,
        response_grace: float = 5.0,
        max_log_lines: int = 500,
        remembered_outcomes: int = 4096,
    ) -> None:
        super().__init__(
            default_timeout=default_timeout,
            response_grace=response_grace,
            max_log_lines=max_log_lines,
            remembered_outcomes=remembered_outcomes,
        )
        self._manager = task_manager
        self.manual_delivery = False
        """True: with no hub attached, ``remote_execute`` still sends its requests nowhere and waits for
        your code to deliver them and answer with ``handle_websocket_response`` (seed 000's flow;
        a :class:`~async_task_system.remote.handler.RemoteExecutionHandler` sets it). False (the
        default): ``remote_execute`` with no hub fails at once with ``no_hub``."""
        if task_manager is not None:
            task_manager.register_target(self._remote_target())
            task_manager.extension("conversations").add_tool_provider(
                REMOTE_TARGET_NAME, _remote_execute_tool
            )

    def require_delivery(self) -> None:
        """Raise :class:`RemoteUnavailable` (``no_hub``) when nothing would deliver a request: no hub is
        attached and :attr:`manual_delivery` is off. ``remote_execute`` calls it before it sends."""
        if self._transport is None and not self.manual_delivery:
            raise RemoteUnavailable(
                "no_hub",
                "no remote hub is attached, so no worker can receive the command; attach one with "
                "attach_remote(agent, token=...) (or RemoteHub(task_manager, token=...).start()) and start a "
                "worker: async-agent worker --hub ws://127.0.0.1:8765 --name <NAME>. To deliver requests "
                "yourself, set task_manager.remote_manager.manual_delivery = True",
            )

    # ------------------------------------------------------------------ task side

    def suspend(
        self,
        task_id: str,
        command: str,
        timeout: float | None = None,
        *,
        language: str = "shell",
        worker: str | None = None,
        env: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
    ) -> str:
        """Seed 000's suspension (detached): RUNNING -> WAITING_REMOTE, slot given back, request sent.

        The response completes or fails the task; the caller's code may simply return.
        """
        request = self._suspend(
            task_id, False, command, timeout, language=language, worker=worker, env=env, labels=labels
        )
        return request.request_id

    def execute_inline(
        self,
        task_id: str,
        command: str,
        timeout: float | None = None,
        *,
        language: str = "shell",
        worker: str | None = None,
        env: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        runtime: dict[str, Any] | None = None,
    ) -> Any:
        """Run a command for a running task and block until its result (the task waits in WAITING_REMOTE
        without a slot meanwhile, and is RUNNING again when this returns). Raises RemoteExecutionError."""
        options = {"language": language, "worker": worker, "env": env, "labels": labels, "runtime": runtime}
        return unwrap(self._suspend(task_id, True, command, timeout, **options).future.result())

    async def execute_async(
        self,
        task_id: str,
        command: str,
        timeout: float | None = None,
        *,
        language: str = "shell",
        worker: str | None = None,
        env: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        runtime: dict[str, Any] | None = None,
    ) -> Any:
        """:meth:`execute_inline` for coroutine tasks: awaits the result, holding neither a thread nor a slot."""
        options = {"language": language, "worker": worker, "env": env, "labels": labels, "runtime": runtime}
        request = self._suspend(task_id, True, command, timeout, **options)
        return unwrap(await asyncio.wrap_future(request.future))

    def resume(self, task_id: str, result: Any) -> bool:
        """Seed 000's ``resume_task_with_result``: WAITING_REMOTE -> RUNNING -> COMPLETED with ``result``.

        A request the task was waiting on is answered with ``result``. For an inline wait the task
        returns to RUNNING and its code continues with ``result``. False if the task was not waiting.
        """
        request = self.pending_for(task_id)
        if request is not None and request.task_id == task_id:
            return self.complete(request.request_id, True, result, None, None)
        suspension = self._require_manager().suspension(task_id)
        return suspension is not None and suspension.complete(result)

    # ------------------------------------------------------------------ internals

    def _require_manager(self) -> TaskManager:
        if self._manager is None:
            raise RuntimeError("this RemoteExecutionManager is not attached to a TaskManager")
        return self._manager

    def _suspend(
        self, task_id: str, inline: bool, command: str, timeout: float | None, **options: Any
    ) -> RemoteRequest:
        """Suspend the running task ``task_id`` on a new request and send it (``options``: language,
        worker, env, labels, runtime, as :meth:`~.pending.PendingRequests.create_remote_request`)."""
        manager = self._require_manager()
        if task_id is None:
            raise RuntimeError("no current task: suspend_task_for_remote must be called for a running task")
        self.validate_command(
            command,
            timeout,
            options.get("language") or "shell",
            options.get("worker"),
            options.get("labels"),
            options.get("runtime"),
        )
        holder: list[RemoteRequest] = []
        suspension = manager.suspend(task_id, on_abandon=lambda error: self._abandoned(holder, error))
        request = self._register(task_id, inline, command, timeout, **options)
        request.suspension = suspension
        holder.append(request)
        if not suspension.active:  # cancelled or timed out between the two steps
            self._abandoned(
                holder, TaskError("cancelled", f"task {task_id} ended before its command was sent")
            )
            return request
        self._send(request)
        return request

    def _abandoned(self, holder: list[RemoteRequest], error: TaskError) -> None:
        """The manager ended a waiting task (cancel, timeout, shutdown): fail its request, stop the command."""
        if not holder:
            return
        request = holder[0]
        error_type = "cancelled" if error.type == "cancelled" else error.type
        message = f"task {request.task_id} ended while waiting for the remote result: {error.message}"
        if self.fail_request(request.request_id, error_type, message):
            self._cancel_remote(request, error_type)

    def settle(self, request: RemoteRequest, outcome: RemoteOutcome) -> None:
        """What the outcome does to the waiting task (a no-op if it no longer waits)."""
        suspension = request.suspension
        if suspension is None:
            return
        if request.inline:
            suspension.resume()  # the blocked caller continues with the outcome
        elif outcome.success:
            suspension.complete(outcome.result)
        else:
            suspension.fail(
                outcome.error_type or "remote_error",
                failure_message(outcome),
                retryable=outcome.error_type != "cancelled",
            )

    def _remote_target(self) -> Target:
        def run(arguments: dict[str, Any]) -> None:
            task_id = get_current_task_id()
            if task_id is None:
                raise RuntimeError("the remote target runs only as a task")
            self.require_delivery()
            self.suspend(
                task_id,
                arguments["command"],
                arguments.get("timeout"),
                language=arguments.get("language") or "shell",
                worker=arguments.get("worker"),
                labels=arguments.get("labels"),
            )

        return Target(
            kind=TaskKind.REMOTE,
            name=REMOTE_TARGET_NAME,
            description="Runs a shell command or Python code on a remote worker; the result is a dict with "
            "exit_code, stdout and stderr.",
            inputs=dict(REMOTE_INPUTS),
            call=run,
            runs_inline=True,  # it only sends the request and suspends: no slot, no thread while it waits
        )


def _remote_execute_tool(manager: TaskManager) -> Any:
    from .execute_tool import RemoteExecuteTool  # smolagents: loaded only when a conversation uses the tool

    return RemoteExecuteTool(manager)
