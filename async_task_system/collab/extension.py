"""The collaboration extension's wiring: its factory, and making an agent a named collaborator."""

from __future__ import annotations

import uuid
from typing import Any

from ..core.manager import TaskManager
from .agent_request import AgentRequests, ask_agent_tool
from .directory import AgentDirectory, default_directory
from .protocol import CollaborationProtocol

COLLABORATION_GUIDANCE = """\
Other agents: submit_task('agent_request', '<agent name>', {{'tool': ..., 'parameters': {{...}}}}) asks another agent to
run one of its tools in the background (the task's result is its answer; check_task shows its progress), and
ask_agent(agent, tool, parameters) does it in one blocking call. Known agents: {agents}."""


def attach_collaboration(
    target: Any, name: str | None = None, directory: AgentDirectory | None = None, **options: Any
) -> CollaborationProtocol:
    """Make an ``AsyncAgent`` (or a ``TaskManager``) a named agent: its protocol, and the ``ask_agent`` tool.

    ``name`` registers it in ``directory`` (default: the process's) so others can ask it for its
    handlers (``protocol.register_handler``); without a name it only asks. The agent's LLM gets
    ``ask_agent`` and a paragraph of guidance naming the known agents; ``agent_request`` tasks go
    out under this protocol's name. ``options`` go to :class:`CollaborationProtocol`.
    """
    manager = getattr(target, "task_manager", target)
    if not isinstance(manager, TaskManager):
        raise TypeError(
            f"attach_collaboration expects an AsyncAgent or a TaskManager, got {type(target).__name__}"
        )
    protocol = CollaborationProtocol(
        name or f"agent-{uuid.uuid4().hex[:8]}", manager, directory, register=name is not None, **options
    )
    agent = getattr(target, "agent", None)
    if agent is not None and hasattr(agent, "tools"):
        tool = ask_agent_tool(manager)
        agent.tools[tool.name] = tool
        others = [n for n in protocol.directory.names() if n != protocol.name]
        guidance = COLLABORATION_GUIDANCE.format(agents=", ".join(others) or "none yet")
        instructions = getattr(agent, "instructions", None) or ""
        agent.instructions = f"{instructions}\n{guidance}" if instructions else guidance
    return protocol


def collaboration_extension(task_manager: TaskManager) -> AgentRequests:
    """The factory of the ``collaboration`` extension: watches the default directory, adds ``ask_agent``."""
    requests = AgentRequests(task_manager)
    requests.watch(default_directory())
    try:
        task_manager.extension("conversations").add_tool_provider("ask_agent", ask_agent_tool)
    except LookupError:
        pass
    return requests
