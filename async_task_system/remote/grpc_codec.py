"""The gRPC codec's import path: it lives in :mod:`.transports.grpc_codec` (protobuf <-> :mod:`.protocol` frames)."""

from __future__ import annotations

from .transports.grpc_codec import (
    METHOD,
    SERVICE,
    agent_frame,
    agent_message,
    refusal_message,
    server_frame,
    server_message,
)

__all__ = [
    "SERVICE",
    "METHOD",
    "agent_message",
    "agent_frame",
    "server_message",
    "server_frame",
    "refusal_message",
]
