"""Framing of the JSON-lines protocol: lines read within a byte bound and a silence limit, and the
first line of an HTTP client told apart from a request."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

from ..core.compat import TIMEOUT_ERRORS

__all__ = ["LineReader", "is_http_request", "line_too_long_message"]

# The start of an HTTP request line (RFC 9112 section 3): a method, then a target. JSON never
# starts like this, so such a first line is an HTTP client, possibly a web page in a browser.
_HTTP_REQUEST_LINE = re.compile(
    rb"^(GET|HEAD|POST|PUT|DELETE|CONNECT|OPTIONS|TRACE|PATCH|PRI) +(/|\*|[a-z]+://)", re.I
)


def is_http_request(line: bytes) -> bool:
    """Whether ``line`` starts like an HTTP request (a browser or another HTTP client)."""
    return _HTTP_REQUEST_LINE.match(line) is not None


def line_too_long_message(limit: int, authenticated: bool) -> str:
    """The ``connection_error`` message for a line over ``limit`` bytes."""
    return (
        f"Line longer than the limit of {limit} bytes; the connection "
        "is closed. Send smaller inputs (the server's --max-line-bytes sets the limit"
        + (
            "; before the token is checked, --max-auth-line-bytes: send "
            '{"token": "<token>"} as a line of its own first).'
            if not authenticated
            else ")."
        )
    )


class LineReader:
    """Splits a stream into lines with its own buffer rather than ``StreamReader.readline``: the
    limit can change between lines (small until the token is checked), and nothing past the limit
    is buffered."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self._buffer = bytearray()

    async def read_line(self, limit: int, silence: float, busy: Callable[[], bool]) -> bytes | None:
        """The next line, or ``None`` at EOF.

        Raises ``ValueError(limit)`` when a line outgrows ``limit`` bytes, and a timeout error when
        nothing arrives for ``silence`` seconds while ``busy()`` is false (answers still coming are
        not silence).
        """
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                if end >= limit:
                    raise ValueError(limit)
                line = bytes(self._buffer[: end + 1])
                del self._buffer[: end + 1]
                return line
            if len(self._buffer) > limit:
                raise ValueError(limit)
            try:
                chunk = await asyncio.wait_for(self.reader.read(65536), silence)
            except TIMEOUT_ERRORS:
                if busy():
                    continue
                raise
            if not chunk:
                return None
            self._buffer += chunk
