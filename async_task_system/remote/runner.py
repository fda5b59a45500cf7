"""Runs one shell or Python script as a sandboxed subprocess: the part of the worker any runtime can reuse.

The worker daemon (:mod:`.worker`) uses it for the commands a hub sends, and the tool runtimes
use the same runner, so every script the project starts gets the same treatment:

* argument lists, never a shell string built by us: ``/bin/sh -c SCRIPT`` or ``python -u -c SCRIPT``;
  stdin is ``/dev/null``;
* each in a new session (its own process group); on timeout or cancel the whole group is killed,
  so background children die too;
* rlimits on CPU seconds and address space (memory), set by ``ulimit`` just before ``exec``, and
  no core dumps;
* a clean environment: only the variables on an allow-list, plus those the caller sets (and the
  caller's W3C trace context as ``TRACEPARENT`` / ``TRACESTATE``);
* stdout and stderr captured up to a byte cap each (the result says when output was truncated),
  and optionally streamed line by line while the script runs.

No networking here: what to run and where the lines go are the caller's business.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .._compat import TIMEOUT_ERRORS
from .protocol import LANGUAGES

__all__ = ["DEFAULT_ALLOW_ENV", "RunLimits", "RunOutcome", "ScriptRunner", "run_script"]

DEFAULT_ALLOW_ENV = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
_CHUNK = 65536
_MAX_LINE = 8192

LineCallback = Callable[[str, str], None]
"""``(stream, line)``: ``stream`` is ``"stdout"`` or ``"stderr"``."""


@dataclass(frozen=True)
class RunLimits:
    """What a script may use and see. ``None`` (or 0 on the CLI) disables the CPU or memory limit."""

    timeout: float = 60.0
    """Seconds, when a run gives none; then the whole process group is killed."""
    max_output_bytes: int = 256 * 1024
    """Bytes of stdout and of stderr kept (and streamed) per script."""
    cpu_seconds: float | None = 300.0
    """``RLIMIT_CPU``: soft limit gives ``SIGXCPU``, the hard one a second later ``SIGKILL``."""
    memory_mb: int | None = 1024
    """``RLIMIT_AS`` in MiB: allocations beyond it fail."""
    allow_env: tuple[str, ...] = DEFAULT_ALLOW_ENV
    """Variables passed from this process's environment; nothing else is."""
    languages: tuple[str, ...] = LANGUAGES
    """What may run: ``shell`` and/or ``python``."""
    python: str = field(default_factory=lambda: sys.executable or "python3")
    """Interpreter for ``python`` scripts."""
    workdir: str | None = None
    """Working directory of scripts (``None``: this process's)."""


class RunOutcome(NamedTuple):
    """How a script ended. ``result`` holds ``exit_code``, ``stdout``, ``stderr``, ``timed_out``,
    ``cancelled``, ``truncated`` and ``duration`` (only ``exit_code`` when it could not start)."""

    success: bool
    result: dict[str, Any]
    error: str | None
    error_type: str | None  # "timeout", "cancelled" or "remote_error" when not successful


def _limit_prefix(cpu_seconds: float | None, memory_bytes: int | None) -> list[str]:
    """An argv prefix that sets the script's rlimits with ``ulimit`` in ``/bin/sh``, then execs it.

    Why not ``resource.setrlimit`` in a ``preexec_fn``: a ``preexec_fn`` forces a full ``fork`` of
    the worker (measured 4-5 ms per script here) where Python otherwise uses ``vfork`` (~1 ms).
    Limits are clamped to the worker's own hard limits, which a child cannot raise.
    """
    import resource

    def clamp(kind: int, value: int, unit: int = 1) -> int:
        hard = resource.getrlimit(kind)[1]
        return value if hard == resource.RLIM_INFINITY else min(value, hard // unit)

    steps = ["ulimit -c 0"]
    if cpu_seconds is not None:
        seconds = max(1, int(cpu_seconds + 0.999))
        top = clamp(resource.RLIMIT_CPU, seconds + 1)
        # soft limit -> SIGXCPU, hard limit a second later -> SIGKILL
        steps += [f"ulimit -S -t {min(seconds, top)}", f"ulimit -H -t {top}"]
    if memory_bytes is not None:
        steps.append(f"ulimit -v {clamp(resource.RLIMIT_AS, max(1, memory_bytes // 1024), 1024)}")
    return ["/bin/sh", "-c", " && ".join(steps) + ' && exec "$@"', "rlimits"]


class _Capture:
    """Collects one stream up to a byte cap and splits it into lines for streaming."""

    def __init__(self, name: str, cap: int, on_line: Callable[[str, str], None] | None) -> None:
        self.name = name
        self.cap = cap
        self.on_line = on_line
        self.data = bytearray()
        self.truncated = False
        self.streamed = 0
        self._partial = b""

    def feed(self, chunk: bytes) -> None:
        room = self.cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        if len(chunk) > room:
            self.truncated = True
        if self.on_line is None or self.streamed >= self.cap:
            return
        pending = self._partial + chunk
        lines = pending.split(b"\n")
        self._partial = lines.pop()
        if len(self._partial) > _MAX_LINE:
            lines.append(self._partial)
            self._partial = b""
        for line in lines:
            self._emit(line)

    def close(self) -> None:
        if self._partial and self.on_line is not None and self.streamed < self.cap:
            self._emit(self._partial)
        self._partial = b""

    def _emit(self, line: bytes) -> None:
        if self.streamed >= self.cap or self.on_line is None:
            return
        self.streamed += len(line) + 1
        self.on_line(self.name, line.decode("utf-8", errors="replace"))

    def text(self) -> str:
        return bytes(self.data).decode("utf-8", errors="replace")


class ScriptRunner:
    """Runs scripts under one set of :class:`RunLimits`; ``cancel`` and ``kill_all`` stop running ones.

    Methods run on one asyncio loop (the caller's); any number of scripts may run at once.
    """

    def __init__(self, limits: RunLimits | None = None) -> None:
        self.limits = limits if limits is not None else RunLimits()
        self._running: dict[str, tuple[asyncio.subprocess.Process, dict[str, bool]]] = {}
        self._keys = itertools.count(1)

    @property
    def running(self) -> int:
        """How many scripts are running now."""
        return len(self._running)

    def _argv(self, language: str, command: str) -> list[str]:
        if language == "python":
            return [self.limits.python, "-u", "-c", command]
        return ["/bin/sh", "-c", command]

    def _env(self, extra: dict[str, str], trace: dict[str, str]) -> dict[str, str]:
        env = {key: os.environ[key] for key in self.limits.allow_env if key in os.environ}
        env.setdefault("PATH", os.defpath)
        env.update(extra)
        # The requester's trace context, as the TRACEPARENT/TRACESTATE environment carriers that
        # OpenTelemetry SDKs and tools read, so an instrumented script joins the agent's trace.
        for key in ("traceparent", "tracestate"):
            if trace.get(key):
                env[key.upper()] = trace[key]
        return env

    async def run(
        self,
        command: str,
        language: str = "shell",
        *,
        key: str | None = None,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
        trace: dict[str, str] | None = None,
        on_line: LineCallback | None = None,
    ) -> RunOutcome:
        """Run ``command`` to its end (or its timeout, or :meth:`cancel` with ``key``).

        ``env`` adds variables to the allowed ones; ``trace`` is a W3C carrier (``traceparent``,
        ``tracestate``); ``on_line(stream, line)`` receives output lines as they appear. Being
        cancelled (``asyncio.CancelledError``) kills the process group and re-raises.
        """
        limits = self.limits
        key = key if key is not None else f"run-{next(self._keys)}"
        timeout = float(timeout or limits.timeout)
        started = time.monotonic()
        if language not in limits.languages:
            return RunOutcome(
                False, {"exit_code": None}, f"this worker does not run {language} commands", "remote_error"
            )
        memory = None if limits.memory_mb is None else int(limits.memory_mb) * 1024 * 1024
        argv = _limit_prefix(limits.cpu_seconds, memory) + self._argv(language, command)
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=self._env(env or {}, trace or {}),
                cwd=limits.workdir,
                start_new_session=True,
            )
        except OSError as exc:
            return RunOutcome(
                False, {"exit_code": None}, f"could not start the {language} process: {exc}", "remote_error"
            )
        flags = {"timed_out": False, "cancelled": False}
        self._running[key] = (process, flags)
        out = _Capture("stdout", limits.max_output_bytes, on_line)
        err = _Capture("stderr", limits.max_output_bytes, on_line)
        assert process.stdout is not None and process.stderr is not None
        pumps = [
            asyncio.ensure_future(_pump(process.stdout, out)),
            asyncio.ensure_future(_pump(process.stderr, err)),
        ]
        try:
            try:
                await asyncio.wait_for(process.wait(), timeout)
            except TIMEOUT_ERRORS:
                flags["timed_out"] = True
                _kill_group(process)
                await process.wait()
            # Output still buffered in the pipes; bounded, because a grandchild that left the
            # process group could keep a pipe open forever.
            _done, pending = await asyncio.wait(pumps, timeout=2.0)
            for pump in pending:
                pump.cancel()
        except asyncio.CancelledError:
            _kill_group(process)
            for pump in pumps:
                pump.cancel()
            raise
        finally:
            self._running.pop(key, None)
        out.close()
        err.close()
        code = process.returncode
        result: dict[str, Any] = {
            "exit_code": code,
            "stdout": out.text(),
            "stderr": err.text(),
            "timed_out": flags["timed_out"],
            "cancelled": flags["cancelled"],
            "truncated": out.truncated or err.truncated,
            "duration": round(time.monotonic() - started, 6),
        }
        if flags["timed_out"]:
            return RunOutcome(
                False, result, f"timed out after {timeout:g} s; the process group was killed", "timeout"
            )
        if flags["cancelled"]:
            return RunOutcome(False, result, "cancelled; the process group was killed", "cancelled")
        if code == 0:
            return RunOutcome(True, result, None, None)
        if code is not None and code < 0:
            name = _signal_name(-code)
            hint = " (CPU time limit)" if name in ("SIGXCPU", "SIGKILL") and limits.cpu_seconds else ""
            return RunOutcome(False, result, f"killed by {name}{hint}", "remote_error")
        return RunOutcome(False, result, f"exit code {code}", "remote_error")

    def cancel(self, key: str) -> bool:
        """Kill the process group of the script run with ``key``; False if none is running."""
        entry = self._running.get(key)
        if entry is None:
            return False
        process, flags = entry
        flags["cancelled"] = True
        _kill_group(process)
        return True

    def kill_all(self) -> int:
        """Kill every running script's process group; returns how many."""
        keys = list(self._running)
        for key in keys:
            self.cancel(key)
        return len(keys)


async def run_script(
    command: str,
    language: str = "shell",
    limits: RunLimits | None = None,
    *,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
    on_line: LineCallback | None = None,
) -> RunOutcome:
    """Run one script under ``limits`` (defaults: :class:`RunLimits`) and return how it ended."""
    return await ScriptRunner(limits).run(command, language, timeout=timeout, env=env, on_line=on_line)


async def _pump(stream: asyncio.StreamReader, capture: _Capture) -> None:
    while True:
        chunk = await stream.read(_CHUNK)
        if not chunk:
            return
        capture.feed(chunk)


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
