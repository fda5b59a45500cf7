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

from ._registry import register_extension

__version__ = "0.1.0"

# Subsystems plug into TaskManager by name; the core never imports them.
register_extension(
    "remote",
    "async_task_system.remote.bridge:RemoteExecutionManager",
    kinds=("remote",),
    tools=("remote_execute",),
)
register_extension("journal", "async_task_system.platform.journal:Journal")
register_extension("conversations", "async_task_system.conversation:Conversations", kinds=("conversation",))
register_extension("scheduler", "async_task_system.scheduler:scheduler_extension")
register_extension(
    "collaboration",
    "async_task_system.collaboration:collaboration_extension",
    kinds=("agent_request",),
    tools=("ask_agent",),
)

_EXPORTS: dict[str, str] = {
    "ASYNC_GUIDANCE": "agent",
    "AsyncAgent": "agent",
    "ChatAgent": "agent",
    "ConversationSuspended": "conversation",
    "current_conversation": "conversation",
    "create_async_agent": "agent",
    "model_from_env": "config",
    "ChangeBatch": "_changes",
    "ChangeFeed": "_changes",
    "AsyncTaskSystemError": "errors",
    "InvalidTransition": "errors",
    "ManagerClosedError": "errors",
    "TaskValidationError": "errors",
    "UnknownTaskError": "errors",
    "Suspension": "manager",
    "TaskManager": "manager",
    "WaitResult": "manager",
    "cancellation_requested": "manager",
    "get_current_task_id": "manager",
    "get_task_manager": "manager",
    "register_extension": "manager",
    "report_progress": "manager",
    "Target": "_targets",
    "TaskError": "tasks",
    "TaskFailure": "tasks",
    "TaskInfo": "tasks",
    "TaskKind": "tasks",
    "TaskStatus": "tasks",
    "ScriptExhaustedError": "testing",
    "ScriptedModel": "testing",
    "create_task_tools": "tools",
    "attached_context": "tracing",
    "extract_context": "tracing",
    "inject_context": "tracing",
    "run_with_context": "tracing",
    "setup_tracing": "tracing",
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
    from ._changes import ChangeBatch, ChangeFeed
    from ._targets import Target
    from .agent import ASYNC_GUIDANCE, AsyncAgent, ChatAgent, create_async_agent
    from .config import model_from_env
    from .conversation import ConversationSuspended, current_conversation
    from .errors import (
        AsyncTaskSystemError,
        InvalidTransition,
        ManagerClosedError,
        TaskValidationError,
        UnknownTaskError,
    )
    from .manager import (
        Suspension,
        TaskManager,
        WaitResult,
        cancellation_requested,
        get_current_task_id,
        get_task_manager,
        register_extension,
        report_progress,
    )
    from .tasks import TaskError, TaskFailure, TaskInfo, TaskKind, TaskStatus
    from .testing import ScriptedModel, ScriptExhaustedError
    from .tools import create_task_tools
    from .tracing import attached_context, extract_context, inject_context, run_with_context, setup_tracing
