"""The generated gRPC code is exactly what ``scripts/gen_proto.py`` makes from ``proto/*.proto``."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "async_task_system" / "remote" / "_proto"


def test_committed_code_matches_a_fresh_generation(tmp_path: Path):
    if importlib.util.find_spec("grpc_tools") is None:
        reason = "grpcio-tools (the dev extra) is not installed: cannot regenerate the gRPC code"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"grpcio-tools is required under CI: {reason}")
        pytest.skip(reason)
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    fresh = {path.name: path.read_bytes() for path in tmp_path.glob("*.py")}
    committed = {path.name: path.read_bytes() for path in COMMITTED.glob("*.py")}
    assert sorted(fresh) == sorted(committed), "regenerate with: python scripts/gen_proto.py"
    for name, data in fresh.items():
        assert committed[name] == data, (
            f"{name} differs from a fresh generation: run python scripts/gen_proto.py"
        )


def test_the_seed_messages_are_verbatim():
    from async_task_system.remote._proto import agent_pb2, task_pb2

    def fields(message) -> list[tuple[str, int]]:
        return [(f.name, f.number) for f in message.DESCRIPTOR.fields]

    assert fields(task_pb2.TaskRequest)[:5] == [
        ("task_id", 1),
        ("type", 2),
        ("script", 3),
        ("timeout", 4),
        ("env", 5),
    ]
    assert fields(task_pb2.TaskResult)[:5] == [
        ("task_id", 1),
        ("exit_code", 2),
        ("stdout", 3),
        ("stderr", 4),
        ("completed_at", 5),
    ]
    assert fields(task_pb2.TaskLog)[:4] == [("task_id", 1), ("output", 2), ("is_stderr", 3), ("timestamp", 4)]
    assert fields(agent_pb2.ServerMessage)[:3] == [
        ("register_response", 1),
        ("heartbeat_ack", 2),
        ("task_request", 3),
    ]
    assert fields(agent_pb2.AgentMessage)[:4] == [
        ("register", 1),
        ("heartbeat", 2),
        ("task_result", 3),
        ("task_log", 4),
    ]
    assert [(v.name, v.number) for v in task_pb2.TaskType.DESCRIPTOR.values][:3] == [
        ("TASK_TYPE_UNSPECIFIED", 0),
        ("TASK_TYPE_SHELL", 1),
        ("TASK_TYPE_PYTHON", 2),
    ]
    method = agent_pb2.DESCRIPTOR.services_by_name["AgentService"].methods_by_name["Connect"]
    assert method.client_streaming and method.server_streaming


def test_frames_survive_the_grpc_edge_both_ways():
    from async_task_system.remote import grpc_codec as codec
    from async_task_system.remote.protocol import (
        cancel_frame,
        error_frame,
        execute_frame,
        heartbeat_frame,
        log_frame,
        register_frame,
        result_frame,
    )

    register = register_frame(
        "w1", ["shell"], 3, labels={"region": "eu"}, worker_version="1.0", runtimes=["native"]
    )
    back = codec.agent_frame(codec.agent_message(register))
    assert {
        k: back[k] for k in ("name", "capabilities", "max_concurrent", "labels", "worker_version", "runtimes")
    } == {
        "name": "w1",
        "capabilities": ["shell"],
        "max_concurrent": 3,
        "labels": {"region": "eu"},
        "worker_version": "1.0",
        "runtimes": ["native"],
    }
    assert codec.agent_frame(codec.agent_message(heartbeat_frame(2, 1))) == heartbeat_frame(2, 1)
    assert codec.agent_frame(codec.agent_message(log_frame("r", "stderr", "oops"))) == log_frame(
        "r", "stderr", "oops"
    )
    output = {"exit_code": None, "stdout": "", "stderr": "x", "timed_out": True, "cancelled": False}
    output.update(truncated=True, duration=1.5, worker="w1")
    failed = result_frame("r", False, output, "timed out", "timeout")
    assert codec.agent_frame(codec.agent_message(failed)) == failed
    value = result_frame("r", True, [1, 2], None)  # a result that is not an output dict
    assert codec.agent_frame(codec.agent_message(value)) == value

    execute = execute_frame("r", "echo hi", "shell", 2.5, {"A": "1"}, {"traceparent": "00-x"})
    back = codec.server_frame(codec.server_message(execute))
    assert {k: back[k] for k in execute} == execute
    call = {"runtime": "javascript", "entry": "t.js", "parameters": {"n": 1}}
    back = codec.server_frame(codec.server_message(execute_frame("r", "add", "shell", 1.0, runtime=call)))
    assert (back["runtime"], back["command"]) == (call, "add")
    assert codec.server_frame(codec.server_message(cancel_frame("r", "timeout"))) == cancel_frame(
        "r", "timeout"
    )
    error = {**error_frame("bad", "r"), "error_type": "malformed"}
    assert codec.server_frame(codec.server_message(error)) == error


def test_a_result_from_an_agent_built_from_the_seed_proto_is_read_by_its_exit_code():
    from async_task_system.remote import grpc_codec as codec
    from async_task_system.remote._proto import agent_pb2, task_pb2

    def seed_result(exit_code: int) -> dict:
        result = task_pb2.TaskResult(task_id="t", exit_code=exit_code, stdout="out", stderr="err")
        return codec.agent_frame(agent_pb2.AgentMessage(task_result=result))

    ok = seed_result(0)
    assert ok["success"] is True and ok["result"]["stdout"] == "out" and ok["error"] is None
    failed = seed_result(2)
    assert (failed["success"], failed["error"], failed["error_type"]) == (
        False,
        "exit code 2",
        "remote_error",
    )
