"""The worker's side of a hub connection: the :class:`Connection` seam, its errors, and the WebSocket client.

Each transport delivers and takes :mod:`..protocol` frames, translating at its edge; the gRPC
client is :mod:`.grpc_connection` (imported only for ``grpc://`` addresses).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, Protocol

from ...core.errors import AsyncTaskSystemError
from ..protocol import decode, encode
from .config import WorkerConfig

__all__ = ["BadAddress", "Connection", "ConnectionEnded", "TokenRefused", "ws_connect"]


class ConnectionEnded(AsyncTaskSystemError):
    """The connection to the hub failed or closed; the daemon reconnects."""


class TokenRefused(AsyncTaskSystemError):
    """The hub refused the token; the daemon exits (:data:`EXIT_TOKEN_REFUSED`)."""


class BadAddress(AsyncTaskSystemError):
    """``--hub`` is not a usable address; the daemon exits with code 2."""


class Connection(Protocol):
    """One connection to a hub, in :mod:`.protocol` frames (each transport translates at its edge)."""

    async def send(self, frame: dict[str, Any]) -> None:
        """Send one frame; ConnectionEnded or TokenRefused when the connection is gone."""

    async def recv(self) -> dict[str, Any]:
        """The next frame; ProtocolError for one that cannot be read, ConnectionEnded at the end."""

    async def close(self, reason: str) -> None:
        """Close the connection (the worker is stopping)."""

    def size(self, frame: dict[str, Any]) -> int:
        """Bytes ``frame`` takes on the wire (to fit results to the hub's limit)."""


class _WsConnection:
    """A :class:`Connection` over a ``websockets`` client connection: JSON text frames."""

    def __init__(self, ws: Any, closed: type[BaseException]) -> None:
        self.ws = ws
        self._closed = closed

    async def send(self, frame: dict[str, Any]) -> None:
        try:
            await self.ws.send(encode(frame))
        except self._closed as exc:
            raise ConnectionEnded(str(exc)) from None

    async def recv(self) -> dict[str, Any]:
        try:
            raw = await self.ws.recv()
        except self._closed as exc:
            raise ConnectionEnded(str(exc)) from None
        return decode(raw)

    async def close(self, reason: str) -> None:
        await self.ws.close(1001, reason)

    def size(self, frame: dict[str, Any]) -> int:
        return len(encode(frame).encode("utf-8"))


@contextlib.asynccontextmanager
async def ws_connect(config: WorkerConfig) -> AsyncIterator[Connection]:
    """Open a WebSocket connection to ``config.hub`` with the token in ``Authorization``."""
    try:
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise BadAddress(
            "the worker needs the websockets library (>= 15): pip install 'async_task_system[remote]'"
        ) from None
    try:
        client = connect(
            config.hub,
            additional_headers={"Authorization": f"Bearer {config.token}"},
            proxy=None,
            open_timeout=10,
            max_size=None,
            close_timeout=2,
            compression=None,  # as the hub: no per-message deflate
        )
        ws = await client.__aenter__()
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status in (401, 403):
            raise TokenRefused(f"HTTP {status}") from None
        raise ConnectionEnded(f"the hub answered HTTP {status}") from None
    except InvalidURI as exc:
        raise BadAddress(str(exc)) from None
    except ConnectionClosed as exc:
        raise ConnectionEnded(str(exc)) from None
    try:
        yield _WsConnection(ws, ConnectionClosed)
    finally:
        with contextlib.suppress(Exception):
            await client.__aexit__(None, None, None)
