"""The gRPC edge: protobuf messages of ``proto/agent.proto`` <-> the :mod:`.protocol` dicts.

Both gRPC ends (the hub and the worker daemon) translate here and nowhere else, so everything
behind the edge (registration rules, routing, the worker's job execution) is shared with the
WebSocket transport unchanged. The mapping:

=====================  ===================================  ======================================
protocol frame         protobuf message                     notes
=====================  ===================================  ======================================
register               AgentMessage.register                name -> agent_id, max_concurrent ->
                       (AgentRegister)                      capacity, worker_version -> version
heartbeat              AgentMessage.heartbeat
started                AgentMessage.task_started            started_at -> Timestamp
log                    AgentMessage.task_log                line -> output
result                 AgentMessage.task_result             exit_code/stdout/stderr in the seed's
                                                            fields; the rest in added fields
registered / error     ServerMessage.register_response      success, or the refusal's error_type
execute                ServerMessage.task_request           command -> script, language -> type;
                                                            a runtime call -> TASK_TYPE_RUNTIME
cancel                 ServerMessage.task_cancel
error                  ServerMessage.error
=====================  ===================================  ======================================

Ids: a hub frame's ``task_id`` (the operator's task id) goes to ``TaskRequest.task_id`` and its
``request_id`` (the hub's id of the attempt) to ``TaskRequest.request_id``; an agent's message
gives back ``request_id`` when it set it, else its ``task_id`` (an agent built from seed 002's
proto), which the router matches to the request that agent runs for the task.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

from .._proto import agent_pb2, common_pb2, task_pb2
from ..protocol import PROTOCOL_VERSION, ProtocolError, decode

__all__ = [
    "SERVICE",
    "METHOD",
    "agent_message",
    "agent_frame",
    "server_message",
    "server_frame",
    "refusal_message",
]

SERVICE = "proto.AgentService"
METHOD = f"/{SERVICE}/Connect"

_TYPES = {"shell": task_pb2.TASK_TYPE_SHELL, "python": task_pb2.TASK_TYPE_PYTHON}
_LANGUAGES = {value: key for key, value in _TYPES.items()}
_RESULT_FIELDS = ("exit_code", "stdout", "stderr", "timed_out", "cancelled", "truncated", "duration")
_INT32_MAX = 2**31 - 1


def _now() -> common_pb2.Timestamp:
    seconds = time.time()
    return common_pb2.Timestamp(seconds=int(seconds), nanos=int((seconds % 1) * 1e9))


def _timestamp(seconds: float) -> common_pb2.Timestamp:
    return common_pb2.Timestamp(seconds=int(seconds), nanos=int((seconds % 1) * 1e9))


def _ids(frame: dict[str, Any]) -> dict[str, str]:
    """``task_id`` and ``request_id`` of a protobuf message for a frame (both the request id when no task id)."""
    request_id = frame["request_id"]
    return {"task_id": frame.get("task_id") or request_id, "request_id": request_id}


def _request_id(message: Any) -> str:
    return message.request_id or message.task_id


def _int32(value: Any, default: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        return default
    return max(-_INT32_MAX - 1, min(_INT32_MAX, value))


# ---------------------------------------------------------------------------------------------- agent -> hub


def agent_message(frame: dict[str, Any]) -> agent_pb2.AgentMessage:
    """The protobuf message for a worker's frame (``register``, ``heartbeat``, ``log``, ``result``)."""
    kind = frame.get("type")
    if kind == "register":
        return agent_pb2.AgentMessage(
            register=agent_pb2.AgentRegister(
                agent_id=frame["name"],
                labels=frame.get("labels") or {},
                capacity=_int32(frame.get("max_concurrent"), 1),
                version=frame.get("worker_version", ""),
                capabilities=frame.get("capabilities") or [],
                runtimes=frame.get("runtimes") or [],
            )
        )
    if kind == "heartbeat":
        return agent_pb2.AgentMessage(
            heartbeat=agent_pb2.Heartbeat(
                running=_int32(frame.get("running")), queued=_int32(frame.get("queued")), timestamp=_now()
            )
        )
    if kind == "log":
        return agent_pb2.AgentMessage(
            task_log=task_pb2.TaskLog(
                **_ids(frame),
                output=frame["line"],
                is_stderr=frame.get("stream") == "stderr",
                timestamp=_now(),
            )
        )
    if kind == "result":
        return agent_pb2.AgentMessage(task_result=_task_result(frame))
    if kind == "started":
        started_at = frame.get("started_at")
        return agent_pb2.AgentMessage(
            task_started=task_pb2.TaskStarted(
                **_ids(frame),
                started_at=_timestamp(started_at) if isinstance(started_at, (int, float)) else _now(),
            )
        )
    raise ProtocolError(f"no gRPC message for a {kind!r} frame")


def _task_result(frame: dict[str, Any]) -> task_pb2.TaskResult:
    result = frame.get("result")
    message = task_pb2.TaskResult(
        **_ids(frame),
        completed_at=_now(),
        success=bool(frame.get("success")),
        error=frame.get("error") or "",
        error_type=frame.get("error_type") or "",
    )
    if not isinstance(result, dict):
        message.no_exit_code = True
        if result is not None:
            message.result_json = json.dumps({"value": result}, default=str)
        return message
    exit_code = result.get("exit_code")
    message.no_exit_code = exit_code is None
    message.exit_code = _int32(exit_code)
    message.stdout = str(result.get("stdout") or "")
    message.stderr = str(result.get("stderr") or "")
    message.timed_out = bool(result.get("timed_out"))
    message.cancelled = bool(result.get("cancelled"))
    message.truncated = bool(result.get("truncated"))
    duration = result.get("duration")
    if isinstance(duration, (int, float)) and math.isfinite(duration):
        message.duration = float(duration)
    rest = {key: value for key, value in result.items() if key not in _RESULT_FIELDS}
    if rest:
        message.result_json = json.dumps(rest, default=str)
    return message


def agent_frame(message: agent_pb2.AgentMessage) -> dict[str, Any]:
    """The :mod:`.protocol` frame of a worker's protobuf message; ProtocolError when it carries none."""
    kind = message.WhichOneof("message")
    if kind == "register":
        register = message.register
        return {
            "type": "register",
            "version": PROTOCOL_VERSION,
            "name": register.agent_id,
            "capabilities": list(register.capabilities) or ["shell", "python"],
            "max_concurrent": register.capacity if register.capacity else 5,
            "labels": dict(register.labels),
            "worker_version": register.version,
            "runtimes": list(register.runtimes),
        }
    if kind == "heartbeat":
        return {"type": "heartbeat", "running": message.heartbeat.running, "queued": message.heartbeat.queued}
    if kind == "task_log":
        log = message.task_log
        return {
            "type": "log",
            "request_id": _request_id(log),
            "stream": "stderr" if log.is_stderr else "stdout",
            "line": log.output,
        }
    if kind == "task_result":
        return _result_frame(message.task_result)
    if kind == "task_started":
        started = message.task_started
        stamp = started.started_at
        frame: dict[str, Any] = {"type": "started", "request_id": _request_id(started)}
        if started.HasField("started_at") and (stamp.seconds or stamp.nanos):
            frame["started_at"] = stamp.seconds + stamp.nanos / 1e9
        return frame
    raise ProtocolError(
        "the message carries none of register, heartbeat, task_started, task_result, task_log"
    )


def _result_frame(message: task_pb2.TaskResult) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if message.result_json:
        # the WebSocket frame's own checks (valid JSON, an object, at most MAX_NESTING deep): JSON
        # nested past Python's recursion limit is refused here instead of ending the stream
        try:
            extra = decode(message.result_json)
        except ProtocolError as exc:
            detail = str(exc).removeprefix("frame ")
            raise ProtocolError(f"task_result field 'result_json' {detail}") from None
    if message.no_exit_code and set(extra) == {"value"}:
        result: Any = extra["value"]
    else:
        result = {
            "exit_code": None if message.no_exit_code else message.exit_code,
            "stdout": message.stdout,
            "stderr": message.stderr,
            "timed_out": message.timed_out,
            "cancelled": message.cancelled,
            "truncated": message.truncated,
            "duration": message.duration,
            **extra,
        }
    success, error, error_type = message.success, message.error or None, message.error_type or None
    if not success and error_type is None and not message.no_exit_code:
        # only the seed's fields (an agent built from seed 002's proto): the exit code decides
        success = message.exit_code == 0
        if not success:
            error, error_type = error or f"exit code {message.exit_code}", "remote_error"
    frame: dict[str, Any] = {
        "type": "result",
        "request_id": _request_id(message),
        "success": success,
        "result": result,
        "error": None if success else error,
    }
    if error_type and not success:
        frame["error_type"] = error_type
    return frame


# ---------------------------------------------------------------------------------------------- hub -> agent


def server_message(frame: dict[str, Any]) -> agent_pb2.ServerMessage:
    """The protobuf message for a hub frame (``registered``, ``execute``, ``cancel``, ``error``)."""
    kind = frame.get("type")
    if kind == "registered":
        return agent_pb2.ServerMessage(
            register_response=agent_pb2.Response(
                success=True,
                message=f"registered as {frame['name']!r}",
                heartbeat_interval=frame["heartbeat_interval"],
                heartbeat_timeout=frame["heartbeat_timeout"],
                max_message_bytes=frame["max_message_bytes"],
            )
        )
    if kind == "execute":
        timeout = frame.get("timeout")
        request = task_pb2.TaskRequest(
            **_ids(frame),
            env=frame.get("env") or {},
            trace=frame.get("trace") or {},
        )
        if timeout:
            request.timeout = min(_INT32_MAX, math.ceil(timeout))
            request.timeout_seconds = float(timeout)
        runtime = frame.get("runtime")
        if runtime:
            request.type = task_pb2.TASK_TYPE_RUNTIME
            request.runtime.CopyFrom(
                task_pb2.RuntimeCall(
                    runtime=runtime["runtime"],
                    entry=runtime["entry"],
                    command=frame["command"],
                    parameters_json=json.dumps(runtime.get("parameters") or {}, default=str),
                )
            )
        else:
            request.type = _TYPES[frame.get("language", "shell")]
            request.script = frame["command"]
        return agent_pb2.ServerMessage(task_request=request)
    if kind == "cancel":
        return agent_pb2.ServerMessage(
            task_cancel=task_pb2.TaskCancel(**_ids(frame), reason=frame.get("reason", ""))
        )
    if kind == "error":
        return agent_pb2.ServerMessage(
            error=agent_pb2.ErrorMessage(
                message=frame.get("error", ""),
                task_id=frame.get("request_id") or "",
                error_type=frame.get("error_type") or "",
            )
        )
    raise ProtocolError(f"no gRPC message for a {kind!r} frame")


def refusal_message(error_type: str, message: str) -> agent_pb2.ServerMessage:
    """The ``register_response`` that turns a registration down."""
    return agent_pb2.ServerMessage(
        register_response=agent_pb2.Response(success=False, message=message, error_type=error_type)
    )


def server_frame(message: agent_pb2.ServerMessage) -> dict[str, Any]:
    """The :mod:`.protocol` frame of a hub's protobuf message (on the worker)."""
    kind = message.WhichOneof("message")
    if kind == "register_response":
        response = message.register_response
        if not response.success:
            frame: dict[str, Any] = {"type": "error", "error": response.message}
            if response.error_type:
                frame["error_type"] = response.error_type
            return frame
        return {
            "type": "registered",
            "heartbeat_interval": response.heartbeat_interval or 5.0,
            "heartbeat_timeout": response.heartbeat_timeout,
            "max_message_bytes": response.max_message_bytes or None,
        }
    if kind == "heartbeat_ack":
        return {"type": "heartbeat_ack"}
    if kind == "task_request":
        request = message.task_request
        timeout = request.timeout_seconds or request.timeout or None
        frame = {
            "type": "execute",
            "request_id": _request_id(request),
            "task_id": request.task_id,
            "command": request.script,
            "timeout": timeout,
            "env": dict(request.env),
            "trace": dict(request.trace),
        }
        if request.type == task_pb2.TASK_TYPE_RUNTIME:
            call = request.runtime
            try:
                parameters = json.loads(call.parameters_json or "{}")
            except ValueError:
                parameters = call.parameters_json  # not an object: check_execute refuses it
            frame["command"] = call.command
            frame["language"] = "runtime"
            frame["runtime"] = {"runtime": call.runtime, "entry": call.entry, "parameters": parameters}
        else:
            frame["language"] = _LANGUAGES.get(request.type, f"type {request.type}")
        return frame
    if kind == "task_cancel":
        return {
            "type": "cancel",
            "request_id": _request_id(message.task_cancel),
            "reason": message.task_cancel.reason,
        }
    if kind == "error":
        error = message.error
        frame = {"type": "error", "error": error.message}
        if error.task_id:
            frame["request_id"] = error.task_id
        if error.error_type:
            frame["error_type"] = error.error_type
        return frame
    return {"type": "unknown"}
