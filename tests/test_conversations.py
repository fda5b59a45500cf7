"""Seed 000 to the letter: agent conversations as tasks that suspend on remote work, holding no thread."""

from __future__ import annotations

import threading
import time

import pytest

from async_task_system import ChatAgent, ScriptedModel, TaskManager, TaskStatus
from async_task_system.remote import RemoteExecuteTool

remote_execute = RemoteExecuteTool()  # as the seed writes it: bound to the manager that runs it


def _text(message) -> str:
    content = message.content
    return content if isinstance(content, str) else " ".join(part.get("text", "") for part in content)


def _request_for(manager: TaskManager, task_id: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        request_id = manager.remote_manager.request_for_task(task_id)
        if request_id and manager.check(task_id).status is TaskStatus.WAITING_REMOTE:
            return request_id
        assert time.monotonic() < deadline, manager.check(task_id)
        time.sleep(0.005)


def test_the_seed_example_suspends_resumes_and_answers():
    model = ScriptedModel(
        [
            "<code>\nout = remote_execute('docker ps')\nprint('never printed', out)\n</code>",
            "<code>\nfinal_answer('containers: web, db')\n</code>",
        ]
    )
    agent = ChatAgent(model=model, verbosity_level=0)
    agent.task_manager.remote_manager.manual_delivery = True  # answered by hand below
    assert agent.task_manager.remote_manager is not None  # 远程执行管理器已就绪
    seen: list[tuple[str, str]] = []
    with agent:
        agent.task_manager.add_listener(lambda info: seen.append((info.id, info.status.value)))
        task_id = agent.task_manager.create_task(
            prompt="在远程服务器上执行 'docker ps' 命令", tools=[remote_execute]
        )
        request_id = _request_for(agent.task_manager, task_id)
        assert agent.task_manager.get_statistics()["free_slots"] == 3, "a waiting conversation holds no slot"
        agent.task_manager.handle_websocket_response(
            request_id, True, {"exit_code": 0, "stdout": "web\ndb\n", "stderr": ""}, None
        )
        agent.task_manager.wait([task_id], timeout=10)
        assert agent.task_manager.result(task_id) == "containers: web, db"
    # Seed 000's states: RUNNING -> WAITING_REMOTE -> RUNNING -> COMPLETED.
    assert [status for tid, status in seen if tid == task_id] == [
        "pending", "running", "waiting_remote", "running", "completed"
    ]  # fmt: skip
    # The remote result reached the conversation as its next message.
    last_message = _text(model.calls[-1][-1])
    assert (
        "remote_execute('docker ps') returned" in last_message and '"stdout": "web\\ndb\\n"' in last_message
    )
    assert "never printed" not in last_message


def test_a_conversation_suspends_twice_and_errors_reach_the_llm():
    def third_step(messages) -> str:
        text = str(messages[-1])
        assert "failed (remote_error)" in text or "exit_code" in text
        return "<code>\nfinal_answer('done after two remote calls')\n</code>"

    model = ScriptedModel(
        [
            "<code>\nremote_execute('uname -a')\n</code>",
            "<code>\nremote_execute('false')\n</code>",
            third_step,
        ]
    )
    with TaskManager(max_workers=2) as manager:
        manager.remote_manager.manual_delivery = True  # this test answers by hand
        task_id = manager.create_task("Run two commands.", tools=["remote_execute"], model=model)
        first = _request_for(manager, task_id)
        manager.handle_websocket_response(first, True, {"exit_code": 0, "stdout": "Linux\n", "stderr": ""})
        deadline = time.monotonic() + 5
        while manager.remote_manager.request_for_task(task_id) == first:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        second = _request_for(manager, task_id)
        manager.handle_websocket_response(
            second, False, {"exit_code": 1, "stdout": "", "stderr": "boom"}, "exit 1"
        )
        manager.wait([task_id], timeout=10)
        assert manager.result(task_id) == "done after two remote calls"
        assert manager.check(task_id).attempts == 1


def test_cancel_while_suspended_drops_the_request_and_a_late_answer_is_ignored():
    model = ScriptedModel(["<code>\nremote_execute('sleep 100')\n</code>"])
    with TaskManager() as manager:
        manager.remote_manager.manual_delivery = True  # this test answers by hand
        task_id = manager.create_task("wait for it", tools=["remote_execute"], model=model)
        request_id = _request_for(manager, task_id)
        assert manager.cancel(task_id) is True
        assert manager.remote_manager.pending() == []
        assert manager.handle_websocket_response(request_id, True, {"stdout": "late"}) is False
        assert manager.check(task_id).status is TaskStatus.CANCELLED
        assert len(model.calls) == 1, "the cancelled conversation never went on"


def test_the_task_timeout_applies_while_suspended():
    model = ScriptedModel(["<code>\nremote_execute('sleep 100')\n</code>"])
    with TaskManager() as manager:
        manager.remote_manager.manual_delivery = True  # this test answers by hand
        task_id = manager.create_task("wait", tools=["remote_execute"], model=model, timeout=0.3)
        manager.wait([task_id], timeout=5)
        info = manager.check(task_id)
        assert info.status is TaskStatus.FAILED and info.error.type == "timeout"
        assert manager.remote_manager.pending() == []


def test_two_hand_offs_in_one_step_the_second_is_refused_to_the_llm():
    code = (
        "<code>\ntry:\n    remote_execute('one')\nexcept BaseException:\n    remote_execute('two')\n</code>"
    )
    model = ScriptedModel([code, "<code>\nfinal_answer('ok')\n</code>"])
    with TaskManager() as manager:
        manager.remote_manager.manual_delivery = True  # this test answers by hand
        task_id = manager.create_task("two calls", tools=["remote_execute"], model=model)
        request_id = _request_for(manager, task_id)
        assert [r.command for r in manager.remote_manager.pending()] == ["one"]
        manager.handle_websocket_response(request_id, True, {"exit_code": 0, "stdout": "1", "stderr": ""})
        manager.wait([task_id], timeout=10)
        assert manager.result(task_id) == "ok"


def test_from_the_llm_with_submit_task_and_on_a_tool_calling_agent():
    from smolagents import ToolCallingAgent
    from smolagents.models import ChatMessage, ChatMessageToolCall, ChatMessageToolCallFunction, MessageRole

    def call(name: str, arguments: dict) -> ChatMessage:
        return ChatMessage(
            role=MessageRole.ASSISTANT,
            content="",
            tool_calls=[
                ChatMessageToolCall(
                    id="c1",
                    type="function",
                    function=ChatMessageToolCallFunction(name=name, arguments=arguments),
                )
            ],
        )

    model = ScriptedModel(
        [call("remote_execute", {"command": "hostname"}), call("final_answer", {"answer": "box-7"})]
    )
    with TaskManager() as manager:
        manager.remote_manager.manual_delivery = True  # this test answers by hand
        _ = manager.remote_manager
        task_id = manager.create_task(
            "Which host?",
            tools=["remote_execute"],
            agent_factory=lambda: ToolCallingAgent(tools=[], model=model),
        )
        request_id = _request_for(manager, task_id)
        manager.handle_websocket_response(
            request_id, True, {"exit_code": 0, "stdout": "box-7\n", "stderr": ""}
        )
        manager.wait([task_id], timeout=10)
        assert manager.result(task_id) == "box-7"
        # The coordinating LLM can start one too.
        submitted = manager.submit("conversation", "chat", {"prompt": "hi", "tools": ["nope"]})
        manager.wait([submitted], timeout=5)
        assert "Unknown tool 'nope'" in manager.check(submitted).error.message


def test_a_thousand_conversations_hold_a_bounded_number_of_threads():
    count = 200  # the benchmark runs 1,000; the test keeps the suite short
    answered = threading.Event()

    def script(index: int) -> ScriptedModel:
        def final(messages) -> str:
            return f"<code>\nfinal_answer('conversation {index} done')\n</code>"

        return ScriptedModel(
            [
                f"<code>\nremote_execute('echo a{index}')\n</code>",
                f"<code>\nremote_execute('echo b{index}')\n</code>",
                final,
            ]
        )

    peak = 0
    with TaskManager(max_workers=4) as manager:
        manager.remote_manager.manual_delivery = True  # this test answers by hand
        remote = manager.remote_manager
        ids = [
            manager.create_task(f"job {i}", tools=["remote_execute"], model=script(i)) for i in range(count)
        ]
        remaining = set(ids)
        while remaining:
            for request in remote.pending():
                remote.handle_remote_response(
                    request.request_id, True, {"exit_code": 0, "stdout": request.command}
                )
            peak = max(peak, threading.active_count())
            done = manager.wait(list(remaining), timeout=0.05, return_when="first").done
            remaining -= set(done)
            answered.set()
        results = manager.results(ids)
    assert [results[i] for i in ids] == [f"conversation {n} done" for n in range(count)]
    assert peak < 50, peak


@pytest.mark.parametrize("shutdown_first", [True])
def test_an_answer_after_shutdown_is_ignored(shutdown_first):
    model = ScriptedModel(["<code>\nremote_execute('x')\n</code>"])
    manager = TaskManager()
    manager.remote_manager.manual_delivery = True  # this test answers by hand
    task_id = manager.create_task("x", tools=["remote_execute"], model=model)
    request_id = _request_for(manager, task_id)
    manager.shutdown(wait=False, cancel_pending=True)
    manager.cancel(task_id)
    assert manager.handle_websocket_response(request_id, True, {"stdout": "late"}) is False
    assert manager.check(task_id).status is TaskStatus.CANCELLED


def test_spans_before_and_after_a_suspension_share_the_trace_and_the_task_span():
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from smolagents import tool

    from async_task_system.observe import tracing

    seen: list[tuple[int, int]] = []

    @tool
    def probe() -> str:
        """Records the span it runs under."""
        context = trace.get_current_span().get_span_context()
        seen.append((context.trace_id, context.span_id))
        return "ok"

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.set_tracer_provider(provider)
    try:
        model = ScriptedModel(
            [
                "<code>\nprobe()\nremote_execute('date')\n</code>",
                "<code>\nprobe()\nfinal_answer('traced')\n</code>",
            ]
        )
        with TaskManager() as manager:
            manager.remote_manager.manual_delivery = True  # this test answers by hand
            with provider.get_tracer("test").start_as_current_span("coordinator") as root:
                task_id = manager.create_task("trace me", tools=[probe, "remote_execute"], model=model)
            request_id = _request_for(manager, task_id)
            manager.handle_websocket_response(
                request_id, True, {"exit_code": 0, "stdout": "today", "stderr": ""}
            )
            manager.wait([task_id], timeout=10)
            assert manager.result(task_id) == "traced"
    finally:
        tracing.set_tracer_provider(None)
    task_spans = [s for s in exporter.get_finished_spans() if s.name == "task chat"]
    first_task_span = next(s for s in task_spans if s.parent.span_id == root.get_span_context().span_id)
    assert len(seen) == 2
    assert {trace_id for trace_id, _ in seen} == {root.get_span_context().trace_id}
    assert [span_id for _, span_id in seen] == [first_task_span.context.span_id] * 2, (
        "both turns under the task's span"
    )
