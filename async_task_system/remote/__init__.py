"""Remote execution (seeds 000 and 002): suspend tasks on remote results, WebSocket and gRPC hubs, a worker daemon.

``requests`` (the request data), ``pending`` (request ids, futures, deadlines), ``bridge`` (task
transitions), ``protocol``, ``router`` and ``routing`` (worker registry and routing, no I/O),
``transports.hub_base`` (what both hubs share) and ``runner`` (sandboxed scripts) need nothing
beyond the core; the WebSocket hub and the worker daemon need the ``remote`` extra
(``websockets``), the gRPC hub and ``--hub grpc://`` workers the ``grpc`` extra (``grpcio``,
``protobuf``; code generated from ``proto/`` into ``_proto``), the tool needs smolagents; they are
imported on first use, so a worker machine loads neither smolagents nor litellm (nor grpc unless
it connects over gRPC)."""

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
    "GrpcHub",
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
    "GrpcHub": "grpc_hub",  # needs grpcio and protobuf
    "RemoteExecuteTool": "execute_tool",  # needs smolagents
    "attach_remote": "tools",
    "RemoteExecutionHandler": "handler",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
