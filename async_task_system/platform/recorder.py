"""The platform's records of tasks: listeners that turn task, start, output and agent events into rows.

A :class:`TaskRecorder` follows the manager's public task events, the bridge's start and output
lines, and the router's joined/left events. None of its callbacks touch the database: they hand
changes to the :class:`~.record_writer.RecordWriter` and live lines to the
:class:`~.live_logs.LogBroker`, and keep in memory what the platform knows of each unfinished
recorded task (status, agent, recent lines for SSE catch-up).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..core.manager import TaskManager
from ..core.tasks import TaskInfo, TaskKind, TaskStatus
from ..remote.bridge import REMOTE_TARGET_NAME, RemoteExecutionManager
from .interface import SCRIPT_TARGET, NoAgentAvailable, iso_time
from .live_logs import LogBroker
from .record_writer import RecordWriter
from .store import cap_text

__all__ = ["TaskRecorder", "is_recorded", "new_task_row"]

_LIVE_BUFFER = 2000  # recent output lines kept in memory per live task, for SSE catch-up


@dataclass
class _Live:
    """What the platform keeps in memory about an unfinished task of its manager."""

    status: str
    source: str
    agent_id: str | None = None
    seq: int = 0
    lines: int = 0
    log_truncated: bool = False
    request_id: str | None = None
    process_started: bool = False  # the agent reported the current attempt's process start
    started_at: float | None = None  # when, by the agent's report
    recent: deque[tuple[int, dict[str, Any]]] = field(default_factory=lambda: deque(maxlen=_LIVE_BUFFER))


class TaskRecorder:
    """Records the platform's tasks (REST scripts and ``remote_execute`` commands) as rows.

    Its listeners (:meth:`on_task`, :meth:`on_start`, :meth:`on_log`, :meth:`on_agent`) may be called
    from any thread; the platform registers them on the manager, the bridge and the router.
    """

    def __init__(
        self,
        manager: TaskManager,
        bridge: RemoteExecutionManager,
        writer: RecordWriter,
        broker: LogBroker,
        *,
        max_output_chars: int = 1_000_000,
        max_log_lines: int = 10_000,
    ) -> None:
        self.manager = manager
        self.bridge = bridge
        self.writer = writer
        self.broker = broker
        self.max_output_chars = max_output_chars
        self.max_log_lines = max_log_lines
        self._lock = threading.Lock()
        self._live: dict[str, _Live] = {}
        self._chosen: dict[str, str] = {}  # task id -> the agent its current attempt was sent to

    # ------------------------------------------------------------------ what the platform asks

    def choose(self, task_id: str, agent: str) -> None:
        """Note the agent a task's current attempt goes to (its listener may not have seen it yet)."""
        with self._lock:
            self._chosen[task_id] = agent

    def is_live(self, task_id: str) -> bool:
        """Whether ``task_id`` is a recorded task that has not finished."""
        with self._lock:
            return task_id in self._live

    def recent_lines(self, task_id: str, after: int) -> tuple[list[tuple[int, dict[str, Any]]], bool]:
        """Output lines of a live task still in memory numbered above ``after``, and whether it is live."""
        with self._lock:
            live = self._live.get(task_id)
            if live is None:
                return [], False
            return [(seq, payload) for seq, payload in live.recent if seq > after], True

    def live_fields(self, task_id: str) -> dict[str, Any] | None:
        """What the platform knows now of a live task's status and process start (the store may be
        a batch behind), or None for a task that is not live."""
        with self._lock:
            live = self._live.get(task_id)
            if live is None:
                return None
            fields: dict[str, Any] = {"status": live.status}
            if live.process_started:
                fields["started_at"] = live.started_at
            return fields

    def overlay_live(self, tasks: Iterable[TaskInfo], out: dict[str, dict[str, Any]]) -> None:
        """Put what the platform knows now of live ``tasks`` (the store may be a batch behind) into
        ``out``, the timeline's overrides by task id."""
        with self._lock:
            for info in tasks:
                live = self._live.get(info.id)
                if live is None:
                    continue
                entry = out.setdefault(info.id, {"label": f"{live.agent_id or '(any agent)'}: "})
                entry["status"] = live.status
                if live.process_started:
                    entry["started_at"] = live.started_at
                elif live.status in ("pending", "queued", "dispatched"):
                    entry["started_at"] = None  # not started yet: no bar

    # ------------------------------------------------------------------ listeners (any thread)

    def on_task(self, info: TaskInfo) -> None:
        if not is_recorded(info):
            return
        writer = self.writer
        status = info.status
        with self._lock:
            live = self._live.get(info.id)
            if live is None:
                live = self._new_record(info, writer)
            fields: dict[str, Any] = {"updated_at": time.time(), "attempt": max(1, info.attempts)}
            ended = status.is_terminal
            if status is TaskStatus.PENDING:
                if info.attempts:  # a failed attempt waits for its retry
                    live.status = "queued"
                    live.process_started = False
                    live.started_at = None
                    fields.update(status="queued", **_error_fields(info))
            elif status is TaskStatus.RUNNING:
                if live.status in ("pending", "queued"):
                    first = live.status == "pending"
                    live.status = "queued"
                    fields.update(status="queued")
                    if first and not live.process_started:
                        fields.update(queued_at=time.time(), started_at=info.started_at)
                    elif first:
                        fields.update(queued_at=time.time())
            elif status is TaskStatus.WAITING_REMOTE:
                live.agent_id = self._chosen.get(info.id, live.agent_id)
                fields.update(dispatched_at=time.time(), agent_id=live.agent_id)
                if live.status in ("pending", "queued"):  # not "running": its output may have come first
                    live.status = "dispatched"
                    fields["status"] = "dispatched"
            else:
                live.agent_id = self._chosen.pop(info.id, live.agent_id)
                fields.update(self._final_fields(info, live))
                self._live.pop(info.id, None)
            if status is not TaskStatus.PENDING or info.attempts:
                writer.update(info.id, fields, ended=ended)
        if ended and info.name == SCRIPT_TARGET:
            # A REST task's outcome lives in the store: reading it here lets the manager drop it from
            # memory past its retention (a task nobody read is kept forever). The LLM reads its own.
            self._check(info.id)

    def _new_record(self, info: TaskInfo, writer: RecordWriter) -> _Live:
        """Start tracking a task and queue its row (lock held)."""
        row = new_task_row(info)
        live = _Live(status="pending", source=row["source"], agent_id=row["agent_id"])
        self._live[info.id] = live
        writer.create(row)
        return live

    def _final_fields(self, info: TaskInfo, live: _Live) -> dict[str, Any]:
        """The record's columns for a finished task (lock held)."""
        request_id = self.bridge.request_for_task(info.id)
        outcome = self.bridge.outcome(request_id) if request_id else None
        result = outcome.result if outcome is not None else info.result
        result = result if isinstance(result, dict) else {}
        error_type = info.error.type if info.error is not None else None
        if info.status is TaskStatus.COMPLETED:
            status = "completed"
        elif info.status is TaskStatus.CANCELLED or error_type == "cancelled":
            status = "cancelled"
        elif error_type == "worker_lost":
            status = "lost"
        elif error_type == "timeout" or result.get("timed_out"):
            status = "timed_out"
        else:
            status = "failed"
        fields: dict[str, Any] = {
            "status": status,
            "completed_at": info.finished_at or time.time(),
            "cancelled": status == "cancelled",
            "timed_out": status == "timed_out",
            "lost": status == "lost",
            # the agent it was sent to (from its connection), never what the answer claims
            # (the answer's own "worker" only when no transport sent it: a caller delivering itself)
            "agent_id": (outcome.worker if outcome is not None else None) or live.agent_id or _named(result),
            "request_id": request_id,
            **_error_fields(info),
        }
        if "exit_code" in result:
            fields["exit_code"] = result.get("exit_code")
        truncated = bool(result.get("truncated"))
        for stream in ("stdout", "stderr"):
            text = result.get(stream)
            if isinstance(text, str):
                if len(text) > self.max_output_chars:
                    text, truncated = text[: self.max_output_chars], True
                fields[stream] = cap_text(text)
        fields["truncated"] = truncated
        return fields

    def _live_for(self, task_id: str, writer: RecordWriter) -> _Live | None:
        """The live entry of an unfinished recorded task, started from the manager if the task's
        events have not reached this listener yet (lock held); None for a task not to record."""
        live = self._live.get(task_id)
        if live is None:
            # Task events reach listeners in order but possibly later than output lines and starts
            # reach these (another thread may be delivering): start the record from the manager.
            info = self._check(task_id)
            if info is None or not is_recorded(info) or info.status.is_terminal:
                return None
            live = self._new_record(info, writer)
        return live

    def on_start(self, task_id: str | None, request_id: str, started_at: float) -> None:
        """The agent spawned the process of the task's current attempt: ``running`` from that moment."""
        writer = self.writer
        if task_id is None:
            return
        with self._lock:
            live = self._live_for(task_id, writer)
            if live is None:
                return
            live.process_started = True
            live.started_at = started_at
            live.request_id = request_id
            fields: dict[str, Any] = {
                "started_at": started_at,
                "request_id": request_id,
                "updated_at": time.time(),
            }
            changed = live.status in ("pending", "queued", "dispatched")
            if changed:
                live.status = "running"
                fields["status"] = "running"
            writer.update(task_id, fields)
        self.broker.publish(task_id, "status", {"status": "running", "started_at": iso_time(started_at)})

    def on_log(self, task_id: str | None, request_id: str, stream: str, line: str) -> None:
        writer = self.writer
        if task_id is None:
            return
        now = time.time()
        became_running = False
        with self._lock:
            live = self._live_for(task_id, writer)
            if live is None:
                return
            fields: dict[str, Any] = {}
            if live.status in ("pending", "queued", "dispatched"):  # an agent that sends no start event
                live.status = "running"
                fields.update(status="running", updated_at=now)
                became_running = True
            if live.request_id != request_id:
                live.request_id = request_id
                fields["request_id"] = request_id
            if live.lines >= self.max_log_lines:
                if not live.log_truncated:
                    live.log_truncated = True
                    fields["log_truncated"] = True
                line = None  # type: ignore[assignment]
            if line is not None:
                live.seq += 1
                live.lines += 1
                seq = live.seq
                text = cap_text(line, 64 * 1024) or ""
                if not writer.log(
                    {"task_id": task_id, "seq": seq, "stream": stream, "line": text, "ts": now}
                ):
                    live.log_truncated = True
                    fields["log_truncated"] = True
                    line = None  # type: ignore[assignment]
                else:
                    payload = {"stream": stream, "line": text, "timestamp": now}
                    live.recent.append((seq, payload))
            if fields:
                writer.update(task_id, fields)
        if became_running:
            self.broker.publish(task_id, "status", {"status": "running", "started_at": None})
        if line is not None:
            self.broker.publish(task_id, "log", (seq, payload))

    def _check(self, task_id: str) -> TaskInfo | None:
        try:
            return self.manager.check(task_id)
        except Exception:  # unknown or dropped: not a task to record
            return None

    def on_agent(self, event: str, info: dict[str, Any]) -> None:
        writer = self.writer
        now = time.time()
        online = event == "joined"
        writer.agent(
            {
                "agent_id": info["name"],
                "labels": info.get("labels", {}),
                "capabilities": info.get("capabilities", []),
                "capacity": info.get("max_concurrent", 1),
                "version": info.get("version"),
                "transport": info.get("transport", "ws"),
                "state": "online" if online else "offline",
                "first_seen": now,
                "last_seen": info.get("last_seen", now),
                "connected_at": info.get("connected_at", now),
                "disconnected_at": None if online else now,
                "last_reason": None if online else info.get("reason"),
            }  # fmt: skip
        )


def new_task_row(info: TaskInfo) -> dict[str, Any]:
    """The row a recorded task starts with (times as POSIX seconds): a REST task's script, or the
    command of an LLM's ``remote_execute`` call."""
    arguments = info.arguments
    if info.name == SCRIPT_TARGET:
        source, language, script = "rest", arguments.get("type", "shell"), arguments.get("script", "")
        agent, selector = arguments.get("agent_id"), arguments.get("labels") or {}
    else:
        source, language, script = "llm", arguments.get("language") or "shell", arguments.get("command", "")
        agent, selector = arguments.get("worker"), arguments.get("labels") or {}
    return {
        "task_id": info.id,
        "agent_id": agent,
        "type": language if language in ("shell", "python") else "shell",
        "script": cap_text(script),
        "timeout": arguments.get("timeout"),
        "status": "pending",
        "exit_code": None,
        "stdout": "",
        "stderr": "",
        "truncated": False,
        "error": None,
        "attempt": 1,
        "cancelled": False,
        "timed_out": False,
        "lost": False,
        "labels": dict(selector),
        "created_at": info.created_at,
        "updated_at": time.time(),
        "queued_at": None,
        "dispatched_at": None,
        "started_at": None,
        "completed_at": None,
        "source": source,
        "error_type": None,
        "retries": info.retries,
        "request_id": None,
        "log_truncated": False,
    }  # fmt: skip


def is_recorded(info: TaskInfo) -> bool:
    """Whether the platform keeps a record of this task: REST scripts and ``remote_execute`` commands."""
    return info.kind is TaskKind.REMOTE and info.name in (SCRIPT_TARGET, REMOTE_TARGET_NAME)


def _named(result: Mapping[str, Any]) -> str | None:
    worker = result.get("worker")
    return worker[:128] if isinstance(worker, str) and worker else None


def _error_fields(info: TaskInfo) -> dict[str, Any]:
    error = info.error
    if error is None:
        return {"error": None, "error_type": None}
    kind = "no_agent" if error.type == NoAgentAvailable.__name__ else error.type
    return {"error": cap_text(error.message, 4000), "error_type": kind[:64]}
