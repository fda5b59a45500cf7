"""The journal's writer process: database writes off the manager process's GIL.

Binding and executing a journal row costs ~18 us of Python work, on the same GIL as the tasks the
manager runs; at thousands of tasks a second that is what the journal costs. When batches grow
large, the journal hands its rows (tuples of plain values) to this process instead, which opens
the same store and writes them; the manager process only pickles them.

Protocol over the child's stdin and stdout (private pipes, this package at both ends):

* parent -> child: frames of an 8-byte big-endian length and a pickle; the first is the store's
  URL (``str``), each next one a list of rows (:meth:`JournalRecords.write_rows`);
* child -> parent, after each batch: one status byte, ``0`` (committed) or ``1`` followed by a
  4-byte length and the UTF-8 error text. The parent never unpickles what the child sends.

The child exits when its stdin closes (the parent closed it, or died) and runs in its own session,
so a Ctrl-C meant for the parent's terminal does not cut a write short.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.errors import AsyncTaskSystemError

__all__ = ["WriterProcess", "WriterGone", "WriterError"]

_LENGTH = struct.Struct("!Q")
_ERROR_LENGTH = struct.Struct("!I")
_OK, _FAILED = 0, 1
_MAX_ERROR = 4000
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


class WriterGone(AsyncTaskSystemError):
    """The writer process ended (or could not be reached) before it answered."""


class WriterError(AsyncTaskSystemError):
    """The writer process could not write a batch (the database's error, as text)."""


class WriterProcess:
    """The parent's handle on one writer process (one thread uses it at a time)."""

    def __init__(self, url: str) -> None:
        env = dict(os.environ)
        # The child must import this very package, wherever it was imported from here.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            env=env,
            start_new_session=True,
        )
        try:
            self._send(url)
        except WriterGone:
            self.close(1.0)
            raise

    @property
    def pid(self) -> int:
        return self._process.pid

    def write(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Write rows in one transaction; returns once committed. ``WriterError`` if the database
        refused them, ``WriterGone`` if the process ended."""
        self._send(list(rows))
        status = self._read(1)
        if status[0] == _OK:
            return
        (length,) = _ERROR_LENGTH.unpack(self._read(_ERROR_LENGTH.size))
        if length > _MAX_ERROR * 4:
            raise WriterGone(f"the writer process sent a malformed answer ({length} bytes of error)")
        raise WriterError(self._read(length).decode("utf-8", "replace"))

    def kill(self) -> None:
        """End it at once (a write it is in is rolled back by the database)."""
        self._process.kill()

    def close(self, timeout: float) -> None:
        """Close its input (it finishes and exits); kill it if it has not within ``timeout`` seconds."""
        try:
            self._process.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._process.stdout.close()  # type: ignore[union-attr]

    def _send(self, value: Any) -> None:
        payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            _write_all(self._process.stdin, _LENGTH.pack(len(payload)))
            _write_all(self._process.stdin, payload)
        except (BrokenPipeError, ValueError, OSError) as exc:
            raise WriterGone(f"the writer process is gone (exit code {self._process.poll()})") from exc

    def _read(self, size: int) -> bytes:
        data = _read_exactly(self._process.stdout, size)  # type: ignore[arg-type]
        if data is None:
            raise WriterGone(f"the writer process ended (exit code {self._process.wait()})")
        return data


def _write_all(stream: Any, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[stream.write(view) :]


def _read_exactly(stream: Any, size: int) -> bytes | None:
    """``size`` bytes from a raw stream, or ``None`` at its end."""
    chunks = []
    while size:
        chunk = stream.read(size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def main() -> None:
    """The child: open the store named by the first frame, write each next frame's rows, answer."""
    # The pipes are ours alone: whatever else writes to stdout (a library, a warning) goes to stderr.
    stdin = open(os.dup(0), "rb", buffering=0)  # noqa: SIM115 - lives as long as the process
    stdout = open(os.dup(1), "wb", buffering=0)  # noqa: SIM115
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)

    def frame() -> Any:
        header = _read_exactly(stdin, _LENGTH.size)
        if header is None:
            return None
        (length,) = _LENGTH.unpack(header)
        payload = _read_exactly(stdin, length)
        return None if payload is None else pickle.loads(payload)  # from our parent only

    url = frame()
    if url is None:
        return
    from .store import Store  # after the first frame: a parent that gives up costs no import

    store = Store(url, upgrade=False)
    try:
        while (rows := frame()) is not None:
            try:
                store.journal.write_rows(rows)
            except Exception as exc:
                text = f"{type(exc).__name__}: {exc}".encode()[:_MAX_ERROR]
                _write_all(stdout, bytes([_FAILED]) + _ERROR_LENGTH.pack(len(text)) + text)
                continue
            _write_all(stdout, bytes([_OK]))
    finally:
        store.close()


if __name__ == "__main__":
    main()
