"""The A2A adapter against the SDK's own client, and collaboration between two real processes over it."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import secrets
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from async_task_system import TaskManager, TaskStatus, report_progress
from async_task_system.collab.a2a import FROM_A2A, TO_A2A, A2AAgent, A2AServer
from async_task_system.collab.collaboration import AgentDirectory, CollaborationError, CollaborationProtocol

pytest.importorskip("a2a")
from a2a.client import A2ACardResolver, ClientConfig, ClientFactory  # noqa: E402
from a2a.types import CancelTaskRequest, Message, Part, Role, SendMessageRequest, TaskState  # noqa: E402

WAIT = 30.0


@pytest.fixture
def served():
    """A protocol with handlers, served over A2A on loopback; yields (server, events)."""
    events = {"started": threading.Event(), "stopped": threading.Event(), "release": threading.Event()}
    protocol = CollaborationProtocol("worker", TaskManager(max_workers=4), AgentDirectory())

    def square(x: int) -> int:
        """The square of x."""
        report_progress(0.5, "half way")
        events["release"].wait(WAIT)
        return x * x

    async def hang() -> None:
        events["started"].set()
        try:
            await asyncio.sleep(3600)
        finally:
            events["stopped"].set()

    protocol.register_handler("square", square)
    protocol.register_handler("hang", hang)
    server = A2AServer(protocol).start()
    yield server, events
    events["release"].set()
    server.close()
    protocol.close()
    protocol.manager.shutdown(wait=False, cancel_pending=True)


async def _sdk_client(server: A2AServer, token: str | None = None):
    http = httpx.AsyncClient(headers={"Authorization": f"Bearer {token or server.token}"}, timeout=WAIT)
    return await ClientFactory(ClientConfig(streaming=True, httpx_client=http)).create_from_url(server.url)


def _request(body: dict) -> SendMessageRequest:
    part = Part(text=json.dumps(body), media_type="application/json")
    return SendMessageRequest(
        message=Message(message_id=secrets.token_hex(8), role=Role.ROLE_USER, parts=[part])
    )


def test_state_table_maps_every_status_both_ways():
    assert set(TO_A2A) == set(TaskStatus)
    for status, state in TO_A2A.items():
        back = FROM_A2A[state]
        assert back is status or (status is TaskStatus.WAITING_REMOTE and back is TaskStatus.RUNNING)
    assert FROM_A2A[TaskState.TASK_STATE_INPUT_REQUIRED] is None


def test_agent_card_describes_the_tools(served):
    server, _ = served

    async def fetch():
        async with httpx.AsyncClient() as http:  # the card is public: no token
            return await A2ACardResolver(http, server.url).get_agent_card()

    card = asyncio.run(fetch())
    assert card.name == "worker" and card.capabilities.streaming
    skills = {skill.id: skill.description for skill in card.skills}
    assert set(skills) == {"square", "hang"} and skills["square"].startswith("The square of x.")
    assert "bearer" in card.security_schemes


def test_sdk_client_sees_submitted_working_progress_and_the_result(served):
    server, events = served
    events["release"].set()

    async def run():
        client = await _sdk_client(server)
        states, notes, artifacts = [], [], []
        async for event in client.send_message(_request({"tool": "square", "parameters": {"x": 9}})):
            if event.HasField("task"):
                states.append(event.task.status.state)
            elif event.HasField("status_update"):
                states.append(event.status_update.status.state)
                if event.status_update.status.HasField("message"):
                    notes.append(event.status_update.status.message.parts[0].text)
            elif event.HasField("artifact_update"):
                artifacts.append(event.artifact_update.artifact)
        await client.close()
        return states, notes, artifacts

    states, notes, artifacts = asyncio.run(run())
    assert states[0] == TaskState.TASK_STATE_SUBMITTED and states[-1] == TaskState.TASK_STATE_COMPLETED
    assert TaskState.TASK_STATE_WORKING in states
    assert json.loads(notes[0]) == {"fraction": 0.5, "message": "half way"}
    assert artifacts[0].name == "result" and json.loads(artifacts[0].parts[0].text) == 81


def test_sdk_client_unknown_tool_fails_with_the_known_tools(served):
    server, _ = served

    async def run():
        client = await _sdk_client(server)
        last = None
        async for event in client.send_message(_request({"tool": "cube", "parameters": {}})):
            if event.HasField("status_update"):
                last = event.status_update.status
        await client.close()
        return last

    status = asyncio.run(run())
    assert status.state == TaskState.TASK_STATE_FAILED
    content = json.loads(status.message.parts[0].text)
    assert content["error_type"] == "unknown_tool" and content["known_tools"] == ["hang", "square"]


def test_sdk_client_cancel_stops_the_handlers_task(served):
    server, events = served

    async def run():
        client = await _sdk_client(server)
        stream = client.send_message(_request({"tool": "hang"}))
        task_id = None
        async for event in stream:
            if event.HasField("task"):
                task_id = event.task.id
                break
        await asyncio.to_thread(events["started"].wait, WAIT)
        task = await client.cancel_task(CancelTaskRequest(id=task_id))
        await stream.aclose()
        await client.close()
        return task

    task = asyncio.run(run())
    assert task.status.state == TaskState.TASK_STATE_CANCELED
    assert events["stopped"].wait(WAIT)
    handled = [t for t in served[0].protocol.manager.list() if t.name == "worker:hang"]
    assert handled and handled[0].status is TaskStatus.CANCELLED


def test_bad_input_is_refused_and_the_server_keeps_serving(served):
    server, events = served
    events["release"].set()
    body = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage", "params": {}}
    with httpx.Client(timeout=WAIT) as http:
        assert http.post(server.url, json=body).status_code == 401  # no token
        bad = {"Authorization": "Bearer wrong"}
        assert http.post(server.url, json=body, headers=bad).status_code == 401
        good = {"Authorization": f"Bearer {server.token}"}
        huge = b"x" * (server.max_body_bytes + 1)
        assert http.post(server.url, content=huge, headers=good).status_code == 413
        garbage = http.post(server.url, content=b"{not json", headers=good)
        assert garbage.status_code == 200 and "error" in garbage.json()
    directory = AgentDirectory()
    directory.register("w", A2AAgent(server.url, server.token))
    asker = CollaborationProtocol("asker", TaskManager(max_workers=2), directory, register=False)
    try:
        assert asker.ask("w", "square", {"x": 3}, timeout=WAIT) == 9
        directory.register("w-bad", A2AAgent(server.url, "wrong token"))
        with pytest.raises(CollaborationError) as caught:
            asker.ask("w-bad", "square", {"x": 3}, timeout=WAIT)
        assert caught.value.error_type == "transport"
    finally:
        asker.close()
        asker.manager.shutdown(wait=False)


# ---------------------------------------------------------------------------------------------- two processes


class Peer:
    """A real second process serving handlers over A2A (tests/_collab_peer.py)."""

    def __init__(self) -> None:
        self.token = secrets.token_urlsafe(16)
        env = {**os.environ, "PEER_TOKEN": self.token}
        script = Path(__file__).parent / "_collab_peer.py"
        self.process = subprocess.Popen(
            [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        first = self.lines.get(timeout=60)
        assert first.startswith("URL "), first
        self.url = first.split(" ", 1)[1].strip()

    def _read(self) -> None:
        for line in self.process.stdout:  # type: ignore[union-attr]
            self.lines.put(line.strip())

    def close(self) -> None:
        self.process.stdin.close()  # type: ignore[union-attr]
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture(scope="module")
def peer():
    process = Peer()
    yield process
    process.close()


@pytest.fixture
def boss(peer):
    directory = AgentDirectory()
    directory.register("peer", A2AAgent(peer.url, peer.token))
    protocol = CollaborationProtocol("boss", TaskManager(max_workers=4), directory)
    yield protocol
    protocol.close()
    protocol.manager.shutdown(wait=False, cancel_pending=True)


def test_two_processes_request_and_progress(boss):
    seen = []
    assert boss.ask("peer", "square", {"x": 12}, WAIT, lambda f, m: seen.append((f, m))) == 144
    assert seen == [(0.5, "half way")]
    assert boss.ask("peer", "echo", {"n": 1, "s": "x"}, timeout=WAIT) == {"n": 1, "s": "x"}  # ints stay ints


def test_two_processes_handler_error_and_unknown_tool(boss):
    with pytest.raises(CollaborationError) as caught:
        boss.ask("peer", "boom", timeout=WAIT)
    assert caught.value.error_type == "handler_error" and "boom from the peer" in str(caught.value)
    with pytest.raises(CollaborationError) as caught:
        boss.ask("peer", "nope", timeout=WAIT)
    assert caught.value.error_type == "unknown_tool" and "square" in caught.value.known_tools


def test_two_processes_timeout_cancels_the_remote_handler(boss, peer):
    reply = asyncio.run(boss.request_collaboration("boss", "peer", "hang", {}, timeout=0.5))
    assert reply["error_type"] == "timeout"
    assert peer.lines.get(timeout=WAIT) == "STOPPED hang"


def test_two_processes_cancel_in_flight_from_an_agent_request_task(boss, peer):
    task_id = boss.manager.submit("agent_request", "peer", {"tool": "hang"})
    running = threading.Event()
    boss.manager.add_listener(
        lambda info: info.id == task_id and info.status.value == "waiting_remote" and running.set()
    )
    if boss.manager.check(task_id).status is TaskStatus.WAITING_REMOTE:
        running.set()
    assert running.wait(WAIT)
    result = asyncio.run(boss.request_collaboration("boss", "peer", "square", {"x": 2}, timeout=WAIT))
    assert result["result"] == 4  # the peer serves other work meanwhile
    assert boss.manager.cancel(task_id)
    assert peer.lines.get(timeout=WAIT) == "STOPPED hang"


def test_agent_request_task_across_processes(boss):
    task_id = boss.manager.submit("agent_request", "peer", {"tool": "square", "parameters": {"x": 5}})
    assert boss.manager.wait([task_id], timeout=WAIT).done
    assert boss.manager.result(task_id) == 25


def test_the_server_keeps_a_bounded_number_of_finished_tasks():
    from a2a.types import GetTaskRequest

    protocol = CollaborationProtocol("small", TaskManager(max_workers=2), AgentDirectory())
    protocol.register_handler("one", lambda: 1)
    server = A2AServer(protocol, max_finished_tasks=2).start()

    async def run():
        client = await _sdk_client(server)
        ids = []
        for _ in range(4):
            async for event in client.send_message(_request({"tool": "one"})):
                if event.HasField("task"):
                    ids.append(event.task.id)
        kept = [await client.get_task(GetTaskRequest(id=task_id)) for task_id in ids[2:]]
        try:
            await client.get_task(GetTaskRequest(id=ids[0]))
            forgotten = None
        except Exception as exc:  # the SDK's "task not found"
            forgotten = exc
        await client.close()
        return kept, forgotten

    try:
        kept, forgotten = asyncio.run(run())
        assert [task.status.state for task in kept] == [TaskState.TASK_STATE_COMPLETED] * 2
        assert forgotten is not None and "not found" in str(forgotten).lower()
    finally:
        server.close()
        protocol.close()
        protocol.manager.shutdown(wait=False)
