"""Shared parts of the platform tests: a started Platform, real worker subprocesses, an HTTP client,
and reading a task's live log (SSE) to its end instead of polling its record."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("sqlalchemy")

from async_task_system.platform.service import Platform  # noqa: E402

TOKEN = "platform-test-token-1234"


@contextlib.contextmanager
def running_platform(db: str, **options: Any) -> Iterator[Platform]:
    options = {"token": TOKEN, "http_port": 0, "ws_port": 0, "grpc_port": 0, **options}
    platform = Platform(db, **options).start()
    try:
        yield platform
    finally:
        platform.stop()


class Workers:
    """Worker daemons started as ``python -m async_task_system worker``; killed at the end."""

    def __init__(self) -> None:
        self.processes: dict[str, subprocess.Popen] = {}

    def start(self, hub_url: str, name: str, *extra: str, token: str = TOKEN) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-m", "async_task_system", "worker", "--hub", hub_url, "--name", name, *extra],
            env={**os.environ, "ASYNC_AGENT_TOKEN": token},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.processes[name] = process
        return process

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
            process.wait(10)


def hub_url(platform: Platform, transport: str) -> str:
    return platform.grpc_url if transport == "grpc" else platform.ws_url  # type: ignore[return-value]


def client(platform: Platform, token: str = TOKEN) -> httpx.Client:
    return httpx.Client(base_url=platform.http_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def read_events(response: Any) -> Iterator[tuple[str | None, str, str]]:
    """``(id, event, data)`` of an open SSE response, in order; comments are skipped."""
    event_id, event, data = None, "message", []
    for line in response.iter_lines():
        if line == "":
            if data:
                yield event_id, event, "\n".join(data)
            event_id, event, data = None, "message", []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "id":
                event_id = value
            elif name == "event":
                event = value
            elif name == "data":
                data.append(value)


def wait_end(http: httpx.Client, task_id: str, **headers: str) -> tuple[list[tuple[int, dict]], dict]:
    """Follow a task's live log until its ``end`` event: (the log lines as (seq, payload), final record)."""
    lines: list[tuple[int, dict]] = []
    with http.stream("GET", f"/tasks/{task_id}/logs", headers=headers, timeout=60) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for event_id, event, data in read_events(response):
            if event == "log":
                lines.append((int(event_id or 0), json.loads(data)))
            elif event == "end":
                return lines, json.loads(data)
    raise AssertionError(f"the log stream of {task_id} closed without an end event")


def post_task(http: httpx.Client, **body: Any) -> dict:
    response = http.post("/tasks", json=body)
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture(name="transport", params=["ws", "grpc"])
def transport_fixture(request: pytest.FixtureRequest) -> str:
    """``ws`` or ``grpc``: every transport-parametrized platform test runs over both."""
    return request.param


@pytest.fixture(name="workers")
def workers_fixture() -> Iterator[Workers]:
    """Start worker daemons with ``workers.start(url, name)``; all are killed after the test."""
    started = Workers()
    yield started
    started.stop_all()
