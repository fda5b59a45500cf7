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
    assert fields(task_pb2.TaskLog) == [("task_id", 1), ("output", 2), ("is_stderr", 3), ("timestamp", 4)]
    assert fields(agent_pb2.ServerMessage)[:3] == [
        ("register_response", 1),
        ("heartbeat_ack", 2),
        ("task_request", 3),
    ]
    assert fields(agent_pb2.AgentMessage) == [
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
