"""The WebSocket hub's import path: :class:`RemoteHub` lives in :mod:`.transports.ws_hub` (needs ``websockets``)."""

from __future__ import annotations

from .transports.ws_hub import RemoteHub

__all__ = ["RemoteHub"]
