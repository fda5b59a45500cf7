"""The gRPC worker client's import path: it lives in :mod:`.worker.grpc_connection` (needs ``grpcio``)."""

from __future__ import annotations

from .worker.grpc_connection import GrpcConnection, grpc_connect, grpc_target

__all__ = ["GrpcConnection", "grpc_connect", "grpc_target"]
