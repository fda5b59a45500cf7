"""Remote execution (seeds 000 and 002): suspend tasks on remote results, a WebSocket hub, a worker daemon.

``bridge`` (request ids, futures, deadlines, task transitions), ``protocol``, ``router`` (worker
registry and routing, no I/O) and ``runner`` (sandboxed scripts) need nothing beyond the core; the
hub (the WebSocket transport) and the worker daemon need the ``remote`` extra (``websockets``),
the tool needs smolagents; they are imported on first use, so a worker machine loads neither
smolagents nor litellm.
"""

from __future__ import annotations

import importlib
from typing import Any

from .bridge import (
    REMOTE_TARGET_NAME,
    RemoteExecutionError,
    RemoteExecutionManager,
    RemoteOutcome,
    RemoteRequest,
    RemoteTransport,
    RemoteUnavailable,
    UnknownRequestError,
)

__all__ = [
    "REMOTE_TARGET_NAME",
    "RemoteExecuteTool",
    "RemoteExecutionError",
    "RemoteExecutionHandler",
    "RemoteExecutionManager",
    "RemoteHub",
    "RemoteOutcome",
    "RemoteRequest",
    "RemoteTransport",
    "RemoteUnavailable",
    "UnknownRequestError",
    "attach_remote",
]


_LAZY = {
    "RemoteHub": "hub",  # needs websockets
    "RemoteExecuteTool": "tools",  # needs smolagents
    "attach_remote": "tools",
    "RemoteExecutionHandler": "handler",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
