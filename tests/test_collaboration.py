"""Collaboration between agents in one process: requests, replies, progress, cancel, timeouts, refusals."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from async_task_system import TaskManager, TaskStatus, report_progress
from async_task_system.collab.collaboration import (
    AgentDirectory,
    CollaborationError,
    CollaborationMessage,
    CollaborationProtocol,
    MessageType,
)

WAIT = 30.0  # generous bound on any wait in these tests (a loaded machine is normal)


@pytest.fixture
def directory():
    return AgentDirectory()


@pytest.fixture
def pair(directory):
    """Agent 'worker' serving handlers, agent 'boss' asking; each with its own manager."""
    worker = CollaborationProtocol("worker", TaskManager(max_workers=4), directory)
    boss = CollaborationProtocol("boss", TaskManager(max_workers=4), directory)
    yield boss, worker
    for protocol in (boss, worker):
        protocol.close()
        protocol.manager.shutdown(wait=False, cancel_pending=True)


def serve_long_job(protocol):
    """Register an async handler 'long' that sleeps an hour; events say it started and that it stopped."""
    started, stopped = threading.Event(), threading.Event()

    async def long_job() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            stopped.set()

    protocol.register_handler("long", long_job)
    return started, stopped


def test_request_gets_the_handlers_result(pair):
    boss, worker = pair

    async def add(a: int, b: int) -> int:
        return a + b

    worker.register_handler("add", add)
    reply = asyncio.run(boss.request_collaboration("boss", "worker", "add", {"a": 2, "b": 3}, timeout=WAIT))
    assert reply == {"status": "success", "result": 5}
    assert boss.ask("worker", "add", {"a": 1, "b": 1}, timeout=WAIT) == 2
    handled = [t for t in worker.manager.list() if t.kind.value == "collaboration" and t.name == "worker:add"]
    assert len(handled) == 2 and all(t.status is TaskStatus.COMPLETED for t in handled)


def test_sync_handler_runs_as_a_task_in_a_thread(pair):
    boss, worker = pair
    worker.register_handler("upper", lambda text: text.upper())
    assert boss.ask("worker", "upper", {"text": "hi"}, timeout=WAIT) == "HI"


def test_unknown_tool_is_answered_with_the_known_ones(pair):
    boss, worker = pair
    worker.register_handler("add", lambda a, b: a + b)
    worker.register_handler("mul", lambda a, b: a * b)
    reply = asyncio.run(boss.request_collaboration("boss", "worker", "div", {}, timeout=WAIT))
    assert reply["status"] == "error" and reply["error_type"] == "unknown_tool"
    assert reply["known_tools"] == ["add", "mul"]


def test_unknown_agent_is_answered_with_the_known_ones(pair):
    boss, _ = pair
    with pytest.raises(CollaborationError) as caught:
        boss.ask("nobody", "add", {}, timeout=WAIT)
    assert caught.value.error_type == "unknown_agent" and "worker" in str(caught.value)


def test_handler_exception_becomes_an_error_response(pair):
    boss, worker = pair

    def broken() -> None:
        raise KeyError("missing thing")

    worker.register_handler("broken", broken)
    with pytest.raises(CollaborationError) as caught:
        boss.ask("worker", "broken", timeout=WAIT)
    assert caught.value.error_type == "handler_error" and "missing thing" in str(caught.value)


def test_progress_reaches_the_requester_as_it_happens(pair):
    boss, worker = pair
    release = threading.Event()
    seen: list[tuple] = []
    got_first = threading.Event()

    def slow() -> str:
        report_progress(0.5, "half way")
        assert release.wait(WAIT)
        return "done"

    def on_progress(fraction, message):
        seen.append((fraction, message))
        got_first.set()

    worker.register_handler("slow", slow)
    result: list = []
    thread = threading.Thread(target=lambda: result.append(boss.ask("worker", "slow", {}, WAIT, on_progress)))
    thread.start()
    assert got_first.wait(WAIT)  # progress arrived while the handler still waits
    assert not result
    release.set()
    thread.join(WAIT)
    assert result == ["done"] and seen[0] == (0.5, "half way")


def test_timeout_answers_with_an_error_and_cancels_the_hanging_handler(pair):
    boss, worker = pair
    stopped = threading.Event()

    async def hang() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            stopped.set()  # the coroutine really ended

    worker.register_handler("hang", hang)
    reply = asyncio.run(boss.request_collaboration("boss", "worker", "hang", {}, timeout=0.3))
    assert reply["error_type"] == "timeout"
    assert stopped.wait(WAIT)
    task = next(t for t in worker.manager.list() if t.kind.value == "collaboration")
    assert worker.manager.wait([task.id], timeout=WAIT).done
    assert worker.manager.check(task.id).status in (TaskStatus.FAILED, TaskStatus.CANCELLED)


def test_cancel_in_flight_stops_the_handlers_task(pair):
    boss, worker = pair
    started, stopped = serve_long_job(worker)
    answers: list = []
    done = threading.Event()
    handle = boss.start_request("worker", "long", {}, WAIT, lambda m: (answers.append(m), done.set()))
    assert started.wait(WAIT)
    assert handle.cancel()
    assert done.wait(WAIT) and answers[0].content["error_type"] == "cancelled"
    assert stopped.wait(WAIT)
    task = next(t for t in worker.manager.list() if t.kind.value == "collaboration")
    assert worker.manager.check(task.id).status is TaskStatus.CANCELLED


def test_full_inbox_answers_busy_at_once(directory):
    worker = CollaborationProtocol("small", TaskManager(max_workers=1), directory, inbox_size=1)
    boss = CollaborationProtocol("asker", TaskManager(max_workers=1), directory)
    release = threading.Event()
    worker.register_handler("wait", lambda: release.wait(WAIT))
    try:
        first = threading.Event()
        boss.start_request("small", "wait", {}, WAIT, lambda m: first.set())
        with pytest.raises(CollaborationError) as caught:
            boss.ask("small", "wait", timeout=WAIT)
        assert caught.value.error_type == "busy"
        release.set()
        assert first.wait(WAIT)
    finally:
        release.set()
        for protocol in (boss, worker):
            protocol.close()
            protocol.manager.shutdown(wait=False, cancel_pending=True)


def test_expired_deadline_is_refused_and_the_handler_never_runs(pair):
    _, worker = pair
    ran = threading.Event()
    worker.register_handler("work", lambda: ran.set())
    message = CollaborationMessage(
        id="r1", type=MessageType.REQUEST, from_agent="boss", to_agent="worker",
        content={"tool": "work", "parameters": {}}, deadline=time.time() - 1,
    )  # fmt: skip
    reply = asyncio.run(worker.handle_request(message))
    assert reply.type is MessageType.RESPONSE and reply.correlation_id == "r1"
    assert reply.content["error_type"] == "expired"
    assert not ran.is_set()


def test_malformed_requests_are_refused_with_a_reason(pair):
    _, worker = pair
    worker.register_handler("work", lambda: 1)
    for content in ("not a dict", {"tool": 3}, {"tool": "work", "parameters": [1, 2]}):
        message = CollaborationMessage(
            id="x", type="request", from_agent="a", to_agent="worker", content=content
        )
        reply = asyncio.run(worker.handle_request(message))
        assert reply.content["error_type"] == "bad_request", content
    with pytest.raises(CollaborationError):
        CollaborationMessage.from_dict({"id": "x", "type": "shout"})


def test_oversized_parameters_are_refused_before_sending(pair):
    boss, worker = pair
    worker.register_handler("echo", lambda text: text)
    with pytest.raises(CollaborationError) as caught:
        boss.ask("worker", "echo", {"text": "x" * (2 << 20)}, timeout=WAIT)
    assert caught.value.error_type == "bad_request" and "limit" in str(caught.value)


def test_message_round_trips_through_its_wire_form():
    message = CollaborationMessage(
        id="m", type=MessageType.PROGRESS, from_agent="a", to_agent="b", content={"fraction": 0.5},
        correlation_id="r", deadline=123.5,
    )  # fmt: skip
    again = CollaborationMessage.from_dict(message.to_dict())
    assert again == message


def test_agent_request_task_kind_from_the_llms_submit_task(pair):
    boss, worker = pair
    release = threading.Event()

    def slow_square(x: int) -> int:
        report_progress(0.25, "thinking")
        release.wait(WAIT)
        return x * x

    worker.register_handler("square", slow_square)
    manager = boss.manager
    progressed = threading.Event()
    manager.add_listener(lambda info: info.progress_message == "thinking" and progressed.set())
    task_id = manager.submit("agent_request", "worker", {"tool": "square", "parameters": {"x": 7}})
    assert progressed.wait(WAIT)
    info = manager.check(task_id)
    assert info.status is TaskStatus.WAITING_REMOTE and info.progress == 0.25
    release.set()
    assert manager.wait([task_id], timeout=WAIT).done
    assert manager.result(task_id) == 49


def test_agent_request_errors_fail_the_task_with_their_type(pair):
    boss, worker = pair
    worker.register_handler("square", lambda x: x * x)
    task_id = boss.manager.submit("agent_request", "worker", {"tool": "cube", "parameters": {"x": 2}})
    boss.manager.wait([task_id], timeout=WAIT)
    info = boss.manager.check(task_id)
    assert (
        info.status is TaskStatus.FAILED
        and info.error.type == "unknown_tool"
        and "square" in info.error.message
    )


def test_cancelling_the_agent_request_task_cancels_the_remote_handler(pair):
    boss, worker = pair
    started, stopped = serve_long_job(worker)
    task_id = boss.manager.submit("agent_request", "worker", {"tool": "long"})
    assert started.wait(WAIT)
    assert boss.manager.cancel(task_id)
    assert stopped.wait(WAIT)


def test_ask_agent_tool(pair):
    boss, worker = pair
    worker.register_handler("add", lambda a, b: a + b)
    from async_task_system.collab.collaboration import ask_agent_tool

    tool = ask_agent_tool(boss.manager)
    assert tool(agent="worker", tool="add", parameters={"a": 20, "b": 22}) == 42
    with pytest.raises(CollaborationError, match="Known tools: add"):
        tool(agent="worker", tool="nope", parameters={})


def test_an_llm_asks_another_agent_through_submit_task_and_ask_agent(directory):
    from async_task_system import ScriptedModel, create_async_agent
    from async_task_system.agents.testing import message_text
    from async_task_system.collab.collaboration import attach_collaboration

    worker = CollaborationProtocol("translator", TaskManager(max_workers=2), directory)
    worker.register_handler("translate", lambda text: {"hello": "bonjour"}.get(text, "?"))
    model = ScriptedModel(
        [
            "<code>\n"
            "t = submit_task('agent_request', 'translator', {'tool': 'translate', 'parameters': {'text': 'hello'}})\n"
            "wait_for_tasks([t], 30)\n"
            "background = get_task_results([t])[t]\n"
            "direct = ask_agent('translator', 'translate', {'text': 'hello'})\n"
            "final_answer([background, direct])\n"
            "</code>",
        ]
    )
    try:
        with create_async_agent(model=model, verbosity_level=0) as agent:
            protocol = attach_collaboration(agent, "boss", directory)
            assert agent.task_manager.extension("collaboration").protocol is protocol
            answer = agent.run("Translate 'hello' with the translator agent.")
        assert answer == ["bonjour", "bonjour"]
        assert "Known agents: translator" in message_text(model.calls[0][0])  # the guidance
    finally:
        worker.close()
        worker.manager.shutdown(wait=False)


def test_non_finite_deadlines_are_refused():
    for deadline in (float("nan"), float("inf"), True, "soon"):
        data = {"id": "x", "type": "request", "from_agent": "a", "to_agent": "b", "deadline": deadline}
        with pytest.raises(CollaborationError, match="deadline"):
            CollaborationMessage.from_dict(data)
