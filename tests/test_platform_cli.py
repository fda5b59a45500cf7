"""``async-agent platform`` as a real process: SIGKILL it mid-task, start it again on the same
database: the record is found and reaped, the worker reconnects, new tasks run; SIGTERM stops it."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from _platform import TOKEN, Workers, httpx, post_task, wait_end


class PlatformProcess:
    """``python -m async_task_system platform ...`` with its stdout read line by line on a thread."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "async_task_system", "platform", "--grpc-port", "0", *args],
            env={**os.environ, "ASYNC_AGENT_TOKEN": TOKEN},
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.banner = self.until("start a worker:")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def until(self, needle: str, timeout: float = 60) -> list[str]:
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"the platform exited ({self.process.wait()}) before {needle!r}: {seen}")
            seen.append(line)
            if needle in line:
                return seen

    def address(self, label: str) -> str:
        for line in self.banner:
            match = re.match(rf"\s+{label}\s+(\S+)", line)
            if match:
                return match.group(1)
        raise AssertionError(f"no {label} in {self.banner}")


@pytest.fixture
def cleanup() -> Iterator[list]:
    things: list = []
    yield things
    for thing in things:
        if isinstance(thing, Workers):
            thing.stop_all()
        elif thing.poll() is None:
            thing.kill()
            thing.wait(10)


def _agent_online(http: httpx.Client, name: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # the worker reconnects on its own schedule (back-off up to 1 s)
        if any(a["agent_id"] == name and a["state"] == "online" for a in http.get("/agents").json()):
            return
        time.sleep(0.1)
    raise AssertionError(f"agent {name} did not come online")


def test_sigkill_of_the_platform_mid_task_then_restart_on_the_same_database(database_url, cleanup):
    first = PlatformProcess("--db", database_url, "--http-port", "0", "--ws-port", "0")
    cleanup.append(first.process)
    http_url, ws_url = first.address("REST API"), first.address("WebSocket")
    assert not any(TOKEN in line for line in first.banner)  # given through the environment: not printed
    dashboard = first.address("dashboard")
    assert dashboard == f"{http_url}/dashboard/"
    assert any("(sign in with your token, $ASYNC_AGENT_TOKEN)" in line for line in first.banner)
    page = httpx.get(dashboard)  # no token needed for the page itself; it asks for one
    assert page.status_code == 200 and 'id="token"' in page.text
    workers = Workers()
    cleanup.append(workers)
    workers.start(ws_url, "survivor", "--reconnect-max", "1")
    headers = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=http_url, headers=headers, timeout=30) as http:
        _agent_online(http, "survivor")
        task = post_task(
            http, agent_id="survivor", type="shell", script="echo started; sleep 60", timeout=120
        )
        with http.stream("GET", f"/tasks/{task['task_id']}/logs") as response:
            for line in response.iter_lines():
                if line.startswith("event: log"):
                    break
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)

    http_port, ws_port = http_url.rsplit(":", 1)[1], ws_url.rsplit(":", 1)[1]
    second = PlatformProcess("--db", database_url, "--http-port", http_port, "--ws-port", ws_port)
    cleanup.append(second.process)
    assert any("1 task(s) left unfinished" in line for line in second.banner)
    with httpx.Client(base_url=http_url, headers=headers, timeout=30) as http:
        record = http.get(f"/tasks/{task['task_id']}").json()
        assert record["status"] == "lost" and record["error_type"] == "interrupted"
        assert record["agent_id"] == "survivor" and record["completed_at"]
        _agent_online(http, "survivor")  # the same worker process, reconnected
        assert workers.processes["survivor"].poll() is None
        again = post_task(http, agent_id="survivor", type="python", script="print(6 * 7)", timeout=30)
        assert wait_end(http, again["task_id"])[1]["stdout"] == "42\n"
        assert http.get("/tasks").headers["X-Total-Count"] == "2"
    second.process.send_signal(signal.SIGTERM)
    assert second.process.wait(30) == 0
    assert second.until("stopped")


def test_a_generated_token_is_printed_once_and_guards_the_api(tmp_path, cleanup):
    env_free = {k: v for k, v in os.environ.items() if k != "ASYNC_AGENT_TOKEN"}
    process = subprocess.Popen(
        [sys.executable, "-m", "async_task_system", "platform", "--grpc-port", "0", "--db", f"sqlite:///{tmp_path / 'x.db'}",
         "--http-port", "0", "--ws-port", "0"],
        env=env_free, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    cleanup.append(process)
    assert process.stdout is not None
    banner = [process.stdout.readline() for _ in range(7)]
    token = next(line.split()[1] for line in banner if line.strip().startswith("token"))
    url = next(line.split()[2] for line in banner if "REST API" in line)
    assert f"ASYNC_AGENT_TOKEN={token} async-agent worker --hub ws://127.0.0.1:" in banner[-1]
    dashboard = next(line for line in banner if line.strip().startswith("dashboard"))
    assert dashboard.split()[1] == f"{url}/dashboard/" and token not in dashboard
    assert "(sign in with the token printed below)" in dashboard
    assert httpx.get(f"{url}/tasks").status_code == 401
    assert httpx.get(f"{url}/tasks", headers={"Authorization": f"Bearer {token}"}).json() == []
    process.send_signal(signal.SIGINT)
    assert process.wait(30) == 0
