"""The `async-agent` command as a user runs it: a real subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def run_cli(*args: str, cwd, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("API_KEY", "BASE_URL", "MODEL_ID")}
    env["COLUMNS"] = "120"
    return subprocess.run(
        [sys.executable, "-m", "async_task_system", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_demo_runs_offline_and_reports_speedup(tmp_path):
    proc = run_cli("demo", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "No LLM configured" in out and "ScriptedModel" in out
    assert "Analysed 5 datasets in parallel" in out
    assert out.count("completed") >= 5
    assert "Baseline: the same 5 tools one after another (about 7.5 s; --no-baseline skips it)" in out
    for done, name in enumerate(
        ("sales_2024", "customers", "inventory", "web_traffic", "support_tickets"), 1
    ):
        assert f"baseline {done}/5: analyze_dataset('{name}')" in out  # progress while it runs
    speedup = float(re.search(r"Speedup: ([\d.]+)x", out).group(1))
    assert speedup > 2.0, out


def test_run_without_llm_says_how_to_configure(tmp_path):
    proc = run_cli("run", "hello", cwd=tmp_path)
    assert proc.returncode == 2
    assert "No LLM configured" in proc.stdout and ".env" in proc.stdout


def test_help_everywhere(tmp_path):
    top = run_cli("--help", cwd=tmp_path)
    assert top.returncode == 0 and "demo" in top.stdout and "run" in top.stdout
    for command in ("demo", "run"):
        sub = run_cli(command, "--help", cwd=tmp_path)
        assert sub.returncode == 0 and f"async-agent {command}" in sub.stdout
    unknown = run_cli("frobnicate", cwd=tmp_path)
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr
