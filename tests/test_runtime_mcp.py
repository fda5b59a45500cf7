"""MCP stdio servers: a real server written here, its tools used by an agent directly and in the
background, the server stopped with the agent; and the ``mcp`` runtime of the RuntimeManager."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import pytest
from _isolation import host_pid, require_isolation
from _runtime_fixtures import MCP_SERVER, require_module, write

from async_task_system import TaskStatus, create_async_agent
from async_task_system.agents.testing import ScriptedModel
from async_task_system.runtimes import McpRuntime, McpServer, RuntimeManager
from async_task_system.runtimes.mcp import McpServerError
from async_task_system.sandbox.process import RunLimits


@pytest.fixture
def server_file(tmp_path) -> str:
    require_module("mcp")
    require_module("mcpadapt")
    return write(tmp_path, "server.py", MCP_SERVER)


def _gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not os.path.exists(f"/proc/{pid}"):
            return True
        time.sleep(0.05)
    return False


def test_mcp_tools_run_in_an_agent_and_the_server_stops_with_it(server_file, tmp_path):
    pid_file = tmp_path / "pid"
    limits = RunLimits(cpu_seconds=None, write_paths=(str(tmp_path),))  # isolated: its pid file's folder
    server = McpServer(sys.executable, [server_file], env={"PID_FILE": str(pid_file)}, limits=limits)
    assert sorted(tool.name for tool in server.tools) == ["add", "shout"]
    pid = host_pid(int(pid_file.read_text()), os.getpid())  # the pid it wrote is its namespace's
    model = ScriptedModel(
        [
            "<code>\n"
            "direct = add(a=2, b=3)\n"
            "task = submit_task('tool', 'shout', {'text': 'hi'})\n"
            "wait_for_tasks([task], max_wait_time=30)\n"
            "final_answer([direct, get_task_results([task])[task]])\n"
            "</code>"
        ]
    )
    agent = create_async_agent(tools=server.tools, model=model, verbosity_level=0)
    server.attach(agent)
    with agent:
        answer = agent.run("go")
        infos = agent.task_manager.list()
    assert answer == [{"result": 5}, {"result": "HI"}]
    assert [info.status for info in infos] == [TaskStatus.COMPLETED]
    assert not server.running and _gone(pid), "the MCP server outlived its agent"


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # mcpadapt's thread
def test_the_mcp_runtime_routes_to_a_server_by_command_line(server_file):
    runtimes = RuntimeManager()
    runtimes.register(McpRuntime(start_timeout=2))
    entry = f"{sys.executable} {server_file}"
    try:
        result = asyncio.run(runtimes.execute("mcp", entry, "add", {"a": 20, "b": 22}, timeout=30))
        assert result.ok and result.result == {"result": 42}
        unknown = asyncio.run(runtimes.execute("mcp", entry, "divide", {"a": 1}))
        assert unknown.error_type == "invalid_entry" and "'add'" in unknown.error
        wrong = asyncio.run(runtimes.execute("mcp", entry, "add", {"a": "x", "b": 1}))
        assert wrong.error_type == "invalid_arguments" and "must be an integer" in wrong.error
        dead = asyncio.run(runtimes.execute("mcp", "/nonexistent/server", "add", {}, timeout=20))
        assert dead.error_type == "unavailable" and "was not found" in dead.error
        crashing = f"{sys.executable} -c 'raise SystemExit(3)'"
        assert asyncio.run(runtimes.execute("mcp", crashing, "add", {})).error_type in (
            "unavailable",
            "timeout",
        )
    finally:
        runtimes.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # mcpadapt's thread
def test_a_server_that_exits_at_start_is_reported_at_once_with_its_stderr(tmp_path):
    require_module("mcp")
    require_module("mcpadapt")
    script = write(
        tmp_path, "broken.py", "import sys\nsys.stderr.write('missing setting: DB_URL\\n')\nsys.exit(3)\n"
    )
    with pytest.raises(McpServerError) as caught:
        McpServer(sys.executable, [script], start_timeout=3600.0)  # a wait for the timeout never ends
    message = str(caught.value)
    assert "exited with code 3 before answering the MCP handshake" in message
    assert "missing setting: DB_URL" in message


def test_a_server_command_that_does_not_exist_is_named():
    require_module("mcp")
    with pytest.raises(McpServerError, match="'no-such-mcp-server-xyz' was not found"):
        McpServer("no-such-mcp-server-xyz", ["--stdio"], start_timeout=3600.0)


PROBE_SERVER = """
import socket

from mcp.server.fastmcp import FastMCP

app = FastMCP("probe", log_level="WARNING")


@app.tool()
def read(path: str) -> str:
    \"\"\"Reads a file.\"\"\"
    try:
        with open(path) as handle:
            return handle.read()
    except OSError as exc:
        return f"refused: {exc.strerror}"


@app.tool()
def connect(port: int) -> str:
    \"\"\"Connects to a loopback port.\"\"\"
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        return "connected"
    except OSError as exc:
        return f"refused: {exc.strerror}"


if __name__ == "__main__":
    app.run()
"""


@require_isolation("the MCP isolation test")
def test_an_mcp_server_runs_isolated_off_the_network_and_off_the_hosts_files(tmp_path):
    require_module("mcp")
    require_module("mcpadapt")
    import socket

    secret = tmp_path / "secret.txt"
    secret.write_text("the host's secret")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    port = listener.getsockname()[1]
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    script = write(server_dir, "probe.py", PROBE_SERVER)
    try:
        with McpServer(sys.executable, [script]) as server:
            read, connect = server.tool("read"), server.tool("connect")
            assert "refused" in str(read(path=str(secret)))
            assert "refused" in str(connect(port=port))
        opened = McpServer(
            sys.executable, [script], limits=RunLimits(network=True, read_paths=(str(tmp_path),))
        )
        with opened:
            assert "the host's secret" in str(opened.tool("read")(path=str(secret)))
            assert "connected" in str(opened.tool("connect")(port=port))
    finally:
        listener.close()
