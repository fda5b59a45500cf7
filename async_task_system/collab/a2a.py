"""A2A adapter: serve a :class:`~async_task_system.collab.collaboration.CollaborationProtocol` as an A2A agent,
and call remote A2A agents as collaborators. Built on the official ``a2a-sdk`` (1.x, JSON-RPC binding).

This is also the collaboration protocol's transport between processes: :class:`A2AServer` puts a
protocol on HTTP (``127.0.0.1`` and a bearer token by default), and :class:`A2AAgent` is a
directory entry for a remote agent, so ``directory.register("billing", A2AAgent(url, token))``
lets any agent of this process ``request_collaboration(..., "billing", ...)`` as if it were local.

Mapping (one table, both directions; ``TO_A2A`` / ``FROM_A2A``):

    ours (TaskStatus)   A2A (TaskState)        collaboration message
    PENDING             submitted              (request accepted)
    RUNNING             working                PROGRESS while it runs
    WAITING_REMOTE      working                (our handler waits on other work; A2A has no such state)
    --                  input-required         a remote agent asking for input: our request fails,
                        auth-required          error_type "input_required" (a tool call takes no dialogue)
    COMPLETED           completed              RESPONSE success (the result is an artifact "result")
    FAILED              failed / rejected      RESPONSE error (error_type kept in the status message)
    CANCELLED           canceled               CANCEL -> RESPONSE error "cancelled"

Wire details. A request is a user message whose part is JSON text (media type
``application/json``) ``{"tool": ..., "parameters": {...}}`` (a data part is accepted too, for
foreign clients; JSON text keeps integers integers, which ``google.protobuf.Value`` does not) and
whose metadata ``"ats"`` carries our message (id, from_agent, deadline). PROGRESS is a ``working``
status update whose message holds ``{"fraction", "message"}``; the result is an artifact named
``result`` holding JSON text. Hostile input: the HTTP front is :mod:`.http_front`'s (shared with
the platform): a request head must arrive within ``header_timeout``, half-open connections make
room for real ones, ``Content-Length`` with ``Transfer-Encoding`` is refused (400), the token is
checked before the body is read, and a body over ``max_body_bytes`` (declared or chunked) gets 413.

The parts: :mod:`.a2a_wire` (the state table, JSON parts), :mod:`.a2a_server` (A2AServer,
agent_card) and :mod:`.a2a_client` (A2AAgent). This module gathers their names.
"""

from __future__ import annotations

from .a2a_client import A2AAgent
from .a2a_server import A2AServer, agent_card
from .a2a_wire import (  # noqa: F401 (JSON_MEDIA, RESULT_ARTIFACT: importable from here before the split)
    FROM_A2A,
    JSON_MEDIA,
    RESULT_ARTIFACT,
    TO_A2A,
)

__all__ = ["A2AAgent", "A2AServer", "FROM_A2A", "TO_A2A", "agent_card"]
