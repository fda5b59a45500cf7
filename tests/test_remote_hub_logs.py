"""Both hubs log, at INFO, when a worker joins and when it leaves: name, transport, labels, slots
and the reason it left. Real hubs on loopback, real worker processes."""

from __future__ import annotations

import logging
import time

import pytest
from test_remote_hub import run_remote, running_hub, start_worker

from async_task_system.remote.hub import RemoteHub

LOGGER = "async_task_system.remote.router"


def _hub_classes() -> list:
    classes: list = [pytest.param(RemoteHub, id="ws")]
    try:
        from async_task_system.remote.grpc_hub import GrpcHub
    except ImportError:  # the grpc extra is not installed
        return classes
    return [*classes, pytest.param(GrpcHub, id="grpc")]


def _wait_for(caplog: pytest.LogCaptureFixture, needle: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in caplog.records:
            if record.name == LOGGER and needle in record.getMessage():
                assert record.levelno == logging.INFO
                return record.getMessage()
        time.sleep(0.05)
    raise AssertionError(f"no log line with {needle!r}: {[r.getMessage() for r in caplog.records]}")


@pytest.mark.parametrize("hub_class", _hub_classes())
def test_a_worker_joining_and_leaving_is_logged_with_its_transport_labels_and_reason(hub_class, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    with running_hub(hub_class) as (manager, hub, workers):
        transport = hub.transport_name
        worker = start_worker(hub, workers, "logged-1", "--label", "region=eu", "--max-concurrent", "2")
        joined = _wait_for(caplog, "worker joined: logged-1")
        # its own label and the sandbox's (isolation=on, network=off: SANDBOX_LABELS), sorted
        labels = "labels isolation=on, network=off, region=eu"
        assert joined == f"worker joined: logged-1 [{transport}] (shell, python; {labels}), 2 slot(s)"
        assert run_remote(manager, "echo hi")[1]["stdout"] == "hi\n"
        worker.stop()  # SIGTERM: the worker closes its connection
        left = _wait_for(caplog, "worker left: logged-1")
        assert left.startswith(f"worker left: logged-1 [{transport}] (shell, python; {labels}): ")
        reason = left.rsplit(": ", 1)[1]
        assert reason.startswith("connection closed" if transport == "ws" else "stream")
