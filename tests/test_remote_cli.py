"""``async-agent hub`` and ``async-agent worker`` as a user runs them, in real subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ASYNC_AGENT_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "async_task_system", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_hub_spawns_workers_runs_commands_streams_and_reports():
    done = run_cli(
        "hub",
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
