"""How we run smolagents agents safely from background threads.

Two facts about smolagents shape this module:

* ``LocalPythonExecutor`` runs each code step in a fresh thread of its own (its timeout
  decorator), and that thread starts with an empty ``contextvars`` context. Whatever the step
  calls (``submit_task``, ``get_current_task_id()``, an OpenTelemetry span) would lose the
  caller's context. :class:`ContextPreservingExecutor` runs the step in a thread that carries
  the caller's context, and on timeout returns at once instead of waiting for the step.
* Agent instances are not thread-safe (smolagents issue #1781): memory, monitor, step counter
  and executor state are per instance. :func:`copy_agent` makes an independent instance that
  shares only the immutable or thread-safe parts (model, tools, prompt templates).
"""

from __future__ import annotations

import contextvars
import copy
import threading
from typing import Any

from smolagents.local_python_executor import ExecutionTimeoutError, LocalPythonExecutor

__all__ = ["ContextPreservingExecutor", "install_context_executor", "copy_agent"]


class ContextPreservingExecutor:
    """Wraps a ``LocalPythonExecutor``: same interface, caller's context kept, prompt timeout.

    Attribute reads fall through to the wrapped executor (``state``, ``static_tools``, ...),
    so smolagents code that inspects the executor keeps working.
    """

    def __init__(self, inner: LocalPythonExecutor, timeout_seconds: float | None) -> None:
        # The inner executor must not start its own (context-less) timeout thread.
        inner.timeout_seconds = None
        self.__dict__["_inner"] = inner
        self.__dict__["code_timeout_seconds"] = timeout_seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_inner"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "code_timeout_seconds":
            self.__dict__[name] = value
        else:
            setattr(self.__dict__["_inner"], name, value)

    def __call__(self, code_action: str) -> Any:
        inner: LocalPythonExecutor = self.__dict__["_inner"]
        timeout = self.__dict__["code_timeout_seconds"]
        if timeout is None:
            return inner(code_action)
        context = contextvars.copy_context()
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["value"] = context.run(inner, code_action)
            except BaseException as exc:  # re-raised in the caller's thread below
                outcome["error"] = exc

        thread = threading.Thread(target=run, name="agent-code-step", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise ExecutionTimeoutError(
                f"Code execution exceeded the maximum execution time of {timeout:g} seconds. "
                "Use shorter waits (wait_for_tasks returns as soon as tasks finish) or split the work."
            )
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    def send_tools(self, tools: dict[str, Any]) -> None:
        self.__dict__["_inner"].send_tools(tools)

    def send_variables(self, variables: dict[str, Any]) -> None:
        self.__dict__["_inner"].send_variables(variables)


def install_context_executor(agent: Any, timeout_seconds: float | None, recursive: bool = True) -> None:
    """Give ``agent`` (and, with ``recursive``, its managed agents) a context-preserving executor.

    Agents whose executor is not local (E2B, Docker, ...) are left as they are.
    """
    executor = getattr(agent, "python_executor", None)
    if isinstance(executor, ContextPreservingExecutor):
        executor.code_timeout_seconds = timeout_seconds
    elif isinstance(executor, LocalPythonExecutor):
        agent.python_executor = ContextPreservingExecutor(executor, timeout_seconds)
    if recursive:
        for sub_agent in (getattr(agent, "managed_agents", None) or {}).values():
            install_context_executor(sub_agent, timeout_seconds, recursive=True)


def copy_agent(agent: Any) -> Any:
    """An independent instance of a smolagents agent, safe to run alongside the original.

    Shallow-copies the agent, then gives the copy its own memory, monitor, state, step
    callbacks, python executor and (recursively) managed agents.
    """
    from smolagents.memory import AgentMemory
    from smolagents.monitoring import Monitor

    clone = copy.copy(agent)
    clone.state = {}
    clone.step_number = 0
    clone.interrupt_switch = False
    clone.memory = AgentMemory(agent.system_prompt)
    clone.monitor = Monitor(agent.model, agent.logger)
    registry = getattr(agent, "step_callbacks", None)
    if registry is not None:
        clone.step_callbacks = _copy_callbacks(registry, agent.monitor, clone.monitor)
    sub_agents = getattr(agent, "managed_agents", None)
    if sub_agents:
        clone.managed_agents = {name: copy_agent(sub) for name, sub in sub_agents.items()}
    executor = getattr(agent, "python_executor", None)
    if executor is not None and hasattr(agent, "create_python_executor"):
        timeout = None
        if isinstance(executor, ContextPreservingExecutor):
            timeout = executor.code_timeout_seconds
        elif isinstance(executor, LocalPythonExecutor):
            timeout = executor.timeout_seconds
        clone.python_executor = clone.create_python_executor()
        if isinstance(clone.python_executor, LocalPythonExecutor):
            clone.python_executor = ContextPreservingExecutor(clone.python_executor, timeout)
    return clone


def _copy_callbacks(registry: Any, old_monitor: Any, new_monitor: Any) -> Any:
    """Copy a smolagents ``CallbackRegistry``, re-binding the monitor's metrics callback."""
    clone = copy.copy(registry)
    callbacks = getattr(registry, "_callbacks", None)
    if isinstance(callbacks, dict):
        clone._callbacks = {
            step_cls: [
                new_monitor.update_metrics
                if getattr(cb, "__self__", None) is old_monitor
                and getattr(cb, "__name__", "") == "update_metrics"
                else cb
                for cb in cbs
            ]
            for step_cls, cbs in callbacks.items()
        }
    return clone
