"""Where work runs: the executor seam takes picklable attempts (process pools, not only threads)."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

import pytest
from _pool_targets import check_function_targets_run_elsewhere, where_am_i

from async_task_system import TaskManager, TaskStatus


@pytest.fixture(scope="module")
def pool():
    import multiprocessing

    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as executor:
        yield executor


def test_function_targets_run_in_other_processes(pool):
    check_function_targets_run_elsewhere(pool)


def test_trace_context_travels_as_a_w3c_carrier(pool):
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from async_task_system.observe import tracing

    exporter = InMemorySpanExporter()
    provider = sdk.TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.set_tracer_provider(provider)
    try:
        tracer = provider.get_tracer("test")
        with TaskManager(executor=pool, functions=[where_am_i]) as manager:
            with tracer.start_as_current_span("coordinator") as parent:
                task_id = manager.submit("function", "where_am_i", {"tag": "traced"})
            manager.wait(task_id, timeout=60)
            carrier = manager.result(task_id)["carrier"]
        trace_id = format(parent.get_span_context().trace_id, "032x")
        assert carrier["traceparent"].split("-")[1] == trace_id, (
            "the pool process joined the coordinator's trace"
        )
    finally:
        tracing.set_tracer_provider(None)


def test_an_unpicklable_target_fails_with_a_clear_error(pool):
    with TaskManager(executor=pool) as manager:
        manager.register_function(lambda: 1, name="local_lambda")
        task_id = manager.submit("function", "local_lambda")
        manager.wait(task_id, timeout=60)
        info = manager.check(task_id)
    assert info.status is TaskStatus.FAILED and info.error.type == "unpicklable"
    assert "register a module-level function" in info.error.message
