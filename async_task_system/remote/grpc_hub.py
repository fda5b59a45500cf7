"""The gRPC hub's import path: :class:`GrpcHub` lives in :mod:`.transports.grpc_hub` (needs ``grpcio``, ``protobuf``)."""

from __future__ import annotations

from .transports.grpc_hub import GrpcHub

__all__ = ["GrpcHub"]
