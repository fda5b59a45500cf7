"""Escapes from an isolated run, each tried by a real script; every one must be held.

Where namespaces are unavailable (some containers) these skip with the reason, except under
``CI=true``, where they fail: CI must test the isolation it ships.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from pathlib import Path

import pytest
from _isolation import require_isolation

from async_task_system.sandbox.isolation import read_paths
from async_task_system.sandbox.process import RunLimits, run_script

pytestmark = require_isolation("the escape tests")


# A checkout under /tmp (CI may clone there): the interpreter's installation is bound read-only at
# its own path, so its top folder shows in the run's /tmp (= /scratch). Not the run's own files.
BOUND_IN_TMP = sorted(
    {"/tmp/" + p.split("/")[2] for p in read_paths([sys.executable], sys.executable) if p.startswith("/tmp/")}
)
PRUNE_BOUND = " ".join(f"-path {path} -prune -o -path /scratch/{path[5:]} -prune -o" for path in BOUND_IN_TMP)


def run(command: str, language: str = "shell", **limits):
    return asyncio.run(run_script(command, language, RunLimits(**limits), timeout=limits.pop("timeout", 20)))


def _host_processes_with(marker: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                data = Path(f"/proc/{name}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in data:
                found.append(int(name))
    return found


def _none_left(marker: str, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while _host_processes_with(marker):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_connect_to_a_loopback_port_the_test_opened_fails():
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    script = f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), 2)\n    print('connected')\nexcept OSError as e:\n    print('refused', e.errno)"
    try:
        held = run(script, "python")
        assert held.success and held.result["stdout"].split()[0] == "refused", held
        assert int(held.result["stdout"].split()[1]) in (101, 111)  # ENETUNREACH: only a down loopback
        allowed = run(script, "python", network=True)  # --allow-network
        assert allowed.result["stdout"] == "connected\n"
    finally:
        server.close()


def test_a_readable_file_outside_the_scratch_directory_is_not_there(tmp_path: Path):
    secret = tmp_path / "secret.txt"
    secret.write_text("the worker can read this")
    outcome = run(f"cat {secret}")
    assert not outcome.success and "No such file or directory" in outcome.result["stderr"]
    assert "the worker can read" not in outcome.result["stdout"]
    granted = run(f"cat {secret}", read_paths=(str(tmp_path),))
    assert granted.result["stdout"] == "the worker can read this"


def test_writing_outside_the_scratch_directory_fails_and_scratch_is_private(tmp_path: Path):
    outcome = run("echo x > /etc/escaped; echo y > /usr/escaped; echo z > /escaped")
    assert not outcome.success
    assert outcome.result["stderr"].count("Read-only file system") == 3, outcome.result["stderr"]
    assert not Path("/etc/escaped").exists() and not Path("/usr/escaped").exists()
    first = run(f"pwd; echo kept > note; cat note; find /tmp -mindepth 1 -maxdepth 1 {PRUNE_BOUND} -print")
    assert first.result["stdout"] == "/scratch\nkept\n/tmp/note\n"  # /tmp is the same scratch
    second = run(f"find /scratch -mindepth 1 {PRUNE_BOUND} -print | wc -l")
    assert second.result["stdout"].strip() == "0"  # the last run's scratch is gone
    writable = run(f"echo out > {tmp_path}/result", write_paths=(str(tmp_path),))
    assert writable.success and (tmp_path / "result").read_text() == "out\n"


def test_the_hosts_processes_are_not_visible():
    outcome = run(
        "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done; ls -d /proc/[0-9]* | wc -l"
    )
    assert outcome.success
    assert "pytest" not in outcome.result["stdout"] and "sandbox-marker" not in outcome.result["stdout"]
    assert int(outcome.result["stdout"].split()[-1]) <= 5  # the init, the shell, its loop


def test_the_workers_environ_is_unreachable(monkeypatch):
    monkeypatch.setenv("WORKER_SECRET_TOKEN", "s3cr3t-value")
    outcome = run(f"cat /proc/{os.getpid()}/environ; cat /proc/1/environ; env")
    assert "s3cr3t-value" not in outcome.result["stdout"]


def test_no_new_privileges_and_no_capabilities():
    outcome = run("grep -E '^(Cap(Prm|Eff|Bnd|Amb)|NoNewPrivs)' /proc/self/status; id -u")
    fields = dict(line.split(":\t") for line in outcome.result["stdout"].splitlines()[:-1])
    caps = {fields[k].strip() for k in ("CapPrm", "CapEff", "CapBnd", "CapAmb")}
    if os.geteuid() == 0:
        # nobody with only CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH, valid in its own namespace
        assert (caps, outcome.result["stdout"].split()[-1]) == ({"0000000000000006"}, "65534")
    else:
        assert caps == {"0000000000000000"}
    assert fields["NoNewPrivs"].strip() == "1"


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root worker's scripts run as nobody")
def test_a_root_workers_nobody_reads_root_only_files_it_is_given_yet_no_other_root_power(tmp_path: Path):
    secret = tmp_path / "root-only"
    secret.write_text("given\n")
    secret.chmod(0o600)
    tmp_path.chmod(0o700)
    outcome = run(
        f"cat {secret}; echo written > {tmp_path}/new; stat -c %u {tmp_path}/new; "
        "hostname other 2>&1; kill -9 1 2>&1; echo end",
        read_paths=(str(tmp_path),),
        write_paths=(str(tmp_path),),
    )
    lines = outcome.result["stdout"].splitlines()
    assert lines[:2] == ["given", "65534"]
    assert "hostname: you must be root" in outcome.result["stdout"] or "not permitted" in lines[2]
    assert lines[-1] == "end"  # the run's init did not take the signal


def test_a_setsid_double_forked_daemon_does_not_outlive_the_timeout():
    marker = "31.4159265"
    outcome = run(f"(setsid sh -c 'exec sleep {marker}' &); setsid sleep {marker} & sleep 30", timeout=1)
    assert outcome.error_type == "timeout"
    assert _none_left(marker), "a daemon survived the timeout"


def test_a_fork_bomb_hits_the_process_limit():
    # bash's bomb, whose processes retry a refused fork (dash's give up and end at once): the kernel
    # refuses forks past twice the limit, and the supervisor's scan sees the tree past the limit
    outcome = run(
        "exec bash -c 'bomb() { bomb | bomb & }; bomb; sleep 30' # sandbox-fork-bomb",
        max_processes=20,
        timeout=30,
    )
    assert (outcome.success, outcome.error_type) == (False, "process_limit")
    assert outcome.error == "sandbox limit: more than 20 processes; all of them were killed"
    assert _none_left("sandbox-fork-bomb")


def test_filling_the_scratch_directory_hits_the_disk_limit():
    outcome = run("head -c 5000000 /dev/zero > big", scratch_mb=2)
    assert (outcome.success, outcome.error_type) == (False, "disk_limit")
    assert "No space left on device" in outcome.result["stderr"]
    assert outcome.error.endswith("the scratch directory is full (2 MiB)")


def test_memory_cpu_and_file_size_limits_have_their_own_error_types():
    memory = run("x = bytearray(300 * 1024 * 1024); import time; time.sleep(5)", "python", memory_mb=200)
    assert not memory.success and "MemoryError" in memory.result["stderr"]  # RLIMIT_AS per process
    tree = run(
        "for i in 1 2 3 4; do python3 -c 'x = bytearray(60 << 20); import time; time.sleep(9)' & done; wait",
        memory_mb=150,
    )
    assert (tree.success, tree.error_type) == (False, "memory_limit")
    cpu = run("while :; do :; done", cpu_seconds=1)
    assert (cpu.success, cpu.error_type) == (False, "cpu_limit")
    big = run("exec head -c 3000000 /dev/zero > big", file_size_mb=1)
    assert (big.success, big.error_type) == (False, "file_size_limit")


def test_the_hosts_secrets_in_etc_are_not_there_even_for_a_root_worker():
    # A root worker's scripts run as root without capabilities: whatever root-owned file they
    # can see they can read, so the secrets of /etc must not be in their root at all.
    outcome = run(
        "cat /etc/shadow; cat /etc/gshadow; ls /etc/ssh; ls /etc/ssl/private; "
        "cut -d: -f2 /etc/passwd | sort -u; id -un; echo written > /etc/hosts"
    )
    assert "root:" not in outcome.result["stdout"]
    for path in ("/etc/shadow", "/etc/gshadow", "/etc/ssh", "/etc/ssl/private"):
        assert f"{path}: No such file or directory" in outcome.result["stderr"].replace("'", ""), path
    lines = outcome.result["stdout"].split()
    assert lines[0] == "x"  # passwd without password fields
    # names still resolve; a root worker's scripts are nobody (the kernel limits no root's processes)
    assert lines[1] == ("nobody" if os.geteuid() == 0 else __import__("pwd").getpwuid(os.geteuid()).pw_name)
    assert "Read-only file system" in outcome.result["stderr"]


def test_the_kernels_writable_files_in_proc_are_read_only():
    # A capless root may still write /proc/sys and /proc/sysrq-trigger by their file modes;
    # opening for writing (nothing is written) must fail.
    script = (
        "import os\n"
        "for path in ('/proc/sys/vm/drop_caches', '/proc/sysrq-trigger', '/proc/sys/net/ipv4/ip_local_port_range'):\n"
        "    try:\n"
        "        os.close(os.open(path, os.O_WRONLY))\n"
        "        print(path, 'open')\n"
        "    except OSError as exc:\n"
        "        print(path, exc.errno)\n"
    )
    outcome = run(script, "python")
    assert outcome.success, outcome
    for line in outcome.result["stdout"].splitlines():
        assert line.split()[1] in ("30", "13", "2"), line  # EROFS, EACCES (not root), ENOENT


def test_consecutive_runs_share_nothing():
    # Consecutive runs may be served by one prepared sandbox: nothing of a run may reach the next.
    from async_task_system.sandbox.process import ScriptRunner

    runner = ScriptRunner(RunLimits())
    leave = (
        "echo left > /scratch/a; echo left > /tmp/b; ipcmk -M 4096 > /dev/null; (setsid sleep 60 &); echo $$"
    )
    look = (
        f"find /scratch /tmp -mindepth 1 {PRUNE_BOUND} -print | wc -l; ipcs -m | grep -c '^0x'; "
        "ps -e -o comm= | grep -c sleep; echo $$"
    )

    async def both():
        return await runner.run(leave), await runner.run(look)

    first, second = asyncio.run(both())
    assert first.success and second.success, (first, second)
    files, segments, sleepers, _pid = second.result["stdout"].split()
    assert (files, segments, sleepers) == ("0", "0", "0"), second.result


def test_a_burst_of_runs_is_served_by_the_sandboxes_the_last_burst_left():
    # A worker's slots run in bursts: as one ends, the number of runs going on falls to none. The
    # prepared sandboxes of a burst must be kept for the next one (making one is a clone of an
    # interpreter plus namespaces and mounts), not ended as the count of runs going on falls.
    from async_task_system.sandbox.process import ScriptRunner

    runner = ScriptRunner(RunLimits())
    # One pid namespace per prepared sandbox; the sleep keeps the six of a burst going at once.
    own_namespace = "readlink /proc/self/ns/pid; sleep 0.3"

    async def bursts():
        seen = []
        for _ in range(3):
            outcomes = await asyncio.gather(*(runner.run(own_namespace) for _ in range(6)))
            assert all(outcome.success for outcome in outcomes), outcomes
            seen.append({outcome.result["stdout"] for outcome in outcomes})
        return seen

    first, second, third = asyncio.run(bursts())
    assert len(first) == 6  # runs at once never share a sandbox
    assert second == first and third == first


@pytest.mark.parametrize("isolation", [True, False])
def test_on_start_is_called_once_when_the_program_started_and_before_its_first_line(isolation):
    from async_task_system.sandbox.process import ScriptRunner

    runner = ScriptRunner(RunLimits(isolation=isolation))
    events: list[tuple[str, float | str]] = []

    async def go():
        before = time.time()
        outcome = await runner.run(
            "echo one; echo two",
            on_start=lambda at: events.append(("start", at)),
            on_line=lambda stream, line: events.append(("line", line)),
        )
        failed = await runner.run_program(
            ["/no/such/program"], on_start=lambda at: events.append(("bad", at))
        )
        return before, outcome, failed

    before, outcome, failed = asyncio.run(go())
    assert outcome.success and not failed.success
    kinds = [kind for kind, _ in events]
    assert kinds[:3] == ["start", "line", "line"]
    # isolated: not for a program that could not start (unisolated: its supervisor did start)
    assert kinds[3:] == ([] if isolation else ["bad"])
    assert before <= events[0][1] <= time.time()


def test_runs_keep_working_when_the_interpreter_lives_under_tmp(tmp_path: Path):
    """A checkout (and its virtual environment) under /tmp: the interpreter's installation is bound
    over the run's private /tmp, and a reused sandbox must not renew /tmp over it (every run after
    the first failed with "No such file or directory: '/tmp/.../bin/python'")."""
    import site
    import subprocess
    import venv

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(symlinks=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    assert str(python).startswith("/tmp/"), python
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    repo = Path(__file__).resolve().parent.parent
    Path(purelib, "outer.pth").write_text(f"{repo}\n" + "\n".join(site.getsitepackages()) + "\n")
    code = (
        "import asyncio\n"
        "from async_task_system.sandbox.process import RunLimits, run_script\n"
        "for n in range(3):\n"
        "    out = asyncio.run(run_script('print(6 * 7)', 'python', RunLimits(), timeout=20))\n"
        "    print(n, out.success, out.result['stdout'].strip(), out.error)\n"
    )
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == ["0 True 42 None", "1 True 42 None", "2 True 42 None"], done.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="--run-as needs a root worker")
def test_a_run_as_user_has_only_that_users_file_access(tmp_path: Path):
    secret = tmp_path / "root-only"
    secret.write_text("root's\n")
    secret.chmod(0o600)
    outcome = run(
        f"id -u; grep -E '^CapEff' /proc/self/status; cat {secret}",
        user="nobody",
        read_paths=(str(tmp_path),),
    )
    lines = outcome.result["stdout"].split()
    assert lines[:3] == ["65534", "CapEff:", "0000000000000000"]  # no file capabilities given
    assert "Permission denied" in outcome.result["stderr"] and "root's" not in outcome.result["stdout"]
