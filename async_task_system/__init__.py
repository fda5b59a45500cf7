"""async_task_system: make a smolagents CodeAgent a parallel task coordinator.

The LLM submits tools and sub-agents as background tasks (``submit_task``), waits for them
(``wait_for_tasks``) and combines their results (``get_task_results``). See the README.
"""

from .agent import ASYNC_GUIDANCE, AsyncAgent, create_async_agent
from .config import model_from_env
from .manager import (
    TaskManager,
    TaskValidationError,
    UnknownTaskError,
    WaitResult,
    cancellation_requested,
    get_current_task_id,
    get_task_manager,
)
from .tasks import TaskError, TaskFailure, TaskInfo, TaskKind, TaskStatus
from .testing import ScriptedModel, ScriptExhaustedError
from .tools import create_task_tools
from .tracing import attached_context, extract_context, inject_context, run_with_context, setup_tracing

__version__ = "0.1.0"

__all__ = [
    "ASYNC_GUIDANCE",
    "AsyncAgent",
    "ScriptExhaustedError",
    "ScriptedModel",
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
    "extract_context",
    "get_current_task_id",
    "get_task_manager",
    "inject_context",
    "model_from_env",
    "run_with_context",
    "setup_tracing",
]
