"""A platform task is ``running`` from the moment its process starts, on both transports.

Real parts on loopback: the Platform (SQLite file, REST on uvicorn, both hubs), worker daemons as
subprocesses, and hand-driven agents that speak only seed 002's messages (gRPC) or raw JSON frames
(WebSocket), for agents that send no start event and for start events that must change nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import queue
import threading
import time
from typing import Any

import pytest
from _platform import (  # noqa: F401  (fixtures)
    TOKEN,
    client,
    hub_url,
    post_task,
    read_events,
    running_platform,
    transport_fixture,
    wait_end,
    workers_fixture,
)

grpc = pytest.importorskip("grpc")
from websockets.sync.client import connect  # noqa: E402

from async_task_system.remote._proto import agent_pb2, task_pb2  # noqa: E402
from async_task_system.remote.grpc_codec import METHOD  # noqa: E402


def _seconds(iso: str) -> float:
    return dt.datetime.fromisoformat(iso).timestamp()


def _wait_status(http, task_id: str, wanted: str) -> list[dict]:
    """Follow the task's SSE stream until a ``status`` event says ``wanted``; the status events seen."""
    seen: list[dict] = []
    with http.stream("GET", f"/tasks/{task_id}/logs", timeout=60) as response:
        assert response.status_code == 200
        for _id, event, data in read_events(response):
            if event == "status":
                seen.append(json.loads(data))
                if seen[-1]["status"] == wanted:
                    return seen
            elif event == "end":
                raise AssertionError(f"{task_id} ended before it was {wanted}: {data}")
    raise AssertionError(f"the stream of {task_id} closed before it was {wanted}")


def _wait_record(http, task_id: str, field: str, value, timeout: float = 30.0) -> dict:
    """Poll the record until ``field`` is ``value`` (a bound, not a measured figure)."""
    deadline = time.monotonic() + timeout
    while True:
        record = http.get(f"/tasks/{task_id}").json()
        if record.get(field) == value or time.monotonic() > deadline:
            return record
        time.sleep(0.05)


def test_a_silent_sleep_is_running_from_its_process_start(tmp_path, transport, workers):
    with running_platform(f"sqlite:///{tmp_path / 'status.db'}") as platform:
        workers.start(hub_url(platform, transport), "quiet-1")
        assert platform.router.wait_for_workers(1, timeout=30)
        http = client(platform)
        task = post_task(http, type="shell", script="sleep 3", agent_id="quiet-1", timeout=30)
        task_id = task["task_id"]

        events = _wait_status(http, task_id, "running")  # the SSE stream says so, with no output at all
        assert events[-1]["started_at"]
        record = http.get(f"/tasks/{task_id}").json()
        assert record["status"] == "running"
        assert record["started_at"] and record["dispatched_at"]
        assert _seconds(record["started_at"]) >= _seconds(record["dispatched_at"])
        listed = http.get("/tasks", params={"status": "running"}).json()
        assert task_id in [r["task_id"] for r in listed]
        svg = http.get("/timeline").text
        assert f'data-task-id="{task_id}" data-status="running"' in svg
        assert "waiting_remote" not in svg
        assert "quiet-1: sleep 3" in svg  # the agent and the script, not platform_script(shell)
        agent = next(a for a in http.get("/agents").json() if a["agent_id"] == "quiet-1")
        assert agent["running"] == 1

        _lines, final = wait_end(http, task_id)
        assert final["status"] == "completed"
        assert final["started_at"] == record["started_at"]  # the process's start, kept
        assert final["dispatched_at"] == record["dispatched_at"]
        # the duration is the process's run time: the script slept 3 s after its start
        assert _seconds(final["completed_at"]) - _seconds(final["started_at"]) >= 3.0
        agent = next(a for a in http.get("/agents").json() if a["agent_id"] == "quiet-1")
        assert agent["running"] == 0


# ---------------------------------------------------------------------------------------------- raw agents


class SeedAgent:
    """A gRPC agent built from seed 002's proto: it never sets an added field (no start event, no
    request_id) and answers with ``TaskRequest.task_id``."""

    def __init__(self, url: str, name: str) -> None:
        self.channel = grpc.insecure_channel(url.removeprefix("grpc://"))
        self.outgoing: queue.Queue[bytes | None] = queue.Queue()
        call = self.channel.stream_stream(
            METHOD,
            request_serializer=lambda data: data,
            response_deserializer=agent_pb2.ServerMessage.FromString,
        )
        self.responses = call(iter(self.outgoing.get, None), metadata=(("authorization", f"Bearer {TOKEN}"),))
        self.received: queue.Queue[object] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.send(agent_pb2.AgentMessage(register=agent_pb2.AgentRegister(agent_id=name, capacity=2)))
        reply = self.next()
        assert reply.register_response.success, reply

    def _read(self) -> None:
        try:
            for message in self.responses:
                self.received.put(message)
        except grpc.RpcError as exc:
            self.received.put(exc)

    def send(self, message: agent_pb2.AgentMessage) -> None:
        self.outgoing.put(message.SerializeToString())

    def next(self) -> agent_pb2.ServerMessage:
        while True:
            item = self.received.get(timeout=30)
            assert isinstance(item, agent_pb2.ServerMessage), item
            if not item.HasField("heartbeat_ack"):
                return item

    def close(self) -> None:
        self.outgoing.put(None)
        self.responses.cancel()
        self.channel.close()


def test_an_agent_without_start_events_is_running_at_its_first_line_and_sees_the_records_task_id(tmp_path):
    with running_platform(f"sqlite:///{tmp_path / 'seed.db'}") as platform:
        agent = SeedAgent(platform.grpc_url, "seed-1")
        try:
            http = client(platform)
            task_id = post_task(http, type="shell", script="echo hi", agent_id="seed-1")["task_id"]
            request = agent.next().task_request
            assert request.task_id == task_id  # the id the operator sees
            assert request.request_id and request.request_id != task_id  # the internal one, apart
            assert _wait_record(http, task_id, "status", "dispatched")["status"] == "dispatched"
            agent.send(agent_pb2.AgentMessage(task_log=task_pb2.TaskLog(task_id=task_id, output="hi\n")))
            _wait_status(http, task_id, "running")
            agent.send(
                agent_pb2.AgentMessage(
                    task_result=task_pb2.TaskResult(task_id=task_id, exit_code=0, stdout="hi\n")
                )
            )
            _lines, final = wait_end(http, task_id)
            assert final["status"] == "completed"
            assert final["exit_code"] == 0 and final["stdout"] == "hi\n"
            assert final["request_id"] == request.request_id
        finally:
            agent.close()


class JsonAgent:
    """A WebSocket agent driven frame by frame."""

    def __init__(self, url: str, name: str, router: Any = None) -> None:
        self._stack = contextlib.ExitStack()
        headers = {"Authorization": f"Bearer {TOKEN}"}
        self.ws = self._stack.enter_context(connect(url, additional_headers=headers, proxy=None))
        self.send({"type": "register", "name": name, "capabilities": ["shell"], "max_concurrent": 2})
        assert self.next()["type"] == "registered"
        # the hub books the worker before it answers: work sent the moment it is registered finds it
        assert router is None or router.has_worker(name)

    def send(self, frame: dict) -> None:
        self.ws.send(json.dumps(frame))

    def next(self) -> dict:
        return json.loads(self.ws.recv(timeout=30))

    def close(self) -> None:
        self._stack.close()


def test_a_start_for_another_agents_task_or_after_the_result_changes_nothing(tmp_path):
    with running_platform(f"sqlite:///{tmp_path / 'starts.db'}") as platform:
        mine, other = (
            JsonAgent(platform.ws_url, "mine", platform.router),
            JsonAgent(platform.ws_url, "other", platform.router),
        )
        try:
            http = client(platform)
            task_id = post_task(http, type="shell", script="true", agent_id="mine")["task_id"]
            execute = mine.next()
            assert execute["type"] == "execute" and execute["task_id"] == task_id
            request_id = execute["request_id"]
            ignored = platform.router.ignored_starts

            # another agent claims the start (by request id and by task id): ignored, counted
            other.send({"type": "started", "request_id": request_id, "started_at": time.time()})
            other.send({"type": "started", "request_id": task_id, "started_at": time.time()})
            other.send({"type": "heartbeat", "running": 0, "queued": 0})  # its connection still works
            deadline = time.monotonic() + 30
            while platform.router.ignored_starts < ignored + 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert platform.router.ignored_starts == ignored + 2
            platform.writer.flush()
            assert http.get(f"/tasks/{task_id}").json()["status"] == "dispatched"
            assert "other" in [w["name"] for w in platform.router.workers()]

            started = time.time() - 0.5
            mine.send({"type": "started", "request_id": request_id, "started_at": started})
            record = _wait_record(http, task_id, "status", "running")
            assert record["status"] == "running"
            assert abs(_seconds(record["started_at"]) - started) < 1e-3  # the agent's moment, kept
            mine.send({"type": "started", "request_id": request_id, "started_at": time.time()})  # twice
            mine.send(
                {"type": "result", "request_id": request_id, "success": True, "result": {"exit_code": 0}}
            )
            _lines, final = wait_end(http, task_id)
            assert final["status"] == "completed"
            assert abs(_seconds(final["started_at"]) - started) < 1e-3

            before = platform.router.ignored_starts
            mine.send(
                {"type": "started", "request_id": request_id, "started_at": time.time()}
            )  # after the end
            mine.send({"type": "heartbeat", "running": 0, "queued": 0})
            deadline = time.monotonic() + 30
            while platform.router.ignored_starts == before and time.monotonic() < deadline:
                time.sleep(0.02)
            assert platform.router.ignored_starts == before + 1
            platform.writer.flush()
            after = http.get(f"/tasks/{task_id}").json()
            assert after["status"] == "completed" and after["started_at"] == final["started_at"]
        finally:
            mine.close()
            other.close()


def test_a_dispatch_that_never_starts_ends_with_start_timeout(tmp_path):
    options = {"heartbeat_interval": 0.5, "heartbeat_timeout": 30.0, "start_timeout": 1.0}
    with running_platform(f"sqlite:///{tmp_path / 'stuck.db'}", **options) as platform:
        agent = JsonAgent(platform.ws_url, "stuck", platform.router)
        try:
            http = client(platform)
            first = post_task(http, type="shell", script="true", agent_id="stuck")["task_id"]
            execute = agent.next()
            agent.send({"type": "started", "request_id": execute["request_id"], "started_at": time.time()})
            agent.send({"type": "result", "request_id": execute["request_id"], "success": True, "result": {}})
            assert wait_end(http, first)[1]["status"] == "completed"

            # the agent speaks start events; it takes the next task and never starts it
            stuck = post_task(http, type="shell", script="sleep 1", agent_id="stuck")["task_id"]
            execute = agent.next()
            assert execute["type"] == "execute"
            _lines, final = wait_end(http, stuck)
            assert final["status"] == "failed"
            assert final["error_type"] == "start_timeout"
            assert "neither started nor answered" in final["error"]
            cancel = agent.next()  # the agent is told to drop it
            assert cancel["type"] == "cancel" and cancel["request_id"] == execute["request_id"]
        finally:
            agent.close()


# ---------------------------------------------------------------------------------------------- hostile values


def test_out_of_range_values_are_refused_at_the_wire_and_the_connection_keeps_working(tmp_path):
    with running_platform(f"sqlite:///{tmp_path / 'hostile.db'}") as platform:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with connect(platform.ws_url, additional_headers=headers, proxy=None) as greedy:
            greedy.send(json.dumps({"type": "register", "name": "greedy", "max_concurrent": 2**64}))
            refused = json.loads(greedy.recv(timeout=30))
            assert refused["type"] == "error"
            assert "'max_concurrent' must be an integer from 1 to 10000" in refused["error"]
        assert "greedy" not in [w["name"] for w in platform.router.workers()]

        agent = JsonAgent(platform.ws_url, "liar", platform.router)
        try:
            http = client(platform)
            task_id = post_task(http, type="shell", script="true", agent_id="liar")["task_id"]
            request_id = agent.next()["request_id"]
            bad = [
                ({"exit_code": 2**70}, "result field 'exit_code' must be null or an integer within int32"),
                ({"exit_code": 0, "worker": {"name": "x"}}, "result field 'worker' must be a string or null"),
                ({"exit_code": 0, "duration": -1}, "result field 'duration' must be null or seconds >= 0"),
            ]
            for result, message in bad:
                agent.send({"type": "result", "request_id": request_id, "success": True, "result": result})
                error = agent.next()
                assert error["type"] == "error" and message in error["error"], error
            agent.send({"type": "heartbeat", "running": 2**40, "queued": 0})
            error = agent.next()
            assert "heartbeat field 'running' must be a count from 0 to 2147483647" in error["error"]
            platform.writer.flush()
            assert http.get(f"/tasks/{task_id}").json()["status"] == "dispatched"  # nothing recorded

            # the same connection still answers; the record's agent is the connection's, not the claim
            answer = {"exit_code": 0, "stdout": "ok\n", "worker": "good"}
            agent.send({"type": "result", "request_id": request_id, "success": True, "result": answer})
            _lines, final = wait_end(http, task_id)
            assert final["status"] == "completed" and final["exit_code"] == 0
            assert final["agent_id"] == "liar"
        finally:
            agent.close()


def test_an_llm_tasks_agent_comes_from_the_connection_not_the_answer(tmp_path):
    with running_platform(f"sqlite:///{tmp_path / 'llm.db'}") as platform:
        agent = JsonAgent(platform.ws_url, "honest", platform.router)
        try:
            task_id = platform.manager.submit("remote", "remote_execute", {"command": "true"})
            execute = agent.next()
            answer = {"exit_code": 0, "worker": "someone-else"}
            agent.send(
                {"type": "result", "request_id": execute["request_id"], "success": True, "result": answer}
            )
            _lines, final = wait_end(client(platform), task_id)
            assert final["status"] == "completed"
            assert final["agent_id"] == "honest"
        finally:
            agent.close()


def _row(task_id: str) -> dict:
    now = time.time()
    return {
        "task_id": task_id, "agent_id": "a", "type": "shell", "script": "true", "timeout": 10.0,
        "status": "pending", "stdout": "", "stderr": "", "labels": {}, "created_at": now, "updated_at": now,
    }  # fmt: skip


def test_the_record_writer_stores_a_batchs_good_rows_and_marks_a_bad_one(database_url):
    from async_task_system.platform.service import RecordWriter
    from async_task_system.platform.store import Store

    store = Store(database_url)
    writer = RecordWriter(store)
    try:
        writer.create(_row("good"))
        writer.create(_row("bad"))
        assert writer.flush()
        # one batch: a value SQLite cannot take in one row, good changes in the others
        writer.update("good", {"status": "completed", "exit_code": 0})
        writer.update("bad", {"status": "completed", "exit_code": 2**70, "stdout": "kept"})
        writer.log({"task_id": "good", "seq": 1, "stream": "stdout", "line": "hi", "ts": time.time()})
        writer.log({"task_id": "good", "seq": 2**70, "stream": "stdout", "line": "x", "ts": time.time()})
        assert writer.flush()
        good, bad = store.tasks.get("good"), store.tasks.get("bad")
        assert (good.status, good.exit_code, good.error_type) == ("completed", 0, None)
        assert (bad.status, bad.stdout, bad.exit_code) == ("completed", "kept", None)
        assert bad.error_type == "record_error" and "exit_code" in bad.error
        assert [row.line for row in store.logs.after("good", 0, 10)] == ["hi"]
        assert (writer.marked, writer.rejected, writer.failures) == (1, 1, 0)
    finally:
        writer.close()
        store.close()


def test_a_wait_for_a_new_row_returns_once_it_is_written_also_when_the_row_comes_later(database_url):
    import asyncio

    from async_task_system.platform.service import RecordWriter
    from async_task_system.platform.store import Store

    store = Store(database_url)
    writer = RecordWriter(store)
    try:
        # The row is handed in after the wait began, as a listener on another thread may do.
        later = threading.Timer(0.3, lambda: writer.create(_row("late")))
        started = time.monotonic()
        later.start()
        assert writer.created_written("late", timeout=10)
        assert time.monotonic() - started >= 0.3 and store.tasks.get("late") is not None
        assert writer.created_written("late", timeout=0)  # written already: True at once

        async def wait_for_a_later_row() -> bool:
            threading.Timer(0.2, lambda: writer.create(_row("async"))).start()
            return await writer.created_written_async("async", timeout=10)

        assert asyncio.run(wait_for_a_later_row()) and store.tasks.get("async") is not None
        # A row nobody hands in: the timeout; the row written later is found at once.
        assert writer.created_written("never", timeout=0.2) is False
        assert asyncio.run(writer.created_written_async("never", timeout=0.2)) is False
        writer.create(_row("never"))
        assert writer.flush() and writer.created_written("never", timeout=0)
    finally:
        writer.close()
        store.close()
    # A stopped writer writes nothing more: waiting says so at once.
    assert writer.created_written("after-close", timeout=5) is False
