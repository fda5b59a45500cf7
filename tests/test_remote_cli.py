"""``async-agent hub`` and ``async-agent worker`` as a user runs them, in real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ASYNC_AGENT_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "async_task_system", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.mark.parametrize("transport", ["ws", "grpc"])
def test_hub_spawns_workers_runs_commands_streams_and_reports(transport: str):
    done = run_cli(
        "hub",
        "--transport",
        transport,
        "--port",
        "0",
        "--token",
        "cli-token",
        "--spawn-workers",
        "2",
        "--command",
        "echo hi; echo there",
        "--command",
        "echo bye >&2; exit 2",
        "--python",
        "print(6 * 7)",
    )
    out = done.stdout
    assert done.returncode == 1, done.stderr  # one command failed
    assert "[1] > hi" in out and "[1] > there" in out and "[2] ! bye" in out and "[3] > 42" in out
    assert "[1] ok on local-" in out and "[2] failed: remote_error: exit code 2" in out and "[3] ok" in out


def test_hub_without_workers_gives_up_clearly():
    done = run_cli(
        "hub", "--port", "0", "--workers", "1", "--wait-workers-timeout", "0.5", "--command", "true"
    )
    assert done.returncode == 2
    assert "0 of 1 worker(s) joined" in done.stderr
    assert "generated token:" in done.stdout  # no --token and no $ASYNC_AGENT_TOKEN: one is made up and shown


def test_worker_requires_a_token_and_explains_its_flags():
    done = run_cli("worker", "--hub", "ws://127.0.0.1:9")
    assert done.returncode == 2 and "a token is required" in done.stderr
    help_text = run_cli("worker", "--help").stdout
    for flag in ("--max-concurrent", "--cpu-seconds", "--memory-mb", "--allow-env", "--max-output-bytes"):
        assert flag in help_text


def test_hub_task_runs_the_llm_from_env_with_remote_execute(tmp_path):
    from openai_stub import OpenAIStub

    reply = (
        "Thought: run it on the worker.\n<code>\n"
        "r = remote_execute('echo via-llm', timeout=20)\n"
        "wait_for_tasks([r['task_id']], max_wait_time=30)\n"
        "final_answer('worker said ' + get_task_results([r['task_id']])[r['task_id']]['stdout'].strip())\n"
        "</code>"
    )
    with OpenAIStub([reply]) as stub:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("API_KEY", "BASE_URL", "MODEL_ID", "ASYNC_AGENT_TOKEN")
        }
        env.update(
            API_KEY="sk-test",
            BASE_URL=stub.base_url,
            MODEL_ID="openai/stub-model",
            LITELLM_LOCAL_MODEL_COST_MAP="True",
        )
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "async_task_system",
                "hub",
                "--port",
                "0",
                "--spawn-workers",
                "1",
                "--task",
                "Echo via the LLM",
            ],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "worker said via-llm" in done.stdout
    system_prompt = stub.requests[0]["body"]["messages"][0]["content"]
    assert "remote_execute" in str(system_prompt)
