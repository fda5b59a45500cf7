"""Hostile clients against the real servers on loopback: slowloris, request smuggling, chunked bodies
past the limit, out-of-range numbers, handlers that never return, a database another process locks.

Each test is one attack from the issue, with real sockets (raw ones where a client library would
refuse to misbehave) and real processes; loops are bounded, and time appears only as generous
bounds that prove "not starved".
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from _platform import TOKEN, client, running_platform, workers_fixture  # noqa: F401  (fixtures)

from async_task_system import TaskManager
from async_task_system.collab import AgentDirectory, CollaborationError, CollaborationProtocol
from async_task_system.http_front import FrontLimits

WAIT = 30.0


@pytest.fixture(name="platform")
def platform_fixture(tmp_path):
    with running_platform(f"sqlite:///{tmp_path / 'store.db'}", grpc=False) as platform:
        yield platform


def _address(url: str) -> tuple[str, int]:
    host, port = url.split("//", 1)[1].rstrip("/").rsplit(":", 1)
    return host, int(port)


@contextlib.contextmanager
def half_open(address: tuple[str, int], count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections that send part of a request head and never finish it."""
    held: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(address, timeout=5)
            sock.sendall(b"GET /tasks HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            held.append(sock)
        yield held
    finally:
        for sock in held:
            sock.close()


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """True when the server closed this connection (EOF or reset) within ``timeout``."""
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def raw_exchange(address: tuple[str, int], request: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes and read the answer until the server closes (or ``timeout``)."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        return b"".join(chunks)


# ---------------------------------------------------------------------------------------------- slowloris


def test_slowloris_does_not_starve_the_rest_api_and_half_open_connections_are_closed(platform):
    address = _address(platform.http_url)
    with half_open(address, 300) as held, client(platform) as http:
        statuses = [http.get("/tasks").status_code for _ in range(3)]
        assert statuses == [200, 200, 200]  # the reserve: a real request displaces a half-open one
        # The head timeout (5 s by default) closes every half-open connection; bounded wait.
        assert all(closed_by_server(sock, WAIT) for sock in held)
        assert http.get("/agents").status_code == 200


def test_a2a_slowloris_and_a_connection_that_never_sends_a_head():
    protocol = CollaborationProtocol("w", TaskManager(max_workers=2), AgentDirectory())
    protocol.register_handler("echo", lambda text: text)
    from async_task_system.collab.a2a import A2AAgent, A2AServer

    server = A2AServer(protocol, http_limits=FrontLimits(header_timeout=1.0)).start()
    directory = AgentDirectory()
    directory.register("w", A2AAgent(server.url, server.token))
    asker = CollaborationProtocol("asker", TaskManager(max_workers=2), directory, register=False)
    try:
        with half_open(_address(server.url), 260) as held:
            assert asker.ask("w", "echo", {"text": "hi"}, timeout=WAIT) == "hi"
            card = httpx.get(f"{server.url}.well-known/agent-card.json", timeout=WAIT)
            assert card.status_code == 200
            assert all(closed_by_server(sock, WAIT) for sock in held)
        silent = socket.create_connection(_address(server.url), timeout=5)  # connects, sends nothing
        assert closed_by_server(silent, WAIT)
        silent.close()
    finally:
        asker.close()
        asker.manager.shutdown(wait=False)
        server.close()
        protocol.close()
        protocol.manager.shutdown(wait=False)


def test_connections_per_address_are_bounded_by_closing_pending_ones(tmp_path):
    limits = FrontLimits(max_connections_per_address=20)
    with running_platform(f"sqlite:///{tmp_path / 's.db'}", grpc=False, http_limits=limits) as platform:
        address = _address(platform.http_url)
        with half_open(address, 50) as held, client(platform) as http:
            assert http.get("/tasks").status_code == 200
            # the 30 oldest were closed for newcomers at once (not after the head timeout)
            closed = sum(closed_by_server(sock, 0.5) for sock in held[:30])
            assert closed == 30
            stats = platform.http_server.stats()
            assert stats["open"] <= 20 and stats["evicted"] >= 30


def test_a_trickled_body_gets_408_and_gives_its_slot_back(tmp_path):
    limits = FrontLimits(body_timeout=1.0)
    with running_platform(f"sqlite:///{tmp_path / 's.db'}", grpc=False, http_limits=limits) as platform:
        request = (
            b"POST /tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"agent_id\""
        )  # fmt: skip
        answer = raw_exchange(_address(platform.http_url), request, timeout=WAIT)  # head and body may part
        assert answer.startswith(b"HTTP/1.1 408") and b"request body too slow" in answer
        with client(platform) as http:
            assert http.get("/tasks").status_code == 200


# ---------------------------------------------------------------------------------------------- smuggling


SMUGGLE = (
    b"POST /tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n"
    b"Content-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
)


def test_content_length_with_transfer_encoding_is_refused_not_answered_twice(platform):
    answer = raw_exchange(_address(platform.http_url), SMUGGLE % TOKEN.encode())
    assert answer.startswith(b"HTTP/1.1 400")
    assert b"Content-Length with Transfer-Encoding" in answer
    assert answer.count(b"HTTP/1.1 ") == 1  # the smuggled second request was not served


def test_a2a_body_limit_holds_for_chunked_bodies_and_smuggling_is_refused():
    from async_task_system.collab.a2a import A2AServer

    protocol = CollaborationProtocol("w", TaskManager(max_workers=2), AgentDirectory())
    protocol.register_handler("echo", lambda text: text)
    server = A2AServer(protocol).start()
    address = _address(server.url)
    auth = f"Authorization: Bearer {server.token}\r\n".encode()
    try:
        smuggled = raw_exchange(
            address,
            b"POST / HTTP/1.1\r\nHost: x\r\n"
            + auth
            + b"Content-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\n\r\n",
        )
        assert smuggled.startswith(b"HTTP/1.1 400")

        def chunks() -> Iterator[bytes]:  # 8 MiB, chunked, no length: refused once past the limit
            for _ in range(128):
                yield b"x" * 65536

        with httpx.Client(timeout=WAIT) as http:
            response = http.post(
                server.url, content=chunks(), headers={"Authorization": f"Bearer {server.token}"}
            )
            assert response.status_code == 413
            assert response.json()["detail"] == {"max_bytes": server.max_body_bytes}
            card = http.get(f"{server.url}.well-known/agent-card.json")
            assert card.status_code == 200  # still serving
    finally:
        server.close()
        protocol.close()
        protocol.manager.shutdown(wait=False)


# ---------------------------------------------------------------------------------------------- numbers


def test_out_of_range_numbers_get_422_with_the_allowed_range_never_500(platform):
    with client(platform) as http:
        cases = [
            ("/tasks?offset=9223372036854775808", "less than or equal to 1000000000"),
            ("/tasks?offset=-1", "greater than or equal to 0"),
            ("/tasks?limit=" + "9" * 5000, "limit"),
            ("/tasks?limit=0", "greater than or equal to 1"),
            ("/timeline?limit=99999999999999999999", "less than or equal to 5000"),
            ("/tasks/some-task/logs?last_event_id=9223372036854775808", "less than or equal to"),
        ]
        for path, expected in cases:
            response = http.get(path)
            assert response.status_code == 422, (path, response.text)
            assert expected in response.text, (path, response.text)
        for header in ("9" * 5000, "9223372036854775808", "-1", "x"):
            response = http.get("/tasks/some-task/logs", headers={"Last-Event-ID": header})
            assert response.status_code == 422, response.text
            assert "from 0 to 1000000000000" in response.json()["error"]


# ---------------------------------------------------------------------------------------------- handlers


def _hanging_protocol(workers: int, **options) -> tuple[CollaborationProtocol, threading.Event]:
    release = threading.Event()
    protocol = CollaborationProtocol("w", TaskManager(max_workers=workers), AgentDirectory(), **options)

    def hang() -> None:
        release.wait(120)

    protocol.register_handler("hang", hang)
    protocol.register_handler("echo", lambda text: text)
    return protocol, release


def _ask_all(asker: CollaborationProtocol, agent: str, count: int, timeout: float) -> list[str]:
    errors: list[str] = []

    def one() -> None:
        try:
            asker.ask(agent, "hang", {}, timeout=timeout)
        except CollaborationError as exc:
            errors.append(exc.error_type if exc.error_type != "bad_request" else str(exc))

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    return errors


def test_collaboration_handlers_that_never_return_give_their_slot_back_at_the_deadline():
    protocol, release = _hanging_protocol(4)
    try:
        errors = _ask_all(protocol, "w", 12, 0.5)
        assert errors == ["timeout"] * 12
        # the 12 handlers still hang, yet a normal request is served (its worker is free)
        assert protocol.ask("w", "echo", {"text": "served"}, timeout=WAIT) == "served"
        assert 0 < protocol.stuck_handlers <= 12  # those that started before their deadline
        release.set()
        for _ in range(500):  # bounded: the left-behind threads end once their handlers return
            if protocol.stuck_handlers == 0:
                break
            time.sleep(0.01)
        assert protocol.stuck_handlers == 0
    finally:
        release.set()
        protocol.close()
        protocol.manager.shutdown(wait=False)


def test_handlers_left_running_are_bounded_then_requests_are_busy():
    protocol, release = _hanging_protocol(4, max_stuck_handlers=3)
    try:
        # deadlines long enough for all three handlers to start on a loaded machine (a handler that
        # never started before its deadline is not left running)
        assert _ask_all(protocol, "w", 3, 2.0) == ["timeout"] * 3
        deadline = time.monotonic() + WAIT  # the server side counts a handler stuck at the same
        while protocol.stuck_handlers < 3 and time.monotonic() < deadline:  # deadline the asker gives up at
            time.sleep(0.01)
        assert protocol.stuck_handlers == 3
        with pytest.raises(CollaborationError) as caught:
            protocol.ask("w", "echo", {"text": "x"}, timeout=WAIT)
        assert caught.value.error_type == "busy" and "past their deadline" in str(caught.value)
        names = [t.name for t in threading.enumerate() if t.name.startswith("collab-w-handler")]
        assert len(names) <= 3
        release.set()
        for _ in range(500):
            if protocol.stuck_handlers == 0:
                break
            time.sleep(0.01)
        assert protocol.ask("w", "echo", {"text": "again"}, timeout=WAIT) == "again"
    finally:
        release.set()
        protocol.close()
        protocol.manager.shutdown(wait=False)


def test_a2a_handlers_that_never_return_free_their_slots_and_threads_stay_bounded():
    from async_task_system.collab.a2a import A2AAgent, A2AServer

    protocol, release = _hanging_protocol(8)
    server = A2AServer(protocol).start()
    directory = AgentDirectory()
    directory.register("w", A2AAgent(server.url, server.token))
    asker = CollaborationProtocol("asker", TaskManager(max_workers=4), directory, register=False)
    try:
        before = threading.active_count()
        errors = _ask_all(asker, "w", 20, 0.5)
        assert len(errors) == 20 and set(errors) <= {"timeout"}
        assert asker.ask("w", "echo", {"text": "served"}, timeout=WAIT) == "served"
        # 20 left-behind handler threads at most, plus the manager's fixed pool: no thread per request
        assert threading.active_count() - before <= 20 + 16
    finally:
        release.set()
        asker.close()
        asker.manager.shutdown(wait=False)
        server.close()
        protocol.close()
        protocol.manager.shutdown(wait=False)


# ---------------------------------------------------------------------------------------------- database


def test_a_locked_sqlite_database_does_not_hold_post_tasks(tmp_path, workers):
    db = tmp_path / "store.db"
    with running_platform(f"sqlite:///{db}", grpc=False) as platform, client(platform) as http:
        workers.start(platform.ws_url, "w1")
        for _ in range(300):  # bounded wait for the worker to register
            if any(a["state"] == "online" for a in http.get("/agents").json()):
                break
            time.sleep(0.1)
        holder = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sqlite3, sys, time\n"
                f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
                "c.execute('BEGIN IMMEDIATE')\nprint('held', flush=True)\nsys.stdin.readline()\n",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert holder.stdout.readline().strip() == "held"
            started = time.monotonic()
            response = http.post("/tasks", json={"agent_id": "w1", "type": "shell", "script": "echo hi"})
            assert response.status_code == 201
            assert time.monotonic() - started < 15  # generous: the lock is held far longer
            task_id = response.json()["task_id"]
            assert http.get("/tasks").status_code == 200  # reads go on under another's write lock
        finally:
            holder.stdin.close()
            holder.wait(10)
        for _ in range(300):  # once the lock is gone, the record is written: no record lost
            record = http.get(f"/tasks/{task_id}")
            if record.status_code == 200 and record.json()["status"] == "completed":
                break
            time.sleep(0.1)
        assert record.status_code == 200 and record.json()["stdout"] == "hi\n"
