"""Scale-out on Dask: a real LocalCluster with two worker processes (one thread each), started once.

Function, tool and agent targets run in the workers; the task's id and the trace context travel
with each attempt; cancel, timeout and retry keep their meaning (a queued Dask task is cancelled
and never runs, a running one is marked at once and its result discarded)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed")

from _pool_targets import (  # noqa: E402
    check_function_targets_run_elsewhere,
    export_spans_to_file,
    fails_first_time,
    make_pid_agent,
    sleep_then_mark,
    traced_tool_work,
    where_am_i,
)

from async_task_system import ScriptedModel, TaskManager, TaskStatus, create_async_agent  # noqa: E402
from async_task_system.scaleout.dask import DaskExecutor, dask_executor  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def executor():
    with dask_executor(n_workers=2, threads_per_worker=1, processes=True) as dask:
        yield dask


def worker_pids(executor: DaskExecutor) -> set[int]:
    return set(executor.client.run(os.getpid).values())


def test_the_embedded_cluster_is_two_worker_processes(executor):
    assert executor.total_threads() == 2
    pids = worker_pids(executor)
    assert len(pids) == 2 and os.getpid() not in pids


def test_function_targets_run_on_the_workers(executor):
    check_function_targets_run_elsewhere(executor, worker_pids(executor))


def test_a_managed_agent_is_rebuilt_from_its_factory_on_a_worker(executor):
    with TaskManager(max_workers=2, executor=executor) as manager:
        manager.register_agent(make_pid_agent, name="pid_agent")
        task_id = manager.submit("agent", "pid_agent", {"task": "tell me your pid"})
        manager.wait(task_id, timeout=60)
        assert manager.check(task_id).status is TaskStatus.COMPLETED, manager.check(task_id).error
        assert manager.result(task_id) in worker_pids(executor)


def test_an_agent_instance_cannot_go_to_dask_and_says_why(executor):
    with TaskManager(max_workers=2, executor=executor) as manager:
        manager.register_agent(make_pid_agent(), name="instance")
        task_id = manager.submit("agent", "instance", {"task": "x"})
        manager.wait(task_id, timeout=60)
        info = manager.check(task_id)
    assert info.status is TaskStatus.FAILED and info.error.type == "unpicklable", info.error
    assert "module-level factory" in info.error.message


def test_the_trace_context_travels_to_the_workers(executor):
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    from async_task_system.observe import tracing

    provider = sdk.TracerProvider()
    tracing.set_tracer_provider(provider)
    try:
        with TaskManager(executor=executor, functions=[where_am_i]) as manager:
            with provider.get_tracer("test").start_as_current_span("coordinator") as parent:
                task_id = manager.submit("function", "where_am_i", {"tag": "traced"})
            manager.wait(task_id, timeout=60)
            result = manager.result(task_id)
    finally:
        tracing.set_tracer_provider(None)
    trace_id = format(parent.get_span_context().trace_id, "032x")
    assert result["pid"] in worker_pids(executor)
    assert result["carrier"]["traceparent"].split("-")[1] == trace_id, "the worker joined the agent's trace"


def test_spans_ended_on_the_workers_are_exported_in_the_agent_trace(executor, tmp_path):
    """The workers export their own spans (real SDK, one file): the task's span on the worker is a
    child of the coordinator's span, and the tool's own span a child of the task's span."""
    sdk = pytest.importorskip("opentelemetry.sdk.trace")
    from async_task_system.observe import tracing

    spans_file = tmp_path / "worker-spans.jsonl"
    executor.client.run(export_spans_to_file, str(spans_file))
    provider = sdk.TracerProvider()
    tracing.set_tracer_provider(provider)
    try:
        with TaskManager(executor=executor, functions=[traced_tool_work]) as manager:
            with provider.get_tracer("test").start_as_current_span("coordinator") as parent:
                task_id = manager.submit("function", "traced_tool_work", {"tag": "exported"})
            manager.wait(task_id, timeout=60)
            assert manager.check(task_id).status is TaskStatus.COMPLETED, manager.check(task_id).error
            worker_pid = manager.result(task_id)
    finally:
        tracing.set_tracer_provider(None)

    import json

    trace_id = format(parent.get_span_context().trace_id, "032x")
    spans = [json.loads(line) for line in spans_file.read_text().splitlines()]
    ours = [span for span in spans if span["trace_id"] == trace_id]
    tool_span = next(span for span in ours if span["name"] == "tool work exported")
    task_span = next(span for span in ours if span["span_id"] == tool_span["parent_id"])
    assert tool_span["pid"] == task_span["pid"] == worker_pid in worker_pids(executor)
    assert task_id in task_span["name"] or "traced_tool_work" in task_span["name"], task_span
    assert task_span["parent_id"] == format(parent.get_span_context().span_id, "016x"), (
        "the task's span on the worker is a child of the coordinator's span"
    )


def wait_for_file(path: Path, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return path.exists()


def test_cancel_a_queued_dask_task_never_runs_it_and_a_running_one_is_marked_at_once(executor, tmp_path):
    # Three slots for two worker threads: the third task waits on the cluster.
    with TaskManager(max_workers=3, executor=executor, functions=[sleep_then_mark]) as manager:
        markers = [tmp_path / f"m{i}" for i in range(3)]
        ids = [
            manager.submit("function", "sleep_then_mark", {"seconds": 1.0, "marker": str(m)}) for m in markers
        ]
        assert wait_for_file(tmp_path / "m0.started") and wait_for_file(tmp_path / "m1.started")
        started = time.monotonic()
        assert manager.cancel(ids[0]) and manager.cancel(ids[2])
        assert time.monotonic() - started < 0.5, "cancel does not wait for the worker"
        assert manager.check(ids[0]).status is TaskStatus.CANCELLED
        manager.wait(ids, timeout=30)
        assert manager.check(ids[1]).status is TaskStatus.COMPLETED
    assert wait_for_file(markers[0]), "a running Dask task runs to its end on the worker"
    assert manager.check(ids[0]).result is None, "... and its result is discarded"
    time.sleep(0.5)  # its worker is free now: a task still queued there would have started
    assert not (tmp_path / "m2.started").exists(), "a queued Dask task is cancelled and never runs"


def test_timeout_and_retry_on_dask(executor, tmp_path):
    with TaskManager(max_workers=2, executor=executor, retry_backoff=0.05) as manager:
        manager.register_function(sleep_then_mark)
        manager.register_function(fails_first_time)
        slow = manager.submit(
            "function", "sleep_then_mark", {"seconds": 1.0, "marker": str(tmp_path / "slow")}, timeout=0.3
        )
        flaky = manager.submit("function", "fails_first_time", {"marker": str(tmp_path / "flaky")}, retries=1)
        started = time.monotonic()
        manager.wait(slow, timeout=30)
        assert time.monotonic() - started < 0.9, "the timeout does not wait for the worker"
        manager.wait(flaky, timeout=30)
        slow_info, flaky_info = manager.check(slow), manager.check(flaky)
    assert slow_info.status is TaskStatus.FAILED and slow_info.error.type == "timeout"
    assert flaky_info.status is TaskStatus.COMPLETED and flaky_info.attempts == 2
    assert flaky_info.result in worker_pids(executor)


def test_create_async_agent_runs_its_tasks_on_dask(executor):
    script = [
        "<code>\nids = [submit_task('function', 'where_am_i', {'tag': t}) for t in ['a', 'b']]\n</code>",
        "<code>\nwait_for_tasks(ids, max_wait_time=30)\nr = get_task_results(ids)\n"
        "final_answer(sorted(r[i]['pid'] for i in ids))\n</code>",
    ]
    agent = create_async_agent(
        model=ScriptedModel(script), executor=executor, max_workers=2, verbosity_level=0
    )
    agent.task_manager.register_function(where_am_i)
    with agent:
        pids = agent.run("where do the tasks run?")
    assert set(pids) <= worker_pids(executor)
    assert executor.submit(os.getpid).result(30) in worker_pids(executor), "the agent left the executor open"


def test_an_executor_closes_with_its_manager_and_leaves_a_passed_client_open(executor):
    borrowed = dask_executor(client=executor.client)
    with borrowed.close_with(TaskManager(executor=borrowed, functions=[where_am_i])) as manager:
        manager.wait(manager.submit("function", "where_am_i", {"tag": "x"}), timeout=30)
    with pytest.raises(RuntimeError, match="shut down"):
        borrowed.submit(os.getpid)
    assert executor.client.submit(os.getpid, pure=False).result(30) in worker_pids(executor)


def test_an_embedded_cluster_is_closed_by_its_executor():
    own = dask_executor(n_workers=1, processes=False)
    cluster = own.cluster
    with own.close_with(TaskManager(executor=own, functions=[where_am_i])) as manager:
        manager.wait(manager.submit("function", "where_am_i", {"tag": "x"}), timeout=30)
        assert manager.result(manager.list()[0].id)["tag"] == "x"
    assert own.client.status == "closed" and cluster.status.name == "closed"
