"""The ``remote_execute`` tool (:func:`~.tools.attach_remote` wires it and a hub into an agent).

``remote_execute(command, timeout=None, worker=None, language=None, labels=None)`` behaves by where it is called:

* by the coordinating LLM (not inside a task): it starts a ``remote`` task and returns at once
  ``{"status": "pending_remote", "task_id", "request_id", "message"}``; the LLM waits with
  ``wait_for_tasks([task_id])`` and reads ``{exit_code, stdout, stderr, ...}`` with
  ``get_task_results([task_id])``. The task holds no worker slot and no thread while it waits.
* inside a running task (a managed agent's step, a tool run in the background): it blocks that
  step until the result arrives and returns it, so the output enters the sub-agent's context as
  the tool's observation (seed 000, "context kept"). The task lends its slot back meanwhile.
"""

from __future__ import annotations

from typing import Any

from smolagents import Tool

from ..agents.conversation import current_conversation
from ..core.manager import TaskManager, get_current_task_id, get_task_manager
from ..core.tasks import TaskStatus
from .requests import REMOTE_INPUTS, REMOTE_TARGET_NAME, RemoteExecutionError

__all__ = ["RemoteExecuteTool", "REMOTE_GUIDANCE"]

REMOTE_GUIDANCE = """\
Remote machines: remote_execute(command, timeout=60, worker=None, language='shell', labels=None) runs a shell command
(or Python code with language='python') on a remote worker (labels={'region': 'eu'} picks one carrying those labels) and returns at once {'status': 'pending_remote', 'task_id': ...}.
Start all independent commands first, then wait_for_tasks([...task_ids]) and read get_task_results([...]): each
result is a dict with exit_code, stdout and stderr; a failed command maps to a string starting with 'ERROR:'."""


class RemoteExecuteTool(Tool):
    """Runs a command on a remote worker through the task manager's remote bridge.

    Args:
        manager: the :class:`TaskManager` to use; ``None`` uses the one running the current task
            (or the one an ``AsyncAgent`` run made active), as seed 000's ``get_task_manager()``.
        wait: ``None`` (default) blocks inside a running task and returns ``pending_remote``
            elsewhere. ``True`` always blocks and returns the output: give it to a managed agent
            that its coordinator calls directly (not through ``submit_task``), which runs outside
            any task and has no ``wait_for_tasks``. ``False`` always returns ``pending_remote``.
    """

    name = "remote_execute"
    description = (
        "Runs a shell command (or Python code with language='python') on a remote worker machine. "
        "From your own code it returns at once a dict {'status': 'pending_remote', 'task_id', 'request_id', "
        "'message'}: then call wait_for_tasks([task_id]) and read the outcome with get_task_results([task_id]), "
        "a dict with exit_code, stdout and stderr (a non-zero exit code reads as an 'ERROR:' string). "
        "Inside a background task it waits and returns that dict directly. "
        "Start several commands before waiting to run them in parallel."
    )
    inputs = {key: dict(spec) for key, spec in REMOTE_INPUTS.items()}
    output_type = "object"

    def __init__(self, manager: TaskManager | None = None, wait: bool | None = None) -> None:
        self._bound = manager
        self._wait = wait
        super().__init__()

    def _manager(self) -> TaskManager:
        manager = self._bound or get_task_manager()
        if manager is None:
            raise RuntimeError(
                "remote_execute needs a TaskManager: bind one with RemoteExecuteTool(manager) or run inside an AsyncAgent."
            )
        return manager

    def forward(
        self,
        command: str,
        timeout: float | None = None,
        worker: str | None = None,
        language: str | None = None,
        labels: dict | None = None,
    ) -> dict:
        manager = self._manager()
        remote = manager.remote_manager
        remote.validate_command(command, timeout, language or "shell", worker, labels)  # raises how to fix it
        remote.require_delivery()  # no hub: fail now, saying how to attach one, not at the timeout
        task_id = get_current_task_id()
        in_task = task_id is not None and get_task_manager() is manager
        conversation = current_conversation()
        if conversation is not None and conversation.manager is manager and self._wait is not True:
            self._hand_off(conversation, remote, command, timeout, worker, language, labels)  # ends the step
        if self._wait is not False and in_task:
            return self._inline(remote, task_id, command, timeout, worker, language, labels)
        if self._wait:  # blocking outside any task: a plain request, no task to suspend
            return self._inline(remote, None, command, timeout, worker, language, labels)
        arguments: dict[str, Any] = {"command": command}
        for key, value in (
            ("timeout", timeout),
            ("worker", worker),
            ("language", language),
            ("labels", labels),
        ):
            if value is not None:
                arguments[key] = value
        task_id = manager.submit("remote", REMOTE_TARGET_NAME, arguments)
        request_id = remote.request_for_task(task_id)
        info = manager.check(task_id)
        if info.status is TaskStatus.FAILED:
            return {
                "status": "failed",
                "task_id": task_id,
                "request_id": request_id,
                "error": str(info.error),
                "message": f"The command could not be started: {info.error}",
            }
        return {
            "status": "pending_remote",
            "task_id": task_id,
            "request_id": request_id,
            "message": (
                f"Command sent to a remote worker: {command!r}. Wait with wait_for_tasks([{task_id!r}]) and read "
                f"exit_code/stdout/stderr with get_task_results([{task_id!r}])."
            ),
        }

    @staticmethod
    def _hand_off(
        conversation: Any,
        remote: Any,
        command: str,
        timeout: float | None,
        worker: str | None,
        language: str | None,
        labels: dict | None = None,
    ) -> None:
        """Inside a conversation task: suspend it (no thread, no slot) until the command's answer comes."""
        requests: list[str] = []

        def start(answer: Any) -> None:
            request_id = remote.create_remote_request(
                conversation.task_id,
                command,
                timeout,
                language=language or "shell",
                worker=worker,
                labels=labels,
            )
            requests.append(request_id)
            remote.add_done_callback(request_id, lambda outcome: answer(_outcome_value(outcome)))

        def abandon(error: Any) -> None:  # the conversation was cancelled or timed out while waiting
            for request_id in requests:
                remote.cancel(request_id, error.type)

        conversation.hand_off(start, describe=f"remote_execute({command!r})", on_abandon=abandon)

    @staticmethod
    def _inline(
        remote: Any,
        task_id: str | None,
        command: str,
        timeout: float | None,
        worker: str | None,
        language: str | None,
        labels: dict | None = None,
    ) -> dict:
        try:
            if task_id is None:
                request_id = remote.create_remote_request(
                    None, command, timeout, language=language or "shell", worker=worker, labels=labels
                )
                result = remote.wait_result(request_id)  # ends by the request's own deadline at the latest
            else:
                result = remote.execute_inline(
                    task_id, command, timeout, language=language or "shell", worker=worker, labels=labels
                )
        except RemoteExecutionError as exc:
            if exc.error_type == "remote_error" and isinstance(exc.result, dict):
                # The command ran and failed (non-zero exit): its output is what the agent needs to see.
                return {**exc.result, "success": False, "error": exc.args[0]}
            raise
        if isinstance(result, dict):
            return {**result, "success": True}
        return {"success": True, "result": result}


def _outcome_value(outcome: Any) -> Any:
    """What the agent sees of a finished request: the output dict (also for a non-zero exit), or the error."""
    result = outcome.result
    if outcome.success:
        return (
            {**result, "success": True} if isinstance(result, dict) else {"success": True, "result": result}
        )
    if outcome.error_type == "remote_error" and isinstance(result, dict):
        return {**result, "success": False, "error": outcome.error}
    return RemoteExecutionError(
        outcome.error_type or "remote_error", outcome.error or "failed", result, outcome.request_id
    )
