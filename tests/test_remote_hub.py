"""The WebSocket hub and real worker daemons started through the CLI, on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from _isolation import host_pid
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from async_task_system import TaskManager, TaskStatus
from async_task_system.remote.hub import RemoteHub

TOKEN = "test-token-1234"
HEARTBEAT = 0.3
HEARTBEAT_TIMEOUT = 1.5


class Worker:
    """An ``async-agent worker`` process (``python -m async_task_system worker``)."""

    def __init__(
        self, hub_url: str, name: str, *extra: str, token: str = TOKEN, env: dict | None = None
    ) -> None:
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, "-m", "async_task_system", "worker", "--hub", hub_url, "--name", name, *extra],
            env={**os.environ, "ASYNC_AGENT_TOKEN": token, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@contextlib.contextmanager
def running_hub(hub_class: type, heartbeat_timeout: float = HEARTBEAT_TIMEOUT, **options) -> Iterator[tuple]:
    """A started hub of ``hub_class`` (WebSocket or gRPC) on a fresh manager, and the list of its worker
    processes; everything is stopped afterwards."""
    manager = TaskManager(max_workers=4)
    hub = hub_class(
        manager,
        token=TOKEN,
        heartbeat_interval=HEARTBEAT,
        heartbeat_timeout=heartbeat_timeout,
        max_message_bytes=16 * 1024,
        **options,
    ).start()
    workers: list[Worker] = []
    try:
        yield manager, hub, workers
    finally:
        hub.stop()
        for worker in workers:
            worker.stop()
        manager.shutdown(wait=True, cancel_pending=True, timeout=10)


@pytest.fixture
def setup(request: pytest.FixtureRequest) -> Iterator[tuple[TaskManager, RemoteHub, list[Worker]]]:
    # A test that is not about heartbeats may ask for a long timeout: a loaded machine must not
    # declare its hand-driven fake worker lost between two frames.
    marker = request.node.get_closest_marker("heartbeat_timeout")
    with running_hub(RemoteHub, marker.args[0] if marker else HEARTBEAT_TIMEOUT) as running:
        yield running


def start_worker(
    hub: RemoteHub, workers: list[Worker], name: str, *extra: str, wait: bool = True, **kw
) -> Worker:
    worker = Worker(hub.url, name, *extra, **kw)
    workers.append(worker)
    if wait:
        deadline = time.monotonic() + 20
        while name not in {w["name"] for w in hub.workers()}:
            assert worker.process.poll() is None, worker.process.stderr.read()
            assert hub.wait_for_workers(
                len(hub.workers()) + 1, timeout=max(0.0, deadline - time.monotonic())
            ), f"worker {name} did not register"
    return worker


def run_remote(
    manager: TaskManager, command: str, timeout: float | None = None, **arguments
) -> tuple[str, object]:
    """Run one command as a remote task (``timeout`` is the command's own) and wait for its end."""
    if timeout is not None:
        arguments["timeout"] = timeout
    task_id = manager.submit("remote", "remote_execute", {"command": command, **arguments})
    assert manager.wait(task_id, timeout=(timeout or 20) + 10).not_done == [], f"{command!r} did not finish"
    return task_id, manager.result(task_id)


def log_event(manager: TaskManager, needle: str) -> threading.Event:
    seen = threading.Event()
    manager.remote_manager.add_log_listener(lambda task, req, stream, line: needle in line and seen.set())
    return seen


def test_shell_and_python_round_trip_through_a_cli_worker(setup):
    manager, hub, workers = setup
    start_worker(hub, workers, "w1")
    _, result = run_remote(manager, "echo hello; echo oops >&2")
    assert result["exit_code"] == 0 and result["stdout"] == "hello\n" and result["stderr"] == "oops\n"
    assert result["worker"] == "w1" and result["timed_out"] is False
    _, result = run_remote(manager, "import sys; print(sum(range(10)), file=sys.stdout)", language="python")
    assert result["stdout"] == "45\n"
    task_id, failure = run_remote(manager, "echo partial; exit 3")
    info = manager.check(task_id)
    assert info.status is TaskStatus.FAILED and info.error.type == "remote_error"
    assert "exit code 3" in failure and "partial" in failure


def test_output_lines_stream_back_while_the_script_runs(setup):
    manager, hub, workers = setup
    start_worker(hub, workers, "w1")
    first_line = log_event(manager, "first")
    task_id = manager.submit("remote", "remote_execute", {"command": "echo first; sleep 1; echo second"})
    assert first_line.wait(10)
    assert manager.check(task_id).status is TaskStatus.WAITING_REMOTE  # the line came before the result
    assert ("stdout", "first") in manager.remote_manager.get_logs(task_id)
    manager.wait(task_id, timeout=10)
    assert manager.result(task_id)["stdout"] == "first\nsecond\n"


def test_timeout_kills_the_whole_process_group(setup, tmp_path: Path):
    manager, hub, workers = setup
    start_worker(hub, workers, "w1", "--no-isolation")  # host pids; isolated: test_sandbox_isolation
    pid_file = tmp_path / "grandchild.pid"
    task_id, _ = run_remote(manager, f"sleep 30 & echo $! > {pid_file}; wait", timeout=0.5)
    info = manager.check(task_id)
    assert info.status is TaskStatus.FAILED and info.error.type == "timeout"
    assert "process group was killed" in info.error.message
    grandchild = int(pid_file.read_text())
    assert _dead(grandchild, within=5), "the background grandchild survived the timeout"


def _dead(pid: int, within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_output_cap_environment_and_rlimits(setup):
    manager, hub, workers = setup
    start_worker(
        hub,
        workers,
        "limited",
        "--max-output-bytes",
        "1000",
        "--memory-mb",
        "300",
        "--cpu-seconds",
        "1",
        "--allow-env",
        "PATH,KEEP_ME",
        env={"SECRET_TOKEN_X": "hunter2", "KEEP_ME": "kept"},
    )
    _, big = run_remote(manager, "yes 0123456789 | head -c 100000")
    assert len(big["stdout"]) == 1000 and big["truncated"] is True and big["exit_code"] == 0
    _, env = run_remote(manager, "env")
    assert "KEEP_ME=kept" in env["stdout"] and "PATH=" in env["stdout"]
    assert "SECRET_TOKEN_X" not in env["stdout"] and "ASYNC_AGENT_TOKEN" not in env["stdout"]
    task_id, _ = run_remote(manager, "x = bytearray(1024 * 1024 * 1024)", language="python")
    assert "MemoryError" in manager.check(task_id).error.message
    task_id, _ = run_remote(manager, "while :; do :; done", timeout=20)
    error = manager.check(task_id).error
    assert error.type == "cpu_limit" and "SIGXCPU" in error.message


def test_at_most_max_concurrent_scripts_run_at_once(setup):
    manager, hub, workers = setup
    start_worker(hub, workers, "pair", "--max-concurrent", "2")
    command = "echo start $(date +%s.%N); sleep 1; echo end $(date +%s.%N)"
    ids = [manager.submit("remote", "remote_execute", {"command": command}) for _ in range(4)]
    assert manager.wait(ids, timeout=20).not_done == []
    spans = []
    for value in manager.results(ids).values():
        words = value["stdout"].split()
        spans.append((float(words[1]), float(words[3])))
    peak = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert peak == 2


def test_worker_killed_mid_task_fails_its_tasks_as_worker_lost(setup):
    manager, hub, workers = setup
    worker = start_worker(hub, workers, "doomed")
    started = log_event(manager, "started")
    task_id = manager.submit("remote", "remote_execute", {"command": "echo started; sleep 30"})
    assert started.wait(10)
    worker.process.kill()
    began = time.monotonic()
    assert manager.wait(task_id, timeout=HEARTBEAT_TIMEOUT + 5).not_done == []
    assert time.monotonic() - began < HEARTBEAT_TIMEOUT + 2
    error = manager.check(task_id).error
    assert error.type == "worker_lost" and "doomed" in error.message
    assert hub.workers() == []


def test_silent_worker_is_declared_lost_after_the_heartbeat_timeout(setup):
    manager, hub, workers = setup
    worker = start_worker(hub, workers, "frozen")
    started = log_event(manager, "started")
    task_id = manager.submit("remote", "remote_execute", {"command": "echo started; sleep 30"})
    assert started.wait(10)
    os.kill(worker.process.pid, signal.SIGSTOP)  # connection stays open, heartbeats stop
    began = time.monotonic()
    assert manager.wait(task_id, timeout=HEARTBEAT_TIMEOUT + 5).not_done == []
    waited = time.monotonic() - began
    assert HEARTBEAT_TIMEOUT - 2 * HEARTBEAT <= waited < HEARTBEAT_TIMEOUT + 2
    error = manager.check(task_id).error
    assert error.type == "worker_lost" and "no heartbeat" in error.message


def test_no_worker_connected_is_a_clear_error(setup):
    manager, hub, workers = setup
    task_id, failure = run_remote(manager, "uname -a")
    error = manager.check(task_id).error
    assert error.type == "no_worker"
    assert f"async-agent worker --hub {hub.url}" in error.message
    start_worker(hub, workers, "shell-only", "--capabilities", "shell")
    task_id, _ = run_remote(manager, "print(1)", language="python")
    assert "no connected worker can run python" in manager.check(task_id).error.message
    task_id, _ = run_remote(manager, "true", worker="elsewhere")
    assert "no worker named 'elsewhere'" in manager.check(task_id).error.message


def test_hub_stop_fails_pending_requests_and_the_worker_reconnects_to_a_new_hub(setup):
    manager, hub, workers = setup
    worker = start_worker(hub, workers, "survivor")
    started = log_event(manager, "started")
    task_id = manager.submit("remote", "remote_execute", {"command": "echo started; sleep 30"})
    assert started.wait(10)
    hub.stop()
    assert manager.wait(task_id, timeout=5).not_done == []
    assert manager.check(task_id).error.type == "hub_stopped"
    after_stop, _ = run_remote(manager, "true")
    assert manager.check(after_stop).error.type == "hub_stopped"  # a clear failure, not a silent wait
    # Same port, new hub: the worker, still running, reconnects with its back-off.
    second = RemoteHub(
        manager, port=hub.port, token=TOKEN, heartbeat_interval=HEARTBEAT, heartbeat_timeout=HEARTBEAT_TIMEOUT
    )
    second.start()
    try:
        assert second.wait_for_workers(1, timeout=20)
        assert worker.process.poll() is None
        _, result = run_remote(manager, "echo back")
        assert result["stdout"] == "back\n"
    finally:
        second.stop()


SANDBOXES = pytest.mark.parametrize("sandbox", [(), ("--no-isolation",)], ids=["isolated", "unisolated"])


@SANDBOXES
def test_cancelling_a_task_kills_the_remote_process(setup, tmp_path: Path, sandbox: tuple[str, ...]):
    manager, hub, workers = setup
    worker = start_worker(hub, workers, "w1", *sandbox, "--workdir", str(tmp_path))  # the pid file's place
    started = log_event(manager, "started")
    pid_file = tmp_path / "script.pid"
    task_id = manager.submit(
        "remote", "remote_execute", {"command": f"echo $$ > {pid_file}; echo started; exec sleep 30"}
    )
    assert started.wait(10)
    pid = host_pid(int(pid_file.read_text()), worker.process.pid)
    assert manager.cancel(task_id)
    assert _dead(pid, within=5)
    assert manager.check(task_id).status is TaskStatus.CANCELLED
    time.sleep(3 * HEARTBEAT)  # the worker's late "cancelled" result has arrived by now
    assert hub.rejected_frames == 0  # and was expected, not refused as a bad frame


def test_wrong_or_missing_token_is_refused(setup):
    _, hub, workers = setup
    for headers in ({"Authorization": "Bearer wrong"}, {}):
        with pytest.raises(InvalidStatus) as refused:
            connect(hub.url, additional_headers=headers, proxy=None, open_timeout=5)
        assert refused.value.response.status_code == 401
    worker = start_worker(hub, workers, "intruder", wait=False, token="not-the-token")
    assert worker.process.wait(20) == 3
    assert "refused the token" in worker.process.stderr.read()
    assert hub.workers() == [] and hub.refused_connections == 3


@pytest.mark.heartbeat_timeout(30.0)
def test_bad_frames_get_an_error_and_touch_nothing_else(setup):
    manager, hub, workers = setup
    start_worker(hub, workers, "real")
    with connect(hub.url, additional_headers={"Authorization": f"Bearer {TOKEN}"}, proxy=None) as fake:
        fake.send(
            json.dumps({"type": "register", "name": "byo", "capabilities": ["shell"], "max_concurrent": 1})
        )
        assert json.loads(fake.recv(5))["type"] == "registered"
        # A request for the real worker is in flight while the fake one misbehaves.
        slow = manager.submit(
            "remote", "remote_execute", {"command": "sleep 0.5; echo fine", "worker": "real"}
        )
        bad_frames = [
            "this is not json",
            "[1, 2, 3]",
            json.dumps({"type": "launch-missiles"}),
            json.dumps({"type": "result", "request_id": "someone-elses", "success": True, "result": 1}),
            json.dumps({"type": "result", "request_id": 7, "success": "yes"}),
            json.dumps({"type": "log", "request_id": "x", "stream": "stdout", "line": "hi"}),
            "[" * 8000 + "]" * 8000,  # under the size limit, but nested deeper than Python's parser goes
            '{"type": "heartbeat", "running": ' + "[" * 8000 + "]" * 8000 + "}",
            json.dumps({"type": "heartbeat", "running": "many"}),
            "x" * (20 * 1024),
        ]
        for frame in bad_frames:
            fake.send(frame)
            reply = json.loads(fake.recv(5))
            assert reply["type"] == "error" and reply["error"], frame[:40]
        assert "exceeds the limit" in reply["error"]
        assert {w["name"] for w in hub.workers()} == {"real", "byo"}  # the connection survived
        assert manager.wait(slow, timeout=10).not_done == []
        assert manager.result(slow)["stdout"] == "fine\n"
        # The same connection still works as a bring-your-own executor answering in seed 000's shape.
        task_id = manager.submit("remote", "remote_execute", {"command": "whoami", "worker": "byo"})
        execute = json.loads(fake.recv(5))
        assert execute["type"] == "execute" and execute["command"] == "whoami"
        fake.send(
            json.dumps(
                {"request_id": execute["request_id"], "success": True, "result": "root", "error": None}
            )
        )
        assert manager.wait(task_id, timeout=5).not_done == []
        assert manager.result(task_id) == "root"
    assert hub.rejected_frames == len(bad_frames)


def test_a_request_cancelled_while_queued_on_the_worker_never_starts(setup, tmp_path: Path):
    manager, hub, workers = setup
    # --workdir: the queued script could leave its marker if it ran (isolated, it could write nowhere else)
    start_worker(hub, workers, "single", "--max-concurrent", "1", "--workdir", str(tmp_path))
    started = log_event(manager, "first-started")
    marker = tmp_path / "queued-ran"
    first = manager.submit("remote", "remote_execute", {"command": "echo first-started; exec sleep 30"})
    assert started.wait(10)
    queued = manager.submit("remote", "remote_execute", {"command": f"touch {marker}"})
    assert manager.cancel(queued)
    assert manager.cancel(first)
    _, result = run_remote(manager, "echo third")  # runs after the queued one was skipped (FIFO slots)
    assert result["stdout"] == "third\n"
    assert not marker.exists()


def test_silent_and_huge_connections_are_closed_without_touching_others(setup):
    manager, hub, workers = setup
    start_worker(hub, workers, "steady")
    strict = RemoteHub(
        manager.remote_manager, token=TOKEN, register_timeout=0.3, max_message_bytes=1024
    ).start()
    try:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with connect(strict.url, additional_headers=headers, proxy=None) as idle:
            with pytest.raises(ConnectionClosed) as closed:
                idle.recv(5)  # never registers
            assert closed.value.rcvd.code == 1008
        with connect(strict.url, additional_headers=headers, proxy=None) as huge:
            huge.send(json.dumps({"type": "register", "name": "huge"}))
            assert json.loads(huge.recv(5))["type"] == "registered"
            huge.send("x" * 5000)  # over 4 x max_message_bytes: the library closes this connection
            with pytest.raises(ConnectionClosed) as closed:
                huge.recv(5)
            assert closed.value.rcvd.code == 1009
        deadline = time.monotonic() + 5  # the hub drops it right after closing; give its loop a moment
        while strict.workers() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert strict.workers() == []
    finally:
        strict.stop()
    # The first hub stopped being the transport when the strict one started; give it back and check
    # that its worker never noticed any of this.
    manager.remote_manager.set_transport(hub)
    _, result = run_remote(manager, "echo unaffected")
    assert result["stdout"] == "unaffected\n" and result["worker"] == "steady"


def test_the_script_joins_the_trace_of_the_code_that_sent_it(setup):
    from opentelemetry.sdk.trace import TracerProvider

    from async_task_system.observe import tracing

    manager, hub, workers = setup
    start_worker(hub, workers, "traced")
    provider = TracerProvider()
    tracing.set_tracer_provider(provider)
    try:
        with provider.get_tracer("test").start_as_current_span("agent step") as span:
            task_id = manager.submit("remote", "remote_execute", {"command": "echo $TRACEPARENT"})
        assert manager.wait(task_id, timeout=20).not_done == []
        traceparent = manager.result(task_id)["stdout"].strip()
    finally:
        tracing.set_tracer_provider(None)
        provider.shutdown()
    trace_id = format(span.get_span_context().trace_id, "032x")
    assert traceparent.startswith(f"00-{trace_id}-"), traceparent
    _, untraced = run_remote(manager, "echo ${TRACEPARENT:-none}")
    assert untraced["stdout"] == "none\n"


def test_when_all_workers_are_busy_requests_wait_at_the_hub_for_the_first_free_slot(setup):
    manager, hub, workers = setup
    start_worker(hub, workers, "a", "--max-concurrent", "1")
    start_worker(hub, workers, "b", "--max-concurrent", "1")
    long_started = log_event(manager, "long-started")
    long = manager.submit("remote", "remote_execute", {"command": "echo long-started; exec sleep 20"})
    assert long_started.wait(10)
    short1 = manager.submit("remote", "remote_execute", {"command": "sleep 0.3; echo s1"})
    short2 = manager.submit("remote", "remote_execute", {"command": "echo s2"})  # both busy: waits at the hub
    assert manager.wait([short1, short2], timeout=15).not_done == []
    first, second = manager.result(short1), manager.result(short2)
    # short2 went to the worker that freed up first, not into the queue behind the long command.
    assert second["worker"] == first["worker"] and second["stdout"] == "s2\n"
    assert manager.check(long).status is TaskStatus.WAITING_REMOTE
    manager.cancel(long)


def test_requests_waiting_at_the_hub_fail_when_no_worker_is_left(setup):
    manager, hub, workers = setup
    solo = start_worker(hub, workers, "solo", "--max-concurrent", "1")
    started = log_event(manager, "busy")
    running = manager.submit("remote", "remote_execute", {"command": "echo busy; exec sleep 20"})
    assert started.wait(10)
    waiting = manager.submit("remote", "remote_execute", {"command": "echo never"})
    assert manager.wait(waiting, timeout=0.3).not_done == [waiting]  # held at the hub, not failed
    solo.process.kill()
    assert manager.wait([running, waiting], timeout=10).not_done == []
    assert manager.check(running).error.type == "worker_lost"
    error = manager.check(waiting).error
    assert error.type == "no_worker" and "async-agent worker --hub" in error.message


def test_results_are_shortened_to_fit_the_hubs_frame_limit(setup):
    manager, hub, workers = setup  # the fixture's hub accepts frames up to 16 KiB
    start_worker(hub, workers, "chatty")  # keeps up to 256 KiB of each stream by default
    _, result = run_remote(manager, "yes 'line with a tab\tand quote \"' | head -c 100000", timeout=20)
    assert result["truncated"] is True and result["exit_code"] == 0
    assert 0 < len(result["stdout"]) < 16 * 1024
    assert result["stdout"].startswith('line with a tab\tand quote "\n')
    assert hub.rejected_frames == 0


# ------------------------------------------------------------------------- hostile scripts (issue 9)

STEAL = r"""
import re
wpid, token = {wpid}, {token!r}.encode()
found = []
for name in ("environ", "cmdline"):
    try:
        if token in open(f"/proc/{{wpid}}/{{name}}", "rb").read():
            found.append(name)
    except OSError as exc:
        print(name, "refused:", exc.strerror)
try:
    with open(f"/proc/{{wpid}}/maps") as maps, open(f"/proc/{{wpid}}/mem", "rb", 0) as mem:
        for line in maps:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) r", line)
            if m and "mem" not in found:
                start, end = int(m[1], 16), int(m[2], 16)
                try:
                    mem.seek(start)
                    if token in mem.read(min(end - start, 1 << 26)):
                        found.append("mem")
                except (OSError, ValueError, OverflowError):
                    pass
except OSError as exc:
    print("mem refused:", exc.strerror)
print("FOUND", found)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc")
@pytest.mark.parametrize("how", ["env", "argv"])
def test_a_script_can_neither_read_the_workers_token_nor_register_with_it(setup, how):
    manager, hub, workers = setup
    if how == "env":
        worker = start_worker(hub, workers, "victim", "--no-isolation")
    else:  # the token on the command line, where every user can read it with ps
        worker = start_worker(hub, workers, "victim", "--no-isolation", "--token", TOKEN, token="")
    wpid = worker.process.pid
    # The script is given the token only to search for it: environment, command line, memory.
    task_id, _ = run_remote(manager, STEAL.format(wpid=wpid, token=TOKEN), language="python", timeout=60)
    looked = manager.result(task_id)
    assert looked["stdout"].strip().endswith("FOUND []"), looked
    # What the attacker did: the worker's environment as a token, then a worker of its own.
    steal = (
        f'T=$(tr "\\0" "\\n" < /proc/{wpid}/environ | sed -n "s/^ASYNC_AGENT_TOKEN=//p"); '
        f'ASYNC_AGENT_TOKEN="${{T:-none}}" {sys.executable} -m async_task_system worker --no-isolation --hub {hub.url} '
        "--name thief --once; echo exit=$?"
    )
    task_id, _ = run_remote(manager, steal, timeout=30)
    result = manager.result(task_id)
    assert result["stdout"].strip().endswith("exit=3"), result  # the hub refused the token
    assert {w["name"] for w in hub.workers()} == {"victim"}


def test_a_second_connection_cannot_take_over_a_workers_name_and_work(setup, tmp_path: Path):
    manager, hub, workers = setup
    start_worker(hub, workers, "box")
    slow = manager.submit("remote", "remote_execute", {"command": "sleep 1; echo mine", "worker": "box"})
    with connect(hub.url, additional_headers={"Authorization": f"Bearer {TOKEN}"}, proxy=None) as thief:
        thief.send(
            json.dumps({"type": "register", "name": "box", "capabilities": ["shell"], "max_concurrent": 9})
        )
        reply = json.loads(thief.recv(5))
        assert reply["type"] == "error" and reply["error_type"] == "name_taken"
        with pytest.raises(ConnectionClosed):
            thief.recv(5)
    assert manager.wait(slow, timeout=20).not_done == []
    assert manager.result(slow)["stdout"] == "mine\n"
    assert [w["name"] for w in hub.workers()] == ["box"]


@SANDBOXES
def test_a_sigkilled_workers_scripts_die_with_it(setup, tmp_path: Path, sandbox: tuple[str, ...]):
    manager, hub, workers = setup
    worker = start_worker(hub, workers, "doomed", *sandbox, "--workdir", str(tmp_path))
    pid_file = tmp_path / "orphan.pid"
    manager.submit(
        "remote",
        "remote_execute",
        {"command": f"setsid sleep 30 & echo $! > {pid_file}; sleep 30", "timeout": 60},
    )
    deadline = time.monotonic() + 20
    while not (pid_file.exists() and pid_file.read_text().strip()):
        assert time.monotonic() < deadline, "the script did not start"
        time.sleep(0.05)
    orphan = host_pid(int(pid_file.read_text()), worker.process.pid)
    worker.process.kill()  # SIGKILL: the worker gets no chance to clean up
    worker.process.wait(10)
    assert _dead(orphan, within=5), "the script outlived its SIGKILLed worker"


@pytest.mark.heartbeat_timeout(60)
def test_a_newcomer_is_booked_before_its_answer_and_gets_waiting_work_only_after_it(setup):
    manager, hub, workers = setup
    start_worker(hub, workers, "busy", "--max-concurrent", "1")
    long_started = log_event(manager, "long-started")
    long = manager.submit("remote", "remote_execute", {"command": "echo long-started; exec sleep 20"})
    assert long_started.wait(10)
    waiting = manager.submit("remote", "remote_execute", {"command": "echo queued"})  # waits at the hub
    with connect(hub.url, additional_headers={"Authorization": f"Bearer {TOKEN}"}, proxy=None) as newcomer:
        newcomer.send(
            json.dumps({"type": "register", "name": "new", "capabilities": ["shell"], "max_concurrent": 1})
        )
        # the waiting request is routed to it while it registers, and still comes after the answer
        assert json.loads(newcomer.recv(10))["type"] == "registered"
        assert hub.router.has_worker("new")  # booked already when the answer arrived
        execute = json.loads(newcomer.recv(10))
        assert execute["type"] == "execute" and execute["command"] == "echo queued"
        newcomer.send(
            json.dumps(
                {
                    "type": "result",
                    "request_id": execute["request_id"],
                    "success": True,
                    "result": {"exit_code": 0},
                }
            )
        )
        assert manager.wait(waiting, timeout=10).not_done == []
    manager.cancel(long)
