"""Agent-to-agent collaboration (seed 001 §3): REQUEST, RESPONSE, PROGRESS and CANCEL between named agents.

An agent offers tools to other agents through a :class:`CollaborationProtocol`
(``register_handler(tool_name, handler)``); another agent asks for one with
``request_collaboration(from_agent, to_agent, tool_name, parameters, timeout)``. The seed's sketch
never sends a message; here:

* **Delivery.** Agents are found by name in an :class:`AgentDirectory`: in process the entry is
  the receiving protocol itself; across processes it is a remote endpoint (the A2A client of
  :mod:`async_task_system.collab.a2a`, which speaks the A2A protocol over HTTP). Every endpoint has the
  same two calls, ``deliver(message, reply)`` and ``cancel(request_id)``; replies come back through
  ``reply`` as they happen, so a RESPONSE wakes the waiting request (a future or an event, never a
  poll) and PROGRESS reaches the requester while the handler runs.
* **Each request is a task.** The receiving agent runs the handler as a task of its own
  ``TaskManager`` (kind ``collaboration``, named ``<agent>:<tool>``), so it is traced, listed, bounded by the request's
  deadline and cancellable: a CANCEL cancels that task through the manager's public ``cancel``,
  and an ``async`` handler's coroutine is really cancelled (a sync handler sees
  ``cancellation_requested()``). The handler's ``report_progress(...)`` becomes PROGRESS messages.
* **On the requesting side** an agent's LLM writes ``submit_task("agent_request", "<agent>",
  {"tool": ..., "parameters": ...})``: the task waits in WAITING_REMOTE (no thread, no slot), its
  progress follows the remote handler's, cancelling it sends CANCEL, and the RESPONSE's payload
  is its result. The ``ask_agent`` tool does the same in one blocking call.
* **Hostile input is normal input.** A correlation id ties each reply to its request; the
  deadline (absolute, seconds since the epoch) travels with the request and the receiver refuses
  expired work; the inbox is bounded (a full inbox answers ``busy`` at once); an unknown tool is
  answered with the list of known ones; a handler that raises becomes an error response; a
  request nobody answers in time ends with a ``timeout`` error and its handler is cancelled.

Errors in a RESPONSE carry an ``error_type``: ``unknown_agent``, ``unknown_tool``, ``busy``,
``expired``, ``timeout``, ``cancelled``, ``handler_error``, ``bad_request``, ``transport``, ``input_required``
(a remote A2A agent asked for input).

The parts: :mod:`.messages` (the four messages, errors, the endpoint protocol), :mod:`.directory`
(AgentDirectory), :mod:`.serving` (the handler side, kind ``collaboration``), :mod:`.requesting`
(sending requests and waiting for their responses), :mod:`.protocol` (CollaborationProtocol: both
sides of one agent), :mod:`.agent_request` (kind ``agent_request``, the ``ask_agent`` tool) and
:mod:`.extension` (the ``collaboration`` extension's factory, ``attach_collaboration``). This module
gathers their names.
"""

from __future__ import annotations

from .agent_request import AGENT_REQUEST, AgentRequests, ask_agent_tool
from .directory import AgentDirectory, default_directory
from .extension import COLLABORATION_GUIDANCE, attach_collaboration, collaboration_extension
from .messages import (  # noqa: F401 (all importable from here before the split)
    DEFAULT_TIMEOUT,
    ERROR_TYPES,
    MAX_MESSAGE_BYTES,
    CollaborationEndpoint,
    CollaborationError,
    CollaborationMessage,
    MessageType,
    Reply,
    check_size,
    result_of,
)
from .protocol import CollaborationProtocol
from .requesting import Requester, RequestHandle  # noqa: F401
from .serving import COLLABORATION, HandlerDeadlineError, HandlerHost  # noqa: F401

__all__ = [
    "AGENT_REQUEST",
    "COLLABORATION",
    "AgentDirectory",
    "AgentRequests",
    "CollaborationEndpoint",
    "CollaborationError",
    "CollaborationMessage",
    "CollaborationProtocol",
    "MessageType",
    "RequestHandle",
    "ask_agent_tool",
    "attach_collaboration",
    "COLLABORATION_GUIDANCE",
    "collaboration_extension",
    "default_directory",
]
