"""Dispatch round trip over gRPC against WebSocket against a local ``subprocess.run``, in one run.

    .venv/bin/python benchmarks/bench_dispatch.py [--round-trips 200]

For each transport: a hub (``GrpcHub`` / ``RemoteHub``) on loopback with one real
``async-agent worker`` process; ``echo hi`` is submitted as a remote task, one at a time, and the
time from ``submit`` to the task's result is measured (p50, p99). Baseline: ``subprocess.run`` of
``/bin/sh -c "echo hi"`` in this process, which is the process start the worker also pays (the
worker adds its sandbox supervisor on top). A second baseline runs the same command through the
worker's own runner (``ScriptRunner``: isolated by default, limits, clean environment) in this
process, so what the transport itself adds is visible, and a third the same with
``isolation=False`` (the per-run supervisor interpreter of ``--no-isolation``). Ratios are against ``subprocess.run`` and between the two
transports. Rounds alternate between the paths so load on the machine hits all alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from typing import Any

from async_task_system import TaskManager
from async_task_system.remote.grpc_hub import GrpcHub
from async_task_system.remote.hub import RemoteHub
from async_task_system.sandbox.process import RunLimits, ScriptRunner

TOKEN = "bench-dispatch-token"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def start(hub_class: type, name: str, retention: int) -> tuple[TaskManager, Any, subprocess.Popen]:
    manager = TaskManager(max_workers=4, retention=retention)
    hub = hub_class(manager, token=TOKEN).start()
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "async_task_system",
            "worker",
            "--hub",
            hub.url,
            "--name",
            name,
            "--log-level",
            "ERROR",
        ],
        env={**os.environ, "ASYNC_AGENT_TOKEN": TOKEN},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if not hub.wait_for_workers(1, timeout=30):
        worker.terminate()
        raise SystemExit(f"the {name} worker did not register")
    return manager, hub, worker


def round_trip(manager: TaskManager) -> float:
    began = time.perf_counter()
    task_id = manager.submit("remote", "remote_execute", {"command": "echo hi"})
    manager.wait(task_id, timeout=30)
    elapsed = time.perf_counter() - began
    if manager.result(task_id)["stdout"] != "hi\n":
        raise SystemExit(f"unexpected result: {manager.check(task_id)}")
    return elapsed


def local_run() -> float:
    began = time.perf_counter()
    done = subprocess.run(["/bin/sh", "-c", "echo hi"], capture_output=True, check=True)
    elapsed = time.perf_counter() - began
    assert done.stdout == b"hi\n"
    return elapsed


def sandbox_run(loop: asyncio.AbstractEventLoop, runner: ScriptRunner) -> float:
    began = time.perf_counter()
    outcome = loop.run_until_complete(runner.run("echo hi"))
    elapsed = time.perf_counter() - began
    assert outcome.success and outcome.result["stdout"] == "hi\n"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=200)
    args = parser.parse_args()
    n = args.round_trips
    setups = {"grpc": start(GrpcHub, "bench-grpc", n + 50), "websocket": start(RemoteHub, "bench-ws", n + 50)}
    times: dict[str, list[float]] = {
        "grpc": [],
        "websocket": [],
        "local sandbox": [],
        "no isolation": [],
        "subprocess.run": [],
    }
    loop, runner = asyncio.new_event_loop(), ScriptRunner()
    unisolated = ScriptRunner(RunLimits(isolation=False))
    try:
        for _ in range(10):  # warm-up: connections, caches, the first sandbox starts
            for manager, _, _ in setups.values():
                round_trip(manager)
            sandbox_run(loop, runner)
            sandbox_run(loop, unisolated)
            local_run()
        for _ in range(n):
            for name, (manager, _, _) in setups.items():
                times[name].append(round_trip(manager))
            times["local sandbox"].append(sandbox_run(loop, runner))
            times["no isolation"].append(sandbox_run(loop, unisolated))
            times["subprocess.run"].append(local_run())
    finally:
        loop.close()
        for manager, hub, worker in setups.values():
            hub.stop()
            worker.terminate()
            worker.wait(10)
            manager.shutdown(wait=False, cancel_pending=True)
    base50 = percentile(times["subprocess.run"], 50)
    base99 = percentile(times["subprocess.run"], 99)
    print(f"dispatch round trip of 'echo hi', {n} rounds each, one at a time (ms)")
    print(f"{'path':<16}{'p50':>9}{'p99':>9}{'p50 / local':>13}{'p99 / local':>13}")
    for name, values in times.items():
        p50, p99 = percentile(values, 50), percentile(values, 99)
        print(f"{name:<16}{p50 * 1e3:>9.2f}{p99 * 1e3:>9.2f}{p50 / base50:>12.2f}x{p99 / base99:>12.2f}x")
    grpc50, ws50 = percentile(times["grpc"], 50), percentile(times["websocket"], 50)
    grpc99, ws99 = percentile(times["grpc"], 99), percentile(times["websocket"], 99)
    print(f"grpc / websocket: p50 {grpc50 / ws50:.2f}x, p99 {grpc99 / ws99:.2f}x")
    sandbox50 = percentile(times["local sandbox"], 50)
    print(f"isolated local sandbox over subprocess.run at p50: {(sandbox50 - base50) * 1e3:.2f} ms")
    overhead = (grpc50 - sandbox50) * 1e3, (ws50 - sandbox50) * 1e3
    print(
        f"transport added over the local sandbox at p50: grpc {overhead[0]:.2f} ms, websocket {overhead[1]:.2f} ms"
    )


if __name__ == "__main__":
    main()
