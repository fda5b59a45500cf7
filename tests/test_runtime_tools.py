"""Runtime tools as smolagents tools: declared in Python or in manifests, called directly or as
background tasks, inputs checked like any tool's, stopped with their task."""

from __future__ import annotations

import json
import time

import pytest
from _runtime_fixtures import JS_TOOL, PY_TOOL, WAT_KERNELS, compile_c, require, require_module, write

from async_task_system import TaskManager, TaskStatus, TaskValidationError, create_async_agent
from async_task_system.agents.testing import ScriptedModel
from async_task_system.runtimes import (
    ManifestError,
    RuntimeManager,
    RuntimeTool,
    RuntimeToolError,
    load_tools,
    runtime_tool,
)
from async_task_system.sandbox.process import RunLimits


@pytest.fixture
def runtimes() -> RuntimeManager:
    manager = RuntimeManager(RunLimits(timeout=30))
    yield manager
    manager.close()


def test_a_python_runtime_tool_is_a_smolagents_tool(runtimes, tmp_path):
    add = runtime_tool(
        "add_numbers",
        runtime="python",
        entry=write(tmp_path, "tool.py", PY_TOOL),
        command="add",
        description="Adds two integers.",
        inputs={"a": "integer", "b": {"type": "integer", "description": "The second."}},
        output_type="integer",
        runtimes=runtimes,
    )
    assert add(a=2, b=3) == 5
    assert add.inputs["a"] == {"type": "integer", "description": "a"}
    with pytest.raises(TaskValidationError, match="argument 'a' must be an integer"):
        add(a="two", b=3)
    with pytest.raises(TaskValidationError, match="missing required argument"):
        add(a=1)
    with pytest.raises(TaskValidationError, match="unknown argument"):
        add(a=1, b=2, c=3)


def test_failed_calls_raise_with_the_runtime_error(runtimes, tmp_path):
    boom = runtime_tool(
        "boom",
        runtime="python",
        entry=write(tmp_path, "tool.py", PY_TOOL),
        description="Fails.",
        runtimes=runtimes,
    )
    with pytest.raises(RuntimeToolError, match="ValueError: no luck") as caught:
        boom()
    assert caught.value.result.error_type == "tool_error"


def test_runtime_tools_run_as_background_tasks(runtimes, tmp_path):
    require("node")
    js = write(tmp_path, "tool.js", JS_TOOL)
    words = runtime_tool(
        "count_words", runtime="javascript", entry=js, command="words", description="Counts words.",
        inputs={"text": "string"}, runtimes=runtimes,
    )  # fmt: skip
    throw = runtime_tool(
        "throws", runtime="js", entry=js, command="throw", description="Throws.", runtimes=runtimes
    )
    with TaskManager(tools=[words, throw]) as manager:
        ok = manager.submit("tool", "count_words", {"text": "one two three"})
        bad = manager.submit("tool", "throws", {})
        manager.wait([ok, bad], timeout=20)
        assert manager.result(ok) == {"count": 3}
        info = manager.check(bad)
        assert info.status is TaskStatus.FAILED and "boom from js" in str(info.error)
        with pytest.raises(TaskValidationError, match="argument 'text' must be a string"):
            manager.submit("tool", "count_words", {"text": 3})


def test_cancelling_the_task_stops_the_program(runtimes, tmp_path):
    require("node")
    hang = runtime_tool(
        "hang", runtime="javascript", entry=write(tmp_path, "tool.js", JS_TOOL), description="Never ends.",
        timeout=60, runtimes=runtimes,
    )  # fmt: skip
    with TaskManager(tools=[hang]) as manager:
        task = manager.submit("tool", "hang", {})
        deadline = time.monotonic() + 10
        while runtimes.runner.running == 0 and time.monotonic() < deadline:
            time.sleep(0.02)  # test only: wait until node has started
        assert runtimes.runner.running == 1
        started = time.monotonic()
        manager.cancel(task)
        while runtimes.runner.running and time.monotonic() - started < 5:
            time.sleep(0.02)
        assert runtimes.runner.running == 0, "the node process group was not stopped with its task"
        timed = manager.submit("tool", "hang", {}, timeout=0.5)
        manager.wait([timed], timeout=10)
        assert manager.check(timed).error.type == "timeout"
        while runtimes.runner.running and time.monotonic() - started < 10:
            time.sleep(0.02)
        assert runtimes.runner.running == 0


MANIFEST_TOML = """
runtime = "javascript"
entry = "tool.js"
timeout = 10

[[tool]]
name = "count_words"
command = "words"
description = "Counts the words of a text."
output_type = "object"
inputs.text = { type = "string", description = "The text." }

[[tool]]
name = "add"
description = "Adds two numbers."
inputs = { a = "number", b = "number" }
"""

MANIFEST_JSON = {
    "tools": [
        {"name": "fib", "runtime": "wasm", "entry": "kernels.wat", "description": "Fibonacci.",
         "inputs": {"n": "integer"}, "output_type": "integer"},
        {"name": "greet", "runtime": "native", "entry": "bin/ctool", "command": "hello",
         "description": "Greets.", "inputs": {"who": "string"}, "output_type": "string"},
    ]
}  # fmt: skip


def _tool_directory(tmp_path):
    require("node")
    require_module("wasmtime")
    write(tmp_path, "tool.js", JS_TOOL)
    write(tmp_path, "kernels.wat", WAT_KERNELS)
    (tmp_path / "bin").mkdir()
    compile_c(tmp_path / "bin")
    write(tmp_path, "text.toml", MANIFEST_TOML)
    write(tmp_path, "compute.json", json.dumps(MANIFEST_JSON))
    return tmp_path


def test_a_directory_of_manifests_loads_at_once(runtimes, tmp_path):
    tools = load_tools(_tool_directory(tmp_path), runtimes)
    by_name = {tool.name: tool for tool in tools}
    assert sorted(by_name) == ["add", "count_words", "fib", "greet"]
    assert all(isinstance(tool, RuntimeTool) for tool in tools)
    assert by_name["count_words"](text="a b") == {"count": 2}
    assert by_name["add"](a=1.5, b=2) == 3.5
    assert by_name["fib"](n=10) == 55
    assert by_name["greet"](who="there") == "hello there"
    assert by_name["count_words"].timeout == 10 and by_name["fib"].timeout is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[tool]]\nname="x"\ndescription="d"\nruntime="cobol"\nentry="a"',
            "known runtimes are javascript, mcp",
        ),
        ('[[tool]]\nname="x"\ndescription="d"\nruntime="native"\nentry="absent"', "does not exist"),
        ('[[tool]]\nname="x"\nruntime="native"\nentry="absent"', "missing description"),
        ('[[tool]]\nname="x"\ndescription="d"\nruntime="python"\nentry="t.py"\ncolour=1', "unknown key"),
        (
            '[[tool]]\nname="no good"\ndescription="d"\nruntime="python"\nentry="t.py"',
            "must be a Python identifier",
        ),
        ('name = "x"', "no tools declared"),
        ("[[tool]\n", "cannot read the manifest"),
        (
            '[[tool]]\nname="x"\ndescription="d"\nruntime="python"\nentry="t.py"\ninputs={a="text"}',
            "must be among",
        ),
    ],
)
def test_bad_manifests_name_the_file_and_the_problem(runtimes, tmp_path, text, message):
    write(tmp_path, "t.py", PY_TOOL)
    path = write(tmp_path, "bad.toml", text)
    with pytest.raises(ManifestError, match=message) as caught:
        load_tools(path, runtimes)
    assert "bad.toml" in str(caught.value)


def test_duplicate_names_across_manifests_are_refused(runtimes, tmp_path):
    write(tmp_path, "t.py", PY_TOOL)
    spec = '[[tool]]\nname="add"\ndescription="d"\nruntime="python"\nentry="t.py"\n'
    write(tmp_path, "a.toml", spec)
    write(tmp_path, "b.toml", spec)
    with pytest.raises(ManifestError, match="already declared in .*a.toml"):
        load_tools(tmp_path, runtimes)


def test_the_agent_calls_runtime_tools_directly_and_in_the_background(runtimes, tmp_path):
    tools = load_tools(_tool_directory(tmp_path), runtimes)
    model = ScriptedModel(
        [
            "<code>\n"
            "direct = fib(n=12)\n"
            "ids = [submit_task('tool', 'count_words', {'text': 'a b c'}), submit_task('tool', 'fib', {'n': 15})]\n"
            "wait_for_tasks(ids, max_wait_time=30)\n"
            "results = get_task_results(ids)\n"
            "final_answer([direct, results[ids[0]], results[ids[1]]])\n"
            "</code>"
        ]
    )
    with create_async_agent(tools=tools, model=model, verbosity_level=0) as agent:
        assert agent.run("go") == [144, {"count": 3}, 610]
    prompt = str(model.calls[0][0])
    assert "count_words" in prompt and "Fibonacci." in prompt


def test_the_runtimes_example_runs():
    require("node")
    require_module("wasmtime")
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "examples" / "runtimes" / "run_runtimes.py"
    out = subprocess.run([sys.executable, str(example)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "agent: {'words': 4, 'background': [75025, 'tnega', 'One Manager']}" in out.stdout
