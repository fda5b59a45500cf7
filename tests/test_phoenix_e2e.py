"""End to end: an AsyncAgent run exported to a real Phoenix server is ONE trace with the right parents.

Phoenix lives in its own virtual environment (``make phoenix``; see ``tests/_phoenix.py``). On a
machine without it the test skips with the reason; under CI (``CI=true``) it fails instead, so
it can never be skipped silently there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
from _phoenix import PhoenixServer, PhoenixUnavailable
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from smolagents import CodeAgent, tool

from async_task_system import ScriptedModel, create_async_agent
from async_task_system.observe import tracing

# Phoenix takes ~10 s to start (more on a loaded machine): allow more than the suite default.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

INGEST_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def phoenix():
    try:
        server = PhoenixServer().start()
    except PhoenixUnavailable as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"Phoenix end-to-end test cannot run under CI: {exc}")
        pytest.skip(f"Phoenix is not available: {exc}")
    try:
        yield server
    finally:
        server.stop()


class _Counter(SpanExporter):
    """Counts the spans the provider exported, so the test knows how many Phoenix must hold."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.lock = threading.Lock()

    def export(self, spans):
        with self.lock:
            self.ids.update(f"{s.context.span_id:016x}" for s in spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


@tool
def analyze_dataset(dataset: str) -> str:
    """Analyze one dataset and summarize it.

    Args:
        dataset: the dataset's name.
    """
    time.sleep(0.05)
    return f"{dataset}: 42 rows"


def _code(body: str) -> str:
    return f"Thought: next step.\n<code>\n{textwrap.dedent(body).strip()}\n</code>"


def test_async_agent_run_is_one_connected_trace_in_phoenix(phoenix):
    project = f"ats-e2e-{uuid.uuid4().hex[:8]}"
    provider = tracing.setup_tracing(project, endpoint=phoenix.traces_endpoint, set_global=False)
    counter = _Counter()
    # phoenix.otel drops its own exporter when another processor is added, unless told not to.
    provider.add_span_processor(SimpleSpanProcessor(counter), replace_default_processor=False)
    try:
        researcher = CodeAgent(
            tools=[analyze_dataset],
            model=ScriptedModel(
                [
                    _code("r = analyze_dataset(dataset='extra')\nprint(r)"),
                    _code("final_answer('research: ' + r)"),
                ]
            ),
            name="researcher",
            description="Researches one dataset in depth.",
            max_steps=4,
            verbosity_level=0,
        )
        model = ScriptedModel(
            [
                _code(
                    """
                    ids = [submit_task('tool', 'analyze_dataset', {'dataset': d}) for d in ['sales', 'ops']]
                    ids.append(submit_task('agent', 'researcher', {'task': 'dig into extra'}))
                    summary = wait_for_tasks(ids, max_wait_time=30)
                    results = get_task_results(ids)
                    print(summary)
                    """
                ),
                _code("final_answer(sorted(results.values()))"),
            ]
        )
        with create_async_agent(
            tools=[analyze_dataset], managed_agents=[researcher], model=model, max_steps=4, verbosity_level=0
        ) as agent:
            answer = agent.run("Analyze sales and ops, and research extra.")
        assert answer == ["ops: 42 rows", "research: extra: 42 rows", "sales: 42 rows"]
        assert provider.force_flush(30_000)
    finally:
        from openinference.instrumentation.smolagents import SmolagentsInstrumentor

        SmolagentsInstrumentor().uninstrument()
        tracing.set_tracer_provider(None)
        provider.shutdown()

    expected = set(counter.ids)
    assert len(expected) > 10
    # Phoenix ingests asynchronously after accepting the export: re-read (bounded) until all arrived.
    deadline = time.monotonic() + INGEST_TIMEOUT
    spans = phoenix.spans(project)
    while {s["context"]["span_id"] for s in spans} != expected and time.monotonic() < deadline:
        time.sleep(0.2)
        spans = phoenix.spans(project)
    got = {s["context"]["span_id"] for s in spans}
    if got != expected:
        projects = phoenix.get_json("/v1/projects")
        pytest.fail(
            f"Phoenix has {len(got)} of {len(expected)} spans; projects: {projects}\n{phoenix.log[-3000:]}"
        )

    by_id = {s["context"]["span_id"]: s for s in spans}
    trace_ids = {s["context"]["trace_id"] for s in spans}
    assert len(trace_ids) == 1, f"expected one trace, got {len(trace_ids)}"
    roots = [s for s in spans if not s.get("parent_id")]
    assert [r["name"] for r in roots] == ["CodeAgent.run"]
    assert all(s["parent_id"] in by_id for s in spans if s.get("parent_id")), "a parent is missing"

    tasks = [s for s in spans if s["name"].startswith("task ")]
    assert sorted(t["name"] for t in tasks) == [
        "task analyze_dataset",
        "task analyze_dataset",
        "task researcher",
    ]
    for task in tasks:
        submitter = by_id[task["parent_id"]]
        assert submitter["name"] == "SubmitTaskTool", f"{task['name']} is under {submitter['name']}"
        assert task["span_kind"] == "CHAIN" and task["status_code"] == "OK"
        assert task["attributes"]["task.status"] == "completed"
        assert task["attributes"]["task.id"].startswith("task_")
    assert len({t["parent_id"] for t in tasks}) == 3, "each task sits under its own submit_task call"

    research_task = next(t for t in tasks if t["name"] == "task researcher")
    research_run = next(s for s in spans if s["name"] == "researcher.run")
    assert research_run["parent_id"] == research_task["context"]["span_id"]
    research_steps = [s for s in spans if s.get("parent_id") == research_run["context"]["span_id"]]
    assert len(research_steps) == 2
    step_ids = {s["context"]["span_id"] for s in research_steps}
    inner_tools = [s for s in spans if s["name"] != "FinalAnswerTool" and s.get("parent_id") in step_ids]
    assert inner_tools and all(s["span_kind"] == "TOOL" for s in inner_tools)


def test_phoenix_example_runs_offline_and_sends_one_trace(phoenix, tmp_path):
    project = f"ats-example-{uuid.uuid4().hex[:8]}"
    root = Path(__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k not in ("API_KEY", "MODEL_ID", "BASE_URL")}
    proc = subprocess.run(
        [
            sys.executable,
            str(root / "examples" / "phoenix_tracing.py"),
            "--endpoint",
            phoenix.traces_endpoint,
            "--project",
            project,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # no .env here: the example must run on ScriptedModel
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "using ScriptedModel (offline)" in proc.stdout
    assert f"{phoenix.base_url}/projects" in proc.stdout
    trace_id = re.search(r"Trace ([0-9a-f]{32}) was sent", proc.stdout).group(1)

    deadline = time.monotonic() + INGEST_TIMEOUT
    spans = phoenix.spans(project)
    while len([s for s in spans if s["name"].startswith("task ")]) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
        spans = phoenix.spans(project)
    assert {s["context"]["trace_id"] for s in spans} == {trace_id}
    roots = [s for s in spans if not s.get("parent_id")]
    assert [r["name"] for r in roots] == ["phoenix_tracing example"]
    tasks = [s for s in spans if s["name"].startswith("task ")]
    assert len(tasks) == 4
    by_id = {s["context"]["span_id"]: s for s in spans}
    assert all(by_id[t["parent_id"]]["name"] == "SubmitTaskTool" for t in tasks)
