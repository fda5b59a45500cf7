"""One agent instance from the factory, seen through one interface (AsyncAgent or smolagents):
its tools (gated for approval), its instructions, its run, and the background tasks it started."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["AgentHandle", "cancel_tasks"]


class AgentHandle:
    """One agent instance from the factory, seen through one interface (AsyncAgent or smolagents)."""

    def __init__(self, obj: Any) -> None:
        from smolagents.agents import MultiStepAgent

        from ..agents.agent import AsyncAgent

        self.owner = obj
        self.task_manager: Any = None
        """The manager the agent's ``submit_task`` uses (an AsyncAgent's), else None."""
        self.owns_task_manager = False
        self.code_executors: list[Any] = []
        """The sandboxed code executors of the agent and its managed agents (:meth:`sandbox_code`)."""
        self._started: list[str] = []  # ids submit_task returned, on a manager the agent does not own
        self._started_lock = threading.Lock()
        if isinstance(obj, AsyncAgent):
            self.agent = obj.agent
            self.is_async_agent = True
            self.task_manager = obj.task_manager
            self.owns_task_manager = obj.owns_task_manager
            submit = self.agent.tools.get("submit_task")
            if submit is not None and not self.owns_task_manager:
                self.agent.tools["submit_task"] = _RecordingTool(submit, self._record_started)
        elif isinstance(obj, MultiStepAgent):
            self.agent = obj
            self.is_async_agent = False
        else:
            raise TypeError(
                "The agent factory must return an AsyncAgent (create_async_agent) or a smolagents agent "
                f"(CodeAgent, ToolCallingAgent), got {type(obj).__name__}"
            )

    @property
    def model(self) -> Any:
        return self.agent.model

    def tools(self) -> dict[str, Any]:
        """The agent's tools by name, without ``final_answer``."""
        return {name: tool for name, tool in self.agent.tools.items() if name != "final_answer"}

    def set_instructions(self, prompt: str) -> None:
        """Replace the agent's custom instructions (an AsyncAgent keeps its async-task guidance)."""
        if self.is_async_agent:
            from ..agents.agent import ASYNC_GUIDANCE

            self.agent.instructions = f"{ASYNC_GUIDANCE}\n{prompt}"
        else:
            self.agent.instructions = prompt

    def gate_tools(self, ask: Callable[[str, Any], None]) -> None:
        """Wrap every tool (not ``final_answer``) so that ``ask(name, arguments)`` runs first.

        ``ask`` raises to stop the call (request cancelled, or the client said no).
        """
        for name, tool in list(self.agent.tools.items()):
            if name != "final_answer":
                self.agent.tools[name] = _GatedTool(tool, ask)

    def sandbox_code(self, limits: Any) -> None:
        """Run the agent's code steps (and its managed agents') in sandboxed kernels under ``limits``
        (:func:`~async_task_system.runtimes.code_sandbox.install_sandboxed_executor`); agents with a
        remote executor keep it. :meth:`interrupt` stops a running step, :meth:`close` the kernels."""
        from ..runtimes.code_sandbox import install_sandboxed_executor

        self.code_executors = install_sandboxed_executor(self.agent, limits)

    def on_step(self, callback: Callable[[Any], None]) -> None:
        from smolagents.memory import ActionStep

        self.agent.step_callbacks.register(ActionStep, lambda step, **_: callback(step))

    def run(self, task: str, images: list[Any] | None, max_steps: int | None) -> Any:
        kwargs: dict[str, Any] = {}
        if images:
            kwargs["images"] = images
        if max_steps is not None:
            kwargs["max_steps"] = max_steps
        return self.owner.run(task, **kwargs)

    def interrupt(self) -> None:
        """Stop the run at its next step; a code step running in a sandboxed kernel stops now."""
        with contextlib.suppress(Exception):
            self.agent.interrupt()
        for executor in self.code_executors:
            with contextlib.suppress(Exception):
                executor.interrupt()

    def _record_started(self, task_id: Any) -> None:
        if isinstance(task_id, str):
            with self._started_lock:
                self._started.append(task_id)

    def background_tasks(self) -> list[str]:
        """Ids of the background tasks this agent started (on a manager it does not own, only
        those its ``submit_task`` started; their dependents follow them when cancelled)."""
        manager = self.task_manager
        if manager is None:
            return []
        if self.owns_task_manager:
            return [info.id for info in manager.list() if not info.status.is_terminal]
        with self._started_lock:
            return list(self._started)

    def cancel_background(self) -> int:
        """Cancel the unfinished background tasks this agent started; returns how many were cancelled.

        A running task is marked cancelled at once (its slot is free, waiters return) and its code
        sees ``cancellation_requested()``; a tool that never checks runs on until it returns.
        """
        return cancel_tasks(self.task_manager, self.background_tasks())

    def close(self) -> None:
        """Release the agent. An AsyncAgent's own manager goes with it: its unfinished tasks are
        cancelled (nothing could read their results any more). Tasks on a shared manager stay."""
        with contextlib.suppress(Exception):
            if self.is_async_agent:
                if self.owns_task_manager:
                    self.cancel_background()
                self.owner.shutdown(wait=False, cancel_pending=True)
            else:
                self.agent.cleanup()
        for executor in self.code_executors:  # managed agents' kernels too (cleanup() is per agent)
            with contextlib.suppress(Exception):
                executor.cleanup()


def cancel_tasks(manager: Any, task_ids: Sequence[str]) -> int:
    """Cancel those of ``task_ids`` still unfinished on ``manager``; returns how many were."""
    cancelled = 0
    for task_id in task_ids:
        with contextlib.suppress(LookupError):  # dropped from the records after its result was read
            cancelled += bool(manager.cancel(task_id))
    return cancelled


class _RecordingTool:
    """A tool proxy handing each result to ``record`` (the ids ``submit_task`` returns)."""

    def __init__(self, inner: Any, record: Callable[[Any], None]) -> None:
        self.__dict__["_inner"] = inner
        self.__dict__["_record"] = record

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_inner"], name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        result = self.__dict__["_inner"](*args, **kwargs)
        self.__dict__["_record"](result)
        return result


class _GatedTool:
    """A tool proxy asking for approval before each call; everything else falls through."""

    def __init__(self, inner: Any, ask: Callable[[str, Any], None]) -> None:
        self.__dict__["_inner"] = inner
        self.__dict__["_ask"] = ask

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_inner"], name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        inner = self.__dict__["_inner"]
        arguments = {k: v for k, v in kwargs.items() if k != "sanitize_inputs_outputs"}
        if len(args) == 1 and not arguments and isinstance(args[0], dict) and _takes_dict(inner, args[0]):
            arguments = dict(args[0])
        else:
            names = list(getattr(inner, "inputs", {}) or {})
            for i, value in enumerate(args):
                arguments[names[i] if i < len(names) else f"arg{i}"] = value
        self.__dict__["_ask"](getattr(inner, "name", "tool"), arguments)
        return inner(*args, **kwargs)


def _takes_dict(tool: Any, value: dict[str, Any]) -> bool:
    inputs = getattr(tool, "inputs", {}) or {}
    return bool(value) and set(value) <= set(inputs) and len(inputs) != 1
