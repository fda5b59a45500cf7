"""The worker daemon's gRPC client: ``async-agent worker --hub grpc://HOST:PORT``.

Only I/O lives here: one ``AgentService.Connect`` stream per connection, the token as call
metadata (``authorization: Bearer <token>``), protobuf translated to :mod:`.protocol` frames at
the edge (:mod:`.grpc_codec`). Registration, heartbeats and job execution are the daemon's
(:class:`~.daemon.WorkerDaemon`), the same for both transports. Imported only for ``grpc://``
addresses, so a WebSocket worker never loads grpc.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import grpc

from .._proto import agent_pb2
from ..transports.grpc_codec import METHOD, agent_message, server_frame
from .config import WorkerConfig
from .connection import BadAddress, Connection, ConnectionEnded, TokenRefused

__all__ = ["GrpcConnection", "grpc_connect", "grpc_target"]

_RECEIVE_LIMIT = 64 * 1024 * 1024  # bytes of one message from the hub (a task request with its script)


def grpc_target(hub: str) -> str:
    """``grpc://HOST:PORT`` -> ``HOST:PORT`` (BadAddress when it is not one)."""
    parts = urlsplit(hub)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "grpc" or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise BadAddress(f"a gRPC hub address is grpc://HOST:PORT, got {hub!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port}"


class GrpcConnection:
    """A :class:`~.connection.Connection` over one ``Connect`` stream."""

    def __init__(self, call: Any) -> None:
        self.call = call

    async def _ended(self, exc: BaseException) -> BaseException:
        """The exception the daemon should see for a failed stream."""
        code = exc.code() if isinstance(exc, grpc.aio.AioRpcError) else None
        if code is None and self.call.done():
            code = await self.call.code()
        if code == grpc.StatusCode.UNAUTHENTICATED:
            return TokenRefused("gRPC status UNAUTHENTICATED")
        details = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
        return ConnectionEnded(f"gRPC status {code.name if code else 'unknown'}: {details}")

    async def send(self, frame: dict[str, Any]) -> None:
        try:
            await self.call.write(agent_message(frame))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            raise await self._ended(exc) from None

    async def recv(self) -> dict[str, Any]:
        try:
            message = await self.call.read()
        except grpc.aio.AioRpcError as exc:
            raise await self._ended(exc) from None
        if message is grpc.aio.EOF:
            raise await self._ended(ConnectionEnded("the hub closed the stream"))
        return server_frame(message)

    async def close(self, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self.call.done_writing()
        self.call.cancel()

    def size(self, frame: dict[str, Any]) -> int:
        return agent_message(frame).ByteSize()


@contextlib.asynccontextmanager
async def grpc_connect(config: WorkerConfig) -> AsyncIterator[Connection]:
    """Open a ``Connect`` stream to ``config.hub`` (waits at most 10 s for the channel)."""
    channel = grpc.aio.insecure_channel(
        grpc_target(config.hub),
        options=[
            ("grpc.max_receive_message_length", _RECEIVE_LIMIT),
            ("grpc.max_send_message_length", -1),
            ("grpc.enable_retries", 0),
        ],
    )
    try:
        try:
            await asyncio.wait_for(channel.channel_ready(), 10)
        except (asyncio.TimeoutError, TimeoutError):
            raise ConnectionEnded(f"no gRPC hub answered at {config.hub} within 10 s") from None
        connect = channel.stream_stream(
            METHOD,
            request_serializer=agent_pb2.AgentMessage.SerializeToString,
            response_deserializer=agent_pb2.ServerMessage.FromString,
        )
        call = connect(metadata=(("authorization", f"Bearer {config.token}"),))
        try:
            yield GrpcConnection(call)
        finally:
            call.cancel()
    finally:
        await channel.close(grace=None)
