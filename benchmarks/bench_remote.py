"""Remote execution figures, each against a baseline measured in the same run.

    .venv/bin/python benchmarks/bench_remote.py [--round-trips 300] [--tasks 10000]

(a) hub -> worker -> result round trip for a trivial command (``true``), p50/p99, one at a time,
    through a real ``async-agent worker`` process on loopback; baseline: running ``/bin/sh -c true``
    locally with ``subprocess.run`` (the process start the worker also pays).
(b) how many ``handle_remote_response`` calls per second resume 10,000 tasks suspended in
    WAITING_REMOTE (each call completes one task: WAITING_REMOTE -> RUNNING -> COMPLETED), and the
    time until ``wait`` sees all of them done; baseline: 10,000 no-op function tasks submitted and
    completed through the same TaskManager.
(c) fan-out: 100 commands of ``sleep 0.1`` submitted at once to 2 workers with 5 slots each;
    wall time against the ideal 100 x 0.1 s / 10 slots = 1.0 s, and 200 trivial commands' throughput.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from async_task_system import TaskManager
from async_task_system.remote.hub import RemoteHub


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def start_worker(hub: RemoteHub, token: str, name: str, wait: bool = True) -> subprocess.Popen:
    """Start an ``async-agent worker`` process for ``hub`` (and wait until it has joined)."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "async_task_system", "worker", "--hub", hub.url, "--name", name],
        env={**os.environ, "ASYNC_AGENT_TOKEN": token},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if wait and not hub.wait_for_workers(1, timeout=30):
        worker.terminate()
        raise SystemExit("the worker did not register")
    return worker


def bench_round_trip(n: int) -> None:
    token = "bench-token"
    manager = TaskManager(max_workers=4, retention=n + 10)
    hub = RemoteHub(manager, token=token).start()
    worker = start_worker(hub, token, "bench")
    try:
        for _ in range(20):  # warm-up
            task_id = manager.submit("remote", "remote_execute", {"command": "true"})
            manager.wait(task_id)
        latencies = []
        for _ in range(n):
            started = time.perf_counter()
            task_id = manager.submit("remote", "remote_execute", {"command": "true"})
            manager.wait(task_id)
            latencies.append(time.perf_counter() - started)
            assert manager.result(task_id)["exit_code"] == 0
        local = []
        for _ in range(n):
            started = time.perf_counter()
            subprocess.run(["/bin/sh", "-c", "true"], check=True)
            local.append(time.perf_counter() - started)
    finally:
        hub.stop()
        worker.terminate()
        worker.wait(10)
        manager.shutdown()
    p50, p99 = percentile(latencies, 50) * 1e3, percentile(latencies, 99) * 1e3
    l50, l99 = percentile(local, 50) * 1e3, percentile(local, 99) * 1e3
    print(f"(a) remote round trip of 'true', {n} sequential: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    print(f"    baseline local subprocess.run('/bin/sh -c true'): p50 {l50:.2f} ms, p99 {l99:.2f} ms")
    print(
        f"    hub + WebSocket + worker cost over a local process start: p50 +{p50 - l50:.2f} ms ({p50 / l50:.2f}x)"
    )


def bench_resume(n: int, rounds: int = 3) -> None:
    best_calls = best_total = best_baseline = float("inf")
    for _ in range(rounds):
        with TaskManager(max_workers=2, retention=n) as manager:
            remote = manager.remote_manager
            ids = [manager.submit("remote", "remote_execute", {"command": "x"}) for _ in range(n)]
            assert manager.get_statistics()["waiting_remote"] == n
            request_ids = [remote.request_for_task(task_id) for task_id in ids]
            started = time.perf_counter()
            for request_id in request_ids:
                remote.handle_remote_response(request_id, True, "ok", None)
            calls = time.perf_counter() - started
            manager.wait(ids)
            total = time.perf_counter() - started
            assert manager.get_statistics()["completed"] == n
        best_calls, best_total = min(best_calls, calls), min(best_total, total)

        def noop() -> None:
            return None

        with TaskManager(max_workers=2, functions=[noop], retention=n) as manager:
            started = time.perf_counter()
            ids = [manager.submit("function", "noop") for _ in range(n)]
            manager.wait(ids)
            best_baseline = min(best_baseline, time.perf_counter() - started)
    print(
        f"(b) {n} suspended tasks resumed: {n / best_calls:,.0f} handle_remote_response calls/s "
        f"({best_calls / n * 1e6:.1f} us each); all completed {best_total * 1e3:.1f} ms after the first call"
    )
    print(
        f"    baseline {n} no-op function tasks submitted and completed: {best_baseline * 1e3:.1f} ms "
        f"({n / best_baseline:,.0f} tasks/s); resuming is {best_baseline / best_total:.1f}x faster"
    )


def bench_fan_out() -> None:
    token = "bench-token"
    manager = TaskManager(max_workers=2, retention=1000)
    hub = RemoteHub(manager, token=token).start()
    workers = [start_worker(hub, token, f"w{i}", wait=False) for i in range(2)]
    try:
        if not hub.wait_for_workers(2, timeout=30):
            raise SystemExit("the workers did not register")
        started = time.perf_counter()
        ids = [manager.submit("remote", "remote_execute", {"command": "sleep 0.1"}) for _ in range(100)]
        manager.wait(ids)
        wall = time.perf_counter() - started
        per_worker = {}
        for value in manager.results(ids).values():
            per_worker[value["worker"]] = per_worker.get(value["worker"], 0) + 1
        started = time.perf_counter()
        ids = [manager.submit("remote", "remote_execute", {"command": "true"}) for _ in range(200)]
        manager.wait(ids)
        trivial = time.perf_counter() - started
        assert all(isinstance(v, dict) for v in manager.results(ids).values())
    finally:
        hub.stop()
        for worker in workers:
            worker.terminate()
            worker.wait(10)
        manager.shutdown()
    print(
        f"(c) 100 x 'sleep 0.1' over 2 workers x 5 slots (manager max_workers=2): wall {wall:.3f} s "
        f"(ideal 1.0 s, {1.0 / wall:.0%} efficiency); split {sorted(per_worker.values())}"
    )
    print(f"    200 trivial commands at once: {trivial:.3f} s ({200 / trivial:,.0f} commands/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=300)
    parser.add_argument("--tasks", type=int, default=10_000)
    args = parser.parse_args()
    bench_round_trip(args.round_trips)
    bench_resume(args.tasks)
    bench_fan_out()


if __name__ == "__main__":
    main()
