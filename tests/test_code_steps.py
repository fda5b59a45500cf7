"""Code steps under AsyncAgent: a timed-out or interrupted step stops and leaks nothing (issue #16)."""

from __future__ import annotations

import contextvars
import copy
import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

from smolagents import CodeAgent, tool
from smolagents.local_python_executor import LocalPythonExecutor

from async_task_system import ScriptedModel, create_async_agent
from async_task_system.agents.testing import message_text
from async_task_system.core.agent_runtime import ContextPreservingExecutor, install_context_executor

ROOT = Path(__file__).resolve().parents[1]


def _observation(model: ScriptedModel, call: int) -> str:
    """What the model was shown before its ``call``-th response (0-based): the last message."""
    return message_text(model.calls[call][-1])


def _conversation(model: ScriptedModel, call: int) -> str:
    """Everything the model was shown before its ``call``-th response (0-based)."""
    return "\n".join(message_text(m) for m in model.calls[call])


class _Probe:
    """Tools a scripted step calls: a record of calls, and a gate that holds the step's thread."""

    def __init__(self) -> None:
        self.recorded: list[str] = []
        self.step_threads: list[threading.Thread] = []
        self.gate = threading.Event()
        probe = self

        @tool
        def record(label: str) -> str:
            """Record that the step reached a point.

            Args:
                label: what was reached
            """
            probe.recorded.append(label)
            return label

        @tool
        def whoami() -> str:
            """Remember the thread this step runs in."""
            probe.step_threads.append(threading.current_thread())
            return threading.current_thread().name

        @tool
        def hold() -> str:
            """Block until the test opens the gate (a tool still busy at the deadline)."""
            probe.step_threads.append(threading.current_thread())
            probe.gate.wait(10)
            return "held"

        @tool
        def release() -> str:
            """Open the gate and wait until the held step's thread has ended."""
            probe.gate.set()
            for thread in probe.step_threads:
                thread.join(10)
            return "released"

        self.tools = [record, whoami, hold, release]


def test_timed_out_step_stops_and_nothing_of_it_reaches_later_steps():
    probe = _Probe()
    model = ScriptedModel(
        [
            "<code>\nrecord('before')\nprint('step1 before')\nhold()\n"
            "record('after')\nprint('step1 after')\nx = 1\n</code>",
            "<code>\nrelease()\nprint('step2 ran')\n</code>",
            "<code>\nfinal_answer('done')\n</code>",
        ]
    )
    with create_async_agent(
        tools=probe.tools, model=model, code_timeout=1.0, max_wait_cap=0.5, verbosity_level=0
    ) as agent:
        assert agent.run("hold on") == "done"
        state = agent.agent.python_executor.state
    # Step 1 was blocked in a tool at its deadline; once the tool returned, it stopped at once:
    # no later tool call, print or variable write of it happened.
    assert probe.recorded == ["before"]
    assert "x" not in state
    assert not probe.step_threads[0].is_alive()
    stopped = _conversation(model, 1)
    assert "maximum execution time of 1 seconds" in stopped
    assert "the step was stopped" in stopped
    assert "step1 before" in stopped  # what it printed before the deadline is shown
    step2 = _observation(model, 2)
    assert "step2 ran" in step2
    assert "step1" not in step2


def test_runaway_loop_stops_at_its_next_operation():
    probe = _Probe()
    model = ScriptedModel(
        [
            "<code>\nwhoami()\nn = 0\nwhile True:\n    n += 1\n</code>",
            "<code>\nfinal_answer(n > 0)\n</code>",
        ]
    )
    with create_async_agent(
        tools=probe.tools, model=model, code_timeout=1.0, max_wait_cap=0.5, verbosity_level=0
    ) as agent:
        assert agent.run("spin") is True
        executor = agent.agent.python_executor
        step_thread = probe.step_threads[0]
        step_thread.join(10)
        assert not step_thread.is_alive()
        n_after_run = executor.state["n"]
        operations = executor.state["_operations_count"]["counter"]
        threading.Event().wait(0.2)  # give a step that kept running the chance to show it
        assert executor.state["n"] == n_after_run
        assert executor.state["_operations_count"]["counter"] == operations
    assert "the step was stopped" in _observation(model, 1)


def test_stopping_a_step_stops_the_managed_agent_step_running_inside_it():
    probe = _Probe()
    helper = CodeAgent(
        tools=probe.tools,
        model=ScriptedModel(["<code>\nwhoami()\nn = 0\nwhile True:\n    n += 1\n</code>"]),
        name="helper",
        description="Spins forever.",
        verbosity_level=0,
    )
    model = ScriptedModel(
        ["<code>\nhelper(task='spin')\n</code>", "<code>\nfinal_answer('top done')\n</code>"]
    )
    with create_async_agent(
        managed_agents=[helper], model=model, code_timeout=1.0, max_wait_cap=0.5, verbosity_level=0
    ) as agent:
        assert agent.run("delegate") == "top done"
    # The helper's own timeout (smolagents' default, 30 s) had not passed: its step stopped
    # because the step that called it was stopped.
    assert helper.python_executor.timeout_seconds == 30
    helper_thread = probe.step_threads[0]
    helper_thread.join(10)
    assert not helper_thread.is_alive()
    n_after = helper.python_executor.state["n"]
    threading.Event().wait(0.2)
    assert helper.python_executor.state["n"] == n_after


_CTRL_C_SCRIPT = textwrap.dedent(
    """
    import json
    import signal
    import threading

    from smolagents import tool

    # Ctrl+C as an interactive Python gets it, even when the tests run as a shell's background
    # job (which starts every program with SIGINT ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)

    from async_task_system import ScriptedModel, create_async_agent

    marks = []
    threads = []


    @tool
    def ready() -> str:
        \"\"\"Tell the parent process that the step runs.\"\"\"
        threads.append(threading.current_thread())
        print("READY", flush=True)
        return "ok"


    @tool
    def mark(i: int) -> int:
        \"\"\"Record one tick.

        Args:
            i: the tick number
        \"\"\"
        marks.append(i)
        return i


    code = "import time\\nready()\\nfor i in range(100000):\\n    time.sleep(0.01)\\n    mark(i)\\nx = 1\\n"
    agent = create_async_agent(tools=[ready, mark], model=ScriptedModel(["<code>\\n" + code + "</code>"]), verbosity_level=0)
    result = {}
    try:
        agent.run("tick")
        result["outcome"] = "returned"
    except KeyboardInterrupt:
        result["outcome"] = "KeyboardInterrupt"
        result["marks_at_interrupt"] = len(marks)
    threads[0].join(10)
    threading.Event().wait(0.2)
    result["step_thread_alive"] = threads[0].is_alive()
    result["marks_after"] = len(marks)
    result["x_written"] = "x" in agent.agent.python_executor.state
    agent.shutdown()
    print(json.dumps(result), flush=True)
    """
)


def test_ctrl_c_stops_the_step_and_reaches_the_caller_as_keyboard_interrupt(tmp_path):
    script = tmp_path / "ctrl_c_agent.py"
    script.write_text(_CTRL_C_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        for line in proc.stdout:
            if line.strip() == "READY":
                break
        else:
            raise AssertionError(f"the agent step never started: {proc.stderr.read()}")
        threading.Event().wait(0.1)  # let it tick a few times
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    result = json.loads(out.strip().splitlines()[-1])
    assert result["outcome"] == "KeyboardInterrupt", err
    assert result["step_thread_alive"] is False
    assert result["marks_after"] == result["marks_at_interrupt"]  # no tool call after Ctrl-C
    assert result["x_written"] is False


def test_managed_agent_keeps_the_timeout_its_owner_gave_it():
    helper = CodeAgent(
        tools=[],
        model=ScriptedModel([]),
        name="helper",
        description="Helps.",
        executor_kwargs={"timeout_seconds": 2},
    )
    agent = create_async_agent(managed_agents=[helper], model=ScriptedModel([]), verbosity_level=0)
    try:
        assert isinstance(helper.python_executor, ContextPreservingExecutor)
        assert helper.python_executor.timeout_seconds == 2
        assert agent.agent.python_executor.timeout_seconds == 600
    finally:
        agent.shutdown()


def test_timeout_in_executor_kwargs_is_kept_where_the_user_put_it():
    agent = create_async_agent(
        model=ScriptedModel([]), executor_kwargs={"timeout_seconds": 420}, verbosity_level=0
    )
    try:
        assert agent.agent.executor_kwargs == {"timeout_seconds": 420}
        assert agent.agent.python_executor.timeout_seconds == 420
    finally:
        agent.shutdown()
    # to_dict() of a CodeAgent with our executor installed (the async task tools themselves
    # do not serialise, so a plain CodeAgent shows it).
    plain = CodeAgent(tools=[], model=ScriptedModel([]), executor_kwargs={"timeout_seconds": 7})
    install_context_executor(plain)
    assert plain.python_executor.timeout_seconds == 7
    assert plain.to_dict()["executor_kwargs"] == {"timeout_seconds": 7}
    assert plain.executor_kwargs == {"timeout_seconds": 7}


_request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


def test_setting_timeout_seconds_changes_the_limit_and_keeps_the_context():
    @tool
    def read_request_id() -> str:
        """The request id of the caller's context."""
        return _request_id.get()

    model = ScriptedModel(
        [
            "<code>\nn = 0\nwhile True:\n    n += 1\n</code>",
            "<code>\nfinal_answer(read_request_id())\n</code>",
        ]
    )
    with create_async_agent(tools=[read_request_id], model=model, verbosity_level=0) as agent:
        executor = agent.agent.python_executor
        executor.timeout_seconds = 0.3
        assert executor.timeout_seconds == 0.3
        assert executor.wrapped.timeout_seconds is None  # no second (context-less) timer
        token = _request_id.set("req-7")
        try:
            assert agent.run("spin, then read the id") == "req-7"
        finally:
            _request_id.reset(token)
    assert "maximum execution time of 0.3 seconds" in _observation(model, 1)


def _copies(executor):
    return [copy.copy(executor), copy.deepcopy(executor), pickle.loads(pickle.dumps(executor))]


def test_executor_copies_and_pickles_like_smolagents_own():
    own = LocalPythonExecutor([], timeout_seconds=5)
    ours = ContextPreservingExecutor(LocalPythonExecutor([]), 5)
    for executor in (own, ours):
        executor.send_tools({})
        executor.send_variables({"a": 2})
        assert executor("b = a + 1\nb").output == 3
        for clone in _copies(executor):
            assert clone.timeout_seconds == 5
            assert clone("b * 10").output == 30
    for clone in _copies(ours):
        assert isinstance(clone, ContextPreservingExecutor)
