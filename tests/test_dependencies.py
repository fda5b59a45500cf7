"""Task dependencies: after=[ids], {"$result": id} references, failure and cancel propagation."""

from __future__ import annotations

import threading
import time

import pytest

from async_task_system import ScriptedModel, TaskManager, TaskStatus, TaskValidationError, create_async_agent


def clean(file: str) -> str:
    time.sleep(0.02)
    return file.upper()


def analyze(data: str) -> dict:
    return {"data": data, "length": len(data)}


def visualize(analysis: dict) -> str:
    return f"chart({analysis['data']}:{analysis['length']})"


def explode(data: str) -> None:
    raise ValueError(f"cannot analyze {data}")


FUNCTIONS = [clean, analyze, visualize, explode]


def test_result_references_build_a_pipeline_in_one_go():
    with TaskManager(max_workers=4, functions=FUNCTIONS) as manager:
        last = []
        for name in ["a", "bb", "ccc"]:
            cleaned = manager.submit("function", "clean", {"file": name})
            analyzed = manager.submit("function", "analyze", {"data": {"$result": cleaned}})
            last.append(manager.submit("function", "visualize", {"analysis": {"$result": analyzed}}))
            assert manager.check(analyzed).depends_on == (cleaned,)
        assert manager.wait(last, timeout=10).not_done == []
        assert list(manager.results(last).values()) == ["chart(A:1)", "chart(BB:2)", "chart(CCC:3)"]
        # The record keeps what was asked for; the call got the result.
        assert manager.check(analyzed).arguments == {"data": {"$result": cleaned}}


def test_after_orders_tasks_and_refs_nest_inside_lists():
    order: list[str] = []
    gate = threading.Event()

    def first() -> int:
        gate.wait(5)
        order.append("first")
        return 1

    def second() -> int:
        order.append("second")
        return 2

    def total(values: list) -> int:
        return sum(values)

    with TaskManager(max_workers=2, functions=[first, second, total]) as manager:
        a = manager.submit("function", "first")
        b = manager.submit("function", "second", after=[a])
        time.sleep(0.05)
        assert manager.check(b).status is TaskStatus.PENDING
        gate.set()
        c = manager.submit("function", "total", {"values": [{"$result": a}, {"$result": b}, 3]})
        manager.wait(c, timeout=5)
        assert order == ["first", "second"]
        assert manager.result(c) == 6


def test_a_failed_dependency_fails_its_dependents_by_name():
    with TaskManager(functions=FUNCTIONS) as manager:
        cleaned = manager.submit("function", "clean", {"file": "x"})
        broken = manager.submit("function", "explode", {"data": {"$result": cleaned}})
        chart = manager.submit("function", "visualize", {"analysis": {"$result": broken}})
        manager.wait(chart, timeout=5)
        info = manager.check(chart)
        assert info.status is TaskStatus.FAILED and info.error.type == "dependency_failed"
        assert broken in info.error.message and "cannot analyze X" in info.error.message
        # Depending on a task that already failed fails at once, too.
        late = manager.submit("function", "visualize", {"analysis": {"$result": broken}})
        assert manager.check(late).error.type == "dependency_failed"


def test_cancelling_a_task_cancels_what_depends_on_it():
    release = threading.Event()
    with TaskManager(functions=FUNCTIONS) as manager:
        manager.register_function(lambda: release.wait(5) and "x", name="slow")
        slow = manager.submit("function", "slow")
        analyzed = manager.submit("function", "analyze", {"data": {"$result": slow}})
        chart = manager.submit("function", "visualize", {"analysis": {"$result": analyzed}})
        manager.cancel(slow)
        release.set()
        for task_id in (analyzed, chart):
            info = manager.check(task_id)
            assert info.status is TaskStatus.CANCELLED and info.error.type == "dependency_failed"
        assert "was cancelled" in manager.result(chart)


def test_unknown_and_forward_references_are_refused_at_submit():
    with TaskManager(functions=FUNCTIONS) as manager:
        first = manager.submit("function", "clean", {"file": "a"})
        prefix = first.rsplit("_", 1)[0]
        with pytest.raises(TaskValidationError, match="is not a task id of this manager"):
            manager.submit("function", "analyze", {"data": {"$result": "task_zzzz_9"}})
        # A cycle needs a reference to a task not submitted yet: refused as unknown.
        with pytest.raises(TaskValidationError, match="is not a task id"):
            manager.submit("function", "analyze", {"data": {"$result": f"{prefix}_99"}})
        with pytest.raises(TaskValidationError, match="after must be a list of task ids"):
            manager.submit("function", "clean", {"file": "b"}, after=[3])


def test_the_llm_writes_the_pipeline_in_one_step():
    code = """<code>
last = []
for name in ['a', 'bb']:
    cleaned = submit_task('function', 'clean', {'file': name})
    analyzed = submit_task('function', 'analyze', {'data': {'$result': cleaned}})
    last.append(submit_task('function', 'visualize', {'analysis': {'$result': analyzed}}, after=[cleaned]))
wait_for_tasks(last, max_wait_time=30)
final_answer(list(get_task_results(last).values()))
</code>"""
    agent = create_async_agent(tools=[], model=ScriptedModel([code]), max_workers=4, verbosity_level=0)
    for fn in FUNCTIONS:
        agent.task_manager.register_function(fn)
    with agent:
        assert agent.run("Clean, analyze and chart two files.") == ["chart(A:1)", "chart(BB:2)"]
