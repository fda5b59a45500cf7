"""The smolagents tools the LLM calls to run work in the background.

Each tool is bound to one :class:`~async_task_system.core.manager.TaskManager` and returns plain
values, exactly as seed 004 uses them: ``submit_task`` returns the id, ``get_task_results``
returns ``{task_id: result}``. Errors the LLM can fix (unknown name, bad arguments, unknown id)
are raised with a message that says how; a failed task is never an exception, only a value.
"""

from __future__ import annotations

import time
from typing import Any

from smolagents import Tool

from ..core.manager import TaskManager, get_current_task_id, get_task_manager
from ..core.tasks import TaskKind, TaskStatus

__all__ = [
    "SubmitTaskTool",
    "WaitForTasksTool",
    "SleepTool",
    "GetTaskResultsTool",
    "CheckTaskTool",
    "ListTasksTool",
    "CancelTaskTool",
    "create_task_tools",
    "DEFAULT_MAX_WAIT_SECONDS",
]

DEFAULT_MAX_WAIT_SECONDS = 300.0
"""Upper bound for one ``wait_for_tasks`` or ``sleep`` call; longer requests are capped."""

_RESULT_PREVIEW_CHARS = 2000


def _as_id_list(task_ids: Any) -> list[str]:
    if isinstance(task_ids, str):
        return [task_ids]
    if isinstance(task_ids, (list, tuple, set)) and all(isinstance(t, str) for t in task_ids):
        return list(task_ids)
    raise TypeError(
        f"task_ids must be a list of task id strings as returned by submit_task, got {task_ids!r:.80}"
    )


class _ManagerTool(Tool):
    def __init__(self, manager: TaskManager) -> None:
        self.manager = manager
        super().__init__()


class SubmitTaskTool(_ManagerTool):
    name = "submit_task"
    inputs = {
        "task_type": {
            "type": "string",
            "description": "The kind of work: 'tool', 'agent', 'function', or another kind listed below.",
        },
        "name": {"type": "string", "description": "The name of the tool, agent or function to run."},
        "arguments": {
            "type": "object",
            "description": "Keyword arguments as a dict, e.g. {'dataset': 'sales'}. Agents take {'task': '...'}. "
            "A value {'$result': task_id} is replaced by that task's result when this task starts.",
            "nullable": True,
        },
        "after": {
            "type": "array",
            "description": "Task ids that must complete before this task starts (implied by {'$result': id}).",
            "nullable": True,
        },
    }
    output_type = "string"

    @property
    def description(self) -> str:  # type: ignore[override]  # rebuilt so it lists what is registered now
        lines = [
            "Starts a tool, managed agent or function in the background and returns its task id (a string) at once.",
            "Submit every independent piece of work first, then wait for all of them together with wait_for_tasks.",
            "Chain stages without waiting: submit_task('tool', 'b', {'data': {'$result': id_of_a}}) starts b when "
            "a completes, with a's result as `data`; if a fails, b fails with 'dependency_failed'.",
        ]
        by_kind: dict[TaskKind, list[str]] = {}
        for target in self.manager.targets():
            by_kind.setdefault(target.kind, []).append(f"{target.name} {target.signature_hint()}")
        for kind, listed in by_kind.items():
            lines.append(f"Available with task_type={kind.value!r}: {'; '.join(listed)}")
        lines.append("Example: task_id = submit_task('tool', 'name_of_tool', {'arg': 'value'})")
        return "\n".join(lines)

    def forward(
        self, task_type: str, name: str, arguments: dict | None = None, after: list | None = None
    ) -> str:
        return self.manager.submit(task_type, name, arguments, after=_as_id_list(after) if after else None)


class WaitForTasksTool(_ManagerTool):
    name = "wait_for_tasks"
    description = (
        "Waits until all the given tasks have finished (or max_wait_time seconds pass) and returns as soon as they do. "
        "Returns a dict: 'all_done' (bool), 'completed', 'failed', 'cancelled' and 'pending' (lists of task ids), "
        "'errors' ({task_id: error}) and 'waited_seconds'. Then read results with get_task_results."
    )
    inputs = {
        "task_ids": {"type": "array", "description": "Task ids returned by submit_task."},
        "max_wait_time": {
            "type": "number",
            "description": "Most seconds to wait (default 60, capped at 300).",
            "nullable": True,
        },
    }
    output_type = "object"

    def __init__(self, manager: TaskManager, max_wait_cap: float = DEFAULT_MAX_WAIT_SECONDS) -> None:
        self.max_wait_cap = max_wait_cap
        super().__init__(manager)

    def forward(self, task_ids: list, max_wait_time: float | None = None) -> dict:
        ids = _as_id_list(task_ids)
        wait = 60.0 if max_wait_time is None else float(max_wait_time)
        wait = max(0.0, min(wait, self.max_wait_cap))
        started = time.monotonic()
        self.manager.wait(ids, timeout=wait)
        waited = time.monotonic() - started
        summary: dict[str, Any] = {
            "all_done": True,
            "completed": [],
            "failed": [],
            "cancelled": [],
            "pending": [],
            "errors": {},
            "waited_seconds": round(waited, 3),
        }
        for task_id in ids:
            info = self.manager.check(task_id)
            if info.status is TaskStatus.COMPLETED:
                summary["completed"].append(task_id)
            elif info.status is TaskStatus.FAILED:
                summary["failed"].append(task_id)
                summary["errors"][task_id] = str(info.error)
            elif info.status is TaskStatus.CANCELLED:
                summary["cancelled"].append(task_id)
            else:
                summary["pending"].append(task_id)
        if summary["pending"]:
            summary["all_done"] = False
            summary["message"] = (
                f"{len(summary['pending'])} task(s) still running after {waited:.1f} s; "
                "call wait_for_tasks again for them, or check_task / cancel_task."
            )
        return summary


class SleepTool(_ManagerTool):
    name = "sleep"
    description = "Pauses for a number of seconds (capped at 300). Prefer wait_for_tasks, which returns as soon as tasks finish."
    inputs = {
        "seconds": {"type": "number", "description": "How long to pause, in seconds."},
        "reason": {"type": "string", "description": "Why you are pausing (for the log).", "nullable": True},
    }
    output_type = "string"

    def __init__(self, manager: TaskManager, max_wait_cap: float = DEFAULT_MAX_WAIT_SECONDS) -> None:
        self.max_wait_cap = max_wait_cap
        super().__init__(manager)

    def forward(self, seconds: float, reason: str | None = None) -> str:
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
            raise TypeError(f"seconds must be a number, got {seconds!r}")
        duration = max(0.0, min(float(seconds), self.max_wait_cap))
        task_id, manager = get_current_task_id(), get_task_manager()
        if task_id is not None and manager is not None:
            # Inside a task (a background agent, a server request): a cancel ends the sleep at once.
            if manager.wait_cancelled(task_id, duration):
                return "Sleep interrupted: this task was cancelled or timed out; stop and return."
        else:
            time.sleep(duration)
        suffix = f" ({reason})" if reason else ""
        capped = " (capped)" if duration < seconds else ""
        return f"Slept {duration:g} s{capped}{suffix}."


class GetTaskResultsTool(_ManagerTool):
    name = "get_task_results"
    description = (
        "Returns a dict {task_id: result} for the given task ids. A task that failed, was cancelled or has not "
        "finished maps to a string starting with 'ERROR:', 'CANCELLED:' or 'NOT FINISHED:' instead of raising."
    )
    inputs = {"task_ids": {"type": "array", "description": "Task ids returned by submit_task."}}
    output_type = "object"

    def forward(self, task_ids: list) -> dict:
        return self.manager.results(_as_id_list(task_ids))


class CheckTaskTool(_ManagerTool):
    name = "check_task"
    description = (
        "Returns one task's status as a dict: task_id, name, status (pending, running, waiting_remote, completed, "
        "failed, cancelled), result (shortened), error, timing, attempts, depends_on and progress (0-1) with its message."
    )
    inputs = {"task_id": {"type": "string", "description": "A task id returned by submit_task."}}
    output_type = "object"

    def forward(self, task_id: str) -> dict:
        return self.manager.check(task_id).to_dict(result_chars=_RESULT_PREVIEW_CHARS)


class ListTasksTool(_ManagerTool):
    name = "list_tasks"
    description = (
        "Lists tasks as dicts (task_id, kind, name, status, error, progress when reported), optionally only those with one status "
        "(pending, running, waiting_remote, completed, failed, cancelled)."
    )
    inputs = {"status": {"type": "string", "description": "Only tasks with this status.", "nullable": True}}
    output_type = "array"

    def forward(self, status: str | None = None) -> list:
        return [
            {
                "task_id": info.id,
                "kind": info.kind.value,
                "name": info.name,
                "status": info.status.value,
                "error": None if info.error is None else str(info.error),
                **({"progress": info.progress} if info.progress is not None else {}),
                **({"progress_message": info.progress_message} if info.progress_message else {}),
            }
            for info in self.manager.list(status)
        ]


class CancelTaskTool(_ManagerTool):
    name = "cancel_task"
    description = (
        "Cancels a task that is pending or running. Returns a dict with the task's status afterwards."
    )
    inputs = {"task_id": {"type": "string", "description": "A task id returned by submit_task."}}
    output_type = "object"

    def forward(self, task_id: str) -> dict:
        cancelled = self.manager.cancel(task_id)
        info = self.manager.check(task_id)
        return {"task_id": task_id, "cancelled": cancelled, "status": info.status.value}


def create_task_tools(manager: TaskManager, max_wait_cap: float = DEFAULT_MAX_WAIT_SECONDS) -> list[Tool]:
    """The seven async tools bound to ``manager``, in the order the guidance prompt teaches them."""
    return [
        SubmitTaskTool(manager),
        WaitForTasksTool(manager, max_wait_cap),
        GetTaskResultsTool(manager),
        CheckTaskTool(manager),
        ListTasksTool(manager),
        SleepTool(manager, max_wait_cap),
        CancelTaskTool(manager),
    ]
