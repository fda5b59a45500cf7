"""``async-agent serve`` as a real subprocess, talked to by the seed-shaped Python client."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from clients.pyclient import AgentCLIClient, LineClient

TESTS = Path(__file__).parent


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"API_KEY": "", "MODEL_ID": "", "BASE_URL": "", "PYTHONPATH": str(TESTS)})
    env.pop("ASYNC_AGENT_SERVER_TOKEN", None)
    env.update(extra)
    return env


class Served:
    def __init__(self, *args: str, env: dict[str, str] | None = None, preexec_fn=None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "async_task_system", "serve", "--remote", "127.0.0.1:0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env or _env(),
            cwd=TESTS,
            preexec_fn=preexec_fn,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = re.search(r"on 127\.0\.0\.1:(\d+)", line)
        if not match:
            self.proc.kill()
            raise AssertionError(f"no address printed: {line!r} {self.proc.stderr.read()!r}")
        self.port = int(match.group(1))
        self.banner = line

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream:
                stream.close()


@pytest.fixture
def served():
    started: list[Served] = []

    def start(*args: str, env: dict[str, str] | None = None, preexec_fn=None) -> Served:
        s = Served(*args, env=env, preexec_fn=preexec_fn)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def test_serve_scripted_offline_mode(served):
    s = served("--scripted")
    assert "scripted offline model" in s.banner
    client = AgentCLIClient("127.0.0.1", s.port)
    try:
        agent = client.send_request(
            {"request_id": "a", "input": {"Text": "hello"}, "stream": False, "use_tools": True}
        )
        chat = client.send_request({"request_id": "b", "input": {"Text": "hi"}, "use_tools": False})
        tool = client.send_request({"request_id": "c", "input": {"Instruction": {"command": "list_tasks"}}})
    finally:
        client.close()
    assert agent["response"]["Text"].endswith("You asked: hello")
    assert chat["response"]["Text"].endswith("You said: hi")
    assert tool["response"] == {"ToolResult": {"name": "list_tasks", "result": []}}


def test_serve_any_agent_factory_with_a_token(served):
    s = served("--factory", "clients.testagents:cli_factory", env=_env(ASYNC_AGENT_SERVER_TOKEN="tkn"))
    assert "token required" in s.banner
    with LineClient(s.port) as c:
        refused = c.request({"request_id": "x", "input": {"Text": "hi"}})
        assert c.read() is None
    with LineClient(s.port) as c:
        ok = c.request(
            {"request_id": "y", "input": {"Text": "RUN: final_answer(str(add(4, 5)))"}, "token": "tkn"}
        )
    assert refused["error_code"] == "connection_error"
    assert ok["response"] == {"Text": "9"}


def test_serve_refuses_without_an_llm_or_a_token_off_loopback(tmp_path):
    no_llm = subprocess.run(
        [sys.executable, "-m", "async_task_system", "serve", "--remote", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        timeout=60,
    )
    assert no_llm.returncode == 2 and "No LLM configured" in no_llm.stderr and "--scripted" in no_llm.stderr
    open_host = subprocess.run(
        [sys.executable, "-m", "async_task_system", "serve", "--remote", "0.0.0.0:0", "--scripted"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        timeout=60,
    )
    assert open_host.returncode == 2 and "needs a token" in open_host.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "async_task_system", "serve", "--remote", "nonsense"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=tmp_path,
        timeout=60,
    )
    assert bad.returncode == 2 and "expected HOST:PORT" in bad.stderr


def test_sigterm_answers_unfinished_requests_before_closing(served):
    s = served("--factory", "clients.testagents:cli_factory")
    with LineClient(s.port) as c:
        # The tool runs in the request's own thread and ignores cancellation: the process must exit anyway.
        c.send(
            {
                "request_id": "busy",
                "input": {"Instruction": {"command": "block", "parameters": {"seconds": 60}}},
            }
        )
        ok = c.request({"request_id": "quick", "input": {"Text": "RUN: final_answer('fast')"}})
        s.proc.terminate()
        r = c.read()
        assert c.read() is None
    assert ok["response"] == {"Text": "fast"}
    assert r == {
        "request_id": "busy",
        "response": {"Text": ""},
        "error": "connection_error: The server is shutting down",
        "token_usage": None,
        "error_code": "connection_error",
    }
    assert s.proc.wait(10) == 0


def test_every_server_limit_has_a_flag_with_its_default_in_help():
    import inspect

    from async_task_system.server import AgentServer

    not_limits = {"self", "agent_factory", "host", "port", "token", "model", "temp_dir", "task_manager"}
    # Where agent code runs, not a limit: --no-code-isolation and --allow-network (tests below).
    not_limits |= {"code_isolation", "code_limits"}
    flags = {"default_context_num": "--context"}
    help_text = subprocess.run(
        [sys.executable, "-m", "async_task_system", "serve", "--help"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        check=True,
    ).stdout
    help_text = re.sub(r"\s+", " ", help_text)
    for name, parameter in inspect.signature(AgentServer.__init__).parameters.items():
        if name in not_limits:
            continue
        flag = flags.get(name, "--" + name.replace("_", "-"))
        default = parameter.default
        shown = f"{default:g}" if isinstance(default, float) else str(default)
        assert re.search(rf"{flag} [A-Z_]+ [^-]*\(default {re.escape(shown)}\)", help_text), (flag, shown)


def test_limit_flags_reach_the_server(served):
    # --no-code-isolation: the first request must end well within the second connection's idle
    # second, and starting a sandboxed kernel alone takes most of one (tests/test_code_sandbox.py).
    s = served(
        "--scripted", "--max-connections-per-client", "2", "--idle-timeout", "1", "--no-code-isolation"
    )
    first, second = LineClient(s.port), LineClient(s.port)
    try:
        assert first.request({"request_id": "a", "input": {"Text": "hi"}})["error"] is None
        with LineClient(s.port) as extra:  # the third from 127.0.0.1
            refused = extra.read()
            assert extra.read() is None
        assert (
            refused["error"] == "connection_error: Too many connections from your address; try again later."
        )
        assert second.read() is None  # silent for over a second: closed by --idle-timeout
    finally:
        first.close()
        second.close()
    with LineClient(s.port) as again:  # the slots are free again
        assert again.request({"request_id": "b", "input": {"Text": "hi"}})["error"] is None
    with pytest.raises(subprocess.CalledProcessError):
        subprocess.run(
            [sys.executable, "-m", "async_task_system", "serve", "--max-connections", "0"],
            capture_output=True,
            env=_env(),
            timeout=60,
            check=True,
        )


def _silent_connections(
    port: int, count: int, sources: list[str], seconds: float = 6.0
) -> list[socket.socket]:
    """Open up to ``count`` connections that send nothing, from the loopback addresses ``sources``."""
    opened: list[socket.socket] = []
    deadline = time.monotonic() + seconds
    for i in range(count):
        if time.monotonic() > deadline:
            break
        with contextlib.suppress(OSError):
            opened.append(
                socket.create_connection(
                    ("127.0.0.1", port), timeout=0.5, source_address=(sources[i % len(sources)], 0)
                )
            )
    return opened


def _honest_request(port: int, request_id: str, within: float) -> tuple[dict, float]:
    """Send one trivial request from 127.0.0.1, retrying while refused; (answer, seconds taken)."""
    started = time.monotonic()
    seen: list[object] = []
    while True:
        try:
            with LineClient(port, timeout=5) as c:
                answer = c.request({"request_id": request_id, "input": {"Text": "hi"}})
            if answer["error"] is None:
                return answer, time.monotonic() - started
            seen.append(answer["error"])
        except (OSError, AssertionError) as exc:
            seen.append(repr(exc))
        assert time.monotonic() - started < within, f"the honest client was never served: {seen[-5:]}"
        time.sleep(0.2)


def test_file_descriptor_exhaustion_leaves_the_server_serving(served):
    import resource

    def low_fd_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))

    # --no-code-isolation: this is about descriptors of connections, and answers within 2 s; a
    # sandboxed kernel per request would spend pipes of the 128 and most of a second starting.
    s = served("--scripted", "--idle-timeout", "2", "--no-code-isolation", preexec_fn=low_fd_limit)
    attacker = ["127.0.0.2"]
    flood = _silent_connections(s.port, 200, attacker)  # more than the 128 descriptors the server has
    try:
        # One address holds at most --max-connections-per-client (32): the honest client is served at once.
        answer, took = _honest_request(s.port, "one-address", within=5)
        assert answer["error"] is None and took < 2, (answer, took)
    finally:
        for sock in flood:
            sock.close()
    many = [f"127.0.0.{n}" for n in range(2, 12)]  # ten addresses: 300 connections
    flood = _silent_connections(s.port, 300, many)
    try:
        # max_connections was lowered to fit the 128 descriptors (the server logs it); the idle
        # timeout closes the silent ones, and the honest client gets in.
        answer, took = _honest_request(s.port, "many-addresses", within=15)
        assert answer["error"] is None, answer
        assert s.proc.poll() is None
    finally:
        for sock in flood:
            sock.close()
    answer, took = _honest_request(s.port, "after", within=5)
    assert answer["error"] is None and took < 2
    s.proc.terminate()
    assert s.proc.wait(10) == 0
    assert "lowered from 256 to 96" in s.proc.stderr.read()


def test_agent_code_is_sandboxed_unless_started_with_no_code_isolation(served):
    assert "agent code sandboxed)" in served("--scripted").banner
    assert "agent code sandboxed, with the network" in served("--scripted", "--allow-network").banner
    assert "IN THE SERVER PROCESS" in served("--scripted", "--no-code-isolation").banner
