"""The gRPC hub and real gRPC worker daemons (``python -m async_task_system worker --hub grpc://...``),
on loopback; hostile streams driven by hand with a raw gRPC channel."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from _isolation import SANDBOX_LABELS, host_pid

grpc = pytest.importorskip("grpc", reason="the grpc extra is not installed")

from test_remote_hub import (  # noqa: E402
    HEARTBEAT,
    HEARTBEAT_TIMEOUT,
    TOKEN,
    Worker,
    _dead,
    log_event,
    run_remote,
    running_hub,
    start_worker,
)

from async_task_system import TaskManager  # noqa: E402
from async_task_system.remote._proto import agent_pb2, task_pb2  # noqa: E402
from async_task_system.remote.grpc_codec import METHOD  # noqa: E402
from async_task_system.remote.grpc_hub import GrpcHub  # noqa: E402
from async_task_system.remote.hub import RemoteHub  # noqa: E402

LIMIT = 16 * 1024


@pytest.fixture
def setup(request: pytest.FixtureRequest) -> Iterator[tuple[TaskManager, GrpcHub, list[Worker]]]:
    # Tests that drive a stream by hand and are not about heartbeats ask for a long timeout: a
    # loaded machine must not declare the hand-driven worker lost between two messages.
    marker = request.node.get_closest_marker("heartbeat_timeout")
    with running_hub(
        GrpcHub, marker.args[0] if marker else HEARTBEAT_TIMEOUT, register_timeout=3.0
    ) as running:
        yield running


# ---------------------------------------------------------------------------------------------- a raw stream


class RawStream:
    """One ``Connect`` stream driven by hand: write raw bytes, read ``ServerMessage``s."""

    def __init__(self, hub: GrpcHub, token: str = TOKEN) -> None:
        self.channel = grpc.insecure_channel(hub.url.removeprefix("grpc://"))
        self.outgoing: queue.Queue[bytes | None] = queue.Queue()
        call = self.channel.stream_stream(
            METHOD,
            request_serializer=lambda data: data,
            response_deserializer=agent_pb2.ServerMessage.FromString,
        )
        self.responses = call(iter(self.outgoing.get, None), metadata=(("authorization", f"Bearer {token}"),))
        self.received: queue.Queue[object] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for message in self.responses:
                self.received.put(message)
        except grpc.RpcError as exc:
            self.received.put(exc)
        self.received.put(None)

    def send(self, message: agent_pb2.AgentMessage | bytes) -> None:
        self.outgoing.put(message if isinstance(message, bytes) else message.SerializeToString())

    def next(self, skip_acks: bool = True, timeout: float = 10.0) -> object:
        while True:
            item = self.received.get(timeout=timeout)
            if skip_acks and isinstance(item, agent_pb2.ServerMessage) and item.HasField("heartbeat_ack"):
                continue
            return item

    def register(self, name: str = "raw", **fields) -> agent_pb2.ServerMessage:
        self.send(
            agent_pb2.AgentMessage(register=agent_pb2.AgentRegister(agent_id=name, capacity=2, **fields))
        )
        return self.next()

    def close(self) -> None:
        self.outgoing.put(None)
        self.responses.cancel()
        self.channel.close()


@pytest.fixture
def raw(setup):
    streams: list[RawStream] = []

    def open_stream(token: str = TOKEN) -> RawStream:
        stream = RawStream(setup[1], token)
        streams.append(stream)
        return stream

    yield open_stream
    for stream in streams:
        stream.close()


def heartbeat() -> agent_pb2.AgentMessage:
    return agent_pb2.AgentMessage(heartbeat=agent_pb2.Heartbeat(running=0))


# ---------------------------------------------------------------------------------------------- real workers


def test_shell_and_python_scripts_exit_codes_and_streamed_logs(setup):
    manager, hub, workers = setup
    start_worker(hub, workers, "g1", "--label", "region=eu")
    info = hub.workers()[0]
    labels = {"region": "eu", **SANDBOX_LABELS}  # its own, and how its scripts are isolated
    assert (info["transport"], info["labels"], info["version"]) == ("grpc", labels, "0.1.0")
    lines: list[tuple[str, str]] = []
    manager.remote_manager.add_log_listener(lambda task, request, stream, line: lines.append((stream, line)))
    _, result = run_remote(manager, "echo out; echo err >&2")
    assert (result["exit_code"], result["stdout"], result["stderr"], result["worker"]) == (
        0,
        "out\n",
        "err\n",
        "g1",
    )
    assert ("stdout", "out") in lines and ("stderr", "err") in lines
    _, result = run_remote(manager, "import sys; print(6 * 7); sys.stdout.flush()", language="python")
    assert result["stdout"] == "42\n"
    task_id, _ = run_remote(manager, "echo partial; exit 3")
    error = manager.check(task_id).error
    assert error.type == "remote_error" and "exit code 3" in error.message and "partial" in error.message


def test_a_result_larger_than_the_hub_limit_is_shortened_to_fit(setup):
    manager, hub, workers = setup
    start_worker(hub, workers, "g1")
    lines: list[str] = []
    manager.remote_manager.add_log_listener(lambda task, request, stream, line: lines.append(line))
    task_id, result = run_remote(manager, "head -c 100000 /dev/zero | tr '\\0' x", timeout=30)
    assert isinstance(result, dict), manager.check(task_id)
    assert result["truncated"] is True and 0 < len(result["stdout"]) < LIMIT
    assert set(result["stdout"]) == {"x"}
    # one 100,000-character line without an end is streamed in pieces that each fit a message
    assert len(lines) > 1 and max(map(len, lines)) <= 8192 and sum(map(len, lines)) == 100_000


def test_timeout_kills_the_script(setup):
    manager, hub, workers = setup
    start_worker(hub, workers, "g1", "--kill-grace", "0.5")
    task_id, _ = run_remote(manager, "echo started; sleep 30", timeout=1)
    error = manager.check(task_id).error
    assert error.type == "timeout" and "timed out after 1 s" in error.message


@pytest.mark.parametrize("obeys", [True, False], ids=["traps-term-and-exits", "ignores-term"])
def test_cancel_sends_sigterm_then_sigkill_after_the_grace(setup, tmp_path: Path, obeys: bool):
    manager, hub, workers = setup
    # the sandbox binds the working directory read-write: the script leaves its marks there
    worker = start_worker(hub, workers, "g1", "--kill-grace", "1", "--workdir", str(tmp_path))
    marks, pid_file = tmp_path / "marks", tmp_path / "pid"
    then = "exit 0" if obeys else ":"
    script = (
        f"trap 'echo term >> {marks}; {then}' TERM; echo $$ > {pid_file}; echo started; "
        "while :; do sleep 0.1; done"
    )
    started = log_event(manager, "started")
    task_id = manager.submit("remote", "remote_execute", {"command": script, "timeout": 60})
    assert started.wait(15)
    pid = host_pid(int(pid_file.read_text()), worker.process.pid)  # $$ is the script's namespace pid
    assert manager.cancel(task_id)
    assert _dead(pid, within=10), "the script survived its cancel"
    assert marks.read_text().startswith("term"), "the script never got SIGTERM"
    assert manager.check(task_id).status.value == "cancelled"


def test_sigkilled_worker_fails_its_task_as_worker_lost_and_the_retry_runs_elsewhere(setup, tmp_path: Path):
    manager, hub, workers = setup
    shared = ("--workdir", str(tmp_path))  # both workers' scripts see the flag file
    doomed = start_worker(hub, workers, "doomed", *shared)
    flag = tmp_path / "first-attempt"
    script = f"if [ -e {flag} ]; then echo second attempt; else touch {flag}; echo started; sleep 30; fi"
    started = log_event(manager, "started")
    task_id = manager.submit("remote", "remote_execute", {"command": script, "timeout": 60}, retries=1)
    assert started.wait(15)
    start_worker(hub, workers, "rescuer", *shared)
    doomed.process.kill()  # SIGKILL mid-task
    assert manager.wait(task_id, timeout=HEARTBEAT_TIMEOUT + 20).not_done == []
    info = manager.check(task_id)
    assert info.status.value == "completed" and info.attempts == 2
    assert (info.result["stdout"], info.result["worker"]) == ("second attempt\n", "rescuer")


def test_a_worker_with_a_wrong_token_exits_with_code_3(setup):
    _, hub, workers = setup
    worker = start_worker(hub, workers, "intruder", token="wrong-token", wait=False)
    assert worker.process.wait(20) == 3
    assert hub.workers() == [] and hub.refused_connections >= 1


def test_ws_and_grpc_workers_share_one_router_and_both_get_work(setup):
    manager, grpc_hub, workers = setup
    ws_hub = RemoteHub(manager, router=grpc_hub.router, token=TOKEN, heartbeat_interval=HEARTBEAT).start()
    try:
        start_worker(grpc_hub, workers, "via-grpc")
        start_worker(ws_hub, workers, "via-ws")
        transports = {w["name"]: w["transport"] for w in grpc_hub.workers()}
        assert transports == {"via-grpc": "grpc", "via-ws": "ws"}
        ids = [
            manager.submit("remote", "remote_execute", {"command": "sleep 0.5; echo ok"}) for _ in range(6)
        ]
        assert manager.wait(ids, timeout=30).not_done == []
        used = {manager.result(task_id)["worker"] for task_id in ids}
        assert used == {"via-grpc", "via-ws"}
        for name in ("via-grpc", "via-ws"):
            _, result = run_remote(manager, "echo named", worker=name)
            assert result["worker"] == name
    finally:
        ws_hub.stop()
    # the ws hub did not own the router: its worker left, the gRPC one still serves
    assert [w["name"] for w in grpc_hub.workers()] == ["via-grpc"]
    _, result = run_remote(manager, "echo still")
    assert result["worker"] == "via-grpc"


def test_label_selector_routes_and_an_unsatisfiable_one_fails_fast(setup):
    manager, hub, workers = setup
    start_worker(hub, workers, "eu-1", "--label", "region=eu", "--label", "gpu=none")
    start_worker(hub, workers, "us-1", "--label", "region=us")
    for _ in range(3):
        _, result = run_remote(manager, "echo hi", labels={"region": "us"})
        assert result["worker"] == "us-1"
    _, result = run_remote(manager, "echo hi", labels={"region": "eu", "gpu": "none"})
    assert result["worker"] == "eu-1"
    task_id, _ = run_remote(manager, "echo hi", labels={"region": "ap"})
    error = manager.check(task_id).error
    assert error.type == "no_worker"
    assert "region=ap" in error.message and "eu-1 [grpc]" in error.message and "region=us" in error.message


# ---------------------------------------------------------------------------------------------- hostile streams


@pytest.mark.heartbeat_timeout(60)
def test_a_wrong_token_is_refused_before_any_message_is_read(setup, raw):
    _, hub, _ = setup
    stream = raw("not-the-token")
    stream.send(b"\xff" * 64)  # would be a malformed message, if it were read
    failure = stream.next()
    assert isinstance(failure, grpc.RpcError) and failure.code() == grpc.StatusCode.UNAUTHENTICATED
    assert hub.refused_connections == 1 and hub.rejected_frames == 0


@pytest.mark.heartbeat_timeout(60)
def test_garbage_bytes_are_answered_with_an_error_and_the_stream_keeps_serving(setup, raw):
    _, hub, _ = setup
    stream = raw()
    assert stream.register("g").register_response.success
    stream.send(b"\xff\xff\xff\xff garbage")
    error = stream.next()
    assert error.error.error_type == "malformed" and "not an AgentMessage" in error.error.message
    stream.send(agent_pb2.AgentMessage())  # a message with none of the oneof's members
    assert stream.next().error.error_type == "malformed"
    stream.send(heartbeat())
    assert stream.next(skip_acks=False).HasField("heartbeat_ack")
    assert [w["name"] for w in hub.workers()] == ["g"]


@pytest.mark.heartbeat_timeout(60)
def test_wrong_order_register_twice_and_unknown_results_are_errors(setup, raw):
    _, hub, _ = setup
    first = raw()
    first.send(heartbeat())  # not a register
    refused = first.next()
    assert not refused.register_response.success and refused.register_response.error_type == "malformed"
    ended = first.next()
    assert isinstance(ended, grpc.RpcError) and ended.code() == grpc.StatusCode.INVALID_ARGUMENT
    stream = raw()
    assert stream.register("twice").register_response.success
    stream.send(agent_pb2.AgentMessage(register=agent_pb2.AgentRegister(agent_id="twice", capacity=1)))
    assert "registered already" in stream.next().error.message
    stream.send(agent_pb2.AgentMessage(task_result=task_pb2.TaskResult(task_id="nope", success=True)))
    error = stream.next().error
    assert error.task_id == "nope" and "not running" in error.message
    second = raw()
    taken = second.register("twice")
    assert taken.register_response.error_type == "name_taken"
    assert [w["name"] for w in hub.workers()] == ["twice"]


@pytest.mark.heartbeat_timeout(60)
def test_oversized_messages_are_refused_and_the_server_keeps_serving(setup, raw):
    _, hub, _ = setup
    stream = raw()
    assert stream.register("big").register_response.success
    log = task_pb2.TaskLog(task_id="x", output="y" * (2 * LIMIT))
    stream.send(agent_pb2.AgentMessage(task_log=log))
    error = stream.next().error
    assert error.error_type == "oversized" and f"limit of {LIMIT} bytes" in error.message
    stream.send(heartbeat())
    assert stream.next(skip_acks=False).HasField("heartbeat_ack")
    # far over the limit: gRPC itself ends that one stream
    huge = agent_pb2.AgentMessage(task_log=task_pb2.TaskLog(task_id="x", output="z" * (5 * LIMIT)))
    stream.send(huge)
    ended = stream.next()
    assert isinstance(ended, grpc.RpcError) and ended.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    other = raw()
    assert other.register("after").register_response.success


def test_a_stream_that_never_registers_is_closed_after_the_register_timeout(setup, raw):
    _, hub, _ = setup
    stream = raw()
    ended = stream.next(timeout=15)
    assert isinstance(ended, grpc.RpcError) and ended.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert hub.workers() == []


def test_a_silent_worker_is_lost_after_the_heartbeat_timeout(setup, raw):
    manager, hub, _ = setup
    stream = raw()
    assert stream.register("quiet").register_response.success
    stream.send(heartbeat())  # re-arms the deadline: the request below goes out well within it
    assert stream.next(skip_acks=False).HasField("heartbeat_ack")
    task_id = manager.submit("remote", "remote_execute", {"command": "echo hi"})
    request = stream.next()
    assert request.task_request.script == "echo hi" and request.task_request.type == task_pb2.TASK_TYPE_SHELL
    assert manager.wait(task_id, timeout=HEARTBEAT_TIMEOUT + 10).not_done == []
    error = manager.check(task_id).error
    assert error.type == "worker_lost" and "no heartbeat" in error.message
    ended = stream.next()
    assert isinstance(ended, grpc.RpcError) and ended.code() == grpc.StatusCode.UNAVAILABLE
    assert "no heartbeat" in ended.details()


@pytest.mark.heartbeat_timeout(60)
def test_stop_fails_routed_requests_with_hub_stopped(setup, raw):
    manager, hub, _ = setup
    stream = raw()
    assert stream.register("r").register_response.success
    # the hub books the worker before it answers (the request waits for the answer to go out first)
    assert hub.router.has_worker("r")
    task_id = manager.submit("remote", "remote_execute", {"command": "sleep 30"})
    assert stream.next().HasField("task_request")
    hub.stop()
    assert manager.wait(task_id, timeout=10).not_done == []
    assert manager.check(task_id).error.type == "hub_stopped"


def test_a_websocket_worker_never_loads_grpc():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from async_task_system.remote.worker import connector\n"
        "connector('ws://127.0.0.1:1')\n"
        "print(sorted(m for m in ('grpc', 'google.protobuf') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


def test_streams_beyond_max_connections_are_refused_and_the_first_keeps_serving():
    manager = TaskManager(max_workers=1)
    hub = GrpcHub(manager, token=TOKEN, max_connections=1, heartbeat_timeout=60).start()
    streams = []
    try:
        first = RawStream(hub)
        streams.append(first)
        assert first.register("only").register_response.success
        second = RawStream(hub)
        streams.append(second)
        refused = second.next()
        assert isinstance(refused, grpc.RpcError) and refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        first.send(heartbeat())
        assert first.next(skip_acks=False).HasField("heartbeat_ack")
    finally:
        for stream in streams:
            stream.close()
        hub.stop()
        manager.shutdown(wait=False)
