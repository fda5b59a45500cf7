"""Collaboration round trip: in process and across processes (A2A over HTTP), against a direct call.

    .venv/bin/python benchmarks/bench_collaboration.py [--requests 300]

Measured in the same run, one request at a time (latency, not throughput):

* direct: calling the handler function itself (the floor);
* in process: ``protocol.ask("worker", "echo", ...)`` to a protocol of this process: a REQUEST, the
  handler run as a task of the receiving manager, the RESPONSE waking the caller;
* across processes: the same call to a protocol served by a second process over A2A
  (``A2AServer``/``A2AAgent``: JSON-RPC over HTTP with SSE, the SDK's client and server).

Prints p50 / p99 in microseconds and the ratios to the direct call.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from async_task_system import TaskManager
from async_task_system.collab.a2a import A2AAgent
from async_task_system.collab.collaboration import AgentDirectory, CollaborationProtocol

PEER = Path(__file__).resolve().parent.parent / "tests" / "_collab_peer.py"


def echo(**parameters: object) -> dict:
    return parameters


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(call, count: int) -> list[float]:
    for _ in range(min(20, count)):  # warm up
        call()
    times = []
    for _ in range(count):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    parameters = {"n": 1, "text": "hello"}

    directory = AgentDirectory()
    worker = CollaborationProtocol("worker", TaskManager(max_workers=4), directory)
    worker.register_handler("echo", echo)
    asker = CollaborationProtocol("asker", TaskManager(max_workers=4), directory)

    token = secrets.token_urlsafe(16)
    peer = subprocess.Popen(
        [sys.executable, str(PEER)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PEER_TOKEN": token},
    )  # fmt: skip
    line = peer.stdout.readline().strip()  # type: ignore[union-attr]
    assert line.startswith("URL "), line
    directory.register("peer", A2AAgent(line.split(" ", 1)[1], token))

    results = {
        "direct call": measure(lambda: echo(**parameters), args.requests),
        "in process": measure(lambda: asker.ask("worker", "echo", parameters, 30), args.requests),
        "across processes (A2A/HTTP)": measure(
            lambda: asker.ask("peer", "echo", parameters, 30), args.requests
        ),
    }
    peer.stdin.close()  # type: ignore[union-attr]
    peer.wait(20)
    base50, base99 = percentile(results["direct call"], 0.5), percentile(results["direct call"], 0.99)
    print(f"collaboration round trip, {args.requests} requests each, one at a time")
    for name, times in results.items():
        p50, p99 = percentile(times, 0.5), percentile(times, 0.99)
        print(
            f"  {name:28s} p50 {p50 * 1e6:9.1f} us   p99 {p99 * 1e6:9.1f} us   "
            f"({p50 / base50:8.0f}x / {p99 / base99:8.0f}x the direct call)"
        )
    print(f"(at {datetime.now().isoformat(timespec='seconds')})")
    asker.close()
    worker.close()


if __name__ == "__main__":
    main()
