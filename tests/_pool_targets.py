"""Module-level targets for the process-pool test (a process pool imports them by name)."""

from __future__ import annotations

import os

from async_task_system import get_current_task_id, inject_context


def where_am_i(tag: str) -> dict:
    """Runs in a pool process: reports its pid, the task it runs and the trace context it sees."""
    return {"tag": tag, "pid": os.getpid(), "task_id": get_current_task_id(), "carrier": inject_context()}


def fails_remotely() -> None:
    raise ValueError("raised in a worker process")


def sleep_then_mark(seconds: float, marker: str) -> str:
    """Writes ``marker.started``, sleeps, then writes ``marker`` (a file path): the files tell whether the
    call started and whether it ran to its end."""
    import time
    from pathlib import Path

    Path(marker + ".started").write_text(str(os.getpid()))
    time.sleep(seconds)
    Path(marker).write_text(str(os.getpid()))
    return marker


def fails_first_time(marker: str) -> int:
    """Raises on the first call (leaving ``marker``), succeeds on the next: a retry's test."""
    from pathlib import Path

    path = Path(marker)
    if not path.exists():
        path.write_text("1")
        raise RuntimeError("first attempt fails")
    return os.getpid()


def make_pid_agent():
    """A module-level agent factory: a CodeAgent on a scripted model that answers with its process id."""
    from smolagents import CodeAgent

    from async_task_system.agents.testing import ScriptedModel

    script = ["<code>\nimport os\nfinal_answer(os.getpid())\n</code>"]
    return CodeAgent(
        tools=[],
        model=ScriptedModel(script),
        additional_authorized_imports=["os"],
        name="pid_agent",
        description="reports its process id",
        verbosity_level=0,
    )


def check_function_targets_run_elsewhere(executor, worker_pids=None) -> None:
    """The shared check of an executor in other processes: function targets run there (in
    ``worker_pids`` when given), equal calls are not merged, the task's id travels, errors come back."""
    from async_task_system import TaskManager, TaskStatus

    with TaskManager(max_workers=2, executor=executor, functions=[where_am_i, fails_remotely]) as manager:
        ids = [manager.submit("function", "where_am_i", {"tag": str(i % 2)}) for i in range(4)]
        failing = manager.submit("function", "fails_remotely")
        manager.wait([*ids, failing], timeout=60)
        results = manager.results(ids)
        assert [results[i]["tag"] for i in ids] == ["0", "1", "0", "1"], "equal calls run apart"
        assert all(results[i]["pid"] != os.getpid() for i in ids)
        if worker_pids is not None:
            assert {results[i]["pid"] for i in ids} <= worker_pids
        assert [results[i]["task_id"] for i in ids] == ids, "the task's identity travels with it"
        info = manager.check(failing)
        assert info.status is TaskStatus.FAILED and info.error.type == "ValueError"
        assert "raised in a worker process" in info.error.message


_span_file: list[str] = []  # where this worker process writes its ended spans, once installed


def export_spans_to_file(path: str) -> int:
    """Runs on a Dask worker: from now on every span this process ends is appended to ``path`` as a
    JSON line, through a real OpenTelemetry SDK provider installed as the process's global one (what
    a user's worker setup would do). Returns the worker's pid."""
    import json

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class FileExporter(SpanExporter):
        def export(self, spans):  # noqa: ANN001, ANN202 - the SDK's signature
            with open(_span_file[0], "a", encoding="utf-8") as out:
                for span in spans:
                    parent = span.parent
                    record = {
                        "name": span.name,
                        "trace_id": format(span.context.trace_id, "032x"),
                        "span_id": format(span.context.span_id, "016x"),
                        "parent_id": format(parent.span_id, "016x") if parent else None,
                        "pid": os.getpid(),
                    }
                    out.write(json.dumps(record) + "\n")
            return SpanExportResult.SUCCESS

    if not _span_file:  # the global provider can be set once per process
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
        trace.set_tracer_provider(provider)
        _span_file.append(path)
    _span_file[0] = path
    return os.getpid()


def traced_tool_work(tag: str) -> int:
    """A tool body that opens its own span (as an instrumented library would); returns its pid."""
    from opentelemetry import trace

    with trace.get_tracer("tool").start_as_current_span(f"tool work {tag}"):
        return os.getpid()
