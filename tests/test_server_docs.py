"""The client examples in docs/protocol.md run, unchanged but for the port, against a real server."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from async_task_system.server import AgentServer
from async_task_system.server.cli import scripted_agent_model, scripted_chat_model

DOC = (Path(__file__).parent.parent / "docs" / "protocol.md").read_text(encoding="utf-8")


def example(heading: str, language: str) -> str:
    match = re.search(rf"### {re.escape(heading)}\n\n```{language}\n(.*?)```", DOC, re.S)
    assert match, f"no {language} example under '### {heading}' in docs/protocol.md"
    return match.group(1)


@pytest.fixture(scope="module")
def port():
    from async_task_system import create_async_agent

    agent_model = scripted_agent_model()
    server = AgentServer(
        lambda: create_async_agent(model=agent_model, verbosity_level=-1), model=scripted_chat_model()
    )
    with server.start_in_thread() as running:
        yield running.port


def run(cmd: list[str], code: str, port: int, tmp_path: Path, suffix: str) -> list[str]:
    script = tmp_path / f"client{suffix}"
    script.write_text(code.replace("8080", str(port)), encoding="utf-8")
    proc = subprocess.run([*cmd, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_python_example(port, tmp_path):
    lines = run([sys.executable], example("Python", "python"), port, tmp_path, ".py")
    assert len(lines) == 3
    assert "You asked: Hello, what can you do?" in lines[0]
    assert "'ToolResult': {'name': 'list_tasks', 'result': []}" in lines[1]
    assert "'request_id': 'careful_001'" in lines[2] and "'error': None" in lines[2]


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js (`node`) is not installed")
def test_nodejs_example(port, tmp_path):
    lines = run(["node"], example("Node.js", "javascript"), port, tmp_path, ".js")
    assert len(lines) == 3
    assert '"request_id":"a"' in lines[0] and "You asked: Hello" in lines[0]
    assert '"Stream":[' in lines[1] and "You said: Write a haiku" in "".join(lines[1].split('","'))
    assert '"ToolResult":{"name":"list_tasks","result":[]}' in lines[2]
