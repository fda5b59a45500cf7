"""The runtime interface (seed 001 §2.2) and the one result shape every runtime returns.

A runtime runs one *command* of a tool written in some language: ``execute(entry, command,
parameters, timeout)``, where ``entry`` is the tool's file (a script, a binary, a WASM module) and
``parameters`` a JSON object. Where we differ from the seed, on purpose: ``timeout`` is in seconds
(a float, ``None`` for the limits' default); ``execute`` never raises for a failure of the tool
(a missing entry, a crash, bad output, a timeout) but returns a :class:`RuntimeResult` saying what
went wrong; and ``problem(entry)`` says *why* an entry is not usable, which ``validate`` reduces to
the seed's bool.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any

from ..core.errors import AsyncTaskSystemError
from ..sandbox.process import RunOutcome

__all__ = [
    "BaseRuntime",
    "RuntimeResult",
    "RuntimeToolError",
    "UnknownRuntimeError",
    "SubprocessRuntime",
    "parse_json_output",
    "read_json_result",
]


class UnknownRuntimeError(AsyncTaskSystemError, LookupError):
    """A runtime name no :class:`~async_task_system.runtimes.manager.RuntimeManager` knows."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class RuntimeToolError(AsyncTaskSystemError, RuntimeError):
    """A runtime tool's call failed; the message is the :class:`RuntimeResult`'s error (shown to the LLM).

    ``result`` holds the whole result (stdout, stderr, exit code) for code that wants more.
    """

    def __init__(self, message: str, result: RuntimeResult | None = None) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class RuntimeResult:
    """How one call of a runtime ended; every runtime returns this shape.

    ``status`` is ``"success"`` (then ``result`` holds the tool's value) or ``"error"`` (then
    ``error`` says what went wrong and ``error_type`` is one of ``invalid_entry``, ``unavailable``,
    ``timeout``, ``cancelled``, ``exit_code``, ``invalid_output``, ``output_limit``, ``limit``,
    ``trap``, ``tool_error``, ``invalid_arguments``, ``unknown_runtime``; for a remote tool also
    ``no_worker``, ``worker_lost``, ``hub_stopped``). ``stdout``/``stderr`` are ``None`` where a runtime has no such
    stream; ``duration`` is in seconds; ``truncated`` says an output stream passed its byte cap.
    """

    status: str
    result: Any = None
    error: str | None = None
    error_type: str | None = None
    stdout: str | None = None
    stderr: str | None = None
    exit_code: int | None = None
    duration: float = 0.0
    truncated: bool = False
    runtime: str = ""

    @property
    def ok(self) -> bool:
        """True when the call succeeded."""
        return self.status == "success"

    def to_dict(self) -> dict[str, Any]:
        """The result as a plain dict (the seed's ``Dict[str, Any]`` shape, JSON-ready)."""
        return asdict(self)

    def value(self) -> Any:
        """The tool's value, or raise :class:`RuntimeToolError` with the error (what tools return)."""
        if self.ok:
            return self.result
        message = f"{self.runtime or 'runtime'} tool failed ({self.error_type}): {self.error}"
        stderr = (self.stderr or "").strip()
        if stderr and self.error_type in ("exit_code", "invalid_output", "tool_error", "limit"):
            message += f"\nstderr (last lines):\n{_tail(stderr)}"
        raise RuntimeToolError(message, self)

    @classmethod
    def failure(cls, runtime: str, error_type: str, error: str, **fields: Any) -> RuntimeResult:
        """An error result."""
        return cls(status="error", error=error, error_type=error_type, runtime=runtime, **fields)


def _tail(text: str, lines: int = 10, chars: int = 2000) -> str:
    return "\n".join(text.splitlines()[-lines:])[-chars:]


class BaseRuntime(ABC):
    """A way to run tools written in one language (seed 001 §2.2).

    Subclasses set ``name`` and implement :meth:`execute` and :meth:`problem`; ``available()``
    says why the runtime cannot run anything here (its program is missing), ``None`` when it can.
    """

    name: str = ""

    def get_name(self) -> str:
        """The runtime's name, by which a :class:`RuntimeManager` routes to it."""
        return self.name

    @abstractmethod
    async def execute(
        self, entry: str, command: str, parameters: dict[str, Any], timeout: float | None = None
    ) -> RuntimeResult:
        """Run ``command`` of the tool at ``entry`` with ``parameters``; at most ``timeout`` seconds.

        Never raises for a failure of the tool itself: the result says what went wrong.
        """

    def available(self) -> str | None:
        """Why this runtime cannot run here (e.g. ``node`` is not installed); ``None`` when it can."""
        return None

    @abstractmethod
    def problem(self, entry: str) -> str | None:
        """Why ``entry`` cannot be run by this runtime, or ``None`` when it can (checked before each call)."""

    def precheck(self, entry: str) -> RuntimeResult | None:
        """The error result when the runtime is unavailable or ``entry`` unusable; ``None`` to go on."""
        reason = self.available()
        if reason is not None:
            return RuntimeResult.failure(self.name, "unavailable", reason)
        reason = self.problem(entry)
        if reason is not None:
            return RuntimeResult.failure(self.name, "invalid_entry", reason)
        return None

    async def validate(self, entry: str) -> bool:
        """The seed's check: True when the runtime is available and ``entry`` is usable."""
        return self.available() is None and self.problem(entry) is None

    def close(self) -> None:  # noqa: B027 - optional hook, not abstract
        """Release what the runtime holds (servers, running processes); the default holds nothing."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


ENVELOPE_KEYS = frozenset({"status", "result", "error", "error_type"})


def parse_json_output(stdout: str, last_line: bool = True) -> tuple[bool, Any]:
    """The one JSON value a tool printed: the whole stdout, or else (``last_line``) its last
    non-empty line, so a stray log line before it does no harm. ``(False, None)`` when not JSON."""
    text = stdout.strip()
    if not text:
        return False, None
    try:
        return True, json.loads(text)
    except ValueError:
        if not last_line:
            return False, None
    last = text.splitlines()[-1]
    try:
        return True, json.loads(last)
    except ValueError:
        return False, None


def from_envelope(runtime: str, value: Any, **fields: Any) -> RuntimeResult:
    """A tool's printed value as a result: ``{"status": "success", "result": X}`` and ``{"status":
    "error", "error": "..."}`` are envelopes (only these keys, that status); any other value is the
    result itself."""
    if (
        isinstance(value, dict)
        and value.get("status") in ("success", "error")
        and set(value) <= ENVELOPE_KEYS
    ):
        if value["status"] == "success":
            return RuntimeResult("success", result=value.get("result"), runtime=runtime, **fields)
        return RuntimeResult.failure(
            runtime,
            str(value.get("error_type") or "tool_error"),
            str(value.get("error") or "the tool failed"),
            **fields,
        )
    return RuntimeResult("success", result=value, runtime=runtime, **fields)


def read_json_result(runtime: str, stdout: str, fields: dict[str, Any]) -> RuntimeResult:
    """The result a tool printed on stdout (one JSON value or envelope), or ``invalid_output``."""
    parsed, value = parse_json_output(stdout)
    if not parsed:
        preview = stdout.strip()[:200] or "nothing"
        return RuntimeResult.failure(
            runtime,
            "invalid_output",
            f"the tool must print one JSON value on stdout (log to stderr), got {preview!r}",
            **fields,
        )
    return from_envelope(runtime, value, **fields)


class SubprocessRuntime(BaseRuntime):
    """A runtime whose tools run as sandboxed subprocesses through the shared
    :class:`~async_task_system.sandbox.process.ScriptRunner` (one :class:`~async_task_system.sandbox.process.RunLimits`
    for all: timeout, memory, CPU seconds, output bytes, environment allow-list, process group).

    Subclasses build the argument list and the stdin bytes (:meth:`command_line`) and read the
    output (:meth:`read_output`).
    """

    def __init__(self, runner: Any = None) -> None:
        from ..sandbox.process import ScriptRunner

        self.runner = runner if runner is not None else ScriptRunner()

    @abstractmethod
    def command_line(
        self, entry: str, command: str, parameters: dict[str, Any]
    ) -> tuple[list[str], bytes | None]:
        """``(argv, stdin bytes or None)`` for one call."""

    def read_output(self, stdout: str, fields: dict[str, Any]) -> RuntimeResult:
        """The result of a call that exited 0: the one JSON value on stdout (see :func:`read_json_result`)."""
        return read_json_result(self.name, stdout, fields)

    async def execute(
        self, entry: str, command: str, parameters: dict[str, Any], timeout: float | None = None
    ) -> RuntimeResult:
        """Run one call in the sandbox; see :class:`BaseRuntime`."""
        refused = self.precheck(entry)
        if refused is not None:
            return refused
        argv, stdin = self.command_line(entry, command, parameters or {})
        outcome = await self.runner.run_program(
            argv, stdin=stdin, timeout=timeout, stop_on_overflow=True, what=f"the {self.name} tool {entry!r}"
        )
        return self.result_of(outcome)

    def result_of(self, outcome: RunOutcome) -> RuntimeResult:
        """Translate how the process ended into a :class:`RuntimeResult`."""
        raw = outcome.result
        fields = {
            "stdout": raw.get("stdout"),
            "stderr": raw.get("stderr"),
            "exit_code": raw.get("exit_code"),
            "duration": raw.get("duration", 0.0),
            "truncated": bool(raw.get("truncated")),
        }
        if outcome.success:
            return self.read_output(raw.get("stdout") or "", fields)
        error_type = outcome.error_type
        if error_type and error_type.endswith("_limit") and error_type != "output_limit":
            error_type = "limit"  # the sandbox's process, memory, CPU, file size or disk limit
        if error_type == "remote_error":
            parsed, value = parse_json_output(raw.get("stdout") or "")
            if parsed and isinstance(value, dict) and value.get("status") == "error":
                return from_envelope(self.name, value, **fields)  # the tool said why it failed
            message = outcome.error or "failed"
            error_type = "limit" if "limit" in message else "exit_code"
            if raw.get("exit_code") is None:
                error_type = "unavailable"
        return RuntimeResult.failure(
            self.name, error_type or "exit_code", outcome.error or "failed", **fields
        )
