"""Tracing with the real OpenTelemetry SDK: task spans are children of their submitter.

Every test records spans with an SDK ``TracerProvider`` and an in-memory collecting exporter,
installed through ``tracing.set_tracer_provider`` (the process-wide OpenTelemetry provider can
be set only once, and other test files must keep running without an SDK).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import StatusCode
from smolagents import CodeAgent, tool

from async_task_system import (
    ScriptedModel,
    TaskManager,
    cancellation_requested,
    create_async_agent,
    get_current_task_id,
    get_task_manager,
)
from async_task_system.observe import tracing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class CollectingExporter(SpanExporter):
    """Keeps finished spans and lets a test wait (on a condition, not a poll) for the ones it needs."""

    def __init__(self) -> None:
        self._spans: list[ReadableSpan] = []
        self._cond = threading.Condition()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._cond:
            self._spans.extend(spans)
            self._cond.notify_all()
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def clear(self) -> None:
        with self._cond:
            self._spans.clear()

    @property
    def spans(self) -> list[ReadableSpan]:
        with self._cond:
            return list(self._spans)

    def wait_for(
        self, predicate: Callable[[list[ReadableSpan]], bool], timeout: float = 10.0
    ) -> list[ReadableSpan]:
        with self._cond:
            ok = self._cond.wait_for(lambda: predicate(self._spans), timeout)
            assert ok, f"spans never matched; have: {[s.name for s in self._spans]}"
            return list(self._spans)


@pytest.fixture(scope="module")
def otel():
    exporter = CollectingExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.set_tracer_provider(provider)
    try:
        yield provider, exporter
    finally:
        tracing.set_tracer_provider(None)
        provider.shutdown()


@pytest.fixture
def spans(otel):
    provider, exporter = otel
    exporter.clear()
    return exporter


@pytest.fixture
def tracer(otel):
    return otel[0].get_tracer("tests")


@pytest.fixture
def instrumented(otel):
    """smolagents instrumented with the test provider, un-instrumented afterwards."""
    instrumentor = tracing.instrument_smolagents_with(otel[0])
    try:
        yield instrumentor
    finally:
        instrumentor.uninstrument()


def by_name(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = by_name(spans, name)
    assert len(found) == 1, f"expected one span {name!r}, got {len(found)} among {[s.name for s in spans]}"
    return found[0]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def task_spans(spans: list[ReadableSpan], task_id: str) -> list[ReadableSpan]:
    return [s for s in spans if s.attributes.get("task.id") == task_id]


# ---------------------------------------------------------------------------- threads


def test_task_span_is_child_of_submitter_in_another_thread(spans, tracer):
    seen = {}

    def work(x: int) -> int:
        seen["thread"] = threading.get_ident()
        with tracer.start_as_current_span("inside-task"):
            return x * 2

    with TaskManager(2, functions=[work]) as manager, tracer.start_as_current_span("submitter") as submitter:
        task_id = manager.submit("function", "work", {"x": 21})
        assert manager.wait([task_id], timeout=10).done == [task_id]
    assert seen["thread"] != threading.get_ident()

    finished = spans.spans
    task = one(finished, "task work")
    inner = one(finished, "inside-task")
    sub = submitter.get_span_context()
    assert task.context.trace_id == sub.trace_id
    assert parent_id(task) == sub.span_id
    assert parent_id(inner) == task.context.span_id
    attrs = task.attributes
    assert attrs["task.id"] == task_id
    assert attrs["task.kind"] == "function"
    assert attrs["task.name"] == "work"
    assert attrs["task.status"] == "completed"
    assert attrs["task.attempt"] == 1
    assert attrs["output.value"] == "42"
    assert json.loads(attrs["input.value"]) == {"x": 21}
    assert task.status.status_code is StatusCode.OK


def test_task_started_after_submitting_span_ended_keeps_its_parent(spans, tracer):
    gate = threading.Event()

    def blocker() -> str:
        assert gate.wait(10)
        return "unblocked"

    def late() -> str:
        return "late"

    with TaskManager(1, functions=[blocker, late]) as manager:
        first = manager.submit("function", "blocker", {})
        with tracer.start_as_current_span("short-lived") as short:
            second = manager.submit("function", "late", {})
        # The submitting span is over; the task has not started (the only slot is taken).
        assert manager.check(second).status.value == "pending"
        gate.set()
        assert manager.wait([first, second], timeout=10).not_done == []

    finished = spans.spans
    short_span = one(finished, "short-lived")
    late_span = one(finished, "task late")
    assert parent_id(late_span) == short.get_span_context().span_id
    assert late_span.context.trace_id == short.get_span_context().trace_id
    assert late_span.start_time > short_span.end_time
    # The blocker was submitted outside any span: it is a root of its own trace.
    blocker_span = one(finished, "task blocker")
    assert blocker_span.parent is None
    assert blocker_span.context.trace_id != late_span.context.trace_id


def test_no_context_leaks_between_tasks_on_a_pooled_thread(spans, tracer):
    observed: dict[str, tuple[int, int]] = {}

    def probe(label: str) -> str:
        ctx = trace.get_current_span().get_span_context()
        observed[label] = (threading.get_ident(), ctx.span_id)
        return label

    pool = ThreadPoolExecutor(max_workers=1)
    try:
        with TaskManager(1, functions=[probe], executor=pool) as manager:
            with tracer.start_as_current_span("A") as a:
                ta = manager.submit("function", "probe", {"label": "a"})
            tn = manager.submit("function", "probe", {"label": "none"})
            with tracer.start_as_current_span("B") as b:
                tb = manager.submit("function", "probe", {"label": "b"})
            assert manager.wait([ta, tn, tb], timeout=10).not_done == []
        # After the tasks, the pool thread's own context is clean again.
        leftover = pool.submit(
            lambda: (
                threading.get_ident(),
                trace.get_current_span().get_span_context().is_valid,
                get_current_task_id(),
            )
        ).result(10)
    finally:
        pool.shutdown()

    threads = {observed[k][0] for k in observed} | {leftover[0]}
    assert len(threads) == 1, "the test needs every task on the same pooled thread"
    assert leftover[1:] == (False, None)

    finished = spans.spans
    span_a, span_n, span_b = (task_spans(finished, t)[0] for t in (ta, tn, tb))
    assert parent_id(span_a) == a.get_span_context().span_id
    assert parent_id(span_b) == b.get_span_context().span_id
    assert span_n.parent is None, (
        "a task submitted outside any span must not inherit the previous task's span"
    )
    assert len({span_a.context.trace_id, span_n.context.trace_id, span_b.context.trace_id}) == 3
    # Inside each task, the current span was that task's own span.
    assert observed["a"][1] == span_a.context.span_id
    assert observed["none"][1] == span_n.context.span_id
    assert observed["b"][1] == span_b.context.span_id


def test_nested_submit_nests_under_the_submitting_task(spans, tracer):
    def inner(n: int) -> int:
        with tracer.start_as_current_span("inner-work"):
            return n + 1

    def outer() -> list[int]:
        manager = get_task_manager()
        ids = [manager.submit("function", "inner", {"n": n}) for n in range(3)]
        assert manager.wait(ids, timeout=10).not_done == []
        return list(manager.results(ids).values())

    with TaskManager(4, functions=[inner, outer]) as manager, tracer.start_as_current_span("root") as root:
        task_id = manager.submit("function", "outer", {})
        manager.wait([task_id], timeout=10)
        assert manager.result(task_id) == [1, 2, 3]

    finished = spans.spans
    outer_span = one(finished, "task outer")
    inner_spans = by_name(finished, "task inner")
    work_spans = by_name(finished, "inner-work")
    assert parent_id(outer_span) == root.get_span_context().span_id
    assert len(inner_spans) == 3
    assert all(parent_id(s) == outer_span.context.span_id for s in inner_spans)
    assert sorted(parent_id(s) for s in work_spans) == sorted(s.context.span_id for s in inner_spans)
    assert {s.context.trace_id for s in finished} == {root.get_span_context().trace_id}


def test_coroutine_task_span_covers_the_await_and_is_current_inside(spans, tracer):
    import asyncio

    async def fetch(n: int) -> int:
        await asyncio.sleep(0.05)
        with tracer.start_as_current_span("inside-coroutine"):
            await asyncio.sleep(0)
        return n * 3

    async def broken() -> None:
        await asyncio.sleep(0)
        raise KeyError("missing")

    with (
        TaskManager(2, functions=[fetch, broken]) as manager,
        tracer.start_as_current_span("caller") as caller,
    ):
        ok = manager.submit("function", "fetch", {"n": 5})
        bad = manager.submit("function", "broken", {})
        assert manager.wait([ok, bad], timeout=10).not_done == []
        assert manager.result(ok) == 15

    finished = spans.spans
    ok_span, bad_span = task_spans(finished, ok)[0], task_spans(finished, bad)[0]
    inner = one(finished, "inside-coroutine")
    assert parent_id(ok_span) == parent_id(bad_span) == caller.get_span_context().span_id
    assert parent_id(inner) == ok_span.context.span_id
    assert ok_span.attributes["task.status"] == "completed" and ok_span.attributes["output.value"] == "15"
    assert (ok_span.end_time - ok_span.start_time) / 1e9 >= 0.04, "the span covers the awaited work"
    assert bad_span.attributes["task.status"] == "failed"
    assert bad_span.attributes["task.error.type"] == "KeyError"


# ---------------------------------------------------------------------------- outcomes


def test_failed_task_span_records_error(spans, tracer):
    def broken(reason: str) -> None:
        raise ValueError(f"bad input: {reason}")

    with TaskManager(1, functions=[broken]) as manager, tracer.start_as_current_span("caller"):
        task_id = manager.submit("function", "broken", {"reason": "empty"})
        manager.wait([task_id], timeout=10)

    span = task_spans(spans.spans, task_id)[0]
    assert span.attributes["task.status"] == "failed"
    assert span.attributes["task.error.type"] == "ValueError"
    assert span.attributes["task.error.message"] == "bad input: empty"
    assert span.status.status_code is StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]


def test_retried_task_has_one_span_per_attempt(spans, tracer):
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first attempt fails")
        return "ok"

    with (
        TaskManager(1, functions=[flaky], retry_backoff=0.01) as manager,
        tracer.start_as_current_span("caller") as caller,
    ):
        task_id = manager.submit("function", "flaky", {}, retries=1)
        manager.wait([task_id], timeout=10)
        assert manager.result(task_id) == "ok"

    attempts = sorted(task_spans(spans.spans, task_id), key=lambda s: s.attributes["task.attempt"])
    assert [s.attributes["task.attempt"] for s in attempts] == [1, 2]
    assert [s.attributes["task.status"] for s in attempts] == ["failed", "completed"]
    assert attempts[0].attributes["task.will_retry"] is True
    assert all(parent_id(s) == caller.get_span_context().span_id for s in attempts)


def test_timed_out_and_cancelled_tasks_record_their_final_status(spans, tracer):
    started = threading.Event()

    def slow() -> str:
        started.set()
        deadline = time.monotonic() + 10
        while not cancellation_requested() and time.monotonic() < deadline:
            time.sleep(0.01)  # the task's own cooperative loop, not a test poll
        return "stopped"

    with TaskManager(2, functions=[slow]) as manager, tracer.start_as_current_span("caller"):
        timed = manager.submit("function", "slow", {}, timeout=0.2)
        manager.wait([timed], timeout=10)
        started.clear()
        cancelled = manager.submit("function", "slow", {})
        assert started.wait(10)
        assert manager.cancel(cancelled)

    finished = spans.wait_for(lambda s: len([x for x in s if x.name == "task slow"]) == 2)
    timed_span = task_spans(finished, timed)[0]
    cancelled_span = task_spans(finished, cancelled)[0]
    assert timed_span.attributes["task.status"] == "failed"
    assert timed_span.attributes["task.error.type"] == "timeout"
    assert timed_span.status.status_code is StatusCode.ERROR
    assert cancelled_span.attributes["task.status"] == "cancelled"
    assert cancelled_span.attributes["task.error.type"] == "cancelled"
    assert cancelled_span.status.status_code is not StatusCode.ERROR


def test_task_handed_to_a_remote_executor_records_waiting_remote(spans, tracer):
    sent: dict[str, str] = {}

    def hand_off(command: str) -> None:
        # Seed 000's detached suspension: the code returns, the remote response finishes the task.
        sent["request_id"] = get_task_manager().remote_manager.suspend(
            get_current_task_id(), command, timeout=10
        )

    with TaskManager(1, functions=[hand_off]) as manager, tracer.start_as_current_span("caller") as caller:
        task_id = manager.submit("function", "hand_off", {"command": "echo hi"})
        spans.wait_for(lambda s: any(x.attributes.get("task.id") == task_id for x in s))
        assert manager.check(task_id).status.value == "waiting_remote"
        manager.handle_websocket_response(sent["request_id"], True, "hi", None)
        manager.wait([task_id], timeout=10)
        assert manager.result(task_id) == "hi"

    span = task_spans(spans.spans, task_id)[0]
    assert parent_id(span) == caller.get_span_context().span_id
    assert span.attributes["task.status"] == "waiting_remote"
    assert span.status.status_code is StatusCode.UNSET


# ---------------------------------------------------------------------------- agents


@tool
def analyze_dataset(dataset: str) -> str:
    """Analyze one dataset.

    Args:
        dataset: the dataset's name.
    """
    return f"{dataset}: ok"


def _code(body: str) -> str:
    return f"Thought: next step.\n<code>\n{textwrap.dedent(body).strip()}\n</code>"


def test_async_agent_run_is_one_trace_with_tasks_under_their_submit_calls(spans, instrumented):
    researcher = CodeAgent(
        tools=[],
        model=ScriptedModel([_code("final_answer('researched: ' + 'x')")]),
        name="researcher",
        description="Researches a topic.",
        max_steps=3,
    )
    model = ScriptedModel(
        [
            _code(
                """
                ids = [submit_task('tool', 'analyze_dataset', {'dataset': d}) for d in ['a', 'b']]
                ids.append(submit_task('agent', 'researcher', {'task': 'look into x'}))
                summary = wait_for_tasks(ids, max_wait_time=30)
                results = get_task_results(ids)
                print(results)
                """
            ),
            _code("final_answer(sorted(str(v) for v in results.values()))"),
        ]
    )
    with create_async_agent(
        tools=[analyze_dataset], managed_agents=[researcher], model=model, max_steps=4, verbosity_level=0
    ) as agent:
        answer = agent.run("analyze a and b, research x")
    assert answer == ["a: ok", "b: ok", "researched: x"]

    finished = spans.spans
    assert len({s.context.trace_id for s in finished}) == 1, "everything must be one trace"
    roots = [s for s in finished if s.parent is None]
    assert [r.name for r in roots] == ["CodeAgent.run"]
    ids = {s.context.span_id: s for s in finished}

    def chain(span: ReadableSpan) -> list[str]:
        names = []
        while span.parent is not None:
            span = ids[span.parent.span_id]
            names.append(span.name)
        return names

    tasks = [s for s in finished if s.name.startswith("task ")]
    assert sorted(s.name for s in tasks) == [
        "task analyze_dataset",
        "task analyze_dataset",
        "task researcher",
    ]
    submit_spans = by_name(finished, "SubmitTaskTool")
    assert len(submit_spans) == 3
    # Each task is under its own submit_task call, which is under a step of the agent run.
    assert sorted(parent_id(t) for t in tasks) == sorted(s.context.span_id for s in submit_spans)
    for task in tasks:
        path = chain(task)
        assert path[0] == "SubmitTaskTool"
        assert path[-1] == "CodeAgent.run"
        assert any(name.startswith("Step") for name in path[1:-1])
    # The tool a background task runs is a child of that task's span.
    for task in by_name(finished, "task analyze_dataset"):
        children = [s for s in finished if parent_id(s) == task.context.span_id]
        assert [c.attributes.get("openinference.span.kind") for c in children] == ["TOOL"]
    # The managed agent's run and all its steps sit under its task span.
    research_task = one(finished, "task researcher")
    research_run = one(finished, "researcher.run")
    assert parent_id(research_run) == research_task.context.span_id
    research_steps = [s for s in finished if parent_id(s) == research_run.context.span_id]
    assert research_steps and all(s.name.startswith("Step") for s in research_steps)
    # wait_for_tasks and get_task_results calls are traced in the same run.
    assert by_name(finished, "WaitForTasksTool") and by_name(finished, "GetTaskResultsTool")


def test_managed_agent_in_background_task_keeps_its_steps_under_the_task(spans, instrumented, tracer):
    worker = CodeAgent(
        tools=[analyze_dataset],
        model=ScriptedModel(
            [
                _code("r = analyze_dataset(dataset='z')\nprint(r)"),
                _code("final_answer(r)"),
            ]
        ),
        name="worker",
        description="Runs analyses.",
        max_steps=4,
        verbosity_level=0,
    )
    with TaskManager(2, managed_agents=[worker]) as manager, tracer.start_as_current_span("caller") as caller:
        task_id = manager.submit("agent", "worker", {"task": "analyze z"})
        manager.wait([task_id], timeout=30)
        assert manager.result(task_id) == "z: ok"

    finished = spans.spans
    task = one(finished, "task worker")
    run = one(finished, "worker.run")
    assert parent_id(task) == caller.get_span_context().span_id
    assert parent_id(run) == task.context.span_id
    steps = [s for s in finished if parent_id(s) == run.context.span_id]
    assert len(steps) == 2
    tool_spans = [s for s in finished if s.attributes.get("tool.name") == "analyze_dataset"]
    assert len(tool_spans) == 1 and parent_id(tool_spans[0]) in {s.context.span_id for s in steps}
    assert {s.context.trace_id for s in finished} == {caller.get_span_context().trace_id}


# ---------------------------------------------------------------------------- carriers


def test_inject_context_writes_w3c_traceparent(tracer, spans):
    assert tracing.inject_context() == {}
    with tracer.start_as_current_span("hop") as hop:
        carrier = tracing.inject_context()
    ctx = hop.get_span_context()
    version, trace_hex, span_hex, flags = carrier["traceparent"].split("-")
    assert (version, trace_hex, span_hex) == ("00", f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}")
    assert int(flags, 16) & 1, "the sampled flag travels with the context"
    # Extract and run: a span started under the carrier is a child of the injecting span.
    result = tracing.run_with_context(carrier, lambda: tracer.start_span("remote-side"))
    result.end()
    assert parent_id(one(spans.spans, "remote-side")) == ctx.span_id
    assert trace.get_current_span().get_span_context().is_valid is False, "the context was detached"
    # Garbage in a carrier gives a fresh root, never an exception.
    with tracing.attached_context({"traceparent": "not-a-traceparent", "x": 1}):
        assert not trace.get_current_span().get_span_context().is_valid


def test_run_with_context_supports_coroutines(tracer, spans):
    import asyncio

    async def remote_work() -> int:
        return trace.get_current_span().get_span_context().span_id

    with tracer.start_as_current_span("async-hop") as hop:
        carrier = tracing.inject_context()
    assert asyncio.run(tracing.run_with_context(carrier, remote_work)) == hop.get_span_context().span_id


CHILD_SCRIPT = r"""
import json, sys
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from async_task_system import TaskManager, tracing

class StdoutExporter(SpanExporter):
    def export(self, spans):
        for s in spans:
            print(json.dumps({
                "name": s.name,
                "trace_id": f"{s.context.trace_id:032x}",
                "span_id": f"{s.context.span_id:016x}",
                "parent_id": f"{s.parent.span_id:016x}" if s.parent else None,
            }), flush=True)
        return SpanExportResult.SUCCESS

from opentelemetry import trace

assert not tracing.tracing_enabled()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(StdoutExporter()))
trace.set_tracer_provider(provider)  # the global provider, as a real worker process would do
assert tracing.tracing_enabled()
tracer = trace.get_tracer("child")
carrier = json.loads(sys.stdin.read())

def square(n: int) -> int:
    return n * n

def work():
    with tracer.start_as_current_span("child-work"):
        with TaskManager(2, functions=[square]) as manager:
            task_id = manager.submit("function", "square", {"n": 7})
            manager.wait([task_id], timeout=10)
            return manager.result(task_id)

print(json.dumps({"result": tracing.run_with_context(carrier, work)}), flush=True)
provider.shutdown()
"""


def test_carrier_round_trip_across_a_real_subprocess(tracer, spans):
    with tracer.start_as_current_span("parent-process") as parent:
        carrier = tracing.inject_context()
        proc = subprocess.run(
            [sys.executable, "-c", CHILD_SCRIPT],
            input=json.dumps(carrier),
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    child_spans = {line["name"]: line for line in lines if "name" in line}
    assert {"result": 49} in lines
    ctx = parent.get_span_context()
    work = child_spans["child-work"]
    task = child_spans["task square"]
    assert work["trace_id"] == task["trace_id"] == f"{ctx.trace_id:032x}"
    assert work["parent_id"] == f"{ctx.span_id:016x}"
    assert task["parent_id"] == work["span_id"]


# ---------------------------------------------------------------------------- off by default


NO_SDK_SCRIPT = r"""
import importlib.abc, sys

BLOCKED = ("opentelemetry.sdk", "phoenix", "openinference")

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.startswith(BLOCKED):
            raise ImportError(f"{name} is blocked for this test")
        return None

sys.meta_path.insert(0, Block())

import async_task_system
from async_task_system import TaskManager, tracing

assert not tracing.tracing_enabled()
span = tracing.task_span(None, 1)
assert span is tracing.task_span(None, 2), "the no-op path must not allocate"

def double(n: int) -> int:
    return 2 * n

with TaskManager(2, functions=[double]) as manager:
    ids = [manager.submit("function", "double", {"n": n}) for n in range(5)]
    manager.wait(ids, timeout=10)
    assert list(manager.results(ids).values()) == [0, 2, 4, 6, 8]
assert tracing.inject_context() == {}
try:
    tracing.setup_tracing("x")
except ImportError as exc:
    assert "telemetry" in str(exc), exc
else:
    raise AssertionError("setup_tracing without the SDK must raise ImportError")
assert not [m for m in sys.modules if m.startswith(BLOCKED)]
print("OK")
"""


def test_package_imports_and_runs_without_the_sdk():
    proc = subprocess.run(
        [sys.executable, "-c", NO_SDK_SCRIPT], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("OK")


# ---------------------------------------------------------------------------- setup_tracing


class _OTLPReceiver(BaseHTTPRequestHandler):
    """A minimal OTLP/HTTP trace receiver: decodes each export request and keeps its spans."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
            ExportTraceServiceResponse,
        )

        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        server = self.server
        with server.cond:
            for resource_spans in request.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        server.received.append((self.path, resource, span))
            server.headers.append({k.lower(): v for k, v in self.headers.items()})
            server.cond.notify_all()
        payload = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


def _otlp_receiver() -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _OTLPReceiver)
    server.received = []
    server.headers = []
    server.cond = threading.Condition()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_setup_tracing_exports_task_spans_over_otlp_http():
    server = _otlp_receiver()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    provider = tracing.setup_tracing("unit-project", endpoint=endpoint, set_global=False)
    try:
        assert tracing.get_tracer_provider() is provider and tracing.tracing_enabled()

        def hello(name: str) -> str:
            return f"hello {name}"

        tracer = provider.get_tracer("tests")
        with (
            TaskManager(1, functions=[hello]) as manager,
            tracer.start_as_current_span("setup-caller") as caller,
        ):
            task_id = manager.submit("function", "hello", {"name": "phoenix"})
            manager.wait([task_id], timeout=10)
        assert provider.force_flush(10_000)
        with server.cond:
            assert server.cond.wait_for(lambda: len(server.received) >= 2, 10)
            received = list(server.received)
    finally:
        from openinference.instrumentation.smolagents import SmolagentsInstrumentor

        SmolagentsInstrumentor().uninstrument()
        tracing.set_tracer_provider(None)
        provider.shutdown()
        server.shutdown()
        server.server_close()
    names = {span.name: (path, resource, span) for path, resource, span in received}
    path, resource, task = names["task hello"]
    assert path == "/v1/traces"
    assert resource["openinference.project.name"] == "unit-project"
    assert task.parent_span_id == caller.get_span_context().span_id.to_bytes(8, "big")
    attrs = {a.key: a.value for a in task.attributes}
    assert attrs["task.id"].string_value == task_id
    assert attrs["task.status"].string_value == "completed"


def test_setup_tracing_sends_headers_and_api_key_in_batches_with_a_custom_resource():
    from opentelemetry.sdk.resources import Resource

    server = _otlp_receiver()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    provider = tracing.setup_tracing(
        "batch-project",
        endpoint=endpoint,
        set_global=False,
        batch=True,
        instrument_smolagents=False,
        headers={"X-Team": "agents"},
        api_key="secret-key",
        resource=Resource({"service.name": "batch-service"}),
    )
    try:
        with provider.get_tracer("tests").start_as_current_span("batched"):
            pass
        assert provider.force_flush(10_000)
        with server.cond:
            assert server.cond.wait_for(lambda: server.received, 10)
            received, headers = list(server.received), list(server.headers)
    finally:
        tracing.set_tracer_provider(None)
        provider.shutdown()
        server.shutdown()
        server.server_close()
    assert [span.name for _, _, span in received] == ["batched"]
    _, resource, _ = received[0]
    assert resource["openinference.project.name"] == "batch-project"
    assert resource["service.name"] == "batch-service"
    assert headers[0]["x-team"] == "agents"
    assert headers[0]["authorization"] == "Bearer secret-key"
