"""The script runner on its own: real subprocesses, no hub, no worker daemon.

These run with ``isolation=False`` (the per-run supervisor ``_supervise.py`` that ``--no-isolation``
uses, checked through the host's pids and files); tests/test_sandbox_isolation.py tests isolated runs."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import time
from pathlib import Path

import pytest

from async_task_system.sandbox.process import RunLimits, ScriptRunner, run_script

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="process groups and rlimits are POSIX")


def run(command: str, language: str = "shell", limits: RunLimits | None = None, **kw):
    limits = dataclasses.replace(limits or RunLimits(), isolation=False)
    return asyncio.run(run_script(command, language, limits, **kw))


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][:1] != "Z"
    except OSError:
        return True  # no /proc: signal 0 succeeded


def test_success_with_stdout_and_streamed_lines():
    lines: list[tuple[str, str]] = []
    outcome = run("echo one; echo two >&2; echo three", on_line=lambda s, line: lines.append((s, line)))
    assert outcome.success and outcome.error is None and outcome.error_type is None
    assert outcome.result["exit_code"] == 0
    assert outcome.result["stdout"] == "one\nthree\n"
    assert outcome.result["stderr"] == "two\n"
    assert outcome.result["truncated"] is False and outcome.result["timed_out"] is False
    assert sorted(lines) == [("stderr", "two"), ("stdout", "one"), ("stdout", "three")]

    python = run("import sys; print(sys.argv[0], 6 * 7)", "python")
    assert python.success and python.result["stdout"] == "-c 42\n"


def test_non_zero_exit_and_a_language_not_allowed():
    outcome = run("echo failing >&2; exit 3")
    assert not outcome.success
    assert (outcome.error, outcome.error_type) == ("exit code 3", "remote_error")
    assert outcome.result["exit_code"] == 3 and outcome.result["stderr"] == "failing\n"

    refused = run("print(1)", "python", RunLimits(languages=("shell",)))
    assert (refused.success, refused.error_type) == (False, "remote_error")
    assert "does not run python" in refused.error


def test_timeout_kills_the_whole_process_group(tmp_path: Path):
    pid_file = tmp_path / "child.pid"
    started = time.monotonic()
    outcome = run(f"sleep 30 & echo $! > {pid_file}; wait", timeout=0.5)
    assert time.monotonic() - started < 10
    assert not outcome.success and outcome.error_type == "timeout"
    assert outcome.result["timed_out"] is True and "process group was killed" in outcome.error
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the background child survived the timeout"


def test_output_cap_truncates_capture_and_streaming():
    lines: list[str] = []
    limits = RunLimits(max_output_bytes=1000)
    outcome = run(
        "for i in $(seq 1 500); do echo line-$i; done", limits=limits, on_line=lambda s, x: lines.append(x)
    )
    assert outcome.success
    assert len(outcome.result["stdout"].encode()) == 1000
    assert outcome.result["truncated"] is True
    assert outcome.result["stdout"].startswith("line-1\nline-2\n")
    assert 0 < sum(len(line) + 1 for line in lines) <= 1000 + 16  # streaming stops at the cap too


def test_environment_is_cleaned(monkeypatch):
    monkeypatch.setenv("RUNNER_SECRET", "do-not-pass")
    monkeypatch.setenv("RUNNER_ALLOWED", "yes")
    limits = RunLimits(allow_env=("PATH", "RUNNER_ALLOWED"))
    script = 'echo "${RUNNER_SECRET:-unset} $RUNNER_ALLOWED $EXTRA $TRACEPARENT"'
    runner = ScriptRunner(limits)
    trace = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    outcome = asyncio.run(runner.run(script, env={"EXTRA": "given"}, trace=trace))
    assert outcome.result["stdout"].split() == ["unset", "yes", "given", trace["traceparent"]]


def test_cancel_kills_a_running_script_by_its_key():
    runner = ScriptRunner()

    async def main():
        job = asyncio.ensure_future(runner.run("sleep 30", key="job-1"))
        while runner.running == 0:
            await asyncio.sleep(0.01)
        assert runner.cancel("nope") is False
        assert runner.cancel("job-1") is True
        return await asyncio.wait_for(job, 10)

    outcome = asyncio.run(main())
    assert (outcome.success, outcome.error_type) == (False, "cancelled")
    assert outcome.result["cancelled"] is True and runner.running == 0


def test_cpu_limit_kills_a_busy_loop():
    outcome = run("while :; do :; done", limits=RunLimits(cpu_seconds=1), timeout=20)
    assert not outcome.success and outcome.error_type == "cpu_limit"
    assert "CPU time limit" in outcome.error


# ------------------------------------------------------------------------- escapes (issue 9)


def _wait_dead(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def test_a_setsid_child_dies_with_the_script_on_timeout(tmp_path: Path):
    pid_file = tmp_path / "escaped.pid"
    # setsid leaves the script's session and process group: killpg alone would miss it.
    outcome = run(f"setsid sh -c 'echo $$ > {pid_file}; exec sleep 30' & sleep 30", timeout=1)
    assert outcome.error_type == "timeout"
    assert _wait_dead(int(pid_file.read_text())), "the setsid child survived the timeout"


def test_a_double_forked_daemon_dies_when_the_script_ends(tmp_path: Path):
    pid_file = tmp_path / "daemon.pid"
    started = time.monotonic()
    outcome = run(
        f"(setsid sh -c 'echo $$ > {pid_file}; exec sleep 30' &) ; sleep 0.3; echo done", timeout=20
    )
    assert outcome.success and outcome.result["stdout"] == "done\n"
    assert time.monotonic() - started < 10, "the daemon held the output pipes open"
    assert _wait_dead(int(pid_file.read_text()))


def test_the_cpu_limit_counts_every_process_of_the_tree():
    # Four busy children, one CPU-second each at most per process: the tree's total is the limit.
    script = "for i in 1 2 3 4; do (while :; do :; done) & done; wait"
    started = time.monotonic()
    outcome = run(script, limits=RunLimits(cpu_seconds=1), timeout=30)
    assert not outcome.success and "CPU time limit" in outcome.error
    assert time.monotonic() - started < 5  # the 4 children used ~1 CPU-second together, not 4 each


def test_process_count_and_file_size_limits(tmp_path: Path):
    many = run(
        "for i in $(seq 1 200); do sleep 30 & done; wait", limits=RunLimits(max_processes=20), timeout=30
    )
    assert not many.success and many.error == "sandbox limit: more than 20 processes; all of them were killed"
    assert many.error_type == "process_limit"
    big = run(f"head -c 5000000 /dev/zero > {tmp_path / 'big'}", limits=RunLimits(file_size_mb=1), timeout=20)
    # head dies of SIGXFSZ; the shell around it reports that as exit code 128 + 25.
    assert not big.success and "File size limit exceeded" in big.result["stderr"]
    assert (tmp_path / "big").stat().st_size <= 1024 * 1024


@pytest.mark.skipif(os.geteuid() != 0, reason="capabilities are dropped for root's scripts")
def test_a_root_runners_scripts_have_no_capabilities():
    outcome = run("grep -E '^Cap(Prm|Eff|Bnd|Amb)' /proc/self/status; grep NoNewPrivs /proc/self/status")
    assert outcome.success
    fields = dict(line.split(":\t") for line in outcome.result["stdout"].splitlines())
    assert {fields[k].strip() for k in ("CapPrm", "CapEff", "CapBnd", "CapAmb")} == {"0000000000000000"}
    assert fields["NoNewPrivs"].strip() == "1"
