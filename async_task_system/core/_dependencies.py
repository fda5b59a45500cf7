"""Task dependencies as data: ``after=[ids]`` and ``{"$result": id}`` argument references.

The LLM can write a whole pipeline (seed 004's "clean -> analyze -> visualize" for ten files) in
one code step: each stage's task names the previous stage's task, and starts the moment it
completes, with its result in place of the reference. The manager keeps the bookkeeping here
(who waits for whom) and does every state change itself, under its lock.

A task can only depend on tasks that exist when it is submitted, so the graph can never have a
cycle: a reference to an id not yet issued is refused as unknown.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .errors import TaskValidationError
from .targets import RESULT_REF, is_result_ref
from .tasks import TaskError, TaskInfo, TaskStatus

__all__ = ["DependencyGraph", "dependency_failure"]


class DependencyGraph:
    """Which pending tasks wait for which unfinished ones (the manager holds its lock around every call)."""

    def __init__(self) -> None:
        self._dependents: dict[str, list[str]] = {}
        self._waiting: dict[str, set[str]] = {}

    @staticmethod
    def collect(arguments: dict[str, Any], after: Iterable[str] | None) -> tuple[str, ...]:
        """The ids a task depends on: ``after`` plus every ``{"$result": id}`` in its arguments, in order."""
        ids: list[str] = []
        if after is not None:
            if isinstance(after, str):
                after = [after]
            for item in after:
                if not isinstance(item, str):
                    raise TaskValidationError(
                        f"after must be a list of task ids (strings) returned by submit_task, got {item!r:.60}"
                    )
                ids.append(item)
        _collect_refs(arguments, ids)
        return tuple(dict.fromkeys(ids))

    def add(self, task_id: str, unfinished: list[str]) -> None:
        """``task_id`` starts when every task in ``unfinished`` has completed."""
        self._waiting[task_id] = set(unfinished)
        for dependency in unfinished:
            self._dependents.setdefault(dependency, []).append(task_id)

    def finished(self, task_id: str) -> list[str]:
        """The tasks that were waiting for ``task_id`` (each is told once)."""
        self._waiting.pop(task_id, None)
        return self._dependents.pop(task_id, [])

    def satisfied(self, task_id: str, dependency: str) -> bool:
        """Mark ``dependency`` of ``task_id`` done; True when it was the last one."""
        waiting = self._waiting.get(task_id)
        if waiting is None:
            return True
        waiting.discard(dependency)
        if waiting:
            return False
        del self._waiting[task_id]
        return True

    @staticmethod
    def substitute(value: Any, results: dict[str, Any]) -> Any:
        """``value`` with each ``{"$result": id}`` replaced by that task's result (at any depth)."""
        if is_result_ref(value):
            return results[value[RESULT_REF]]
        if isinstance(value, dict):
            return {key: DependencyGraph.substitute(item, results) for key, item in value.items()}
        if isinstance(value, list):
            return [DependencyGraph.substitute(item, results) for item in value]
        return value


def _collect_refs(value: Any, into: list[str]) -> None:
    if is_result_ref(value):
        into.append(value[RESULT_REF])
    elif isinstance(value, dict):
        for item in value.values():
            _collect_refs(item, into)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect_refs(item, into)


def dependency_failure(dependency: TaskInfo) -> tuple[TaskStatus, TaskError]:
    """How a dependent ends when ``dependency`` did not complete: cancelled with it, or failed because of it."""
    label = f"{dependency.id} ({dependency.kind.value} {dependency.name!r})"
    if dependency.status is TaskStatus.CANCELLED:
        return TaskStatus.CANCELLED, TaskError("dependency_failed", f"its dependency {label} was cancelled")
    reason = f": {dependency.error}" if dependency.error is not None else ""
    return TaskStatus.FAILED, TaskError("dependency_failed", f"its dependency {label} failed{reason}")
