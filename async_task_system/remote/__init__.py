"""Remote execution (seeds 000 and 002): suspend tasks on remote results, a WebSocket hub, a worker daemon.

``bridge`` (request ids, futures, deadlines, task transitions) needs nothing beyond the core; the
hub and the worker need the ``remote`` extra (``websockets``) and are imported on first use.
"""

from __future__ import annotations

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
from .handler import RemoteExecutionHandler
from .tools import RemoteExecuteTool, attach_remote

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


def __getattr__(name: str) -> Any:
    if name == "RemoteHub":
        from .hub import RemoteHub

        return RemoteHub
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
