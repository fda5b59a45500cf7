"""What differs between the Python versions the package supports (3.10 and later)."""

from __future__ import annotations

import asyncio
import concurrent.futures

__all__ = ["TIMEOUT_ERRORS"]

TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (
    TimeoutError,
    asyncio.TimeoutError,
    concurrent.futures.TimeoutError,
)
"""Catch these where a wait can time out. Before Python 3.11, ``asyncio.wait_for`` (and so the
websockets calls built on it) raises ``asyncio.TimeoutError`` and ``Future.result(timeout)``
raises ``concurrent.futures.TimeoutError``, neither of which is the builtin ``TimeoutError``;
from 3.11 on all three are the builtin."""
