"""The Platform service on real parts: worker daemons killed or frozen mid-task, an LLM agent's
remote_execute landing in the same records as REST tasks, bounded logs and output, reaping after a
dead platform, on a SQLite file and the real PostgreSQL."""

from __future__ import annotations

import os
import signal
import socket
import threading

from _isolation import SANDBOX_LABELS
from _platform import (  # noqa: F401  (fixtures)
    client,
    hub_url,
    post_task,
    running_platform,
    transport_fixture,
    wait_end,
    workers_fixture,
)

from async_task_system import ScriptedModel, TaskStatus, create_async_agent
from async_task_system.platform.service import labels_match
from async_task_system.platform.store import Store


def _left_event(platform, name: str) -> tuple[threading.Event, dict]:
    gone = threading.Event()
    seen: dict = {}

    def on_agent(event: str, info: dict) -> None:
        if event == "left" and info["name"] == name:
            seen.update(info)
            gone.set()

    platform.router.add_listener(on_agent)
    return gone, seen


def _first_line(http, task_id: str) -> None:
    with http.stream("GET", f"/tasks/{task_id}/logs") as response:
        for line in response.iter_lines():
            if line.startswith("event: log"):
                return
    raise AssertionError("no output line")


def test_an_agent_sigkilled_mid_task_ends_its_tasks_lost_and_a_retry_runs_on_another(
    tmp_path, transport, workers
):
    with running_platform(f"sqlite:///{tmp_path / 'p.db'}") as platform, client(platform) as http:
        url = hub_url(platform, transport)
        workers.start(url, "a1")
        assert platform.router.wait_for_workers(1, timeout=30)
        workers.start(url, "a2")
        assert platform.router.wait_for_workers(2, timeout=30)
        # LLM-style task (any worker, one retry): the router picks a1, the first that joined and idle.
        retried = platform.manager.submit(
            "remote", "remote_execute", {"command": "echo go; sleep 2; echo done", "timeout": 20}, retries=1
        )
        pinned = post_task(http, agent_id="a1", type="shell", script="echo go; sleep 30", timeout=60)
        _first_line(http, pinned["task_id"])
        _first_line(http, retried)
        gone, _info = _left_event(platform, "a1")
        workers.processes["a1"].send_signal(signal.SIGKILL)
        assert gone.wait(30)
        _lines, lost = wait_end(http, pinned["task_id"])
        assert lost["status"] == "lost" and lost["lost"] is True and lost["error_type"] == "worker_lost"
        assert lost["agent_id"] == "a1" and "a1" in lost["error"]
        _lines, again = wait_end(http, retried)
        assert again["status"] == "completed" and again["attempt"] == 2 and again["agent_id"] == "a2"
        assert again["stdout"] == "go\ndone\n" and again["source"] == "llm"
        platform.writer.flush()
        [a1] = [a for a in http.get("/agents").json() if a["agent_id"] == "a1"]
        assert a1["state"] == "offline"


def test_a_silent_agent_is_declared_lost_by_the_heartbeat_timeout(tmp_path, workers):
    db = f"sqlite:///{tmp_path / 'p.db'}"
    with (
        running_platform(db, heartbeat_interval=0.5, heartbeat_timeout=3.0) as platform,
        client(platform) as http,
    ):
        process = workers.start(platform.ws_url, "frozen")
        assert platform.router.wait_for_workers(1, timeout=30)
        task = post_task(http, agent_id="frozen", type="shell", script="echo hi; sleep 30", timeout=60)
        _first_line(http, task["task_id"])
        gone, info = _left_event(platform, "frozen")
        os.kill(process.pid, signal.SIGSTOP)
        try:
            assert gone.wait(30)
            _lines, record = wait_end(http, task["task_id"])
        finally:
            os.kill(process.pid, signal.SIGCONT)
        assert record["status"] == "lost" and record["error_type"] == "worker_lost"
        platform.writer.flush()
        stored = platform.store.agents.get("frozen")
        assert stored.state == "offline" and stored.last_reason == info["reason"]


def test_remote_execute_from_an_llm_agent_lands_in_the_same_records(tmp_path, workers):
    model = ScriptedModel(
        [
            "<code>\nr = remote_execute('echo from-the-llm', timeout=20)\nprint(r['status'])\n</code>",
            "<code>\nwait_for_tasks([r['task_id']], max_wait_time=30)\n"
            "final_answer(get_task_results([r['task_id']])[r['task_id']]['stdout'])\n</code>",
        ]
    )
    with (
        create_async_agent(model=model, verbosity_level=0) as agent,
        running_platform(f"sqlite:///{tmp_path / 'p.db'}", manager=agent) as platform,
        client(platform) as http,
    ):
        workers.start(platform.ws_url, "box")
        assert platform.router.wait_for_workers(1, timeout=30)
        rest = post_task(http, agent_id="box", type="shell", script="echo from-rest")
        assert agent.run("Run echo from-the-llm remotely.") == "from-the-llm\n"
        wait_end(http, rest["task_id"])
        platform.writer.flush()
        records = {r["source"]: r for r in http.get("/tasks").json()}
    [llm_task] = [i for i in agent.task_manager.list() if i.name == "remote_execute"]
    assert llm_task.status is TaskStatus.COMPLETED
    assert set(records) == {"llm", "rest"}
    assert records["llm"]["task_id"] == llm_task.id and records["llm"]["agent_id"] == "box"
    assert records["llm"]["script"] == "echo from-the-llm" and records["llm"]["stdout"] == "from-the-llm\n"
    assert records["rest"]["stdout"] == "from-rest\n"


def test_output_log_lines_and_finished_tasks_in_memory_are_bounded(tmp_path, workers):
    db = f"sqlite:///{tmp_path / 'p.db'}"
    options = {"max_log_lines": 5, "max_output_chars": 100, "retention": 2}
    with running_platform(db, **options) as platform, client(platform) as http:
        workers.start(platform.ws_url, "a1")
        assert platform.router.wait_for_workers(1, timeout=30)
        task = post_task(http, agent_id="a1", type="python", script="for i in range(50): print('x' * 10, i)")
        lines, record = wait_end(http, task["task_id"])
        assert [seq for seq, _ in lines] == [1, 2, 3, 4, 5]
        assert record["log_truncated"] is True and record["truncated"] is True
        assert record["status"] == "completed" and len(record["stdout"]) == 100
        assert len(platform.store.logs.after(task["task_id"])) == 5
        for _ in range(4):
            wait_end(http, post_task(http, agent_id="a1", type="shell", script="true")["task_id"])
        platform.writer.flush()
        assert platform.manager.get_statistics()["retained"] <= 2  # the manager forgets finished REST tasks
        assert http.get("/tasks").headers["X-Total-Count"] == "5"  # the store does not
        assert http.get(f"/tasks/{task['task_id']}").json()["status"] == "completed"


def test_a_new_platform_reaps_what_a_dead_one_left_unfinished(database_url):
    store = Store(database_url)
    store.tasks.create("task_dead_1", "shell", "sleep 100", agent_id="gone", status="queued")
    store.tasks.update("task_dead_1", status="running")
    store.tasks.create("task_dead_2", "shell", "true", agent_id="gone")
    store.tasks.create("task_done_3", "shell", "true", agent_id="gone")
    store.tasks.update("task_done_3", status="completed", exit_code=0)
    store.agents.upsert([{
        "agent_id": "gone", "labels": {}, "capabilities": ["shell"], "capacity": 1, "version": None,
        "transport": "ws", "state": "online", "first_seen": 1.0, "last_seen": 2.0, "connected_at": 1.0,
        "disconnected_at": None, "last_reason": None,
    }])  # fmt: skip
    store.close()
    with running_platform(database_url) as platform, client(platform) as http:
        assert sorted(platform.reaped) == ["task_dead_1", "task_dead_2"]
        dead = http.get("/tasks/task_dead_1").json()
        assert (
            dead["status"] == "lost"
            and dead["error_type"] == "interrupted"
            and "platform stopped" in dead["error"]
        )
        assert http.get("/tasks/task_done_3").json()["status"] == "completed"
        [agent] = http.get("/agents").json()
        assert agent["state"] == "offline" and agent["last_reason"] == "the platform restarted"


def test_a_second_platform_on_the_same_database_leaves_the_live_ones_tasks_alone(tmp_path, workers):
    """Reaping is for platforms that are gone: a record of a platform that still runs (its process
    exists here) is not touched; one of a prefix whose process is gone is reaped; a clean stop marks
    the prefix closed, so the next start knows at once."""
    db = f"sqlite:///{tmp_path / 'shared.db'}"
    with running_platform(db) as first, client(first) as http:
        workers.start(first.ws_url, "a1")
        assert first.router.wait_for_workers(1, timeout=30)
        running = post_task(http, agent_id="a1", type="shell", script="echo go; sleep 30", timeout=60)
        _first_line(http, running["task_id"])
        store = Store(db)
        assert store.prefixes.reserve("task_ghost_", pid=2**22 + 12345)  # no such process here
        store.tasks.create("task_ghost_1", "shell", "sleep 1", agent_id="a1", status="running")
        store.close()
        with running_platform(db) as second:
            assert second.reaped == ["task_ghost_1"]
        assert http.get(f"/tasks/{running['task_id']}").json()["status"] == "running"
        prefix = first.manager.id_prefix
    store = Store(db)
    try:
        assert store.prefixes.get(prefix).closed_at is not None  # a clean stop closes the prefix
    finally:
        store.close()


def test_labels_match_needs_every_selected_label_with_its_value():
    assert labels_match({"zone": "a", "gpu": "yes"}, {"zone": "a"})
    assert not labels_match({"zone": "b"}, {"zone": "a"})
    assert not labels_match({}, {"zone": "a"})
    assert labels_match({"zone": "a"}, {})


def test_router_listeners_hear_joins_and_leaves_and_a_failing_one_is_only_logged(caplog):
    from async_task_system.remote.bridge import RemoteExecutionManager
    from async_task_system.remote.router import Worker, WorkerRouter

    router = WorkerRouter(RemoteExecutionManager())
    router.open()
    heard: list = []
    remove = router.add_listener(lambda event, info: heard.append((event, dict(info))))
    router.add_listener(lambda event, info: 1 / 0)
    worker = Worker("w1", ["shell"], 2, send=lambda frame: None)
    router.join(worker)
    router.leave(worker, "connection closed")
    router.leave(worker, "again")  # idempotent: no second "left"
    remove()
    router.join(Worker("w2", ["shell"], 1, send=lambda frame: None))
    assert [event for event, _ in heard] == ["joined", "left"]
    assert heard[0][1]["name"] == "w1" and heard[0][1]["max_concurrent"] == 2 and "reason" not in heard[0][1]
    assert heard[1][1]["reason"] == "connection closed" and heard[1][1]["capabilities"] == ["shell"]
    assert "worker joined listener failed" in caplog.text and router.has_worker("w2")


def test_a_label_selector_picks_a_matching_agent_per_attempt(tmp_path, transport, workers):
    with running_platform(f"sqlite:///{tmp_path / 'p.db'}") as platform, client(platform) as http:
        url = hub_url(platform, transport)
        for name, zone in (("eu-1", "eu"), ("eu-2", "eu"), ("us-1", "us")):
            workers.start(url, name, "--label", f"zone={zone}")
        assert platform.router.wait_for_workers(3, timeout=30)
        us = post_task(http, labels={"zone": "us"}, type="shell", script="echo us")
        assert wait_end(http, us["task_id"])[1]["agent_id"] == "us-1"
        eu = post_task(
            http, labels={"zone": "eu"}, type="shell", script="echo go; sleep 2; echo done", retries=1
        )
        _first_line(http, eu["task_id"])
        platform.writer.flush()
        first = http.get(f"/tasks/{eu['task_id']}").json()["agent_id"]
        assert first in ("eu-1", "eu-2") and eu["labels"] == {"zone": "eu"}
        gone, _info = _left_event(platform, first)
        workers.processes[first].send_signal(signal.SIGKILL)
        assert gone.wait(30)
        _lines, record = wait_end(http, eu["task_id"])
        assert record["status"] == "completed" and record["attempt"] == 2
        assert record["agent_id"] == ({"eu-1", "eu-2"} - {first}).pop()
        agents = {a["agent_id"]: a for a in http.get("/agents").json()}
        # a worker's labels: its own and how its scripts are isolated
        assert agents["us-1"]["labels"] == {"zone": "us", **SANDBOX_LABELS}
        assert agents["us-1"]["transport"] == transport
        assert agents[first]["state"] == "offline" and agents[first]["labels"] == {
            "zone": "eu",
            **SANDBOX_LABELS,
        }


def test_a_task_that_needs_the_network_selects_a_worker_that_allows_it(tmp_path, workers):
    # the network per task: a task selects network=on (a worker started with --allow-network);
    # any other task runs where its scripts have no network, not even loopback
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    script = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=5).close()\n"
        "    print('connected')\n"
        "except OSError as exc:\n"
        "    print('refused', exc.errno)\n"
    )
    try:
        with running_platform(f"sqlite:///{tmp_path / 'p.db'}") as platform, client(platform) as http:
            workers.start(platform.ws_url, "open", "--allow-network")
            workers.start(platform.ws_url, "closed")
            assert platform.router.wait_for_workers(2, timeout=30)
            ends = {}
            for network in ("on", "off"):
                task = post_task(http, labels={"network": network}, type="python", script=script)
                ends[network] = wait_end(http, task["task_id"])[1]
            assert (ends["on"]["agent_id"], ends["on"]["stdout"]) == ("open", "connected\n")
            assert ends["off"]["agent_id"] == "closed"
            assert ends["off"]["stdout"].split()[0] == "refused"  # ENETUNREACH: only a down loopback
    finally:
        listener.close()
