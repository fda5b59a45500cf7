"""Agent conversations as tasks that suspend on remote work (seed 000's ``create_task``).

``task_manager.create_task(prompt, tools=[remote_execute])`` runs a fresh agent conversation as a
background task. When a tool in it hands work away (``remote_execute``, or any tool that calls
:meth:`Conversation.hand_off`), the conversation's current step ends there, its memory is kept,
and the task waits in WAITING_REMOTE holding no thread and no slot. When the answer comes, the
task is queued again and, on a free slot, the conversation goes on: the answer (or the error) is
given to the agent as a continuation message, and it continues with more tool calls and LLM
turns, possibly suspending again, until its final answer completes the task.

    RUNNING -> WAITING_REMOTE -> RUNNING -> ... -> COMPLETED   (seed 000's states)

Built on the core's public task control: ``TaskManager.suspend`` and
``Suspension.resume_later``. The step ends by raising :class:`ConversationSuspended`, a
``BaseException`` (like smolagents' final-answer exception) that neither the agent's code nor
smolagents' error handling catches. The agent's spans after a suspension are children of the
task's first span, so the whole conversation is one trace.
"""

from __future__ import annotations

import contextvars
import json
import threading
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, NoReturn

from ..core.context import active_manager, current_task
from ..core.errors import TaskValidationError
from ..core.targets import Target
from ..core.tasks import TaskError, TaskKind

__all__ = [
    "CONVERSATION",
    "CONVERSATION_TARGET",
    "Conversation",
    "ConversationSuspended",
    "Conversations",
    "current_conversation",
]

CONVERSATION = TaskKind.register(
    "conversation",
    "a fresh agent conversation on a prompt (tools by name)",
    aliases=("chat", "conversations"),
)
CONVERSATION_TARGET = "chat"
"""``submit_task("conversation", "chat", {"prompt": "...", "tools": ["remote_execute"]})``."""

_MAX_ANSWER_CHARS = 4000

_current: contextvars.ContextVar[Conversation | None] = contextvars.ContextVar(
    "async_task_system_conversation", default=None
)


def current_conversation() -> Conversation | None:
    """The conversation whose step is running in this context, if any."""
    return _current.get()


class ConversationSuspended(BaseException):
    """Ends the current step of a conversation that handed work away; it goes on when the answer comes."""


class Conversation:
    """One agent conversation run as a task (made by :class:`Conversations`; one per task)."""

    def __init__(self, manager: Any, task_id: str, agent: Any, prompt: str) -> None:
        self.manager = manager
        self.task_id = task_id
        self.agent = agent
        self.prompt = prompt
        self.turns = 0
        self._handed_off = False
        self._trace_context: contextvars.Context | None = None

    def run_first_turn(self) -> Any:
        return self._turn(self.prompt, reset=True)

    def hand_off(
        self,
        start: Callable[[Callable[[Any], None]], Any],
        *,
        describe: str,
        on_abandon: Callable[[TaskError], None] | None = None,
    ) -> NoReturn:
        """Hand work away and end the current step (for tools; never returns).

        The task is suspended (no thread, no slot), then ``start(answer)`` starts the work; the
        work calls ``answer(value)`` once, from any thread, when it is done: ``value`` (a result,
        or an exception for a failure) is shown to the agent and the conversation goes on, on a
        free slot. ``on_abandon(error)`` runs if the task is cancelled or times out first.
        ``describe`` names the call for the agent, e.g. ``"remote_execute('docker ps')"``.
        """
        if self._handed_off:
            raise RuntimeError(
                f"{describe}: this step already handed work away; its answer comes in the next step. "
                "Start one remote call per step."
            )
        suspension = self.manager.suspend(self.task_id, on_abandon=on_abandon)
        self._handed_off = True
        # The agent's later spans continue under this turn's span: one trace for the conversation.
        self._trace_context = contextvars.copy_context()
        answered = threading.Event()

        def answer(value: Any) -> None:
            if not answered.is_set():
                answered.set()
                suspension.resume_later(partial(self._continue, describe, value))

        try:
            start(answer)
        except Exception as exc:  # it could not start: the agent hears why, in its next turn
            answer(exc)
        raise ConversationSuspended(describe)

    def _continue(self, describe: str, value: Any) -> Any:
        message = continuation_message(describe, value, self.prompt)
        context = (
            self._trace_context.copy() if self._trace_context is not None else contextvars.copy_context()
        )
        return context.run(self._turn, message, False)

    def _turn(self, message: str, reset: bool) -> Any:
        self._handed_off = False
        self.turns += 1
        conversation_token = _current.set(self)
        manager_token = active_manager.set(self.manager)
        try:
            return self.agent.run(message, reset=reset)
        except ConversationSuspended:
            return None  # the task waits; the answer continues it (this return value is ignored)
        finally:
            active_manager.reset(manager_token)
            _current.reset(conversation_token)


def continuation_message(describe: str, value: Any, prompt: str) -> str:
    """What the agent reads when its conversation goes on: the answer, or the error, of the call that suspended it."""
    if isinstance(value, BaseException):
        error_type = getattr(value, "error_type", None) or type(value).__name__
        outcome = f"{describe} failed ({error_type}): {value}. You may retry it, try another way, or explain the failure."
    else:
        outcome = f"{describe} returned: {_text(value)}"
    return (
        "The call that ended your previous step has finished.\n"
        f"{outcome}\n"
        "Continue the original task from there (the lines after that call in your previous step did not run; "
        f"variables assigned from it are not set). Original task: {prompt}"
    )


def _text(value: Any) -> str:
    try:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= _MAX_ANSWER_CHARS else text[:_MAX_ANSWER_CHARS] + "... [truncated]"


class Conversations:
    """The ``conversations`` extension of a :class:`~async_task_system.core.manager.TaskManager`.

    It registers the ``conversation`` target (so the LLM can start one with ``submit_task``) and
    implements ``TaskManager.create_task``. ``default_model`` is the model conversations use when
    none is given (``AsyncAgent`` sets its own); ``agent_kwargs`` go to each ``CodeAgent``.
    """

    def __init__(self, manager: Any) -> None:
        self.manager = manager
        self.default_model: Any = None
        self.agent_kwargs: dict[str, Any] = {"verbosity_level": 0}
        self._setups: dict[str, tuple[Any, Callable[[], Any] | None]] = {}
        self._providers: dict[str, Callable[[Any], Any]] = {}
        self._lock = threading.Lock()
        manager.register_target(
            Target(
                kind=CONVERSATION,
                name=CONVERSATION_TARGET,
                description="Runs a new agent conversation on `prompt` with the named tools; its final answer is "
                "the result. It waits for remote work without holding a worker.",
                inputs={
                    "prompt": {"type": "string", "description": "What the new agent should do."},
                    "tools": {
                        "type": "array",
                        "description": "Names of registered tools it may use, e.g. ['remote_execute'].",
                        "nullable": True,
                    },
                    "setup": {
                        "type": "string",
                        "description": "(internal) model and agent factory",
                        "nullable": True,
                    },
                },
                call=self._run,
            )
        )

    def add_tool_provider(self, name: str, factory: Callable[[Any], Any]) -> None:
        """Make tool ``name`` available to conversations as ``factory(manager)`` (subsystems bind their
        tools to the manager this way, e.g. the remote bridge's ``remote_execute``)."""
        with self._lock:
            self._providers[name] = factory

    def create_task(
        self,
        prompt: str,
        tools: Sequence[Any] | None,
        model: Any,
        agent_factory: Callable[[], Any] | None,
        submit_options: dict[str, Any],
    ) -> str:
        """``TaskManager.create_task``: ``submit_options`` are ``submit``'s (timeout, retries, after)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise TaskValidationError("create_task needs a non-empty prompt string.")
        names = [self._tool_name(tool) for tool in tools or ()]
        arguments: dict[str, Any] = {"prompt": prompt, "tools": names}
        if model is not None or agent_factory is not None:
            key = uuid.uuid4().hex[:12]
            with self._lock:
                self._setups[key] = (model, agent_factory)
            arguments["setup"] = key
        return self.manager.submit(CONVERSATION, CONVERSATION_TARGET, arguments, **submit_options)

    def _tool_name(self, tool: Any) -> str:
        if isinstance(tool, str):
            return tool
        name = getattr(tool, "name", None)
        if not name:
            raise TaskValidationError(
                f"create_task tools must be smolagents tools or tool names, got {tool!r:.60}"
            )
        if name == "remote_execute":
            self.manager.extension(
                "remote"
            )  # the seed's remote_execute: the manager's own bound tool is used
        elif not any(t.name == name for t in self.manager.targets("tool")):
            self.manager.register_tool(tool)
        return name

    def _resolve_tools(self, names: Sequence[str]) -> list[Any]:
        tools = []
        for name in names:
            provider = self.manager.tool_provider(name)
            if name not in self._providers and provider is not None:
                self.manager.extension(provider)  # it adds its tool with add_tool_provider
        by_name = {t.name: t.obj for t in self.manager.targets("tool")}
        for name in names:
            if name in self._providers:
                tools.append(self._providers[name](self.manager))
            elif name in by_name:
                tools.append(by_name[name])
            else:
                known = ", ".join(sorted([*by_name, *self._providers]))
                raise TaskValidationError(f"Unknown tool {name!r} for a conversation. Known tools: {known}.")
        return tools

    def _build_agent(self, tools: list[Any], setup: str | None) -> Any:
        model, factory = self._setups.pop(setup, (None, None)) if setup else (None, None)
        if factory is not None:
            agent = factory()
            for tool in tools:
                agent.tools[tool.name] = tool
            return agent
        model = model or self.default_model
        if model is None:
            from .config import model_from_env

            model = model_from_env()
        if model is None:
            raise RuntimeError(
                "No model for the conversation: pass model=..., run it from an AsyncAgent, or set API_KEY, "
                "BASE_URL and MODEL_ID in .env."
            )
        from smolagents import CodeAgent

        from ..core.agent_runtime import install_context_executor

        agent = CodeAgent(tools=tools, model=model, **self.agent_kwargs)
        install_context_executor(agent)
        return agent

    def _run(self, arguments: dict[str, Any]) -> Any:
        task = current_task.get()
        if task is None:
            raise RuntimeError("a conversation runs only as a task")
        agent = self._build_agent(self._resolve_tools(arguments.get("tools") or []), arguments.get("setup"))
        return Conversation(self.manager, task[1], agent, arguments["prompt"]).run_first_turn()
