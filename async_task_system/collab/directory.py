"""The directory of agents by name: in process a protocol, across processes a remote endpoint (A2A)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from .messages import CollaborationEndpoint, CollaborationError


class AgentDirectory:
    """Agents by name: ``register(name, endpoint)``; ``resolve(name)`` or an error listing who exists."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._agents: dict[str, CollaborationEndpoint] = {}
        self._listeners: list[Callable[[str], None]] = []

    def register(self, name: str, endpoint: CollaborationEndpoint) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"an agent name must be a non-empty string, got {name!r}")
        if not isinstance(endpoint, CollaborationEndpoint):
            raise TypeError(f"{endpoint!r} has no deliver(message, reply) and cancel(request_id)")
        with self._lock:
            self._agents[name] = endpoint
            listeners = list(self._listeners)
        for listener in listeners:
            listener(name)

    def unregister(self, name: str) -> None:
        with self._lock:
            self._agents.pop(name, None)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._agents)

    def resolve(self, name: str) -> CollaborationEndpoint:
        with self._lock:
            endpoint = self._agents.get(name)
        if endpoint is None:
            known = ", ".join(self.names()) or "none are registered"
            raise CollaborationError("unknown_agent", f"No agent named {name!r}. Known agents: {known}.")
        return endpoint

    def add_listener(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(name)`` for every agent registered from now on (and now for those that are)."""
        with self._lock:
            self._listeners.append(callback)
            names = list(self._agents)
        for name in names:
            callback(name)


_default_directory = AgentDirectory()


def default_directory() -> AgentDirectory:
    """The process's directory, used when a protocol is given none."""
    return _default_directory
