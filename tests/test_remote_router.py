"""WorkerRouter driven directly: a real bridge (``RemoteExecutionManager`` without a task manager)
on one side, in-memory worker endpoints on the other (each a plain ``send`` callable that records
the frames a transport would put on the wire). No sockets, no event loop."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from async_task_system.remote.bridge import RemoteExecutionManager, RemoteRequest, RemoteUnavailable
from async_task_system.remote.protocol import ProtocolError
from async_task_system.remote.router import Worker, WorkerRouter


class Endpoint:
    """A worker as a transport would present it: a name, slots and a frame sink."""

    def __init__(
        self,
        router: WorkerRouter,
        name: str,
        slots: int = 1,
        capabilities: tuple[str, ...] = ("shell", "python"),
        **details,
    ) -> None:
        self.router = router
        self.frames: list[dict] = []
        self.worker = Worker(name, list(capabilities), slots, self.frames.append, **details)
        assert router.join(self.worker) is None

    def executes(self) -> list[str]:
        return [f["request_id"] for f in self.frames if f["type"] == "execute"]

    def cancels(self) -> list[str]:
        return [f["request_id"] for f in self.frames if f["type"] == "cancel"]

    def answer(self, request_id: str, stdout: str = "ok") -> bool:
        result = {"exit_code": 0, "stdout": stdout, "stderr": "", "worker": self.worker.name}
        return self.router.result(self.worker, request_id, True, result, None)


@pytest.fixture
def bridge() -> Iterator[tuple[RemoteExecutionManager, WorkerRouter]]:
    remote = RemoteExecutionManager(response_grace=0.0)
    router = WorkerRouter(remote)
    router.open()
    remote.set_transport(router)  # the router speaks the transport interface itself
    try:
        yield remote, router
    finally:
        router.close()
        remote.close()


def send(remote: RemoteExecutionManager, command: str = "true", timeout: float = 30, **kw) -> str:
    return remote.create_remote_request(None, command, timeout, **kw)


def request(remote: RemoteExecutionManager, request_id: str) -> RemoteRequest:
    return next(r for r in remote.pending() if r.request_id == request_id)


def test_requests_go_to_the_least_loaded_free_worker_or_the_named_one(bridge):
    remote, router = bridge
    a, b = Endpoint(router, "a", slots=2), Endpoint(router, "b", slots=2)
    first, second = send(remote, "echo 1"), send(remote, "echo 2")
    assert sorted([*a.executes(), *b.executes()]) == sorted([first, second])
    assert len(a.executes()) == len(b.executes()) == 1  # spread, not stacked
    frame = next(f for f in a.frames + b.frames if f["request_id"] == first)
    assert (frame["command"], frame["language"], frame["timeout"]) == ("echo 1", "shell", 30.0)

    named = send(remote, "hostname", worker="b")
    assert named in b.executes() and named not in a.executes()
    assert {w["name"]: w["in_flight"] for w in router.workers()} == {"a": 1, "b": 2}

    assert b.answer(named, "b-host")
    assert remote.wait_result(named, 1)["stdout"] == "b-host"
    assert {w["name"]: (w["in_flight"], w["completed"]) for w in router.workers()}["b"] == (1, 1)


def test_a_request_waits_at_the_router_for_the_first_free_slot(bridge):
    remote, router = bridge
    a = Endpoint(router, "a", slots=1)
    first = send(remote, "sleep 1")
    waiting = [send(remote, f"echo {n}") for n in range(2)]
    assert a.executes() == [first]  # the others wait here, not on the busy worker
    assert router.routed == 3

    b = Endpoint(router, "b", slots=1)  # a worker that joins takes the oldest waiting one
    assert b.executes() == [waiting[0]]

    a.answer(first)  # a freed slot takes the next one
    assert a.executes() == [first, waiting[1]]
    assert remote.wait_result(first, 1)["stdout"] == "ok"
    assert remote.outcome(waiting[1]) is None  # still running on a


def test_a_worker_that_leaves_fails_its_requests_as_worker_lost(bridge):
    remote, router = bridge
    a = Endpoint(router, "a", slots=2, capabilities=("python",))
    Endpoint(router, "b", slots=1, capabilities=("shell",))
    running = [send(remote, "print(1)", language="python") for _ in range(2)]
    queued = send(remote, "print(2)", language="python")
    assert a.executes() == running

    assert sorted(router.leave(a.worker, "connection closed")) == sorted(running)
    for request_id in running:
        outcome = remote.outcome(request_id)
        assert outcome is not None and outcome.error_type == "worker_lost"
        assert "worker 'a' was lost (connection closed)" in outcome.error
    # the waiting request can no longer run anywhere: b offers only shell
    assert remote.outcome(queued).error_type == "no_worker"
    assert [w["name"] for w in router.workers()] == ["b"]
    assert router.leave(a.worker, "again") == []  # idempotent

    with pytest.raises(ProtocolError):  # a result after leaving belongs to no one
        a.answer(running[0])


def test_a_second_connection_with_a_live_workers_name_is_refused(bridge):
    remote, router = bridge
    old = Endpoint(router, "box")
    request_id = send(remote)
    new_frames: list[dict] = []
    thief = Worker("box", ["shell"], 1, new_frames.append)
    with pytest.raises(RemoteUnavailable) as refused:
        router.join(thief)
    assert refused.value.error_type == "name_taken"
    assert remote.outcome(request_id) is None  # the work stays with the worker it was sent to
    assert request_id in old.executes() and new_frames == []
    # Once the old connection is gone, the name is free again (a worker reconnecting).
    router.leave(old.worker, "connection closed")
    router.join(thief)
    assert send(remote) in [f["request_id"] for f in new_frames]


def test_cancel_goes_to_the_worker_running_the_request(bridge):
    remote, router = bridge
    a, b = Endpoint(router, "a"), Endpoint(router, "b")
    on_a, on_b = send(remote, "sleep 10"), send(remote, "sleep 10")
    if on_a not in a.executes():
        on_a, on_b = on_b, on_a
    waiting = send(remote, "echo later")

    router.cancel_request(request(remote, on_b), "cancelled")
    assert b.cancels() == [on_b] and a.cancels() == []
    assert b.executes() == [on_b, waiting]  # the freed slot is used at once
    # the worker's late answer to the cancelled request, and its last log lines, are expected
    assert router.log(b.worker, on_b, "stdout", "bye") is False
    assert b.answer(on_b) is False
    assert router.routed == 2

    router.cancel_request(request(remote, waiting), "cancelled")
    assert b.cancels() == [on_b, waiting]


def test_a_request_still_waiting_is_dropped_without_a_frame(bridge):
    remote, router = bridge
    a = Endpoint(router, "a")
    send(remote)
    waiting = send(remote)
    router.cancel_request(request(remote, waiting), "cancelled")
    assert a.cancels() == []
    assert router.routed == 1


def test_the_bridges_deadline_cancels_on_the_right_worker(bridge):
    remote, router = bridge
    a, b = Endpoint(router, "a"), Endpoint(router, "b")
    send(remote, "sleep 10", 30, worker="a")
    late = send(remote, "sleep 10", 0.05, worker="b")
    deadline = time.monotonic() + 5
    while not b.cancels() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert b.cancels() == [late] and a.cancels() == []
    assert remote.outcome(late).error_type == "timeout"


def test_a_result_or_log_from_the_wrong_worker_is_refused_and_changes_nothing(bridge):
    remote, router = bridge
    a, b = Endpoint(router, "a"), Endpoint(router, "b")
    request_id = send(remote)
    right, wrong = (a, b) if request_id in a.executes() else (b, a)

    with pytest.raises(ProtocolError, match="not running"):
        wrong.answer(request_id, "forged")
    with pytest.raises(ProtocolError, match="not running"):
        router.log(wrong.worker, request_id, "stdout", "forged")
    assert remote.outcome(request_id) is None
    assert remote.get_logs(request_id) == []

    assert router.log(right.worker, request_id, "stdout", "real") is True
    assert remote.get_logs(request_id) == [("stdout", "real")]
    assert right.answer(request_id, "real")
    assert remote.wait_result(request_id, 1)["stdout"] == "real"
    with pytest.raises(ProtocolError):  # a duplicate answer is refused too
        right.answer(request_id)


def test_no_worker_and_a_closed_router_are_clear_errors(bridge):
    remote, router = bridge
    outcome = remote.outcome(send(remote))
    assert outcome.error_type == "no_worker" and "no remote worker is connected" in outcome.error
    Endpoint(router, "a", capabilities=("shell",))
    assert "can run python" in remote.outcome(send(remote, "1", language="python")).error
    assert "no worker named 'z'" in remote.outcome(send(remote, worker="z")).error

    routed = [send(remote) for _ in range(3)]  # one running, two waiting
    assert router.close("hub_stopped", "stopped") == 3
    assert {remote.outcome(r).error_type for r in routed} == {"hub_stopped"}
    assert remote.outcome(send(remote)).error_type == "hub_stopped"
    with pytest.raises(Exception, match="not accepting"):
        Endpoint(router, "late")


def test_a_send_that_raises_loses_that_worker_only(bridge):
    remote, router = bridge

    def broken(frame: dict) -> None:
        raise ConnectionError("socket gone")

    router.join(Worker("broken", ["shell"], 5, broken))
    outcome = remote.outcome(send(remote))
    assert outcome.error_type == "worker_lost" and "socket gone" in outcome.error
    assert router.workers() == []
    good = Endpoint(router, "good")
    request_id = send(remote)
    assert good.executes() == [request_id]


def test_many_threads_route_and_answer_concurrently(bridge):
    """Requests from 6 threads, answered from another thread: each completes once, no slot leaks."""
    remote, router = bridge
    inbox: queue.Queue[tuple[str, dict] | None] = queue.Queue()
    workers = {
        name: Worker(name, ["shell"], 2, lambda frame, name=name: inbox.put((name, frame))) for name in "abc"
    }
    for worker in workers.values():
        router.join(worker)
    peak: dict[str, int] = {}

    def respond() -> None:
        while (item := inbox.get()) is not None:
            name, frame = item
            worker = workers[name]
            peak[worker.name] = max(peak.get(worker.name, 0), len(worker.in_flight))
            router.result(worker, frame["request_id"], True, {"stdout": frame["command"]}, None)

    responder = threading.Thread(target=respond)
    responder.start()

    def submit(n: int) -> list[str]:
        return [send(remote, f"echo {n}-{i}") for i in range(50)]

    with ThreadPoolExecutor(6) as pool:
        ids = [request_id for batch in pool.map(submit, range(6)) for request_id in batch]
    results = {remote.wait_result(request_id, 10)["stdout"] for request_id in ids}
    inbox.put(None)
    responder.join(5)
    assert len(results) == 300
    assert router.routed == 0
    assert all(w["in_flight"] == 0 for w in router.workers())
    assert sum(w["completed"] for w in router.workers()) == 300
    assert max(peak.values()) <= 2


def test_label_selectors_route_and_a_waiting_selector_does_not_block_other_requests(bridge):
    remote, router = bridge
    eu = Endpoint(router, "eu", slots=1, labels={"region": "eu"}, transport="grpc", version="1.2")
    us = Endpoint(router, "us", slots=1, labels={"region": "us"})
    info = {w["name"]: w for w in router.workers()}
    assert (info["eu"]["labels"], info["eu"]["transport"], info["eu"]["version"]) == (
        {"region": "eu"},
        "grpc",
        "1.2",
    )
    assert info["us"]["transport"] == "ws" and info["us"]["runtimes"] == []
    busy = send(remote, labels={"region": "eu"})
    waiting = send(remote, labels={"region": "eu"})  # eu is full: it waits for eu's slot
    other = send(remote, labels={"region": "us"})  # not stuck behind it
    assert eu.executes() == [busy] and us.executes() == [other]
    assert eu.answer(busy)
    assert eu.executes() == [busy, waiting]
    failed = send(remote, labels={"region": "eu", "gpu": "a100"})
    outcome = remote.outcome(failed)
    assert outcome.error_type == "no_worker"
    assert (
        "gpu=a100" in outcome.error and "eu [grpc]" in outcome.error and "labels region=us" in outcome.error
    )


def test_runtime_calls_go_only_to_workers_offering_the_runtime(bridge):
    remote, router = bridge
    Endpoint(router, "plain")
    tools = Endpoint(router, "tools", runtimes=["javascript", "native"])
    call = {"runtime": "javascript", "entry": "text.js", "parameters": {"text": "a b"}}
    request_id = send(remote, "count", runtime=call)
    frame = next(f for f in tools.frames if f["type"] == "execute")
    assert frame["request_id"] == request_id and frame["runtime"] == call and frame["command"] == "count"
    missing = send(remote, "add", runtime={"runtime": "wasm", "entry": "m.wasm", "parameters": {}})
    outcome = remote.outcome(missing)
    assert outcome.error_type == "no_worker" and "wasm runtime tools" in outcome.error
    assert "runtimes javascript, native" in outcome.error
