"""The JSON-lines server's requests are tasks of a TaskManager (one lifecycle for the server).

Real server on loopback, real TCP clients, real CodeAgents on a ScriptedModel; the TaskManager is
the one given to the server, inspected through its public API only.
"""

from __future__ import annotations

import queue
import socket
import threading

import pytest
from clients import testagents as ta
from clients.pyclient import LineClient

from async_task_system import TaskManager, TaskStatus
from async_task_system.server import AgentServer


@pytest.fixture(autouse=True)
def _reset_agents():
    ta.reset()
    yield
    ta.RELEASE.set()


class Served:
    def __init__(self, manager: TaskManager | None = None, **options) -> None:
        self.server = AgentServer(ta.code_agent_factory(), task_manager=manager, **options)
        self.manager = self.server.task_manager
        self.records: queue.Queue = queue.Queue()
        self.server.add_listener(self.records.put)
        self.thread = self.server.start_in_thread()

    def client(self) -> LineClient:
        return LineClient(self.thread.port)

    def record(self, request_id: str):
        while True:
            record = self.records.get(timeout=20)
            if record.request_id == request_id:
                return record

    def task_of(self, request_id: str):
        (info,) = [t for t in self.manager.list() if t.arguments.get("request_id") == request_id]
        return info


@pytest.fixture
def serve():
    started: list[Served] = []
    managers: list[TaskManager] = []

    def start(manager: TaskManager | None = None, **options) -> Served:
        if manager is not None:
            managers.append(manager)
        s = Served(manager, **options)
        started.append(s)
        return s

    yield start
    ta.RELEASE.set()
    for s in started:
        s.thread.stop()
    for m in managers:
        m.shutdown(wait=False, cancel_pending=True)


def test_a_request_is_a_task_of_the_given_manager(serve):
    manager = TaskManager(max_workers=2)
    s = serve(manager)
    with s.client() as c:
        r = c.request({"request_id": "r1", "input": {"Text": "hello"}})
    assert r["response"] == {"Text": "echo: hello"}
    record = s.record("r1")
    info = manager.check(record.task_id)
    assert (info.kind.value, info.name, info.status) == ("request", "serve_request", TaskStatus.COMPLETED)
    assert info.arguments["request_id"] == "r1" and info.timeout == 300
    assert info.result.content.Text == "echo: hello"
    assert record.status == "completed"
    s.thread.stop()
    assert not manager.closed, "a manager the server was given keeps running after close()"


def test_a_timed_out_request_is_a_failed_task_with_error_type_timeout(serve):
    s = serve(TaskManager(max_workers=2))
    with s.client() as c:
        r = c.request(
            {
                "request_id": "slow",
                "input": {"Text": "STEPS: block(20) ||| final_answer(add(1, 1))"},
                "config": {"timeout": 0.5},
            }
        )
    assert r["error_code"] == "timeout_error"
    record = s.record("slow")
    info = s.manager.check(record.task_id)
    assert info.status is TaskStatus.FAILED and info.error.type == "timeout" and info.timeout == 0.5
    assert record.status == "timeout"
    ta.RELEASE.set()


def test_a_vanished_client_cancels_the_task(serve):
    s = serve(TaskManager(max_workers=2))
    c = s.client()
    c.send({"request_id": "gone", "input": {"Text": "STEPS: block(20) ||| final_answer('late')"}})
    assert ta.BLOCK_STARTED.wait(10)
    c.sock.shutdown(socket.SHUT_RDWR)
    c.close()
    record = s.record("gone")
    assert record.status == "cancelled" and record.error == "client disconnected"
    assert s.manager.check(record.task_id).status is TaskStatus.CANCELLED


def test_the_concurrency_limit_is_max_workers_and_queued_requests_are_pending(serve):
    s = serve(TaskManager(max_workers=1))
    assert s.server.max_concurrent_requests == 1
    seen: dict[str, threading.Event] = {status: threading.Event() for status in ("pending", "ended")}

    def watch(info) -> None:
        if info.arguments.get("request_id") == "second":
            seen["ended" if info.status.is_terminal else "pending"].set()

    s.manager.add_listener(watch)
    with s.client() as c:
        c.send({"request_id": "first", "input": {"Text": "STEPS: block(20) ||| final_answer('first done')"}})
        assert ta.BLOCK_STARTED.wait(10)
        c.send({"request_id": "second", "input": {"Text": "queued"}, "config": {"timeout": 0.3}})
        assert seen["pending"].wait(10)
        # Its time limit counts from the start of its task, not while it waits for the slot.
        assert not seen["ended"].wait(0.6)
        assert s.task_of("second").status is TaskStatus.PENDING
        assert s.task_of("first").status is TaskStatus.RUNNING
        ta.RELEASE.set()
        answers = c.read_final(2)
    assert answers["first"]["response"] == {"Text": "first done"}
    assert answers["second"]["response"] == {"Text": "echo: queued"}


def test_the_server_owns_its_default_manager(serve):
    s = serve(max_concurrent_requests=3)
    assert s.manager.max_workers == 3
    with s.client() as c:
        assert c.request({"request_id": "x", "input": {"Text": "hi"}})["error"] is None
    assert s.manager.check(s.record("x").task_id).status is TaskStatus.COMPLETED
    s.thread.stop()
    assert s.manager.closed, "the manager the server created is shut down with it"
