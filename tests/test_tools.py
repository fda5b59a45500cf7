"""Argument validation before queueing, and the async tools as the LLM calls them."""

from __future__ import annotations

import threading
import time

import pytest
from smolagents import Tool, tool

from async_task_system import TaskManager, TaskValidationError, create_task_tools


@tool
def analyze_dataset(dataset: str, depth: int = 1, verbose: bool = False) -> dict:
    """Analyze a dataset.

    Args:
        dataset: the dataset name
        depth: how deep to analyse
        verbose: include details
    """
    return {"dataset": dataset, "depth": depth}


class ScoreTool(Tool):
    name = "score"
    description = "Scores numbers."
    inputs = {
        "values": {"type": "array", "description": "numbers"},
        "weight": {"type": "number", "description": "a weight"},
        "options": {"type": "object", "description": "options", "nullable": True},
    }
    output_type = "number"

    def forward(self, values: list, weight: float, options: dict | None = None) -> float:
        return sum(values) * weight


def plain(city: str, days: int = 3) -> str:
    return f"{city}:{days}"


@pytest.fixture
def manager():
    m = TaskManager(max_workers=2, tools=[analyze_dataset, ScoreTool()], functions=[plain])
    yield m
    m.shutdown(wait=False, cancel_pending=True)


@pytest.fixture
def tools(manager):
    return {t.name: t for t in create_task_tools(manager)}


def test_unknown_name_lists_the_names_that_exist(manager):
    with pytest.raises(TaskValidationError) as excinfo:
        manager.submit("tool", "analyse_dataset", {"dataset": "a"})
    message = str(excinfo.value)
    assert "Unknown tool 'analyse_dataset'" in message
    assert "analyze_dataset" in message and "score" in message


def test_name_of_another_kind_says_which_kind_to_use(manager):
    with pytest.raises(
        TaskValidationError, match=r"'plain' is a function, not a tool: call submit_task\('function'"
    ):
        manager.submit("tool", "plain", {"city": "Paris"})


def test_unknown_kind_is_named():
    with pytest.raises(ValueError, match="Unknown task type 'job'"):
        TaskManager(max_workers=1).submit("job", "x", {})


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({}, "missing required argument(s) 'dataset'"),
        ({"dataset": "a", "colour": "red"}, "unknown argument(s) 'colour'"),
        ({"dataset": 42}, "argument 'dataset' must be a string, got int"),
        ({"dataset": "a", "depth": "deep"}, "argument 'depth' must be an integer, got str"),
        ({"dataset": "a", "depth": True}, "argument 'depth' must be an integer, got bool"),
        ({"dataset": "a", "verbose": "yes"}, "argument 'verbose' must be a boolean"),
    ],
)
def test_bad_tool_arguments_are_named(manager, arguments, expected):
    with pytest.raises(TaskValidationError) as excinfo:
        manager.submit("tool", "analyze_dataset", arguments)
    assert expected in str(excinfo.value)
    # The error also shows how to call it.
    assert "submit_task('tool', 'analyze_dataset', {\"dataset\": <string>" in str(excinfo.value)
    assert manager.get_statistics()["total"] == 0, "a refused submit must not queue anything"


def test_types_from_a_tool_class_and_nullable_inputs(manager):
    with pytest.raises(TaskValidationError, match="'values' must be an array"):
        manager.submit("tool", "score", {"values": "1,2", "weight": 2})
    with pytest.raises(TaskValidationError, match="'weight' must be a number"):
        manager.submit("tool", "score", {"values": [1], "weight": "2"})
    task_id = manager.submit("tool", "score", {"values": [1, 2], "weight": 1.5, "options": None})
    manager.wait([task_id], timeout=5)
    assert manager.result(task_id) == 4.5


def test_arguments_as_json_string_and_non_dict(manager):
    task_id = manager.submit("tool", "analyze_dataset", '{"dataset": "a", "depth": 2}')
    manager.wait([task_id], timeout=5)
    assert manager.result(task_id) == {"dataset": "a", "depth": 2}
    with pytest.raises(TaskValidationError, match="must be a dict, got list"):
        manager.submit("tool", "analyze_dataset", ["a"])
    with pytest.raises(TaskValidationError, match="not JSON"):
        manager.submit("tool", "analyze_dataset", "dataset=a")


def test_plain_function_signature_is_the_contract(manager):
    with pytest.raises(TaskValidationError, match="missing required argument\\(s\\) 'city'"):
        manager.submit("function", "plain", {"days": 2})
    with pytest.raises(TaskValidationError, match="'days' must be an integer"):
        manager.submit("function", "plain", {"city": "Rome", "days": "two"})
    task_id = manager.submit("function", "plain", {"city": "Rome"})
    manager.wait([task_id], timeout=5)
    assert manager.result(task_id) == "Rome:3"


def test_timeout_and_retries_are_checked(manager):
    with pytest.raises(TaskValidationError, match="timeout must be a positive number"):
        manager.submit("tool", "analyze_dataset", {"dataset": "a"}, timeout=0)
    with pytest.raises(TaskValidationError, match="retries must be a non-negative integer"):
        manager.submit("tool", "analyze_dataset", {"dataset": "a"}, retries=-1)


def test_submit_task_tool_returns_the_id_and_lists_targets(tools, manager):
    description = tools["submit_task"].description
    assert "analyze_dataset" in description and "score" in description and "plain" in description
    task_id = tools["submit_task"](task_type="tool", name="analyze_dataset", arguments={"dataset": "x"})
    assert isinstance(task_id, str) and task_id.startswith("task_")
    manager.wait([task_id], timeout=5)
    assert tools["get_task_results"](task_ids=[task_id]) == {task_id: {"dataset": "x", "depth": 1}}


def test_wait_for_tasks_says_what_finished_failed_and_is_pending(tools, manager):
    release = threading.Event()
    manager.register_function(lambda: release.wait(10), name="block")
    manager.register_function(lambda: 1 / 0, name="divide")
    ok = tools["submit_task"]("tool", "analyze_dataset", {"dataset": "a"})
    bad = tools["submit_task"]("function", "divide", {})
    manager.wait([ok, bad], timeout=5)
    slow = tools["submit_task"]("function", "block", {})
    summary = tools["wait_for_tasks"](task_ids=[ok, bad, slow], max_wait_time=0.2)
    assert summary["completed"] == [ok]
    assert summary["failed"] == [bad] and "ZeroDivisionError" in summary["errors"][bad]
    assert summary["pending"] == [slow] and summary["all_done"] is False
    assert "still running" in summary["message"]
    release.set()
    summary = tools["wait_for_tasks"]([slow], max_wait_time=5)
    assert summary["all_done"] is True and summary["completed"] == [slow]


def test_wait_and_sleep_are_capped():
    manager = TaskManager(max_workers=1)
    tools = {t.name: t for t in create_task_tools(manager, max_wait_cap=0.2)}
    release = threading.Event()
    manager.register_function(lambda: release.wait(10), name="block")
    task_id = manager.submit("function", "block", {})
    started = time.monotonic()
    summary = tools["wait_for_tasks"]([task_id], max_wait_time=120)
    assert summary["pending"] == [task_id] and time.monotonic() - started < 2
    assert "capped" in tools["sleep"](seconds=100, reason="waiting for data")
    release.set()
    manager.shutdown()


def test_check_list_and_cancel_tools(tools, manager):
    release = threading.Event()
    manager.register_function(lambda: release.wait(10), name="block")
    ids = [tools["submit_task"]("function", "block", {}) for _ in range(3)]
    time.sleep(0.05)
    assert tools["check_task"](task_id=ids[0])["status"] == "running"
    assert tools["check_task"](task_id=ids[2])["status"] == "pending"
    outcome = tools["cancel_task"](task_id=ids[2])
    assert outcome == {"task_id": ids[2], "cancelled": True, "status": "cancelled"}
    assert [t["task_id"] for t in tools["list_tasks"](status="running")] == ids[:2]
    assert [t["task_id"] for t in tools["list_tasks"](status="cancelled")] == [ids[2]]
    with pytest.raises(ValueError, match="Unknown status"):
        tools["list_tasks"](status="done")
    release.set()
    manager.wait(ids, timeout=5)


def test_task_ids_must_be_ids(tools):
    with pytest.raises(TypeError, match="task_ids must be a list of task id strings"):
        tools["get_task_results"](task_ids=[1, 2])
