"""WAITING_REMOTE suspension and the RemoteExecutionManager, without a network (responses delivered by hand)."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from async_task_system import TaskManager, TaskStatus, get_current_task_id, get_task_manager
from async_task_system.core.tasks import TaskFailure
from async_task_system.remote import (
    RemoteExecuteTool,
    RemoteExecutionError,
    RemoteExecutionHandler,
    UnknownRequestError,
)


def _request_id(manager: TaskManager, task_id: str) -> str:
    request_id = manager.remote_manager.request_for_task(task_id)
    assert request_id is not None, f"{task_id} has no remote request"
    return request_id


def test_thousand_waiting_tasks_hold_no_slot_while_other_tasks_run():
    manager = TaskManager(max_workers=2)
    manager.remote_manager.manual_delivery = True  # this test answers by hand
    running = 0
    peak = 0
    lock = threading.Lock()

    def work(n: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.02)
        with lock:
            running -= 1
        return n * 2

    manager.register_function(work)
    waiting = [manager.submit("remote", "remote_execute", {"command": f"echo {i}"}) for i in range(1000)]
    stats = manager.get_statistics()
    assert stats["waiting_remote"] == 1000 and stats["running"] == 0 and stats["pending"] == 0
    others = [manager.submit("function", "work", {"n": i}) for i in range(8)]
    assert manager.wait(others, timeout=20).not_done == []
    assert [manager.result(t) for t in others] == [i * 2 for i in range(8)]
    assert peak == 2, "the other tasks must still be bounded by max_workers"
    assert manager.get_statistics()["waiting_remote"] == 1000  # never rescheduled meanwhile
    for i, task_id in enumerate(waiting):
        assert manager.handle_websocket_response(
            _request_id(manager, task_id), True, {"stdout": f"{i}\n"}, None
        )
    assert manager.wait(waiting, timeout=20).not_done == []
    assert manager.result(waiting[7]) == {"stdout": "7\n"}
    assert manager.get_statistics()["completed"] == 1008
    manager.shutdown()


def test_seed_000_suspend_and_resume_from_task_code():
    manager = TaskManager(max_workers=1)
    manager.remote_manager.manual_delivery = True  # this test answers by hand
    seen: list[tuple[str, str]] = []
    manager.add_listener(lambda info: seen.append((info.id, info.status.value)))
    request_ids: list[str] = []

    def remote_step(command: str) -> dict:
        task_id = get_current_task_id()
        request_id = asyncio.run(manager.suspend_task_for_remote(task_id, command, 30))
        request_ids.append(request_id)
        return {"status": "pending_remote", "request_id": request_id}  # not the task's result

    manager.register_function(remote_step)
    task_id = manager.submit("function", "remote_step", {"command": "docker ps"})
    assert manager.wait(task_id, timeout=0.3).not_done == [task_id]
    assert manager.check(task_id).status is TaskStatus.WAITING_REMOTE
    assert manager.remote_manager.pending()[0].command == "docker ps"
    assert asyncio.run(manager.resume_task_with_result(task_id, "CONTAINER ID ...")) is True
    assert manager.result(task_id) == "CONTAINER ID ..."
    assert asyncio.run(manager.resume_task_with_result(task_id, "again")) is False
    manager.shutdown()
    statuses = [status for tid, status in seen if tid == task_id]
    assert statuses == ["pending", "running", "waiting_remote", "running", "completed"]
    # The request was answered by the resume: a late response for it is ignored.
    assert manager.handle_websocket_response(request_ids[0], True, "late", None) is False


def test_remote_error_fails_the_task_with_the_message():
    manager = TaskManager()
    manager.remote_manager.manual_delivery = True  # this test answers by hand
    task_id = manager.submit("remote", "remote_execute", {"command": "ls /nope"})
    manager.handle_websocket_response(
        _request_id(manager, task_id), False, None, "Remote server connection failed"
    )
    info = manager.check(task_id)
    assert info.status is TaskStatus.FAILED
    assert info.error.type == "remote_error" and info.error.message == "Remote server connection failed"
    value = manager.result(task_id)
    assert isinstance(value, TaskFailure) and "Remote server connection failed" in value
    manager.shutdown()


def test_remote_timeout_fails_the_task_with_timeout():
    manager = TaskManager()
    manager.remote_manager.manual_delivery = True  # this test answers by hand
    manager.remote_manager.response_grace = 0.0
    task_id = manager.submit("remote", "remote_execute", {"command": "sleep 100", "timeout": 0.2})
    assert manager.wait(task_id, timeout=5).not_done == []
    info = manager.check(task_id)
    assert info.status is TaskStatus.FAILED and info.error.type == "timeout"
    assert manager.remote_manager.pending() == []
    manager.shutdown()


def test_unknown_late_and_duplicate_responses_are_ignored():
    manager = TaskManager()
    manager.remote_manager.manual_delivery = True  # this test answers by hand
    remote = manager.remote_manager
    task_id = manager.submit("remote", "remote_execute", {"command": "true"})
    request_id = _request_id(manager, task_id)
    assert remote.handle_remote_response("no-such-request", True, 1, None) is False
    assert remote.handle_remote_response(request_id, True, "first", None) is True
    assert remote.handle_remote_response(request_id, True, "duplicate", None) is False
    assert remote.handle_remote_response(request_id, False, None, "late failure") is False
    assert manager.result(task_id) == "first"
    assert remote.ignored_responses == 3
    manager.shutdown()


def test_wait_for_remote_result_async_blocking_and_after_the_fact():
    manager = TaskManager()
    manager.remote_manager.manual_delivery = True  # this test answers by hand
    remote = manager.remote_manager
    ok = remote.create_remote_request(None, "echo hi", 10)
    bad = remote.create_remote_request(None, "false", 10)

    async def scenario() -> tuple:
        threading.Timer(0.05, remote.handle_remote_response, (ok, True, {"stdout": "hi\n"}, None)).start()
        threading.Timer(
            0.05, remote.handle_remote_response, (bad, False, {"exit_code": 1}, "exit code 1")
        ).start()
        first = await remote.wait_for_remote_result(ok, timeout=5)
        with pytest.raises(RemoteExecutionError) as failure:
            await remote.wait_for_remote_result(bad, timeout=5)
        pending = remote.create_remote_request(None, "sleep 1", 10)
        with pytest.raises(TimeoutError, match="no result for remote request"):
            await remote.wait_for_remote_result(pending, timeout=0.05)
        return first, failure.value, pending

    first, failure, pending = asyncio.run(scenario())
    with pytest.raises(TimeoutError, match="no result for remote request"):  # the blocking twin too
        remote.wait_result(pending, timeout=0.05)
    assert first == {"stdout": "hi\n"}
    assert failure.error_type == "remote_error" and failure.result == {"exit_code": 1}
    # A waiter giving up does not cancel the request: it can still be answered and read.
    assert remote.handle_remote_response(pending, True, "done", None) is True
    assert remote.wait_result(pending, timeout=1) == "done"
    assert remote.wait_result(ok) == {"stdout": "hi\n"}  # remembered after completion
    with pytest.raises(UnknownRequestError):
        remote.wait_result("never-issued")
    manager.shutdown()


def test_cancelling_a_waiting_task_drops_its_request():
    manager = TaskManager()
    manager.remote_manager.manual_delivery = True  # this test answers by hand
    task_id = manager.submit("remote", "remote_execute", {"command": "sleep 100"})
    request_id = _request_id(manager, task_id)
    assert manager.cancel(task_id) is True
    assert manager.remote_manager.pending() == []
    assert manager.remote_manager.outcome(request_id).error_type == "cancelled"
    assert manager.handle_websocket_response(request_id, True, "too late", None) is False
    assert manager.check(task_id).status is TaskStatus.CANCELLED
    manager.shutdown()


def test_task_timeout_while_waiting_fails_it_and_drops_the_request():
    manager = TaskManager()
    manager.remote_manager.manual_delivery = True  # this test answers by hand
    task_id = manager.submit("remote", "remote_execute", {"command": "sleep 100", "timeout": 60}, timeout=0.2)
    assert manager.wait(task_id, timeout=5).not_done == []
    assert manager.check(task_id).error.type == "timeout"
    assert manager.remote_manager.pending() == []
    manager.shutdown()


def test_inline_wait_lends_the_slot_and_returns_the_result_to_the_caller():
    manager = TaskManager(max_workers=1)
    manager.remote_manager.manual_delivery = True  # this test answers by hand
    inline_started = threading.Event()

    def uses_remote() -> str:
        inline_started.set()
        result = manager.remote_manager.execute_inline(get_current_task_id(), "hostname", 10)
        return (
            f"remote said {result['stdout'].strip()} in {manager.check(get_current_task_id()).status.value}"
        )

    def quick() -> str:
        return "quick done"

    manager.register_function(uses_remote)
    manager.register_function(quick)
    blocked = manager.submit("function", "uses_remote")
    assert inline_started.wait(5)
    other = manager.submit("function", "quick")
    # The only slot was lent back: the other task runs while the first one waits.
    assert manager.wait(other, timeout=5).not_done == []
    assert manager.check(blocked).status is TaskStatus.WAITING_REMOTE
    request_id = _request_id(manager, blocked)
    manager.handle_websocket_response(request_id, True, {"stdout": "box-1\n"}, None)
    assert manager.wait(blocked, timeout=5).not_done == []
    assert manager.result(blocked) == "remote said box-1 in running"
    assert manager.get_statistics()["free_slots"] == 1  # the slot was taken back and returned exactly once
    manager.shutdown()


def test_inline_failure_raises_in_the_caller_and_the_task_continues():
    manager = TaskManager()
    manager.remote_manager.manual_delivery = True  # this test answers by hand

    def tolerant() -> str:
        try:
            manager.remote_manager.execute_inline(get_current_task_id(), "false", 10)
        except RemoteExecutionError as exc:
            return f"handled {exc.error_type}: {exc.result['exit_code']}"
        return "no error?"

    manager.register_function(tolerant)
    task_id = manager.submit("function", "tolerant")
    deadline = time.monotonic() + 5
    while manager.remote_manager.request_for_task(task_id) is None and time.monotonic() < deadline:
        time.sleep(0.005)
    manager.handle_websocket_response(_request_id(manager, task_id), False, {"exit_code": 1}, "exit code 1")
    manager.wait(task_id, timeout=5)
    assert manager.result(task_id) == "handled remote_error: 1"
    manager.shutdown()


def test_remote_task_retries_after_a_remote_failure():
    manager = TaskManager(retry_backoff=0.01)
    manager.remote_manager.manual_delivery = True  # this test answers by hand
    task_id = manager.submit("remote", "remote_execute", {"command": "flaky"}, retries=1)
    first = _request_id(manager, task_id)
    manager.handle_websocket_response(first, False, None, "worker hiccup")
    deadline = time.monotonic() + 5
    while manager.remote_manager.request_for_task(task_id) in (None, first) and time.monotonic() < deadline:
        time.sleep(0.005)
    second = _request_id(manager, task_id)
    assert second != first
    manager.handle_websocket_response(second, True, "fine", None)
    manager.wait(task_id, timeout=5)
    info = manager.check(task_id)
    assert info.status is TaskStatus.COMPLETED and info.result == "fine" and info.attempts == 2
    manager.shutdown()


def test_bring_your_own_websocket_handler():
    manager = TaskManager()
    manager.remote_manager.manual_delivery = True  # this test answers by hand
    handler = RemoteExecutionHandler(manager, max_message_bytes=2048)
    task_id = manager.submit("remote", "remote_execute", {"command": "uptime"})
    request_id = _request_id(manager, task_id)
    assert asyncio.run(handler.on_websocket_message("{not json")) is False
    assert asyncio.run(handler.on_websocket_message(json.dumps({"request_id": request_id}))) is False
    assert asyncio.run(handler.on_websocket_message("x" * 5000)) is False
    assert handler.rejected == 3 and "exceeds" in handler.last_error
    assert manager.check(task_id).status is TaskStatus.WAITING_REMOTE  # nothing else touched
    message = json.dumps({"request_id": request_id, "success": True, "result": "up 3 days", "error": None})
    assert asyncio.run(handler.on_websocket_message(message)) is True
    assert manager.result(task_id) == "up 3 days"
    assert handler.handle_message(message) is False  # duplicate
    manager.shutdown()


def test_remote_tool_validates_before_starting_anything():
    manager = TaskManager()
    manager.remote_manager.manual_delivery = True  # this test answers by hand
    tool = RemoteExecuteTool(manager)
    with pytest.raises(ValueError, match="language must be one of"):
        tool.forward("print(1)", language="ruby")
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        tool.forward("ls", timeout=-1)
    with pytest.raises(ValueError, match="non-empty string"):
        tool.forward("  ")
    assert manager.list() == []
    out = tool.forward("ls", timeout=5)
    assert out["status"] == "pending_remote" and out["request_id"] == _request_id(manager, out["task_id"])
    assert "wait_for_tasks" in out["message"]
    manager.cancel(out["task_id"])
    manager.shutdown()


def test_submit_task_description_lists_the_remote_target():
    from async_task_system.agents.tools import SubmitTaskTool

    manager = TaskManager()
    tool = SubmitTaskTool(manager)
    assert "remote_execute" not in tool.description
    _ = manager.remote_manager
    assert "task_type='remote': remote_execute" in tool.description
    manager.shutdown()


def test_coroutine_tasks_wait_remotely_without_a_thread_or_a_slot():
    manager = TaskManager(max_workers=2)
    manager.remote_manager.manual_delivery = True  # this test answers by hand
    remote = manager.remote_manager

    async def fetch(n: int) -> str:
        output = await remote.execute_async(get_current_task_id(), f"echo {n}", 30)
        return f"{n}: {output}"

    def work() -> str:
        return "sync ran"

    manager.register_function(fetch)
    manager.register_function(work)
    threads_before = threading.active_count()
    ids = [manager.submit("function", "fetch", {"n": i}) for i in range(1000)]
    deadline = time.monotonic() + 20
    while manager.get_statistics()["waiting_remote"] < 1000 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert manager.get_statistics()["waiting_remote"] == 1000
    # 1,000 waiting coroutines: a handful of threads at most (pool + loop + timers), and both slots free.
    assert threading.active_count() - threads_before <= 10
    other = manager.submit("function", "work")
    assert manager.wait(other, timeout=5).not_done == []
    for task_id in ids:
        manager.handle_websocket_response(_request_id(manager, task_id), True, task_id.upper(), None)
    assert manager.wait(ids, timeout=20).not_done == []
    assert manager.result(ids[5]) == f"5: {ids[5].upper()}"
    manager.shutdown()


def test_seed_000_async_tool_suspends_and_returns_pending():
    manager = TaskManager()
    manager.remote_manager.manual_delivery = True  # this test answers by hand

    async def remote_execute(command: str, timeout: int = 30) -> dict:
        task_manager = get_task_manager()
        request_id = await task_manager.suspend_task_for_remote(get_current_task_id(), command, timeout)
        return {"status": "pending_remote", "request_id": request_id, "message": f"sent {command}"}

    async def broken() -> None:
        raise ValueError("async failure")

    manager.register_function(remote_execute)
    manager.register_function(broken)
    task_id = manager.submit("function", "remote_execute", {"command": "docker ps"})
    deadline = time.monotonic() + 5
    while manager.check(task_id).status is not TaskStatus.WAITING_REMOTE and time.monotonic() < deadline:
        time.sleep(0.005)
    assert manager.check(task_id).status is TaskStatus.WAITING_REMOTE  # the pending dict is not the result
    manager.handle_websocket_response(_request_id(manager, task_id), True, "CONTAINER ID", None)
    assert manager.wait(task_id, timeout=5).not_done == []
    assert manager.result(task_id) == "CONTAINER ID"
    failing = manager.submit("function", "broken")
    manager.wait(failing, timeout=5)
    error = manager.check(failing).error
    assert error.type == "ValueError" and error.message == "async failure"
    manager.shutdown()


def test_remote_tool_wait_modes_outside_a_task():
    manager = TaskManager()
    manager.remote_manager.manual_delivery = True  # this test answers by hand
    remote = manager.remote_manager

    def answer_soon(stdout: str) -> None:
        def respond() -> None:
            deadline = time.monotonic() + 5
            while not remote.pending() and time.monotonic() < deadline:
                time.sleep(0.005)
            request = remote.pending()[0]
            remote.handle_remote_response(request.request_id, True, {"exit_code": 0, "stdout": stdout}, None)

        threading.Thread(target=respond, daemon=True).start()

    answer_soon("direct\n")
    blocking = RemoteExecuteTool(manager, wait=True).forward("hostname", timeout=5)
    assert blocking == {"exit_code": 0, "stdout": "direct\n", "success": True}
    assert manager.list() == []  # no task: a plain request
    pending = RemoteExecuteTool(manager, wait=False).forward("hostname", timeout=5)
    assert pending["status"] == "pending_remote"
    manager.cancel(pending["task_id"])
    manager.shutdown()
