"""async_task_system: make a smolagents CodeAgent a parallel task coordinator.

The LLM submits tools and sub-agents as background tasks (``submit_task``), waits for them
(``wait_for_tasks``) and combines their results (``get_task_results``). See the README.

This module is the public surface and the one place that wires subsystems to the core: names
are imported on first use (PEP 562), so ``import async_task_system.remote.worker`` on a worker
machine loads neither smolagents nor litellm.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .core.registry import register_extension

# Subsystems plug into TaskManager by name; the core never imports them.
register_extension(
    "remote",
    "async_task_system.remote.bridge:RemoteExecutionManager",
    kinds=("remote",),
    tools=("remote_execute",),
)
register_extension("journal", "async_task_system.platform.journal:Journal")
register_extension(
    "conversations", "async_task_system.agents.conversation:Conversations", kinds=("conversation",)
)
register_extension("scheduler", "async_task_system.scheduler.engine:scheduler_extension")
# The scheduler's SQL store is the platform's: the scheduler reaches it by this name (scheduler/stores.py).
register_extension("schedule_store", "async_task_system.platform.schedule_store:SqlScheduleStore")
register_extension(
    "collaboration",
    "async_task_system.collab.extension:collaboration_extension",
    kinds=("agent_request",),
    tools=("ask_agent",),
)

_EXPORTS: dict[str, str] = {
    "ASYNC_GUIDANCE": "agents.agent",
    "AsyncAgent": "agents.agent",
    "ChatAgent": "agents.agent",
    "ConversationSuspended": "agents.conversation",
    "current_conversation": "agents.conversation",
    "create_async_agent": "agents.agent",
    "model_from_env": "agents.config",
    "ChangeBatch": "core.changes",
    "ChangeFeed": "core.changes",
    "AsyncTaskSystemError": "core.errors",
    "InvalidTransition": "core.errors",
    "ManagerClosedError": "core.errors",
    "TaskValidationError": "core.errors",
    "UnknownTaskError": "core.errors",
    "Suspension": "core.manager",
    "TaskManager": "core.manager",
    "WaitResult": "core.manager",
    "cancellation_requested": "core.manager",
    "get_current_task_id": "core.manager",
    "get_task_manager": "core.manager",
    "register_extension": "core.manager",
    "report_progress": "core.manager",
    "Target": "core.targets",
    "TaskError": "core.tasks",
    "TaskFailure": "core.tasks",
    "TaskInfo": "core.tasks",
    "TaskKind": "core.tasks",
    "TaskStatus": "core.tasks",
    "ScriptExhaustedError": "agents.testing",
    "ScriptedModel": "agents.testing",
    "create_task_tools": "agents.tools",
    "TaskTable": "agents.live",
    "attached_context": "observe.tracing",
    "extract_context": "observe.tracing",
    "inject_context": "observe.tracing",
    "run_with_context": "observe.tracing",
    "setup_tracing": "observe.tracing",
}

__all__ = [
    "ASYNC_GUIDANCE",
    "AsyncAgent",
    "ChangeBatch",
    "ChangeFeed",
    "ChatAgent",
    "ConversationSuspended",
    "AsyncTaskSystemError",
    "InvalidTransition",
    "ManagerClosedError",
    "ScriptExhaustedError",
    "ScriptedModel",
    "Suspension",
    "Target",
    "TaskError",
    "TaskFailure",
    "TaskInfo",
    "TaskKind",
    "TaskManager",
    "TaskStatus",
    "TaskValidationError",
    "UnknownTaskError",
    "WaitResult",
    "__version__",
    "attached_context",
    "cancellation_requested",
    "create_async_agent",
    "create_task_tools",
    "TaskTable",
    "current_conversation",
    "extract_context",
    "get_current_task_id",
    "get_task_manager",
    "inject_context",
    "model_from_env",
    "register_extension",
    "report_progress",
    "run_with_context",
    "setup_tracing",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from .agents.agent import ASYNC_GUIDANCE, AsyncAgent, ChatAgent, create_async_agent
    from .agents.config import model_from_env
    from .agents.conversation import ConversationSuspended, current_conversation
    from .agents.testing import ScriptedModel, ScriptExhaustedError
    from .agents.tools import create_task_tools
    from .core.changes import ChangeBatch, ChangeFeed
    from .core.errors import (
        AsyncTaskSystemError,
        InvalidTransition,
        ManagerClosedError,
        TaskValidationError,
        UnknownTaskError,
    )
    from .core.manager import (
        Suspension,
        TaskManager,
        WaitResult,
        cancellation_requested,
        get_current_task_id,
        get_task_manager,
        register_extension,
        report_progress,
    )
    from .core.targets import Target
    from .core.tasks import TaskError, TaskFailure, TaskInfo, TaskKind, TaskStatus
    from .observe.tracing import (
        attached_context,
        extract_context,
        inject_context,
        run_with_context,
        setup_tracing,
    )
