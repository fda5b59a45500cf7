"""Seed 000's ``RemoteExecutionHandler``: feed frames from your own WebSocket into the task system.

Use it when you bring your own WebSocket (or any message channel) instead of the hub::

    handler = RemoteExecutionHandler(task_manager)
    websocket.on_message = handler.on_websocket_message   # async, as in seed 000

Each message is a result frame ``{"request_id", "success", "result", "error"}`` (a ``log`` frame
``{"type": "log", "request_id", "stream", "line"}`` is recorded too). A malformed or oversized
message is logged and counted in ``rejected``; it never raises into your receive loop.
"""

from __future__ import annotations

import logging
from typing import Any

from .protocol import ProtocolError, check_log, check_result, decode

__all__ = ["RemoteExecutionHandler"]

logger = logging.getLogger(__name__)


class RemoteExecutionHandler:
    """Routes remote responses to ``task_manager.handle_websocket_response``.

    Args:
        task_manager: the :class:`~async_task_system.core.manager.TaskManager` whose tasks wait.
        max_message_bytes: larger messages are rejected unread.
    """

    def __init__(self, task_manager: Any, *, max_message_bytes: int = 1 << 20) -> None:
        self.task_manager = task_manager
        task_manager.remote_manager.manual_delivery = True  # your WebSocket delivers the requests
        self.max_message_bytes = max_message_bytes
        self.accepted = 0
        self.rejected = 0
        self.last_error: str | None = None

    async def on_websocket_message(self, message: str | bytes | dict[str, Any]) -> bool:
        """Seed 000's listener (a coroutine): handle one message; True if it resolved a pending request."""
        return self.handle_message(message)

    def handle_message(self, message: str | bytes | dict[str, Any]) -> bool:
        """Synchronous twin of :meth:`on_websocket_message` for callback-style WebSocket clients."""
        try:
            if isinstance(message, (str, bytes, bytearray)) and len(message) > self.max_message_bytes:
                raise ProtocolError(
                    f"message of {len(message)} bytes exceeds the limit of {self.max_message_bytes}"
                )
            data = decode(message)
            remote = self.task_manager.remote_manager
            if data.get("type") == "log":
                log = check_log(data)
                return remote.handle_remote_log(log["request_id"], log["stream"], log["line"])
            if data.get("type", "result") != "result":
                raise ProtocolError(f"unexpected message type {data.get('type')!r}: expected a result")
            fields = check_result(data)
        except ProtocolError as exc:
            self.rejected += 1
            self.last_error = str(exc)
            logger.warning("rejected a remote message: %s", exc)
            return False
        if fields["error_type"] is not None:
            handled = remote.complete(
                fields["request_id"],
                fields["success"],
                fields["result"],
                fields["error"],
                fields["error_type"],
            )
        else:
            handled = self.task_manager.handle_websocket_response(
                fields["request_id"], fields["success"], fields["result"], fields["error"]
            )
        if handled:
            self.accepted += 1
        return handled
