"""The platform's REST API (FastAPI): seed 002's task routes plus agents, cancel, live logs, timeline.

``create_app(platform)`` builds the app; :class:`~.service.Platform` serves it on uvicorn, or you
mount it yourself. Every route but ``/healthz`` and the static dashboard needs
``Authorization: Bearer <token>`` -- checked (``hmac.compare_digest``) from the request line and
headers before any of the body is read; ``/openapi.json`` too (no docs UI is served: it would load
scripts from a CDN). A body over ``max_body_bytes`` is refused with 413 before it is parsed, from its
``Content-Length`` or, when chunked, as soon as it passes the limit. Every error is JSON:
``{"error": "<what went wrong>", "detail": <what to fix, or context>}``.

=======================================  =====================================================
``POST /tasks``                          201 + the record; 404 unknown agent, 409 offline agent /
                                         no agent matches the labels, 422 bad input, 413 too big,
                                         415 without ``Content-Type: application/json``
``GET /tasks/{task_id}``                 the record, or 404
``GET /tasks?agent_id=&status=&type=``   a JSON array, newest first; ``limit`` (default 100,
                                         at most 1000), ``offset``; ``X-Total-Count`` header
``POST /tasks/{task_id}/cancel``         200 + the record; 409 if it had finished
``GET /tasks/{task_id}/logs``            ``text/event-stream``: ``status`` and ``log`` events (id = line number),
                                         then ``end`` with the final record; resumes after
                                         ``Last-Event-ID`` / ``?last_event_id=``
``GET /agents``                          connected agents, then offline ones (``credential``:
                                         whether each has a token of its own)
``POST /agents/{name}/token``            201 + ``{agent_id, token, created_at, replaced}``: a new
                                         token for the agent, shown this once (the store keeps
                                         its SHA-256); its live connection is closed
``DELETE /agents/{name}/token``          200: revoked, its live connection closed; 404 if none
``GET /timeline``                        SVG of the platform manager's tasks (``?limit=``)
``GET /healthz``                         ``{"status": "ok"}`` (no token)
=======================================  =====================================================
"""

from __future__ import annotations

import asyncio
import inspect
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..core.compat import TIMEOUT_ERRORS
from ..http_front import FrontGuard, FrontLimits, error_response
from .interface import PlatformAPI, PlatformError, is_terminal, iso_time

__all__ = ["create_app", "TaskCreate", "DASHBOARD"]

DASHBOARD = Path(__file__).with_name("dashboard")
"""The web dashboard's static files, served at ``/dashboard/`` without a token when the directory exists."""

Status = Literal[
    "pending", "queued", "dispatched", "running", "completed", "failed", "cancelled", "timed_out", "lost"
]
MAX_OFFSET = 1_000_000_000
"""``GET /tasks?offset=`` at most (larger: 422)."""
MAX_LINE = 1_000_000_000_000
"""A log line number (``Last-Event-ID``, ``?last_event_id=``) at most (larger: 422)."""
# FastAPI 0.16x checks per request whether OpenTelemetry providers are configured (5 % of a POST's
# time here); the platform's tasks are traced by async_task_system.observe, not per HTTP request.
_NO_NATIVE_TELEMETRY = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI).parameters
    else {}
)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_LABEL = re.compile(r"[A-Za-z0-9_.\-/]{1,63}\Z")


class TaskCreate(BaseModel):
    """``POST /tasks``: seed 002's ``{agent_id, type, script, timeout}``, or ``labels`` instead of ``agent_id``."""

    model_config = ConfigDict(extra="forbid")

    agent_id: str | None = Field(None, min_length=1, max_length=128, description="The agent to run on.")
    labels: dict[str, str] | None = Field(
        None,
        max_length=32,
        description="Run on an online agent carrying all these labels (instead of agent_id).",
    )
    type: Literal["shell", "python"] = Field(description="'shell' (sh -c) or 'python'.")
    script: str = Field(min_length=1, max_length=512 * 1024, description="The script's text.")
    timeout: float | None = Field(
        None, gt=0, le=86400, strict=True, description="Seconds the script may run (default 60)."
    )
    env: dict[str, str] | None = Field(
        None, max_length=128, description="Environment variables of the script."
    )
    retries: int = Field(0, ge=0, le=10, strict=True, description="Re-runs after a lost agent or a failure.")

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name in value or {}:
            if not _ENV_NAME.match(name):
                raise ValueError(f"environment variable names are letters, digits and '_', got {name!r}")
        return value

    @field_validator("labels")
    @classmethod
    def _label_names(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name in value or {}:
            if not _LABEL.match(name):
                raise ValueError(f"label names are 1-63 letters, digits, '_', '.', '-', '/', got {name!r}")
        return value

    @model_validator(mode="after")
    def _one_target(self) -> TaskCreate:
        if (self.agent_id is None) == (not self.labels):
            raise ValueError(
                "give exactly one of agent_id (an agent's name) or labels (a non-empty selector)"
            )
        return self


# ---------------------------------------------------------------------------------------------- guard

RequestGuard = FrontGuard
"""The token and body-size middleware (one implementation for both servers: :mod:`..http_front`)."""


# ---------------------------------------------------------------------------------------------- app


def create_app(platform: PlatformAPI) -> FastAPI:
    """The REST API of ``platform`` (a started :class:`~.service.Platform`, or anything with its
    :class:`~.interface.PlatformAPI`)."""
    app = FastAPI(
        title="async_task_system fleet platform",
        description="The fleet management platform: send shell and Python scripts to agents, read the records. "
        "Every route but /healthz needs 'Authorization: Bearer <token>'.",
        version="1",
        docs_url=None,
        redoc_url=None,
        **_NO_NATIVE_TELEMETRY,
    )
    dashboard = DASHBOARD.is_dir()

    def public(_method: str, path: str) -> bool:
        return path == "/healthz" or (dashboard and (path == "/" or path.startswith("/dashboard")))

    app.add_middleware(
        FrontGuard,
        token=platform.token,
        max_body_bytes=platform.max_body_bytes,
        public=public,
        max_requests=platform.max_requests,
        body_timeout=(platform.http_limits or FrontLimits()).body_timeout,
    )
    _add_error_handlers(app)
    _add_task_routes(app, platform)
    _add_other_routes(app, platform)
    if dashboard:
        from fastapi.staticfiles import StaticFiles

        app.mount("/dashboard", StaticFiles(directory=str(DASHBOARD), html=True), name="dashboard")

        @app.get("/", include_in_schema=False)
        def root() -> RedirectResponse:
            return RedirectResponse("/dashboard/")

    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(PlatformError)
    async def platform_error(_request: Request, exc: PlatformError) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            return error_response(404, "not found", {"path": request.url.path})
        if exc.status_code == 405:
            return error_response(
                405, "method not allowed", {"method": request.method, "path": request.url.path}
            )
        return error_response(exc.status_code, str(exc.detail), None, dict(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        for problem in errors:
            if problem.get("type") == "json_invalid":
                context = problem.get("ctx") or {}
                return error_response(
                    400, "body is not valid JSON", context.get("error") or problem.get("msg")
                )
        detail = [
            {
                "field": ".".join(str(part) for part in problem.get("loc", ()) if part != "body") or "body",
                "message": problem.get("msg", "invalid"),
            }
            for problem in errors
        ]
        return error_response(
            422, "invalid request: " + "; ".join(f"{d['field']}: {d['message']}" for d in detail), detail
        )

    @app.exception_handler(Exception)
    async def crashed(_request: Request, exc: Exception) -> JSONResponse:
        return error_response(500, "internal error", type(exc).__name__)


async def require_json(request: Request) -> None:
    """A JSON body must say so: ``Content-Type: application/json`` (or ``application/*+json``), else 415.

    ``curl -d`` sends ``application/x-www-form-urlencoded``; guessing that such a body is JSON would
    make the media type meaningless, and let a cross-origin page post form or text bodies without a
    CORS preflight. The 415 names the fix instead of a confusing "should be a valid dictionary".
    ``async`` although it awaits nothing: FastAPI runs a sync dependency on a worker thread, a
    hand-off that cost more than the check.
    """
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not (media.startswith("application/") and media.endswith("+json")):
        raise PlatformError(415, "send Content-Type: application/json", {"content_type": media or None})


def _add_task_routes(app: FastAPI, platform: PlatformAPI) -> None:
    @app.post(
        "/tasks", status_code=201, summary="Send a script to an agent", dependencies=[Depends(require_json)]
    )
    async def create_task(body: TaskCreate) -> JSONResponse:
        # On the event loop: a worker thread's hand-off cost more than the whole submission.
        record = await platform.submit_script_async(
            body.type, body.script, timeout=body.timeout, agent_id=body.agent_id, labels=body.labels,
            env=body.env, retries=body.retries,
        )  # fmt: skip
        return JSONResponse(record, status_code=201)

    @app.get("/tasks", summary="List task records, newest first")
    def list_tasks(
        agent_id: str | None = Query(None, max_length=128),
        status: Status | None = None,
        type: Literal["shell", "python"] | None = None,
        limit: int = Query(100, ge=1, le=1000),
        offset: int = Query(0, ge=0, le=MAX_OFFSET),
    ) -> JSONResponse:
        _manager, store, _writer = platform.require()
        filters = {"agent_id": agent_id, "status": status, "type": type}
        records = [r.to_dict() for r in store.tasks.list(**filters, limit=limit, offset=offset)]
        total = store.tasks.count(**filters)
        return JSONResponse(records, headers={"X-Total-Count": str(total)})

    @app.get("/tasks/{task_id}", summary="One task record")
    def get_task(task_id: str) -> JSONResponse:
        return JSONResponse(_record(platform, task_id))

    @app.post("/tasks/{task_id}/cancel", summary="Cancel a task (kills its script on the agent)")
    def cancel_task(task_id: str) -> JSONResponse:
        return JSONResponse(platform.cancel(task_id))

    @app.get(
        "/tasks/{task_id}/logs",
        summary="Live output as Server-Sent Events",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}}},
    )
    async def task_logs(
        request: Request, task_id: str, last_event_id: int | None = Query(None, ge=0, le=MAX_LINE)
    ) -> Response:
        header = request.headers.get("last-event-id")
        after = last_event_id or 0
        if header is not None:
            text = header.strip()
            if not (text.isdigit() and len(text) <= len(str(MAX_LINE)) and int(text) <= MAX_LINE):
                return error_response(
                    422,
                    f"invalid request: Last-Event-ID must be a line number from 0 to {MAX_LINE}",
                    header[:40],
                )
            after = int(text)
        subscriber = platform.broker.subscribe(task_id)
        if subscriber is None:
            return error_response(503, "too many live log streams", {"max": platform.broker.max_clients})
        try:
            record = await run_in_threadpool(_record, platform, task_id)
        except BaseException:
            platform.broker.unsubscribe(subscriber)
            raise
        return StreamingResponse(
            _events(platform, subscriber, task_id, after, record),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


def _add_other_routes(app: FastAPI, platform: PlatformAPI) -> None:
    @app.get("/agents", summary="Agents: connected ones, then offline ones")
    def agents() -> JSONResponse:
        return JSONResponse(platform.agents())

    @app.post("/agents/{name}/token", status_code=201, summary="Issue an agent its own token (shown once)")
    def issue_token(name: str) -> JSONResponse:
        return JSONResponse(
            platform.issue_token(name), status_code=201, headers={"Cache-Control": "no-store"}
        )

    @app.delete("/agents/{name}/token", summary="Revoke an agent's token and close its connection")
    def revoke_token(name: str) -> JSONResponse:
        return JSONResponse(platform.revoke_token(name))

    @app.get("/timeline", summary="SVG timeline of the platform manager's tasks", response_class=Response)
    def timeline(limit: int = Query(500, ge=1, le=5000)) -> Response:
        from ..observe.timeline import Timeline

        manager, _store, _writer = platform.require()
        tasks = sorted(manager.list(), key=lambda info: info.created_at)[-limit:]
        # the records' statuses and names (what the table shows), not the manager's waiting_remote
        overrides = platform.timeline_overrides(tasks)
        svg = Timeline(tasks, title="platform tasks", overrides=overrides).to_svg()
        return Response(svg, media_type="image/svg+xml")

    @app.get("/healthz", summary="Liveness (no token needed)")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}


def _record(platform: PlatformAPI, task_id: str) -> dict[str, Any]:
    _manager, store, _writer = platform.require()
    live = platform.live_fields(task_id)  # read first: a task live now is in the store by the read below
    record = store.tasks.get(task_id)
    if record is None:
        raise PlatformError(404, "task not found", {"task_id": task_id})
    found = record.to_dict()
    if live is not None and not is_terminal(found["status"]):
        # the row may be a write batch behind what the agent reported (a start, a first line)
        found["status"] = live["status"]
        if "started_at" in live:  # the agent's report of its process start wins over the attempt's
            found["started_at"] = iso_time(live["started_at"])
    return found


def _log_event(seq: int, payload: dict[str, Any]) -> str:
    return f"id: {seq}\nevent: log\ndata: {json.dumps(payload)}\n\n"


def _status_event(payload: dict[str, Any]) -> str:
    return f"event: status\ndata: {json.dumps(payload)}\n\n"


def _end_event(record: dict[str, Any]) -> str:
    return f"event: end\ndata: {json.dumps(record)}\n\n"


async def _stored_lines(platform: PlatformAPI, task_id: str, after: int) -> AsyncIterator[tuple[int, str]]:
    _manager, store, _writer = platform.require()
    while True:
        rows = await run_in_threadpool(store.logs.after, task_id, after, 1000)
        for row in rows:
            after = row.seq
            yield row.seq, _log_event(row.seq, {"stream": row.stream, "line": row.line, "timestamp": row.ts})
        if len(rows) < 1000:
            return


async def _events(
    platform: PlatformAPI, subscriber: Any, task_id: str, after: int, record: dict[str, Any]
) -> AsyncIterator[str]:
    """The SSE stream: stored lines past ``after``, the record's ``status`` (again when it changes to
    ``running``), lines still in memory, live ones, then ``end``."""
    broker = platform.broker
    try:
        async for seq, text in _stored_lines(platform, task_id, after):
            after = seq
            yield text
        if is_terminal(record["status"]):
            yield _end_event(record)
            return
        yield _status_event({"status": record["status"], "started_at": record.get("started_at")})
        lines, _live = platform.recent_lines(task_id, after)
        for seq, payload in lines:
            after = seq
            yield _log_event(seq, payload)
        while True:
            try:
                kind, payload = await asyncio.wait_for(subscriber.queue.get(), platform.sse_keepalive)
            except TIMEOUT_ERRORS:
                yield ": keepalive\n\n"
                continue
            if kind == "log":
                seq, line = payload
                if seq > after:
                    after = seq
                    yield _log_event(seq, line)
            elif kind == "status":
                yield _status_event(payload)
            elif kind == "end":
                async for seq, text in _stored_lines(platform, task_id, after):
                    after = seq
                    yield text
                yield _end_event(await run_in_threadpool(_record, platform, task_id))
                return
            else:  # the platform stops
                return
            if subscriber.overflow and subscriber.queue.empty():
                yield ": this client fell behind; reconnect with Last-Event-ID to catch up\n\n"
                return
    finally:
        broker.unsubscribe(subscriber)
