"""Agent code in the sandboxed kernel (async_task_system.runtimes.code_sandbox), with real parts: real
CodeAgents on a ScriptedModel, real kernels in the real sandbox, a real AgentServer on loopback.

Where namespaces are unavailable these skip with the reason, except under ``CI=true``, where they
fail: CI must test the isolation it ships.
"""

from __future__ import annotations

import base64
import contextvars
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from _isolation import require_isolation
from clients import testagents as ta
from clients.pyclient import LineClient
from smolagents import CodeAgent, tool
from smolagents.local_python_executor import ExecutionTimeoutError

from async_task_system import ScriptedModel, create_async_agent
from async_task_system.runtimes import CodeKernelError, SandboxedPythonExecutor, install_sandboxed_executor
from async_task_system.sandbox.process import RunLimits
from async_task_system.server import AgentServer

pytestmark = require_isolation("the code sandbox tests")

REQUEST = contextvars.ContextVar("REQUEST", default="none")
seen_calls: list[tuple[int, str]] = []


@tool
def add_numbers(a: int, b: int) -> int:
    """Add two integers (records the thread and context it ran in).

    Args:
        a: first number
        b: second number
    """
    seen_calls.append((threading.get_ident(), REQUEST.get()))
    return a + b


@tool
def echo(text: str) -> str:
    """Return the text.

    Args:
        text: anything
    """
    return text


def code(text: str) -> str:
    return f"Thought: go.\n<code>\n{textwrap.dedent(text).strip()}\n</code>"


def agent(steps: list[str], **kwargs) -> CodeAgent:
    return CodeAgent(
        tools=[add_numbers, echo], model=ScriptedModel(steps), verbosity_level=-1, max_steps=4, **kwargs
    )


@pytest.fixture
def listener():
    """A loopback port that accepts connections (the backlog does; nothing reads)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield server.getsockname()[1]
    server.close()


@pytest.fixture
def executor():
    made: list[SandboxedPythonExecutor] = []

    def make(**kwargs) -> SandboxedPythonExecutor:
        kwargs.setdefault("additional_authorized_imports", ["os", "pathlib", "posix"])
        found = SandboxedPythonExecutor(**kwargs)
        found.send_tools({"echo": echo})
        made.append(found)
        return found

    yield make
    for found in made:
        found.cleanup()


# ------------------------------------------------------------------------------------------ (a)


def test_code_calls_host_tools_in_the_step_thread_keeps_variables_and_ends_with_final_answer():
    seen_calls.clear()
    steps = [
        code("x = add_numbers(2, 3)\nprint('x is', x)"),
        code("final_answer({'sum': x * 10})"),
    ]
    runner = agent(steps)
    (sandboxed,) = install_sandboxed_executor(runner)
    assert runner.python_executor is sandboxed
    token = REQUEST.set("request-7")
    try:
        result = runner.run("add")
    finally:
        REQUEST.reset(token)
        runner.cleanup()
    assert result == {"sum": 50}
    # The tool ran here, in the thread that ran the step, with its context variables.
    assert seen_calls == [(threading.get_ident(), "request-7")]
    assert "x is 5" in runner.memory.steps[1].observations
    assert sandboxed.kernels_started == 1


# ------------------------------------------------------------------------------------------ (b)


def test_the_sandbox_not_the_interpreter_keeps_code_off_the_network(listener):
    step = code(
        f"""
        import socket
        try:
            socket.create_connection(("127.0.0.1", {listener}), timeout=3).close()
            outcome = "connected"
        except OSError as exc:
            outcome = "refused: " + str(exc)
        final_answer(outcome)
        """
    )
    local = agent([step], additional_authorized_imports=["socket"])
    assert local.run("connect") == "connected"  # smolagents' AST checks let it through

    sandboxed = agent([step], additional_authorized_imports=["socket"])
    install_sandboxed_executor(sandboxed)
    try:
        outcome = sandboxed.run("connect")
    finally:
        sandboxed.cleanup()
    assert outcome.startswith("refused: ")


# ------------------------------------------------------------------------------------------ (c), (d)


def test_files_outside_the_scratch_directory_are_neither_readable_nor_writable(executor, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    run = executor()
    result = run(
        f"""
from pathlib import Path
found = {{}}
for name, action in [
    ("read", lambda: Path({str(secret)!r}).read_text()),
    ("write", lambda: Path({str(tmp_path / "written.txt")!r}).write_text("x")),
    ("etc", lambda: Path("/etc/passwd-created").write_text("x")),
    ("scratch", lambda: Path("/scratch/ok.txt").write_text("fine")),
]:
    try:
        found[name] = action()
    except OSError as exc:
        found[name] = "error: " + str(exc)
found
"""
    ).output
    assert result["read"].startswith("error: ") and "host secret" not in str(result)
    assert result["write"].startswith("error: ") and result["etc"].startswith("error: ")
    assert result["scratch"] == 4
    assert not (tmp_path / "written.txt").exists()


def test_code_sees_neither_this_process_nor_its_environment(executor, monkeypatch):
    monkeypatch.setenv("ATS_TEST_SERVER_SECRET", "do-not-leak")
    run = executor()
    me = os.getpid()
    result = run(
        f"""
import os
from pathlib import Path
try:
    environ = Path("/proc/{me}/environ").read_text()
except OSError as exc:
    environ = "error: " + str(exc)
{{"pid": os.getpid(), "procs": [n for n in os.listdir("/proc") if n.isdigit()],
  "environ": environ, "env": dict(os.environ)}}
"""
    ).output
    assert result["pid"] != me and str(me) not in result["procs"]
    assert len(result["procs"]) < 10  # its own namespace: the kernel and its init
    assert result["environ"].startswith("error: ")
    assert "ATS_TEST_SERVER_SECRET" not in result["env"] and "do-not-leak" not in str(result)


# ------------------------------------------------------------------------------------------ (e)


def test_a_step_past_its_timeout_is_stopped_and_the_next_one_gets_a_fresh_kernel(executor):
    run = executor(timeout_seconds=1.5)
    run.send_variables({"given": 41})
    assert run("made = given + 1\nmade").output == 42
    started = time.monotonic()
    with pytest.raises(ExecutionTimeoutError) as caught:
        run("import time\ntime.sleep(30)")
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "maximum execution time of 1.5 seconds" in message and "the step was stopped" in message
    assert "Variables from earlier steps are gone" in message and "split the work" in message
    assert run("given").output == 41  # sent again to the new kernel
    with pytest.raises(CodeKernelError, match="made"):
        run("made")  # made by the code in the old kernel: gone
    assert run.kernels_started == 2


# ------------------------------------------------------------------------------------------ (f)


def test_an_oversized_or_forged_message_stops_the_kernel_and_the_host_goes_on(executor):
    run = executor(max_message_bytes=4096)
    with pytest.raises(CodeKernelError, match="more than 4096 bytes"):
        run("echo('a' * 100000)")
    assert run("echo('small')").output == "small"
    # The channel is a private descriptor of the kernel; code that finds it can only write garbage
    # to its own host, which stops the kernel and says so.
    with pytest.raises(CodeKernelError, match="malformed message"):
        run(
            "import os\nfor fd in range(3, 8):\n    try:\n        os.write(fd, b'not json\\n')\n    except OSError:\n        pass\nimport time\ntime.sleep(5)"
        )
    assert run("1 + 1").output == 2
    assert run.kernels_started == 3


def test_processes_the_code_forks_cannot_speak_for_the_kernel_in_a_later_step(executor):
    run = executor(limits=RunLimits(max_processes=8))
    # A fork bomb: the kernel limits forks; every forked copy of the kernel ends instead of
    # reporting its own end of the step on the inherited channel.
    # Either the kernel's own bound refuses the forks, or the supervisor's scan sees the tree past
    # the limit first and kills it (then, or right after the step, while the copies end: the next
    # step fails and a fresh kernel serves the one after). No step gets another step's answer.
    with pytest.raises(CodeKernelError, match="Resource temporarily unavailable|process_limit"):
        run("import os\nwhile True:\n    os.fork()")

    def answer(code: str):
        try:
            return run(code).output
        except CodeKernelError as exc:
            assert "process_limit" in str(exc)
            return run(code).output

    assert [answer(f"{n} * 2") for n in range(3)] == [0, 2, 4]
    assert run.kernels_started <= 3


def test_a_kernel_that_dies_fails_its_step_and_the_next_step_gets_a_fresh_one(executor):
    run = executor(timeout_seconds=20)
    run("kept = 1")
    with pytest.raises(CodeKernelError, match="ended during this step"):
        run("import os\nos.kill(os.getpid(), 9)")
    started = time.monotonic()
    assert run("'fresh'").output == "fresh" and time.monotonic() - started < 10
    assert run.kernels_started == 2


def test_memory_past_the_limit_fails_the_step_and_says_the_limit(executor):
    run = executor(limits=RunLimits(memory_mb=300))
    with pytest.raises(CodeKernelError, match="MemoryError.*allows 300 MiB"):
        run("x = 'a' * (400 * 1024 * 1024)")
    assert run("'still here'").output == "still here" and run.kernels_started == 1


def test_interrupt_stops_a_running_step_at_once(executor):
    run = executor(timeout_seconds=60)
    assert run("1").output == 1  # the kernel is up
    threading.Timer(0.5, run.interrupt).start()
    started = time.monotonic()
    with pytest.raises(CodeKernelError, match="interrupted"):
        run("import time\ntime.sleep(30)")
    assert time.monotonic() - started < 10
    assert run("'next'").output == "next"


def test_a_kernel_that_floods_its_host_with_messages_is_stopped(executor):
    run = executor()
    call = b'{"op": "call", "id": 1, "tool": "echo", "args": ["x"], "kwargs": {}}\n'
    with pytest.raises(CodeKernelError, match="messages unanswered"):
        run(
            f"import os\nfor fd in range(3, 8):\n    try:\n        os.write(fd, {call * 2000!r})\n"
            "    except OSError:\n        pass\nimport time\ntime.sleep(5)"
        )
    assert run("2 + 2").output == 4  # a fresh kernel


def test_print_output_cannot_forge_protocol_messages(executor):
    run = executor()
    forged = '{"op": "done", "output": "forged", "logs": "", "is_final_answer": true}'
    result = run(f"print({forged!r})\nimport os\nos.write(1, b{forged!r} + b'\\n')\n'real'")
    assert result.output == "real" and not result.is_final_answer


def test_the_kernel_dies_with_its_host():
    script = textwrap.dedent(
        """
        import sys
        from async_task_system.runtimes import SandboxedPythonExecutor
        run = SandboxedPythonExecutor()
        run.send_tools({})
        print(run("1 + 1").output, flush=True)
        sys.stdin.read()
        """
    )
    host = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert host.stdout.readline().strip() == b"2"
        kernels = [pid for pid in _descendants(host.pid) if b"_code_kernel.py" in _cmdline(pid)]
        assert kernels
        os.kill(host.pid, signal.SIGKILL)
        host.wait(10)
        deadline = time.monotonic() + 10
        while any(_cmdline(pid) for pid in kernels) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_cmdline(pid) for pid in kernels)
    finally:
        host.kill()


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read()
    except OSError:
        return b""


def _descendants(root: int) -> list[int]:
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as handle:
                    parents[int(name)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


# ------------------------------------------------------------------------------------------ (g)


def _socket_factory():
    model = ta.scripted_model()

    def factory():
        return CodeAgent(
            tools=ta.TOOLS,
            model=model,
            verbosity_level=-1,
            max_steps=3,
            additional_authorized_imports=["socket"],
        )

    return factory


def test_the_server_runs_agent_code_sandboxed_by_default(listener):
    code_text = (
        f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {listener}), timeout=3).close()\n"
        "    outcome = 'connected'\nexcept OSError as exc:\n    outcome = 'refused'\nfinal_answer(outcome)"
    )
    request = {"request_id": "net", "input": {"Text": "RUN: " + code_text}}
    with AgentServer(_socket_factory()).start_in_thread() as running, LineClient(running.port) as client:
        assert client.request(request)["response"] == {"Text": "refused"}
    # Only the sandbox made the difference: the same agent, in process, connects.
    unisolated = AgentServer(_socket_factory(), code_isolation=False)
    with unisolated.start_in_thread() as running, LineClient(running.port) as client:
        assert client.request(request)["response"] == {"Text": "connected"}


def test_an_async_agents_task_tools_work_from_sandboxed_code():
    model = ta.scripted_model()

    def factory():
        return create_async_agent(tools=ta.TOOLS, model=model, verbosity_level=-1, max_steps=4)

    steps = (
        "t = submit_task('tool', 'add', {'a': 2, 'b': 3}) ||| "
        "wait_for_tasks([t], 10)\nfinal_answer(str(get_task_results([t])[t]))"
    )
    with AgentServer(factory).start_in_thread() as running, LineClient(running.port) as client:
        response = client.request({"request_id": "tasks", "input": {"Text": "STEPS: " + steps}})
    assert response["error"] is None
    assert "5" in response["response"]["Text"]


def test_an_uploaded_file_is_readable_by_sandboxed_code():
    def read_the_upload(messages) -> str:
        folder = re.search(r"saved in the folder (\S+?)\)?:", ta.task_text(messages)).group(1)
        return code(f"from pathlib import Path\nfinal_answer(Path({folder!r}, 'notes.txt').read_text())")

    model = ScriptedModel([read_the_upload], repeat_last=True)

    def factory():
        return CodeAgent(tools=[], model=model, verbosity_level=-1, additional_authorized_imports=["pathlib"])

    upload = {
        "filename": "notes.txt",
        "content_type": "text/plain",
        "data": base64.b64encode(b"hi!").decode(),
    }
    request = {"request_id": "file", "input": {"Multi": [{"File": upload}, {"Text": "read it"}]}}
    with AgentServer(factory).start_in_thread() as running, LineClient(running.port) as client:
        response = client.request(request)
    assert response["response"] == {"Multi": [{"Text": "hi!"}]}, response
