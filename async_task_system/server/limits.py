"""The server's limits: their defaults, connections counted in all and per client address, requests
running per client address, and the connection limit fitted to the process's file descriptors."""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable

__all__ = [
    "DEFAULT_AUTH_TIMEOUT",
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_AUTH_LINE_BYTES",
    "DEFAULT_MAX_CONCURRENT_REQUESTS",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_CONNECTIONS_PER_CLIENT",
    "DEFAULT_MAX_HISTORY",
    "DEFAULT_MAX_HISTORY_CHARS",
    "DEFAULT_MAX_LINE_BYTES",
    "DEFAULT_MAX_REQUESTS_PER_CONNECTION",
    "DEFAULT_MAX_RUNNING_PER_CLIENT",
    "DEFAULT_MAX_RUNNING_PER_CONNECTION",
    "DEFAULT_REQUEST_TIMEOUT",
    "ClientSlots",
    "client_of",
    "fit_connections_to_file_limit",
    "refusal",
]

logger = logging.getLogger("async_task_system.server")

DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024
# The defaults of the server's limits (AgentServer's keyword arguments, ``async-agent serve`` flags).
DEFAULT_MAX_CONCURRENT_REQUESTS = 64
DEFAULT_MAX_REQUESTS_PER_CONNECTION = 256
DEFAULT_MAX_RUNNING_PER_CONNECTION = 8
DEFAULT_MAX_RUNNING_PER_CLIENT = 16
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_MAX_CONNECTIONS_PER_CLIENT = 32
DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_AUTH_TIMEOUT = 10.0
DEFAULT_MAX_AUTH_LINE_BYTES = 64 * 1024
DEFAULT_MAX_HISTORY = 50
DEFAULT_MAX_HISTORY_CHARS = 4000
DEFAULT_REQUEST_TIMEOUT = 300.0


def client_of(peername: object) -> tuple[str, str]:
    """(peer, client) of a socket's ``peername``: ``"HOST:PORT"``, and the address limits per client
    count by (the host)."""
    peer = (
        f"{peername[0]}:{peername[1]}"
        if isinstance(peername, tuple) and len(peername) >= 2
        else str(peername)
    )
    return peer, peer.rpartition(":")[0]


def refusal(open_connections: int, from_client: int, max_connections: int, max_per_client: int) -> str | None:
    """Why one more connection is refused (the message for the client), or None to accept it."""
    if open_connections >= max_connections:
        return "Too many connections; try again later."
    if from_client >= max_per_client:
        return "Too many connections from your address; try again later."
    return None


class ClientSlots:
    """Requests running (or pending for a slot) per client address, over all of a server's
    connections; a released slot is handed to ``on_release(client)`` to start waiting requests."""

    def __init__(self, limit: int, on_release: Callable[[str], None]) -> None:
        self.limit = max(1, int(limit))
        self._running: collections.Counter[str] = collections.Counter()
        self._on_release = on_release

    def available(self, client: str) -> bool:
        """Whether ``client`` may start one more request."""
        return self._running[client] < self.limit

    def take(self, client: str) -> None:
        self._running[client] += 1

    def release(self, client: str) -> None:
        """A request of ``client`` ended: its slot is free for the next waiting one."""
        self._running[client] -= 1
        if self._running[client] <= 0:
            del self._running[client]
        self._on_release(client)


def fit_connections_to_file_limit(max_connections: int) -> tuple[int, int]:
    """``max_connections`` lowered below the process's file-descriptor limit (``ulimit -n``), and the
    listen backlog.

    Silent connections must meet the connection limit before they use up the descriptors the
    server needs to accept, refuse, and run requests (temp files, sockets of tools). The
    backlog is also how many connections asyncio accepts in one go before any is refused, so
    it stays within the descriptors kept in reserve.
    """
    try:
        import resource

        soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # no such limit here (Windows)
        return max_connections, 100
    if soft == resource.RLIM_INFINITY:
        return max_connections, 100
    reserve = max(32, soft // 4)  # a quarter (at least 32) stays for everything else
    room = max(1, soft - reserve)
    if max_connections > room:
        logger.warning(
            "max_connections lowered from %s to %s to fit the file-descriptor limit of %s (ulimit -n)",
            max_connections,
            room,
            soft,
        )
        max_connections = room
    return max_connections, min(100, reserve // 2)
