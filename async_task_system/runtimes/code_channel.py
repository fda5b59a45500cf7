"""The host's end of a code kernel (:mod:`._code_kernel`): its process, its channel, what goes over it.

:class:`KernelProcess` is one kernel started through
:meth:`~async_task_system.sandbox.process.ScriptRunner.start_interactive`; its pipes run on one
private event-loop thread per process (:func:`io_loop`), and what the kernel sends arrives, already
cut into lines no longer than the bound, on a thread-safe queue that the step's thread waits on.
Used by :mod:`.code_sandbox`; nothing here trusts the kernel.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import io
import json
import os
import pickle
import queue
import signal
import sys
import threading
import types
from typing import Any

from smolagents.local_python_executor import InterpreterError

from ..core.errors import AsyncTaskSystemError
from ..sandbox.isolation import read_paths
from ..sandbox.process import ScriptRunner

__all__ = [
    "CodeKernelError",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "KERNEL_START_TIMEOUT",
    "KernelProcess",
    "decode_message",
    "io_loop",
    "is_tool_call",
    "pickled",
    "stop_kernel_quietly",
]

DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
"""Longest line a kernel may send (a tool call's arguments, a step's output and logs)."""
KERNEL_START_TIMEOUT = 60.0
"""Seconds a kernel has to start (import smolagents) before the step fails."""

_MAX_UNREAD = 64
"""Messages from a kernel waiting to be read at once (it sends one, then waits): more stop it."""
_KERNEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_code_kernel.py")


class CodeKernelError(AsyncTaskSystemError, InterpreterError):
    """A code step could not run to its end in the kernel: it died (a limit, a crash), broke the
    protocol, or was stopped. The message (shown to the LLM) says which, and what to do."""


# --------------------------------------------------------------------------- the I/O loop (one)

_loop_lock = threading.Lock()
_loop: tuple[int, asyncio.AbstractEventLoop] | None = None


def io_loop() -> asyncio.AbstractEventLoop:
    """The event loop all kernels' pipes run on: one daemon thread per process, started on first use."""
    global _loop
    with _loop_lock:
        if _loop is None or _loop[0] != os.getpid():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="code-kernels", daemon=True).start()
            _loop = (os.getpid(), loop)
        return _loop[1]


# --------------------------------------------------------------------------- values to the kernel


@functools.lru_cache(maxsize=1)
def _visible_roots() -> tuple[str, ...]:
    roots = {os.path.realpath(p) for p in (*read_paths([sys.executable], sys.executable), sys.prefix)}
    roots.add(os.path.realpath(sys.base_prefix))
    return (*(root.rstrip("/") + "/" for root in roots), "/usr/", "/lib")


@functools.lru_cache(maxsize=512)
def _importable_there(module: str) -> bool:
    """Whether the kernel can import ``module`` (it sees the interpreter's installation only)."""
    found = sys.modules.get(module)
    path = getattr(found, "__file__", None) if found is not None else None
    if found is None or module == "__main__":
        return False
    return path is None or os.path.realpath(path).startswith(_visible_roots())


class _Pickler(pickle.Pickler):
    """Pickles what the kernel can load; an object of a module it cannot import becomes its plain
    value (``str``, ``int``, ``float``, ``dict``, ``list`` subclasses) or else its ``repr``."""

    def reducer_override(self, obj: Any) -> Any:
        is_named = isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType))
        module = getattr(obj if is_named else type(obj), "__module__", None) or "builtins"
        if _importable_there(module.split(".")[0]) and _importable_there(module):
            return NotImplemented
        for base in (str, int, float, dict, list, tuple):
            if not is_named and isinstance(obj, base):
                return base, (base(obj) if base is not str else str.__str__(obj),)
        return str, (_short_repr(obj),)


def _short_repr(obj: Any, limit: int = 10_000) -> str:
    try:
        return repr(obj)[:limit]
    except Exception as exc:
        return f"<{type(obj).__name__} object (repr failed: {exc})>"


def pickled(value: Any) -> str:
    buffer = io.BytesIO()
    try:
        _Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    except Exception:  # not picklable (a lock, a generator): the code gets its repr
        buffer = io.BytesIO()
        pickle.dump(_short_repr(value), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# --------------------------------------------------------------------------- one kernel process


class KernelProcess:
    """One kernel process: its pipes run on the I/O loop; what it sends goes to ``inbox`` as
    ``("line", bytes)``, ``("bad", why)``, ``("stopped", reason)`` or, last, ``("exit", why)``."""

    def __init__(self, runner: ScriptRunner, max_bytes: int) -> None:
        self.runner = runner
        self.max_bytes = max_bytes
        self.inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.loop = io_loop()
        self.process: Any = None
        self.stop_reason: str | None = None
        self.stderr_tail = b""
        self.pid: int | None = None  # its pid in its own namespace, from its ``ready``

    def start(self, network: bool | None) -> None:
        """Start the process (waits for it, not for the kernel's ``ready``)."""
        future = asyncio.run_coroutine_threadsafe(self._start(network), self.loop)
        try:
            future.result(KERNEL_START_TIMEOUT)
        except (OSError, KeyError, TimeoutError) as exc:
            self.stop("start")
            raise CodeKernelError(f"The code sandbox could not start: {exc}") from None

    async def _start(self, network: bool | None) -> None:
        self.process = await self.runner.start_interactive([sys.executable, "-I", _KERNEL], network=network)
        asyncio.ensure_future(self._read_stderr())
        asyncio.ensure_future(self._read())
        if self.stop_reason is not None:
            await self.runner.stop(self.process, 0.0)

    async def _read(self) -> None:
        stream, buffer, scanned = self.process.stdout, bytearray(), 0
        try:
            while True:
                chunk = await stream.read(65536)
                if not chunk:
                    break
                buffer += chunk
                while (end := buffer.find(b"\n", scanned)) >= 0:
                    if self.inbox.qsize() >= _MAX_UNREAD:  # it waits for a reply: a flood is hostile
                        self.inbox.put(("bad", f"more than {_MAX_UNREAD} messages unanswered"))
                        return
                    self.inbox.put(("line", bytes(buffer[:end])) if end <= self.max_bytes else ("bad", end))
                    del buffer[: end + 1]
                    scanned = 0
                scanned = len(buffer)
                if scanned > self.max_bytes:
                    self.inbox.put(("bad", scanned))
                    break
        finally:
            with contextlib.suppress(asyncio.TimeoutError):  # its pipe closed: it ends, or is ended
                await asyncio.wait_for(asyncio.shield(self.process.wait()), 2.0)
            if self.process.returncode is None:
                await self.runner.stop(self.process, 0.0)
            if (
                self.stop_reason is None
            ):  # it ended by itself (a limit, a crash): the next step needs a new one
                self.stop_reason = "exited"
            self.inbox.put(("exit", self._death()))

    async def _read_stderr(self) -> None:
        while chunk := await self.process.stderr.read(65536):
            self.stderr_tail = (self.stderr_tail + chunk)[-4000:]

    def _death(self) -> str:
        """Why the kernel ended, for the LLM."""
        process = self.process
        limit, message = getattr(process, "limit", None), getattr(process, "message", None)
        tail = self.stderr_tail.decode("utf-8", "replace")
        if limit in ("memory_limit", "process_limit", "cpu_limit", "disk_limit", "start_error"):
            return f"{limit}: {message}" if message else limit
        if "\nsandbox: " in tail:  # the unisolated supervisor's word on a tree limit
            return "sandbox limit: " + tail.rsplit("\nsandbox: ", 1)[1].strip()
        if "MemoryError" in tail:
            return f"memory_limit: out of memory (the limit is {self.runner.limits.memory_mb} MiB)"
        code = process.returncode
        if code is not None and code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = " (cpu_limit: the kernel used up its CPU seconds)" if name == "SIGXCPU" else ""
            return f"killed by {name}{hint}"
        last = tail.strip().splitlines()[-1:] if tail.strip() else []
        return f"exit code {code}" + (f" ({last[0][:300]})" if last else "")

    def send(self, message: dict[str, Any]) -> None:
        """Write one message (any thread; never blocks: the loop writes it)."""
        data = json.dumps(message).encode() + b"\n"

        def write() -> None:
            if self.process is not None and self.process.returncode is None:
                with contextlib.suppress(Exception):  # a dead kernel: its exit is on the way
                    self.process.stdin.write(data)

        self.loop.call_soon_threadsafe(write)

    def stop(self, reason: str) -> None:
        """Kill the kernel's tree (any thread); ``reason`` is kept (the first one wins)."""
        if self.stop_reason is None:
            self.stop_reason = reason
            self.inbox.put(("stopped", reason))
        if self.process is not None:
            asyncio.run_coroutine_threadsafe(self.runner.stop(self.process, 0.0), self.loop)


def stop_kernel_quietly(box: list[KernelProcess | None]) -> None:
    """The finalizer of an executor nobody cleaned up: its kernel goes with it."""
    kernel, box[:] = box[0], [None]
    if kernel is not None:
        with contextlib.suppress(Exception):
            kernel.stop("cleanup")


def decode_message(line: bytes) -> dict[str, Any] | None:
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def is_tool_call(message: dict[str, Any]) -> bool:
    kwargs = message.get("kwargs")
    return (
        isinstance(message.get("id"), int)
        and isinstance(message.get("tool"), str)
        and isinstance(message.get("args"), list)
        and isinstance(kwargs, dict)
        and all(isinstance(key, str) for key in kwargs)
    )
