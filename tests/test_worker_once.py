"""``async-agent worker --once`` says why it exits: real worker processes against a real hub."""

from __future__ import annotations

import socket

from test_remote_hub import Worker, running_hub, start_worker

from async_task_system.remote.hub import RemoteHub


def test_once_says_the_hub_closed_the_connection_and_how_many_jobs_ran():
    with running_hub(RemoteHub) as (manager, hub, workers):
        worker = start_worker(hub, workers, "one-shot", "--once")
        task_id = manager.submit("remote", "remote_execute", {"command": "echo done"})
        assert manager.wait(task_id, timeout=30).not_done == []
        assert manager.result(task_id)["stdout"] == "done\n"
        hub.stop()
        assert worker.process.wait(20) == 0
        stderr = worker.process.stderr.read()
    assert "--once: the hub closed the connection after 1 job(s); exiting" in stderr, stderr


def test_once_says_the_connection_failed_when_nothing_listens():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    lonely = Worker(f"ws://127.0.0.1:{port}", "lonely", "--once")
    try:
        assert lonely.process.wait(30) == 0
        stderr = lonely.process.stderr.read()
    finally:
        lonely.stop()
    assert "--once: the connection failed or ended: " in stderr, stderr
    assert "after 0 job(s); exiting" in stderr, stderr
