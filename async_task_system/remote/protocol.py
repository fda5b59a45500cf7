"""The hub <-> worker message set: JSON text frames over one WebSocket per worker.

Every frame is a JSON object with a ``type``. The one exception is the result frame, which may
also be sent in seed 000's exact shape ``{"request_id", "success", "result", "error"}`` without a
``type``, so an executor written from that document works unchanged. ``docs/remote.md`` lists
every field; this module is the single place that builds and checks them, so the hub, the worker
and :class:`~async_task_system.remote.handler.RemoteExecutionHandler` agree.

Worker -> hub: ``register``, ``heartbeat``, ``started``, ``log``, ``result``.
Hub -> worker: ``registered``, ``execute``, ``cancel``, ``error``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from ..core.errors import AsyncTaskSystemError
from ..sandbox.process import SCRIPT_LANGUAGES

__all__ = [
    "PROTOCOL_VERSION",
    "LANGUAGES",
    "ProtocolError",
    "decode",
    "encode",
    "check_labels",
    "check_register",
    "check_runtime_call",
    "check_result",
    "check_heartbeat",
    "check_log",
    "check_execute",
    "check_started",
    "register_frame",
    "registered_frame",
    "execute_frame",
    "cancel_frame",
    "heartbeat_frame",
    "log_frame",
    "started_frame",
    "result_frame",
    "error_frame",
    "check_worker_name",
]

PROTOCOL_VERSION = 1
LANGUAGES = SCRIPT_LANGUAGES
"""What a worker can run: ``shell`` (``/bin/sh -c``) and ``python`` (``python -c``)."""

_NAME_MAX = 64


class ProtocolError(AsyncTaskSystemError, ValueError):
    """A frame that is not valid JSON, not an object, or misses or mistypes a field."""


def encode(message: dict[str, Any]) -> str:
    """One frame's text (compact JSON, UTF-8 safe)."""
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, default=str)


def decode(frame: str | bytes | bytearray | dict[str, Any]) -> dict[str, Any]:
    """Parse a frame into a dict, or raise :class:`ProtocolError` saying what is wrong."""
    if isinstance(frame, dict):
        return frame
    if isinstance(frame, (bytes, bytearray)):
        try:
            frame = bytes(frame).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"frame is not UTF-8: {exc}") from None
    if not isinstance(frame, str):
        raise ProtocolError(f"frame must be JSON text, got {type(frame).__name__}")
    if _nested_deeper_than(frame, MAX_NESTING):
        raise ProtocolError(f"frame is JSON nested deeper than {MAX_NESTING} levels")
    try:
        message = json.loads(frame)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"frame is not valid JSON: {exc.msg} at position {exc.pos}") from None
    except RecursionError:
        raise ProtocolError("frame is JSON nested too deeply") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"frame must be a JSON object, got {type(message).__name__}")
    return message


MAX_NESTING = 64
"""Frames are shallow; deeper JSON is refused the same way on every Python (json's own limit differs)."""

_STRUCTURE = re.compile(r'[\[\]{}"\\]')


def _nested_deeper_than(text: str, limit: int) -> bool:
    """True when ``text``'s arrays and objects nest deeper than ``limit`` (strings are skipped)."""
    if text.count("[") + text.count("{") <= limit:
        return False  # cannot be that deep: the common case costs two counts
    depth = 0
    in_string = False
    skip_until = -1  # a backslash in a string escapes the one character after it
    for match in _STRUCTURE.finditer(text):
        position = match.start()
        if position < skip_until:
            continue
        char = match.group()
        if in_string:
            if char == "\\":
                skip_until = position + 2
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _require(message: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if key not in message:
        raise ProtocolError(f"{what} frame needs a {key!r} field")
    value = message[key]
    if not isinstance(value, kind):
        raise ProtocolError(f"{what} frame field {key!r} has the wrong type ({type(value).__name__})")
    return value


MAX_LABELS = 64
MAX_RUNTIMES = 16
_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,62})$")
_LABEL_VALUE_MAX = 256


def check_labels(labels: Any, what: str = "register frame field 'labels'") -> dict[str, str]:
    """Validate a label map (worker labels or a request's selector): at most 64 pairs, keys like
    ``region`` or ``example.com/gpu`` (1-63 characters), string values up to 256 characters."""
    if labels is None:
        return {}
    if not isinstance(labels, dict):
        raise ProtocolError(f"{what} must be an object of string values")
    if len(labels) > MAX_LABELS:
        raise ProtocolError(f"{what} has {len(labels)} labels; at most {MAX_LABELS}")
    for key, value in labels.items():
        if not isinstance(key, str) or not _LABEL_KEY.match(key):
            raise ProtocolError(
                f"{what}: label key {key!r} must be 1-63 letters, digits, '.', '_', '/' or '-'"
            )
        if not isinstance(value, str) or len(value) > _LABEL_VALUE_MAX:
            raise ProtocolError(
                f"{what}: label {key!r} must have a string value of at most {_LABEL_VALUE_MAX} characters"
            )
    return dict(labels)


def check_worker_name(name: str) -> str:
    """``name`` without surrounding space if it is a valid worker name, else ProtocolError."""
    name = name.strip()
    if not name or len(name) > _NAME_MAX or any(ch.isspace() for ch in name):
        raise ProtocolError(f"worker name must be 1-{_NAME_MAX} characters without spaces, got {name!r}")
    return name


def check_register(message: dict[str, Any]) -> dict[str, Any]:
    """Validate a ``register`` frame; returns ``{name, capabilities, max_concurrent, labels, version, runtimes}``."""
    name = check_worker_name(_require(message, "name", str, "register"))
    capabilities = message.get("capabilities", list(LANGUAGES))
    if not isinstance(capabilities, list) or not all(isinstance(c, str) for c in capabilities):
        raise ProtocolError("register frame field 'capabilities' must be a list of strings")
    max_concurrent = message.get("max_concurrent", 5)
    if (
        not isinstance(max_concurrent, int)
        or isinstance(max_concurrent, bool)
        or not 1 <= max_concurrent <= MAX_CONCURRENT
    ):
        raise ProtocolError(
            f"register frame field 'max_concurrent' must be an integer from 1 to {MAX_CONCURRENT}, "
            f"got {_shown(max_concurrent)}"
        )
    version = message.get("worker_version", "")
    if not isinstance(version, str) or len(version) > _NAME_MAX:
        raise ProtocolError(
            f"register frame field 'worker_version' must be a string of at most {_NAME_MAX} characters"
        )
    runtimes = message.get("runtimes", [])
    if (
        not isinstance(runtimes, list)
        or len(runtimes) > MAX_RUNTIMES
        or not all(isinstance(r, str) and 0 < len(r) <= _NAME_MAX for r in runtimes)
    ):
        raise ProtocolError(f"register frame field 'runtimes' must be a list of at most {MAX_RUNTIMES} names")
    return {
        "name": name,
        "capabilities": list(capabilities),
        "max_concurrent": max_concurrent,
        "labels": check_labels(message.get("labels")),
        "version": version,
        "runtimes": list(runtimes),
    }


MAX_CONCURRENT = 10_000
"""The most scripts a worker may say it runs at once (``max_concurrent``, gRPC ``capacity``)."""

INT32 = (-(2**31), 2**31 - 1)
_COUNT_MAX = 2**31 - 1


def _shown(value: Any) -> str:
    """A short picture of a refused value for an error message (never the whole of a huge one)."""
    text = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def check_heartbeat(message: dict[str, Any]) -> dict[str, int]:
    """Validate a ``heartbeat`` frame; returns ``{running, queued}`` (counts from 0 to 2**31-1)."""
    out = {}
    for key in ("running", "queued"):
        value = message.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _COUNT_MAX:
            raise ProtocolError(
                f"heartbeat field {key!r} must be a count from 0 to {_COUNT_MAX}, got {_shown(value)}"
            )
        out[key] = value
    return out


_RESULT_TYPES: dict[str, tuple[type, ...]] = {
    "stdout": (str,),
    "stderr": (str,),
    "worker": (str,),
    "timed_out": (bool,),
    "cancelled": (bool,),
    "truncated": (bool,),
}


def _check_result_fields(result: dict[str, Any]) -> None:
    """The well-known fields of a result object have their types and bounds (others are free)."""
    exit_code = result.get("exit_code")
    if exit_code is not None and (
        isinstance(exit_code, bool) or not isinstance(exit_code, int) or not INT32[0] <= exit_code <= INT32[1]
    ):
        raise ProtocolError(
            f"result field 'exit_code' must be null or an integer within int32, got {_shown(exit_code)}"
        )
    for key, kinds in _RESULT_TYPES.items():
        value = result.get(key)
        if value is not None and not isinstance(value, kinds):
            raise ProtocolError(
                f"result field {key!r} must be {'a string' if kinds == (str,) else 'true or false'} "
                f"or null, got {type(value).__name__}"
            )
    worker = result.get("worker")
    if isinstance(worker, str) and len(worker) > _NAME_MAX:
        raise ProtocolError(f"result field 'worker' must be at most {_NAME_MAX} characters")
    duration = result.get("duration")
    if duration is not None and (
        isinstance(duration, bool)
        or not isinstance(duration, (int, float))
        or not math.isfinite(duration)
        or not 0 <= duration < 1e9
    ):
        raise ProtocolError(f"result field 'duration' must be null or seconds >= 0, got {_shown(duration)}")


def check_result(message: dict[str, Any]) -> dict[str, Any]:
    """Validate a result frame (seed 000 shape); returns ``{request_id, success, result, error, error_type}``.

    A ``result`` object's well-known fields (``exit_code`` within int32, ``stdout``, ``stderr`` and
    ``worker`` strings, ``timed_out``/``cancelled``/``truncated`` booleans, ``duration`` seconds) are
    checked: a bad one refuses the frame with a precise error, before anything is recorded.
    """
    request_id = _require(message, "request_id", str, "result")
    success = _require(message, "success", bool, "result")
    if isinstance(message.get("result"), dict):
        _check_result_fields(message["result"])
    error = message.get("error")
    if error is not None and not isinstance(error, str):
        error = str(error)
    error_type = message.get("error_type")
    if error_type is not None and (not isinstance(error_type, str) or len(error_type) > _NAME_MAX):
        raise ProtocolError(
            f"result frame field 'error_type' must be a string of at most {_NAME_MAX} characters"
        )
    return {
        "request_id": request_id,
        "success": success,
        "result": message.get("result"),
        "error": error,
        "error_type": error_type,
    }


def check_log(message: dict[str, Any]) -> dict[str, Any]:
    """Validate a ``log`` frame; returns ``{request_id, stream, line}``."""
    request_id = _require(message, "request_id", str, "log")
    stream = message.get("stream", "stdout")
    if stream not in ("stdout", "stderr"):
        raise ProtocolError("log frame field 'stream' must be 'stdout' or 'stderr'")
    line = _require(message, "line", str, "log")
    return {"request_id": request_id, "stream": stream, "line": line}


def check_started(message: dict[str, Any]) -> dict[str, Any]:
    """Validate a ``started`` frame; returns ``{request_id, started_at}`` (epoch seconds, or None if absent)."""
    request_id = _require(message, "request_id", str, "started")
    started_at = message.get("started_at")
    if started_at is not None and (
        isinstance(started_at, bool)
        or not isinstance(started_at, (int, float))
        or not math.isfinite(started_at)
        or not 0 <= started_at < 1e11
    ):
        raise ProtocolError("started frame field 'started_at' must be seconds since the Unix epoch")
    return {"request_id": request_id, "started_at": None if started_at is None else float(started_at)}


def check_runtime_call(call: Any) -> dict[str, Any]:
    """Validate an execute frame's ``runtime`` object: ``{runtime, entry, parameters}`` (the command is the frame's)."""
    if not isinstance(call, dict):
        raise ProtocolError("execute frame field 'runtime' must be an object {runtime, entry, parameters}")
    name = _require(call, "runtime", str, "execute runtime")
    entry = _require(call, "entry", str, "execute runtime")
    parameters = call.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ProtocolError("execute frame field 'runtime.parameters' must be an object")
    return {"runtime": name, "entry": entry, "parameters": parameters}


def check_execute(message: dict[str, Any]) -> dict[str, Any]:
    """Validate an ``execute`` frame (on the worker); returns its fields with defaults filled in.

    A frame with a ``runtime`` object is one command of a runtime tool (``command`` is the tool's
    command, ``language`` is ignored); otherwise ``command`` is a script in ``language``.
    """
    request_id = _require(message, "request_id", str, "execute")
    command = _require(message, "command", str, "execute")
    runtime = check_runtime_call(message["runtime"]) if message.get("runtime") is not None else None
    language = message.get("language", "shell")
    if runtime is None and language not in LANGUAGES:
        raise ProtocolError(
            f"execute frame field 'language' must be one of {', '.join(LANGUAGES)}, got {language!r}"
        )
    timeout = message.get("timeout")
    if timeout is not None and (
        not isinstance(timeout, (int, float))
        or isinstance(timeout, bool)
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise ProtocolError("execute frame field 'timeout' must be a positive number of seconds")
    env = message.get("env") or {}
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise ProtocolError("execute frame field 'env' must be an object of string values")
    trace = message.get("trace") or {}
    if not isinstance(trace, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in trace.items()
    ):
        raise ProtocolError("execute frame field 'trace' must be an object of string values")
    task_id = message.get("task_id") or request_id
    if not isinstance(task_id, str):
        raise ProtocolError("execute frame field 'task_id' must be a string")
    return {
        "trace": trace,
        "request_id": request_id,
        "task_id": task_id,
        "command": command,
        "language": language,
        "timeout": timeout,
        "env": env,
        "runtime": runtime,
    }


# ---------------------------------------------------------------------------------------------- builders


def register_frame(
    name: str,
    capabilities: list[str],
    max_concurrent: int,
    *,
    labels: dict[str, str] | None = None,
    worker_version: str = "",
    runtimes: list[str] | None = None,
) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": "register",
        "version": PROTOCOL_VERSION,
        "name": name,
        "capabilities": list(capabilities),
        "max_concurrent": max_concurrent,
    }
    if labels:
        frame["labels"] = dict(labels)
    if worker_version:
        frame["worker_version"] = worker_version
    if runtimes:
        frame["runtimes"] = list(runtimes)
    return frame


def registered_frame(
    name: str, heartbeat_interval: float, heartbeat_timeout: float, max_message_bytes: int
) -> dict[str, Any]:
    return {
        "type": "registered",
        "version": PROTOCOL_VERSION,
        "name": name,
        "heartbeat_interval": heartbeat_interval,
        "heartbeat_timeout": heartbeat_timeout,
        "max_message_bytes": max_message_bytes,
    }


def execute_frame(
    request_id: str,
    command: str,
    language: str,
    timeout: float | None,
    env: dict[str, str] | None = None,
    trace: dict[str, str] | None = None,
    runtime: dict[str, Any] | None = None,
    task_id: str | None = None,
) -> dict[str, Any]:
    """``request_id`` is the hub's id of this attempt (answers carry it); ``task_id`` the operator's."""
    frame: dict[str, Any] = {
        "type": "execute",
        "request_id": request_id,
        "command": command,
        "language": language,
        "timeout": timeout,
    }
    if task_id:
        frame["task_id"] = task_id
    if env:
        frame["env"] = dict(env)
    if trace:
        frame["trace"] = dict(trace)
    if runtime:
        frame["runtime"] = dict(runtime)
    return frame


def cancel_frame(request_id: str, reason: str = "cancelled", task_id: str | None = None) -> dict[str, Any]:
    frame = {"type": "cancel", "request_id": request_id, "reason": reason}
    if task_id:
        frame["task_id"] = task_id
    return frame


def started_frame(request_id: str, started_at: float, task_id: str | None = None) -> dict[str, Any]:
    """The worker spawned the process of ``request_id`` at ``started_at`` (epoch seconds)."""
    frame: dict[str, Any] = {"type": "started", "request_id": request_id, "started_at": started_at}
    if task_id:
        frame["task_id"] = task_id
    return frame


def heartbeat_frame(running: int, queued: int) -> dict[str, Any]:
    return {"type": "heartbeat", "running": running, "queued": queued}


def log_frame(request_id: str, stream: str, line: str, task_id: str | None = None) -> dict[str, Any]:
    frame = {"type": "log", "request_id": request_id, "stream": stream, "line": line}
    if task_id:
        frame["task_id"] = task_id
    return frame


def result_frame(
    request_id: str,
    success: bool,
    result: Any,
    error: str | None,
    error_type: str | None = None,
    task_id: str | None = None,
) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": "result",
        "request_id": request_id,
        "success": success,
        "result": result,
        "error": error,
    }
    if error_type:
        frame["error_type"] = error_type
    if task_id:
        frame["task_id"] = task_id
    return frame


def error_frame(error: str, request_id: str | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "error": error}
    if request_id is not None:
        frame["request_id"] = request_id
    return frame
