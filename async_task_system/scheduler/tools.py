"""The LLM's scheduling tools: ``schedule_task``, ``list_schedules``, ``cancel_schedule``, and :func:`attach_scheduler`.

An agent told "check this every 10 minutes" calls ``schedule_task('check site', 'interval', '600',
'check_site', {'url': ...})``; each run is then a task of the agent's manager. Bad values raise a
``ScheduleError`` whose message says how to write the call, which smolagents shows the LLM as the
step's error. Kept apart from :mod:`.scheduler` so that the scheduler itself needs no smolagents.
"""

from __future__ import annotations

from typing import Any

from smolagents import Tool

from ..core.manager import TaskManager
from .engine import ToolScheduler

__all__ = [
    "ScheduleTaskTool",
    "ListSchedulesTool",
    "CancelScheduleTool",
    "create_scheduler_tools",
    "attach_scheduler",
    "SCHEDULER_GUIDANCE",
]

SCHEDULER_GUIDANCE = """\
Schedules: schedule_task(name, schedule_type, schedule_value, tool_name, parameters) runs a tool later or repeatedly:
schedule_type 'once' with an ISO time ('2030-01-31T09:00:00+00:00'), 'interval' with seconds ('600' = every 10 minutes)
or 'cron' with 5 fields ('0 9 * * 1-5' = 09:00 on weekdays; timezone='Europe/Berlin' to read it there). It returns
{'id', 'next_run'}; list_schedules() shows every schedule with next_run, run_count and the last run's status;
cancel_schedule(id) stops one. Each run is a background task (see list_tasks). Values beyond the operator's limits
(shortest interval, farthest time, max_runs, schedules per agent) are refused: the error gives the allowed range."""


class _SchedulerTool(Tool):
    def __init__(self, scheduler: ToolScheduler) -> None:
        self.scheduler = scheduler
        super().__init__()


class ScheduleTaskTool(_SchedulerTool):
    """``schedule_task``: make a schedule; returns its id and first run."""

    name = "schedule_task"
    description = (
        "Runs a registered tool on a schedule, as background tasks. schedule_type: 'once' (schedule_value an ISO "
        "time in the future, e.g. '2030-01-31T09:00:00+00:00'), 'interval' (seconds, e.g. '600' for every 10 "
        "minutes) or 'cron' (5 fields 'minute hour day month weekday', e.g. '*/10 * * * *'; 6 fields put seconds "
        "first). Returns {'id', 'name', 'next_run', 'message'}; keep the id to cancel it with cancel_schedule."
    )
    inputs = {
        "name": {"type": "string", "description": "What the schedule is for, e.g. 'check example.com'."},
        "schedule_type": {"type": "string", "description": "'once', 'interval' or 'cron'."},
        "schedule_value": {
            "type": "string",
            "description": "ISO time for 'once', seconds for 'interval', a cron expression for 'cron'.",
        },
        "tool_name": {"type": "string", "description": "The registered tool to run (as for submit_task)."},
        "parameters": {
            "type": "object",
            "description": "The tool's arguments, e.g. {'url': 'https://example.com'}.",
            "nullable": True,
        },
        "timezone": {
            "type": "string",
            "description": "IANA zone for cron and times without offset, e.g. 'Europe/Berlin'. Default UTC.",
            "nullable": True,
        },
        "max_runs": {
            "type": "integer",
            "description": "Stop after this many runs (default: no limit).",
            "nullable": True,
        },
    }
    output_type = "object"

    def forward(
        self,
        name: str,
        schedule_type: str,
        schedule_value: str,
        tool_name: str,
        parameters: dict[str, Any] | None = None,
        timezone: str | None = None,
        max_runs: int | None = None,
    ) -> dict[str, Any]:
        schedule_id = self.scheduler.schedule(
            name, schedule_type, schedule_value, tool_name, parameters, timezone=timezone, max_runs=max_runs
        )
        info = self.scheduler.get(schedule_id)
        return {
            "id": schedule_id,
            "name": info["name"],
            "next_run": info["next_run"],
            "message": (
                f"Scheduled {tool_name!r} ({info['type']} {info['schedule_value']}); first run at {info['next_run']}. "
                f"Stop it with cancel_schedule({schedule_id!r})."
            ),
        }


class ListSchedulesTool(_SchedulerTool):
    """``list_schedules``: every schedule with its next run, run count and last run."""

    name = "list_schedules"
    description = (
        "Lists every schedule: a list of dicts with id, name, type, enabled, next_run, run_count, state, "
        "tool_name, parameters, last_run, last_status and last_error."
    )
    inputs: dict[str, Any] = {}
    output_type = "array"

    def forward(self) -> list[dict[str, Any]]:
        return self.scheduler.list_tasks()


class CancelScheduleTool(_SchedulerTool):
    """``cancel_schedule``: delete a schedule (runs in flight finish)."""

    name = "cancel_schedule"
    description = (
        "Stops and deletes a schedule by the id schedule_task returned (runs already started finish). "
        "Returns {'id', 'cancelled': True}; an unknown id raises an error listing the known ids."
    )
    inputs = {"schedule_id": {"type": "string", "description": "The id returned by schedule_task."}}
    output_type = "object"

    def forward(self, schedule_id: str) -> dict[str, Any]:
        self.scheduler.get(schedule_id)  # raises UnknownScheduleError with the known ids
        return {"id": schedule_id, "cancelled": self.scheduler.cancel(schedule_id)}


def create_scheduler_tools(scheduler: ToolScheduler) -> list[Tool]:
    """The three tools, bound to ``scheduler``."""
    return [ScheduleTaskTool(scheduler), ListSchedulesTool(scheduler), CancelScheduleTool(scheduler)]


def attach_scheduler(target: Any, scheduler: ToolScheduler | None = None) -> ToolScheduler:
    """Give an ``AsyncAgent`` (or a ``TaskManager``) a scheduler and the agent its three tools.

    ``scheduler`` defaults to the manager's ``scheduler`` extension (schedules kept in memory, or
    in the manager's journal database when it has one); pass your own ``ToolScheduler(manager,
    store=SqlScheduleStore(url))`` to choose the store. Returns the scheduler.
    """
    manager: TaskManager = getattr(target, "task_manager", target)
    if not isinstance(manager, TaskManager):
        raise TypeError(
            f"attach_scheduler expects an AsyncAgent or a TaskManager, got {type(target).__name__}"
        )
    if scheduler is None:
        scheduler = manager.extension("scheduler")
    elif scheduler.manager is not manager:
        raise ValueError("the scheduler runs its tasks on another TaskManager than this agent's")
    agent = getattr(target, "agent", None)
    if agent is not None and hasattr(agent, "tools"):
        for tool in create_scheduler_tools(scheduler):
            agent.tools[tool.name] = tool
        instructions = getattr(agent, "instructions", None) or ""
        if SCHEDULER_GUIDANCE not in instructions:
            agent.instructions = (
                f"{instructions}\n{SCHEDULER_GUIDANCE}" if instructions else SCHEDULER_GUIDANCE
            )
    return scheduler
