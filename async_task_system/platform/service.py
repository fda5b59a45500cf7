"""Platform: seed 002's fleet platform in one object -- store, task manager, both transports, REST API.

One :class:`Platform` composes:

* a :class:`~.store.Store` (SQLite file by default, PostgreSQL by URL) holding every task record,
  every agent ever seen, and tasks' output lines;
* a ``TaskManager`` (its own, or one passed in -- e.g. an agent's, so that what the LLM sends with
  ``remote_execute`` / ``submit_task("remote", ...)`` lands in the same records as REST tasks) and
  its remote bridge;
* the WebSocket hub and the gRPC hub on one :class:`~async_task_system.remote.router.WorkerRouter`;
* the REST API (:mod:`.rest`) on uvicorn in a thread, all on 127.0.0.1 by default, behind one token
  shared by workers and REST clients.

Records follow the manager's public task events (a listener) and the bridge's output lines (a log
listener); agents follow the router's joined/left events (:class:`~.recorder.TaskRecorder`). None
of those callbacks touch the database: they hand changes to a :class:`~.record_writer.RecordWriter`
thread that coalesces and writes them in batches, so the hubs' event loops never wait for a disk or
a network round trip. Agent choice and the REST tasks' target are :class:`~.fleet.Fleet`; what
happens at start (reaping, the manager's prefix, the heartbeat, the gRPC hub, the REST API) is
:mod:`.startup`; live log streams are :class:`~.live_logs.LogBroker`.

Statuses of a record: ``pending`` (stored, not started), ``queued`` (choosing an agent, or waiting for
a retry), ``dispatched`` (the command was handed to the router for its agent), ``running`` (the agent
said its process started -- ``started_at`` is that moment -- or, from an agent that sends no start
event, its first output line arrived), then ``completed``, ``failed``, ``cancelled``, ``timed_out`` or ``lost``
(its agent went away mid-task, or the platform died with it in flight).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..core.errors import ManagerClosedError, TaskValidationError
from ..core.manager import TaskManager
from ..core.tasks import TaskInfo, TaskKind
from ..http_front import FrontLimits
from ..remote.bridge import RemoteExecutionManager
from ..remote.protocol import ProtocolError, check_worker_name
from .credentials import AgentTokens
from .fleet import Fleet
from .interface import SCRIPT_TARGET, NoAgentAvailable, PlatformError, is_terminal, labels_match
from .live_logs import LogBroker
from .record_writer import RecordWriter
from .recorder import TaskRecorder, is_recorded, new_task_row
from .startup import Heartbeat, open_manager, reap_unfinished, start_grpc_hub, start_rest
from .store import DEFAULT_URL, Store, task_row_view

if TYPE_CHECKING:
    from ..remote.hub import RemoteHub

__all__ = [
    "Platform",
    "PlatformError",
    "NoAgentAvailable",
    "RecordWriter",
    "LogBroker",
    "SCRIPT_TARGET",
    "labels_match",
    "is_terminal",
    "STORE_WAIT",
]

logger = logging.getLogger(__name__)


STORE_WAIT = 2.0
"""Seconds ``POST /tasks`` waits for its record to be written (a locked database): then it answers
201 with the record it holds, and the writer stores it when the database lets it."""


class Platform:
    """Seed 002's management platform: store, task manager, WebSocket + gRPC hubs, REST API.

    Args:
        db: SQLAlchemy URL of the store (a SQLite file by default, ``postgresql+psycopg://...``).
        manager: a ``TaskManager`` or an ``AsyncAgent`` whose tasks the platform records (its
            ``remote_execute`` calls land in the same records as REST tasks); a new manager by default.
        token: the one secret of workers and REST clients; generated when not given (:attr:`token`).
        agent_tokens: ``"optional"`` (the default): an agent name with a credential (a token of its
            own, :meth:`issue_token`) registers only with that token, any other name with the shared
            token; ``"required"``: every agent needs its own token (the shared one registers none).
        host: interface of every listener; loopback unless you mean to be reached from elsewhere.
        http_port, ws_port, grpc_port: ports (0 picks a free one; read back :attr:`http_url`, ...).
        grpc: also start the gRPC hub (when ``async_task_system.remote.grpc_hub`` is available).
        serve_http: run the REST API on uvicorn in a thread; False to serve ``create_app(platform)``
            yourself.
        max_body_bytes: larger REST request bodies are refused with 413 before being read.
        http_limits: the REST front's connection limits (:class:`~..http_front.FrontLimits`: head
            timeout, connections in all and per address); the defaults when not given.
        max_requests: REST requests served at once (more get 503 with ``Retry-After``).
        max_output_chars: stdout and stderr kept per task record (then ``truncated``).
        max_log_lines: output lines kept per task for live logs (then ``log_truncated``).
        max_sse_clients: live log streams open at once (more get 503).
        sse_keepalive: seconds between ``: keepalive`` comments on an idle log stream.
        default_timeout: seconds a script may run when a REST request gives none.
        heartbeat_interval, heartbeat_timeout, max_message_bytes, register_timeout: the hubs' limits.
        start_timeout: seconds an agent that sends start events may hold a task (with a free slot)
            without starting or answering it; then the attempt fails with ``start_timeout`` (retried
            if the task has retries left). Default: ``heartbeat_timeout + 5``.
        retention: finished REST tasks the platform's own manager keeps in memory (their records stay
            in the store); a manager passed in keeps its own setting.
        stale_after: at start, unfinished records of a platform that is gone are reaped (marked
            ``lost``): one whose process no longer exists on this host, that stopped cleanly, or that
            sent no heartbeat (every ``stale_after / 4`` seconds, at most 10) for this many seconds
            (another host's). A platform still running on the same database keeps its tasks.

    ``start()`` opens everything (and reaps records a dead platform left unfinished), ``stop()``
    closes it; a ``with`` block does both.
    """

    def __init__(
        self,
        db: str = DEFAULT_URL,
        *,
        manager: Any = None,
        token: str | None = None,
        agent_tokens: str = "optional",
        host: str = "127.0.0.1",
        http_port: int = 8080,
        ws_port: int = 8765,
        grpc_port: int = 50051,
        grpc: bool = True,
        serve_http: bool = True,
        max_body_bytes: int = 1 << 20,
        http_limits: FrontLimits | None = None,
        max_requests: int = 256,
        max_output_chars: int = 1_000_000,
        max_log_lines: int = 10_000,
        max_sse_clients: int = 64,
        sse_keepalive: float = 15.0,
        default_timeout: float = 60.0,
        heartbeat_interval: float = 5.0,
        heartbeat_timeout: float = 15.0,
        max_message_bytes: int = 1 << 20,
        register_timeout: float = 10.0,
        start_timeout: float | None = None,
        retention: int = 1000,
        stale_after: float = 60.0,
    ) -> None:
        self.db = db
        self.stale_after = stale_after
        self.heartbeat_every = min(10.0, stale_after / 4)
        self.retention = retention
        self.token = token or secrets.token_urlsafe(24)
        if agent_tokens not in ("optional", "required"):
            raise ValueError(f"agent_tokens must be 'optional' or 'required', got {agent_tokens!r}")
        self.agent_tokens_required = agent_tokens == "required"
        self.tokens: AgentTokens | None = None
        self.host = host
        self.http_port = http_port
        self.ws_port = ws_port
        self.grpc_port = grpc_port
        self.grpc_enabled = grpc
        self.serve_http = serve_http
        self.max_body_bytes = max_body_bytes
        self.http_limits = http_limits
        self.max_requests = max_requests
        self.max_output_chars = max_output_chars
        self.max_log_lines = max_log_lines
        self.sse_keepalive = sse_keepalive
        self.default_timeout = default_timeout
        self.hub_options = {
            "heartbeat_interval": heartbeat_interval,
            "heartbeat_timeout": heartbeat_timeout,
            "max_message_bytes": max_message_bytes,
            "register_timeout": register_timeout,
            "start_timeout": start_timeout,
        }
        self._given = manager
        self.broker = LogBroker(max_sse_clients)
        self.store: Store | None = None
        self.manager: TaskManager | None = None
        self.bridge: RemoteExecutionManager | None = None
        self.ws_hub: RemoteHub | None = None
        self.grpc_hub: Any = None
        self.writer: RecordWriter | None = None
        self.recorder: TaskRecorder | None = None
        self.fleet: Fleet | None = None
        self.reaped: list[str] = []
        self._owns_manager = manager is None
        self._removers: list[Callable[[], None]] = []
        self._http: Any = None
        self._started = False
        self._stopped = False
        self._heartbeat: Heartbeat | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def http_url(self) -> str:
        return f"http://{_host(self.host)}:{self.http_port}"

    @property
    def ws_url(self) -> str:
        return self.ws_hub.url if self.ws_hub is not None else f"ws://{_host(self.host)}:{self.ws_port}"

    @property
    def grpc_url(self) -> str | None:
        return None if self.grpc_hub is None else self.grpc_hub.url

    @property
    def router(self) -> Any:
        """The worker registry both hubs feed."""
        assert self.ws_hub is not None, "start() the platform first"
        return self.ws_hub.router

    def start(self) -> Platform:
        """Open the store (reaping what a dead platform left unfinished), the hubs and the REST API."""
        if self._started:
            raise RuntimeError("this platform was already started; create a new one")
        self._started = True
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        from ..remote.hub import RemoteHub

        self.store = store = Store(self.db)
        self.reaped = reap_unfinished(store, self.stale_after)
        self.tokens = AgentTokens(store.credentials)
        credentials = {"agent_tokens": self.tokens, "require_agent_tokens": self.agent_tokens_required}
        self.writer = RecordWriter(store, self._committed)
        self.manager = manager = open_manager(self._given, store, self.retention)
        self._heartbeat = Heartbeat(store, manager.id_prefix, self.heartbeat_every)
        self.bridge = bridge = manager.remote_manager
        bridge.default_timeout = self.default_timeout
        self.recorder = recorder = TaskRecorder(
            manager, bridge, self.writer, self.broker,
            max_output_chars=self.max_output_chars, max_log_lines=self.max_log_lines,
        )  # fmt: skip
        self.fleet = Fleet(lambda: self.router.workers(), store, recorder, bridge)
        manager.register_target(self.fleet.script_target())
        self._removers.append(manager.add_listener(recorder.on_task))
        self._removers.append(bridge.add_log_listener(recorder.on_log))
        self._removers.append(bridge.add_start_listener(recorder.on_start))
        self.ws_hub = RemoteHub(
            manager, host=self.host, port=self.ws_port, token=self.token, **self.hub_options, **credentials
        )
        self._removers.append(self.ws_hub.router.add_listener(recorder.on_agent))
        self.ws_hub.start()
        self.ws_port = self.ws_hub.port
        if self.grpc_enabled:
            self.grpc_hub = start_grpc_hub(
                manager, self.router, self.host, self.grpc_port, self.token, **self.hub_options, **credentials
            )
            if self.grpc_hub is not None:
                self.grpc_port = int(str(self.grpc_hub.url).rsplit(":", 1)[1])
        if self.serve_http:
            self._http, self.http_port = start_rest(self, self.host, self.http_port, self.http_limits)

    @property
    def http_server(self) -> Any:
        """The REST API's :class:`~..http_front.HttpServer` (``stats()``: connections), or None."""
        return self._http

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the REST API and the hubs (tasks in flight fail ``hub_stopped``), write what is queued."""
        if self._stopped:
            return
        self._stopped = True
        self.broker.close_all()
        if self._http is not None:
            self._http.stop(timeout)
        for hub in (self.grpc_hub, self.ws_hub):
            if hub is not None:
                try:
                    hub.stop()
                except Exception:
                    logger.exception("stopping %r failed", hub)
        if self._owns_manager and self.manager is not None:
            self.manager.shutdown(wait=True, cancel_pending=True, timeout=timeout)
        for remove in self._removers:
            remove()
        self._removers.clear()
        if self.writer is not None:
            self.writer.close(timeout)
        if self._heartbeat is not None:
            self._heartbeat.stop(timeout)
        if self.store is not None:
            if self._owns_manager and self.manager is not None:
                try:  # a clean stop: the next platform need not wait to know this one is gone
                    self.store.prefixes.close(self.manager.id_prefix)
                except Exception:
                    logger.warning("could not mark the platform's id prefix closed", exc_info=True)
            self.store.close()

    def __enter__(self) -> Platform:
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def worker_command(self, name: str = "<NAME>") -> str:
        """The command line that starts a worker for this platform (the token comes from the environment)."""
        return f"ASYNC_AGENT_TOKEN=<TOKEN> async-agent worker --hub {self.ws_url} --name {name}"

    # ------------------------------------------------------------------ REST operations

    def submit_script(
        self,
        type: str,
        script: str,
        *,
        timeout: float | None = None,
        agent_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        retries: int = 0,
    ) -> dict[str, Any]:
        """Store and start a script for ``agent_id`` (or an online agent matching ``labels``); the
        record as stored once its row is written (at most :data:`STORE_WAIT` seconds later).

        Raises :class:`PlatformError`: 404 for an agent never seen, 409 for an agent that is offline or
        cannot run ``type``, or when no online agent matches ``labels``.
        """
        manager, store, writer = self.require()
        if agent_id is not None:
            self._fleet().check_agent(agent_id, type)
        task_id = self._start_script(type, script, timeout, agent_id, labels, env, retries)
        writer.created_written(task_id, STORE_WAIT)  # bounded: a locked database must not hold the client
        record = store.tasks.get(task_id)
        return record.to_dict() if record is not None else {"task_id": task_id, "status": "pending"}

    async def submit_script_async(
        self,
        type: str,
        script: str,
        *,
        timeout: float | None = None,
        agent_id: str | None = None,
        labels: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        retries: int = 0,
    ) -> dict[str, Any]:
        """:meth:`submit_script` for the REST API's event loop: no thread, no read of the row back.

        Returns once the task's row is written (at most :data:`STORE_WAIT` seconds), with the record
        it was created with (status ``pending``). Only an agent that is not connected costs a look
        into the store, on a worker thread.
        """
        manager, _store, writer = self.require()
        if agent_id is not None and not self._fleet().is_online(agent_id, type):
            await asyncio.to_thread(self._fleet().check_agent, agent_id, type)
        task_id = self._start_script(type, script, timeout, agent_id, labels, env, retries)
        await writer.created_written_async(task_id, STORE_WAIT)
        return task_row_view(new_task_row(manager.check(task_id)))

    def _start_script(
        self,
        type: str,
        script: str,
        timeout: float | None,
        agent_id: str | None,
        labels: Mapping[str, str] | None,
        env: Mapping[str, str] | None,
        retries: int,
    ) -> str:
        """Submit a REST task (its agent checked already); its id."""
        manager, _store, _writer = self.require()
        if agent_id is None:
            self._fleet().candidates(labels or {}, type, raise_if_none=True)
        arguments = {
            "type": type, "script": script, "timeout": timeout if timeout is not None else self.default_timeout,
            "agent_id": agent_id, "labels": dict(labels) if labels else None, "env": dict(env) if env else None,
        }  # fmt: skip
        try:
            return manager.submit(TaskKind.REMOTE, SCRIPT_TARGET, arguments, retries=retries)
        except TaskValidationError as exc:
            raise PlatformError(422, f"invalid request: {exc}") from None
        except ManagerClosedError:
            raise PlatformError(503, "the platform is shutting down") from None

    def cancel(self, task_id: str) -> dict[str, Any]:
        """Cancel a task; its record. PlatformError 404 (unknown) or 409 (already finished)."""
        manager, store, writer = self.require()
        record = store.tasks.get(task_id)
        if record is None:
            raise PlatformError(404, "task not found", {"task_id": task_id})
        live = self.recorder is not None and self.recorder.is_live(task_id)
        if not live or not manager.cancel(task_id):
            writer.flush()
            record = store.tasks.get(task_id)
            status = record.status if record is not None else "unknown"
            raise PlatformError(409, "task already finished", {"task_id": task_id, "status": status})
        writer.flush()
        record = store.tasks.get(task_id)
        return record.to_dict() if record is not None else {"task_id": task_id}

    def agents(self) -> list[dict[str, Any]]:
        """Connected agents (from the router), offline ones (from the store), then names that have a
        credential but never connected; ``credential`` says whether each has a token of its own."""
        self.require()
        tokens = self._tokens()
        listed = self._fleet().agents()
        seen = set()
        for agent in listed:
            seen.add(agent["agent_id"])
            agent["credential"] = tokens.has(agent["agent_id"])
        for name in tokens.names():
            if name not in seen:
                listed.append({"agent_id": name, "state": "never_connected", "credential": True})
        return listed

    # ------------------------------------------------------------------ per-agent credentials

    def issue_token(self, name: str) -> dict[str, Any]:
        """A new token for agent ``name`` (shown this once; the store keeps its SHA-256), replacing its
        previous one; the agent's live connection, authorized by a token no longer valid, is closed.
        PlatformError 422 for a name no worker could register."""
        self.require()
        name = self._agent_name(name)
        tokens = self._tokens()
        replaced = tokens.has(name)
        token, row = tokens.issue(name)
        self._disconnect(name, "a new token was issued for this agent")
        return {
            "agent_id": name,
            "token": token,
            "created_at": row.created_at.isoformat(),
            "replaced": replaced,
        }

    def revoke_token(self, name: str) -> dict[str, Any]:
        """Revoke agent ``name``'s token and close its live connection; PlatformError 404 if it has none."""
        self.require()
        name = self._agent_name(name)
        if not self._tokens().revoke(name):
            raise PlatformError(404, "this agent has no token", {"agent_id": name})
        self._disconnect(name, "the agent's token was revoked")
        return {"agent_id": name, "revoked": True}

    def _tokens(self) -> AgentTokens:
        if self.tokens is None:
            raise PlatformError(503, "the platform is not running")
        return self.tokens

    @staticmethod
    def _agent_name(name: str) -> str:
        try:
            return check_worker_name(name)
        except ProtocolError as exc:
            raise PlatformError(422, f"invalid agent name: {exc}", {"agent_id": name[:200]}) from None

    def _disconnect(self, name: str, reason: str) -> None:
        for hub in (self.ws_hub, self.grpc_hub):
            if hub is not None:
                hub.recheck(name, reason)

    def timeline_overrides(self, tasks: list[TaskInfo]) -> dict[str, dict[str, Any]]:
        """What ``/timeline`` shows of recorded tasks instead of the manager's view: the record's
        status (``running`` for a started platform task, not ``waiting_remote``), ``agent: first
        line of the script`` as the label, and the process's start as the bar's start."""
        _manager, store, _writer = self.require()
        recorded = [info for info in tasks if is_recorded(info)]
        out: dict[str, dict[str, Any]] = {}
        for row in store.tasks.many(info.id for info in recorded):
            first = next((line.strip() for line in (row.script or "").splitlines() if line.strip()), "")
            out[row.task_id] = {
                "status": row.status,
                "label": f"{row.agent_id or '(any agent)'}: {first}",
                "started_at": row.started_at.timestamp() if row.started_at is not None else None,
            }
        if (
            self.recorder is not None
        ):  # live tasks: what the platform knows now (the store may be a batch behind)
            self.recorder.overlay_live(recorded, out)
        return out

    def live_fields(self, task_id: str) -> dict[str, Any] | None:
        """A live task's status and process start as the platform knows them now (epoch seconds),
        ahead of the store's row by up to one write batch; None for a task that is not live."""
        return None if self.recorder is None else self.recorder.live_fields(task_id)

    def recent_lines(self, task_id: str, after: int) -> tuple[list[tuple[int, dict[str, Any]]], bool]:
        """Output lines of a live task still in memory numbered above ``after``, and whether it is live."""
        if self.recorder is None:
            return [], False
        return self.recorder.recent_lines(task_id, after)

    def require(self) -> tuple[TaskManager, Store, RecordWriter]:
        """The manager, store and writer of a running platform; PlatformError 503 otherwise."""
        if self.manager is None or self.store is None or self.writer is None or self._stopped:
            raise PlatformError(503, "the platform is not running")
        return self.manager, self.store, self.writer

    def _fleet(self) -> Fleet:
        if self.fleet is None:
            raise PlatformError(503, "the platform is not running")
        return self.fleet

    def _committed(self, task_ids: list[str]) -> None:
        for task_id in task_ids:
            self.broker.publish(task_id, "end")

    def __repr__(self) -> str:
        return f"<Platform {self.http_url} ws={self.ws_url} grpc={self.grpc_url}>"


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
