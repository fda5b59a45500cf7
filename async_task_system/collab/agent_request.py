"""The requester's task kind ``agent_request`` and the ``ask_agent`` tool (the ``collaboration`` extension).

An agent's LLM writes ``submit_task("agent_request", "<agent>", {"tool": ..., "parameters": ...})``:
the task waits in WAITING_REMOTE (no thread, no slot), its progress follows the remote handler's,
cancelling it sends CANCEL, and the RESPONSE's payload is its result. ``ask_agent`` does the same in
one blocking call.
"""

from __future__ import annotations

import threading
import uuid
from functools import partial
from typing import Any

from ..core.manager import TaskManager, get_current_task_id
from ..core.targets import Target
from ..core.tasks import TaskKind
from .directory import AgentDirectory
from .messages import DEFAULT_TIMEOUT, CollaborationError, CollaborationMessage
from .protocol import CollaborationProtocol
from .requesting import RequestHandle

AGENT_REQUEST = TaskKind.register(
    "agent_request",
    "ask another named agent to run one of its tools: {'tool': ..., 'parameters': {...}}",
    aliases=("ask_agent",),
)


class AgentRequests:
    """The ``collaboration`` extension of a manager: the ``agent_request`` task kind and the ``ask_agent`` tool.

    Each agent in the directory is a target of kind ``agent_request``, so the LLM writes
    ``submit_task("agent_request", "<agent>", {"tool": ..., "parameters": {...}, "timeout": 60})``.
    The task suspends (WAITING_REMOTE: no thread, no slot) until the RESPONSE, whose result becomes
    the task's; an error RESPONSE fails it with the response's error type. Requests go out from
    the manager's own :class:`CollaborationProtocol` if one was made on it, else from an anonymous
    one that is in no directory (replies need no address).
    """

    def __init__(self, manager: TaskManager) -> None:
        self.manager = manager
        self.protocol: CollaborationProtocol | None = None
        self._watched: set[int] = set()
        self._lock = threading.Lock()

    def adopt(self, protocol: CollaborationProtocol) -> None:
        """The manager's agent has a protocol: requests go out in its name; its directory's agents become targets."""
        with self._lock:
            if self.protocol is None:
                self.protocol = protocol
        self.watch(protocol.directory)

    def requester(self) -> CollaborationProtocol:
        with self._lock:
            protocol = self.protocol
        if protocol is None:
            protocol = CollaborationProtocol(f"manager-{uuid.uuid4().hex[:8]}", self.manager, register=False)
        return protocol

    def watch(self, directory: AgentDirectory) -> None:
        """Make every agent of ``directory`` (now and later) a target of kind ``agent_request``."""
        with self._lock:
            if id(directory) in self._watched:
                return
            self._watched.add(id(directory))
        directory.add_listener(self._add_target)

    def _add_target(self, agent: str) -> None:
        self.manager.register_target(
            Target(
                kind=AGENT_REQUEST,
                name=agent,
                description=f"Asks agent {agent!r} to run one of its tools; the result is its answer.",
                inputs={
                    "tool": {"type": "string", "description": "the other agent's tool"},
                    "parameters": {"type": "object", "description": "its arguments", "nullable": True},
                    "timeout": {
                        "type": "number",
                        "description": "seconds to wait (default 60)",
                        "nullable": True,
                    },
                },
                call=partial(self._start, agent),
                runs_inline=True,
            )
        )

    def _start(self, agent: str, arguments: dict[str, Any]) -> None:
        task_id = get_current_task_id()
        if task_id is None:
            raise RuntimeError("an agent_request runs only as a task")
        handle: list[RequestHandle] = []
        suspension = self.manager.suspend(task_id, on_abandon=lambda _error: handle and handle[0].cancel())

        def done(answer: CollaborationMessage) -> None:
            content = answer.content
            if isinstance(content, dict) and content.get("status") == "success":
                suspension.complete(content.get("result"))
            else:
                error = CollaborationError.from_content(content)
                suspension.fail(
                    error.error_type, str(error), retryable=error.error_type in ("busy", "transport")
                )

        def progress(fraction: float | None, message: str | None) -> None:
            self.manager.report_progress(task_id, fraction, message)

        handle.append(
            self.requester().start_request(
                agent,
                arguments["tool"],
                arguments.get("parameters"),
                arguments.get("timeout"),
                done,
                progress,
            )
        )
        if not suspension.active:  # cancelled while the request was being sent
            handle[0].cancel()


def ask_agent_tool(task_manager: TaskManager) -> Any:
    """The ``ask_agent(agent, tool, parameters, timeout)`` smolagents tool, bound to a manager."""
    from smolagents import Tool

    requests: AgentRequests = task_manager.extension("collaboration")

    class AskAgentTool(Tool):
        name = "ask_agent"
        description = (
            "Asks another named agent to run one of its tools and returns its answer (blocks until then, at most "
            "`timeout` seconds). An unknown agent or tool fails with the list of known ones. For a request that "
            "runs in the background use submit_task('agent_request', agent, {'tool': ..., 'parameters': {...}})."
        )
        inputs = {
            "agent": {"type": "string", "description": "the other agent's name"},
            "tool": {"type": "string", "description": "its tool to run"},
            "parameters": {"type": "object", "description": "the tool's arguments", "nullable": True},
            "timeout": {"type": "number", "description": "seconds to wait (default 60)", "nullable": True},
        }
        output_type = "any"

        def forward(
            self, agent: str, tool: str, parameters: dict | None = None, timeout: float | None = None
        ) -> Any:
            return requests.requester().ask(agent, tool, parameters, timeout or DEFAULT_TIMEOUT)

    return AskAgentTool()
