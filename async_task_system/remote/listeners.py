"""A list of callbacks that any thread may add to, remove from and call, outside the owner's lock."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Listeners"]


class Listeners:
    """Callbacks called in the order added; one that raises is logged and the others still run.

    Args:
        what: names the callbacks in the log line of a failure (``"remote log listener"``); it is
            formatted with the call's arguments (``"worker {0} listener"``).
        log: the logger of that line (the owner's).
    """

    def __init__(self, what: str, log: logging.Logger) -> None:
        self.what = what
        self.log = log
        self._lock = threading.Lock()
        self._subscribed: tuple[Callable[..., None], ...] = ()

    def add(self, callback: Callable[..., None]) -> Callable[[], None]:
        """Add ``callback``; returns a function that removes it (harmless to call twice)."""
        with self._lock:
            self._subscribed = (*self._subscribed, callback)

        def remove() -> None:
            with self._lock:
                if callback in self._subscribed:
                    index = self._subscribed.index(callback)
                    self._subscribed = self._subscribed[:index] + self._subscribed[index + 1 :]

        return remove

    def __bool__(self) -> bool:
        return bool(self._subscribed)

    def __call__(self, *args: Any) -> None:
        """Call every callback with ``args``; exceptions are logged, never raised."""
        for callback in self._subscribed:
            try:
                callback(*args)
            except Exception:
                self.log.exception("%s failed", self.what.format(*args))
