"""OpenTelemetry context across threads and processes (filled in by the tracing issue)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["task_span"]


@contextlib.contextmanager
def task_span(info: Any, attempt: int) -> Iterator[None]:
    """Run one task attempt inside its own span (no-op until tracing is implemented)."""
    yield
