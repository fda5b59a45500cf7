"""The platform's REST API over real HTTP (httpx against uvicorn on loopback), real worker daemons
(subprocesses), on a SQLite file and on the real PostgreSQL (``database_url`` in conftest)."""

from __future__ import annotations

import json
import os
import socket
import threading
import time

import pytest
from _isolation import host_pid
from _platform import (  # noqa: F401  (fixtures)
    TOKEN,
    Workers,
    client,
    hub_url,
    post_task,
    read_events,
    running_platform,
    transport_fixture,
    wait_end,
    workers_fixture,
)


@pytest.fixture
def fleet(tmp_path, workers: Workers):
    """A platform on a SQLite file with one WebSocket agent, 'a1', whose scripts run in ``tmp_path``
    (the sandbox binds it read-write: a script can leave a file there for the test)."""
    with running_platform(f"sqlite:///{tmp_path / 'p.db'}") as platform:
        workers.start(platform.ws_url, "a1", "--workdir", str(tmp_path))
        assert platform.router.wait_for_workers(1, timeout=30)
        with client(platform) as http:
            yield platform, http


def test_seed_002_acceptance_shell_python_timeout_exit_codes_stored_results(database_url, transport, workers):
    with running_platform(database_url) as platform:
        workers.start(hub_url(platform, transport), "agent-001")
        assert platform.router.wait_for_workers(1, timeout=30)
        with client(platform) as http:
            # POST /tasks {agent_id, type, script, timeout} -> 201 and the stored record
            created = post_task(
                http, agent_id="agent-001", type="shell", script="echo 'hello world'", timeout=10
            )
            assert created["agent_id"] == "agent-001" and created["type"] == "shell"
            assert created["status"] in ("pending", "queued", "dispatched", "running", "completed")
            _lines, hello = wait_end(http, created["task_id"])
            assert (hello["status"], hello["exit_code"], hello["stdout"]) == ("completed", 0, "hello world\n")
            assert hello["started_at"] and hello["completed_at"] and hello["created_at"]

            python = post_task(http, agent_id="agent-001", type="python", script="import sys; print(sys.version_info[0])", timeout=10)  # fmt: skip
            _lines, python = wait_end(http, python["task_id"])
            assert (python["status"], python["exit_code"], python["stdout"]) == ("completed", 0, "3\n")

            failing = post_task(http, agent_id="agent-001", type="shell", script="echo oops >&2; exit 3", timeout=10)  # fmt: skip
            _lines, failing = wait_end(http, failing["task_id"])
            assert (failing["status"], failing["exit_code"], failing["stderr"]) == ("failed", 3, "oops\n")

            slow = post_task(http, agent_id="agent-001", type="shell", script="sleep 10", timeout=1)
            _lines, slow = wait_end(http, slow["task_id"])
            assert (
                slow["status"] == "timed_out"
                and slow["timed_out"] is True
                and slow["error_type"] == "timeout"
            )

            # stored results: GET /tasks/{id}, GET /tasks?agent_id= (newest first)
            assert http.get(f"/tasks/{hello['task_id']}").json() == hello
            listed = http.get("/tasks", params={"agent_id": "agent-001"})
            assert listed.status_code == 200 and listed.headers["X-Total-Count"] == "4"
            assert [r["task_id"] for r in listed.json()] == [
                slow["task_id"], failing["task_id"], python["task_id"], hello["task_id"],
            ]  # fmt: skip
            assert http.get("/tasks", params={"agent_id": "nobody"}).json() == []
            # an agent never seen: 404 with seed 002's message
            missing = http.post(
                "/tasks", json={"agent_id": "agent-404", "type": "shell", "script": "true", "timeout": 5}
            )
            assert missing.status_code == 404 and missing.json()["error"] == "agent not found"
    # a new platform on the same database finds every record
    with running_platform(database_url) as again, client(again) as http:
        assert http.get(f"/tasks/{hello['task_id']}").json()["stdout"] == "hello world\n"
        assert http.get("/tasks").headers["X-Total-Count"] == "4"


def test_filters_pagination_and_total_count(fleet):
    platform, http = fleet
    ids = []
    for number in range(5):
        kind, script = ("python", "print(1)") if number % 2 else ("shell", "true")
        ids.append(post_task(http, agent_id="a1", type=kind, script=script, timeout=10)["task_id"])
    for task_id in ids:
        wait_end(http, task_id)
    page = http.get("/tasks", params={"limit": 2, "offset": 1})
    assert page.headers["X-Total-Count"] == "5" and [r["task_id"] for r in page.json()] == [ids[3], ids[2]]
    pythons = http.get("/tasks", params={"type": "python", "status": "completed"})
    assert pythons.headers["X-Total-Count"] == "2" and {r["task_id"] for r in pythons.json()} == {
        ids[1],
        ids[3],
    }
    for params, field in (
        ({"limit": 1001}, "limit"),
        ({"status": "done"}, "status"),
        ({"offset": -1}, "offset"),
    ):
        bad = http.get("/tasks", params=params)
        assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == f"query.{field}", bad.text


def test_labels_selector_env_and_agent_states(fleet, workers):
    platform, http = fleet
    # A selector nobody matches is a 409.
    nobody = http.post("/tasks", json={"labels": {"zone": "mars"}, "type": "shell", "script": "true"})
    assert nobody.status_code == 409 and nobody.json()["error"] == "no online agent matches the labels"
    both = http.post(
        "/tasks", json={"agent_id": "a1", "labels": {"zone": "x"}, "type": "shell", "script": "true"}
    )
    assert both.status_code == 422 and "exactly one of agent_id" in both.json()["error"]
    task = post_task(http, agent_id="a1", type="shell", script='echo "$GREETING"', env={"GREETING": "hej"})
    assert wait_end(http, task["task_id"])[1]["stdout"] == "hej\n"
    [agent] = http.get("/agents").json()
    assert agent["agent_id"] == "a1" and agent["state"] == "online" and agent["capacity"] == 5
    assert set(agent) >= {
        "labels",
        "running",
        "in_flight",
        "version",
        "transport",
        "connected_at",
        "last_seen",
    }
    left = threading.Event()
    platform.router.add_listener(lambda event, info: event == "left" and left.set())
    workers.processes["a1"].terminate()
    assert left.wait(20)
    platform.writer.flush()
    [agent] = http.get("/agents").json()
    assert agent["state"] == "offline" and agent["disconnected_at"] and agent["last_reason"]
    offline = http.post("/tasks", json={"agent_id": "a1", "type": "shell", "script": "true"})
    assert offline.status_code == 409 and offline.json()["error"] == "agent offline"


def test_cancel_kills_the_script_and_a_finished_task_cannot_be_cancelled(fleet, tmp_path, workers):
    platform, http = fleet
    pidfile = tmp_path / "pid"
    script = f"echo $$ > {pidfile}; echo started; exec sleep 60"
    task = post_task(http, agent_id="a1", type="shell", script=script, timeout=120)
    with http.stream("GET", f"/tasks/{task['task_id']}/logs") as response:
        for _id, event, data in read_events(response):
            if event == "log":
                assert json.loads(data)["line"] == "started"
                break
    pid = host_pid(int(pidfile.read_text()), workers.processes["a1"].pid)  # $$: its namespace's pid
    cancelled = http.post(f"/tasks/{task['task_id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["cancelled"] is True
    again = http.post(f"/tasks/{task['task_id']}/cancel")
    assert again.status_code == 409 and again.json()["error"] == "task already finished"
    assert http.post("/tasks/nope/cancel").status_code == 404
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the worker kills the script's process group
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the cancelled script is still running")


def test_live_log_resumes_after_last_event_id(fleet):
    platform, http = fleet
    script = "import time\nfor i in range(6):\n    print(f'line {i}', flush=True)\n    time.sleep(0.05)"
    task = post_task(http, agent_id="a1", type="python", script=script, timeout=20)
    first: list[int] = []
    with http.stream("GET", f"/tasks/{task['task_id']}/logs") as response:
        for event_id, event, _data in read_events(response):
            if event == "log":
                first.append(int(event_id))
            if len(first) == 2:
                break  # the client goes away after two lines
    assert first == [1, 2]
    lines, record = wait_end(http, task["task_id"], **{"Last-Event-ID": "2"})
    assert [seq for seq, _ in lines] == [3, 4, 5, 6]
    assert [payload["line"] for _, payload in lines] == ["line 2", "line 3", "line 4", "line 5"]
    assert all(payload["stream"] == "stdout" and payload["timestamp"] > 0 for _, payload in lines)
    assert record["status"] == "completed" and record["stdout"].count("line") == 6
    # after the end: the stored lines, then the end event at once; ?last_event_id= works too
    replay = http.get(f"/tasks/{task['task_id']}/logs", params={"last_event_id": 4})
    events = list(read_events(replay))
    assert [e[0] for e in events if e[1] == "log"] == ["5", "6"] and events[-1][1] == "end"
    bad = http.get(f"/tasks/{task['task_id']}/logs", headers={"Last-Event-ID": "x"})
    assert bad.status_code == 422


def test_malformed_and_oversized_input_gets_precise_json_errors_and_the_server_keeps_serving(fleet):
    platform, http = fleet
    cases = [
        (
            http.post("/tasks", content=b'{"agent_id": "a1",', headers={"Content-Type": "application/json"}),
            400,
            "body is not valid JSON",
        ),  # fmt: skip
        (http.post("/tasks", json=["a", "list"]), 422, "invalid request"),
        (http.post("/tasks", json={"agent_id": "a1", "type": "perl", "script": "x"}), 422, "type"),
        (
            http.post("/tasks", json={"agent_id": "a1", "type": "shell", "script": "x", "timeout": "10"}),
            422,
            "timeout",
        ),
        (
            http.post("/tasks", json={"agent_id": "a1", "type": "shell", "script": "x", "timeout": -1}),
            422,
            "timeout",
        ),
        (http.post("/tasks", json={"agent_id": "a1", "type": "shell", "script": ""}), 422, "script"),
        (
            http.post("/tasks", json={"agent_id": "a1", "type": "shell", "script": "x", "colour": 1}),
            422,
            "colour",
        ),
        (
            http.post("/tasks", json={"agent_id": "a1", "type": "shell", "script": "x", "env": {"A B": "1"}}),
            422,
            "env",
        ),
        (http.post("/tasks", content=b"x" * (2 << 20)), 413, "request body too large"),
        (http.get("/no/such/route"), 404, "not found"),
        (http.delete("/tasks"), 405, "method not allowed"),
        (http.get("/tasks/unknown-id"), 404, "task not found"),
        (http.get("/tasks", headers={"Authorization": "Bearer wrong"}), 401, "missing or wrong token"),
        (http.get("/agents", headers={"Authorization": ""}), 401, "missing or wrong token"),
        (http.get("/openapi.json", headers={"Authorization": "Basic eDp5"}), 401, "missing or wrong token"),
        (http.get("/docs"), 404, "not found"),
    ]
    for response, status, needle in cases:
        assert response.status_code == status, (needle, response.text)
        body = response.json()
        assert set(body) == {"error", "detail"} and needle in json.dumps(body), (needle, body)
    # a chunked body (no Content-Length) is cut off as soon as it passes the limit
    chunks = (b"y" * 65536 for _ in range(40))
    chunked = http.post("/tasks", content=chunks, headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413 and chunked.json()["error"] == "request body too large"
    # a request with a wrong token is refused before its body is read: the server answers at once
    with socket.create_connection(("127.0.0.1", platform.http_port), timeout=10) as raw:
        raw.sendall(
            b"POST /tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\nContent-Length: 999999\r\n\r\n"
        )
        assert raw.recv(4096).startswith(b"HTTP/1.1 401")
    # still serving
    assert http.get("/healthz").json() == {"status": "ok"}
    assert http.get("/openapi.json").json()["paths"]["/tasks"]
    done = post_task(http, agent_id="a1", type="shell", script="echo fine")
    assert wait_end(http, done["task_id"])[1]["stdout"] == "fine\n"


def test_healthz_needs_no_token_timeline_is_svg_and_live_log_streams_are_bounded(tmp_path, workers):
    with running_platform(f"sqlite:///{tmp_path / 'p.db'}", max_sse_clients=1) as platform:
        workers.start(platform.ws_url, "a1")
        assert platform.router.wait_for_workers(1, timeout=30)
        import httpx

        assert httpx.get(f"{platform.http_url}/healthz").json() == {"status": "ok"}
        with client(platform) as http:
            task = post_task(http, agent_id="a1", type="shell", script="echo x; sleep 2", timeout=20)
            with http.stream("GET", f"/tasks/{task['task_id']}/logs") as first:
                assert first.status_code == 200
                second = http.get(f"/tasks/{task['task_id']}/logs")
                assert second.status_code == 503 and second.json()["error"] == "too many live log streams"
            svg = http.get("/timeline", params={"limit": 10})
            assert svg.headers["content-type"] == "image/svg+xml" and svg.text.lstrip().startswith("<svg")
            assert task["task_id"] in svg.text
            wait_end(http, task["task_id"])


def test_wrong_token_everywhere(fleet):
    platform, _http = fleet
    with client(platform, token=TOKEN + "x") as stranger:
        for method, path in (("GET", "/tasks"), ("POST", "/tasks"), ("GET", "/agents"), ("GET", "/timeline")):
            response = stranger.request(method, path)
            assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"


def test_the_dashboard_directory_is_served_without_a_token_when_present(tmp_path, monkeypatch):
    import httpx

    from async_task_system.platform import rest

    board = tmp_path / "dashboard"
    board.mkdir()
    (board / "index.html").write_text("<html>fleet board</html>")
    (board / "app.js").write_text("// calls the REST API with the token the user enters")
    monkeypatch.setattr(rest, "DASHBOARD", board)
    with running_platform(f"sqlite:///{tmp_path / 'p.db'}") as platform:
        root = httpx.get(f"{platform.http_url}/", follow_redirects=False)
        assert root.status_code in (302, 307) and root.headers["location"] == "/dashboard/"
        page = httpx.get(f"{platform.http_url}/dashboard/")
        assert page.status_code == 200 and "fleet board" in page.text
        assert httpx.get(f"{platform.http_url}/dashboard/app.js").status_code == 200
        assert httpx.get(f"{platform.http_url}/tasks").status_code == 401  # the API still needs the token
    monkeypatch.setattr(rest, "DASHBOARD", tmp_path / "absent")
    with running_platform(f"sqlite:///{tmp_path / 'q.db'}") as platform:
        assert httpx.get(f"{platform.http_url}/dashboard/").status_code == 401  # nothing public to serve


def test_an_idle_live_log_gets_keepalive_comments(tmp_path, workers):
    with (
        running_platform(f"sqlite:///{tmp_path / 'p.db'}", sse_keepalive=0.2) as platform,
        client(platform) as http,
    ):
        workers.start(platform.ws_url, "a1")
        assert platform.router.wait_for_workers(1, timeout=30)
        task = post_task(http, agent_id="a1", type="shell", script="sleep 1.5; echo late", timeout=20)
        seen = []
        with http.stream("GET", f"/tasks/{task['task_id']}/logs") as response:
            for line in response.iter_lines():
                seen.append(line)
                if line.startswith("event: end"):
                    break
        assert ": keepalive" in seen[: seen.index("event: log")]  # before the first line, while it slept
