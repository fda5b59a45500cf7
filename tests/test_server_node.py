"""The JSON-lines server against a Node.js client (``net`` only) run as a subprocess.

tests/clients/agent_client.js has a seed-shaped mode (seed 003's JavaScript client: one request at
a time, response = data up to the first newline) and a multiplexing mode (many requests in flight
over several connections, approvals answered, every line recorded).
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from clients import testagents as ta
from PIL import Image

from async_task_system.server import AgentServer

NODE = shutil.which("node")
CLIENT = Path(__file__).parent / "clients" / "agent_client.js"

pytestmark = pytest.mark.skipif(NODE is None, reason="Node.js (`node`) is not installed")


@pytest.fixture(autouse=True)
def _reset_agents():
    ta.reset()
    yield
    ta.RELEASE.set()


@pytest.fixture
def port():
    with AgentServer(ta.async_agent_factory(), request_timeout=30).start_in_thread() as running:
        yield running.port
        ta.RELEASE.set()


def run_node(port: int, spec: dict) -> list[dict]:
    assert NODE is not None
    proc = subprocess.run(
        [NODE, str(CLIENT), str(port)], input=json.dumps(spec), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png(width: int, height: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, format="PNG")
    return b64(buffer.getvalue())


def test_node_seed_client_every_input_type(port):
    requests = [
        {
            "request_id": "text",
            "input": {"Text": "RUN: final_answer(str(add(20, 22)))"},
            "stream": False,
            "use_tools": True,
        },
        {"request_id": "image", "input": {"Multi": [{"Text": "IMAGE_SIZE"}, {"Image": {"data": png(9, 4)}}]}},
        {
            "request_id": "file",
            "input": {
                "Multi": [
                    {
                        "File": {
                            "filename": "data.csv",
                            "content_type": "text/csv",
                            "data": b64(b"a,b\n1,2\n"),
                        }
                    },
                    {"Text": "RUN: final_answer('got file')"},
                ]
            },
        },
        {
            "request_id": "instruction",
            "input": {"Instruction": {"command": "add", "parameters": {"a": 1, "b": 1}}},
        },
        {"request_id": "model_only", "input": {"Text": "plain"}, "use_tools": False, "stream": True},
    ]
    responses = run_node(port, {"mode": "seed", "requests": requests})
    by_id = {r["request_id"]: r for r in responses}
    assert [r["request_id"] for r in responses] == [r["request_id"] for r in requests]
    assert all(r["error"] is None for r in responses), responses
    assert by_id["text"]["response"] == {"Text": "42"}
    assert by_id["image"]["response"] == {"Multi": [{"Text": "9x4"}]}
    assert by_id["file"]["response"] == {"Multi": [{"Text": "got file"}]}
    assert by_id["instruction"]["response"] == {"ToolResult": {"name": "add", "result": 2}}
    assert len(by_id["model_only"]["response"]["Stream"]) > 1
    assert by_id["text"]["token_usage"]["total_tokens"] > 0


def test_node_seed_client_error_codes(port):
    requests = [
        {"request_id": "p", "input": {"Unknown": 1}},
        {"request_id": "e", "input": {"Instruction": {"command": "missing_tool"}}},
        {"request_id": "t", "input": {"Text": "STEPS: block(20)"}, "config": {"timeout": 0.3}},
        {"request_id": "ok", "input": {"Text": "after errors"}},
    ]
    responses = run_node(port, {"mode": "seed", "requests": requests})
    codes = {r["request_id"]: (r["error"] or "").split(":")[0] for r in responses}
    assert codes == {"p": "parse_error", "e": "processing_error", "t": "timeout_error", "ok": ""}
    assert responses[-1]["response"] == {"Text": "echo: after errors"}


def test_node_connection_error_without_token():
    with AgentServer(ta.async_agent_factory(), token="tok").start_in_thread() as running:
        refused = run_node(
            running.port, {"mode": "seed", "requests": [{"request_id": "a", "input": {"Text": "x"}}]}
        )
        accepted = run_node(
            running.port,
            {"mode": "seed", "requests": [{"request_id": "b", "input": {"Text": "x"}, "token": "tok"}]},
        )
    assert refused[0]["error"].startswith("connection_error: This server requires a token")
    assert accepted[0]["response"] == {"Text": "echo: x"}


def test_node_many_connections_many_requests_with_approvals(port):
    requests = [
        {"request_id": f"r{i}", "input": {"Text": f"RUN: final_answer(str(add({i}, 1000)))"}}
        for i in range(40)
    ]
    requests += [
        {
            "request_id": "yes",
            "input": {"Text": "RUN: final_answer(str(add(1, 2)))"},
            "config": {"ask_before_tool_execution": True},
        },
        {
            "request_id": "no",
            "input": {
                "Text": "RUN: " + "try:\n    r = add(3, 4)\nexcept Exception as e:\n    r = str(e)"
                "\nfinal_answer(r)"
            },
            "config": {"ask_before_tool_execution": True},
        },
        {
            "request_id": "inc",
            "input": {"Text": "one two three"},
            "use_tools": False,
            "stream": True,
            "config": {"incremental_stream": True},
        },
    ]
    lines = run_node(
        port,
        {
            "mode": "mux",
            "connections": 5,
            "requests": requests,
            "decisions": {"yes": ["approve"], "no": ["deny:policy"]},
        },
    )
    finals = {m["request_id"]: m for m in lines if not m.get("partial") and "ToolCall" not in m["response"]}
    assert set(finals) == {r["request_id"] for r in requests}
    assert all(finals[f"r{i}"]["response"] == {"Text": str(i + 1000)} for i in range(40))
    questions = [m for m in lines if "ToolCall" in m["response"]]
    assert sorted(q["request_id"] for q in questions) == ["no", "yes"]
    assert finals["yes"]["response"] == {"Text": "3"}
    assert "denied the call to tool 'add' (policy)" in finals["no"]["response"]["Text"]
    partial = [m["response"]["Stream"][0] for m in lines if m.get("partial")]
    assert partial and partial == finals["inc"]["response"]["Stream"]
    assert "add(3,4)" not in ta.CALLS and "add(1,2)" in ta.CALLS
