"""Benchmark: an honest REST client's p99 latency, quiet and while 300 half-open connections are held.

``async-agent platform`` runs as a subprocess with its default HTTP front (a request head within
5 s, pending connections make room for new ones). An honest client (127.0.0.1, one keep-alive
connection, ``Authorization: Bearer``) sends ``GET /tasks`` one after another (``--pause`` apart, so
the run outlasts the head timeout and the attacker's re-opened connections count): first on the
quiet server, then while an attacker holds ``--half-open`` connections from 127.0.0.2-11 (ten
addresses), each having sent part of a request head, re-opening any the server closes, for the
whole measurement. Everything is loopback only, bounded in count and time, and stops by itself.

Run: .venv/bin/python benchmarks/bench_http_flood.py [--requests 300] [--half-open 300] [--pause 0.03]
Goal: p99 during the flood <= 2x quiet.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

TOKEN = "bench-token"
GOAL = 2.0


def start_platform(db: str) -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen(
        [sys.executable, "-m", "async_task_system", "platform", "--db", db, "--http-port", "0", "--ws-port", "0",
         "--no-grpc", "--token", TOKEN],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if match:
            threading.Thread(target=process.stdout.read, daemon=True).start()  # drain
            return process, int(match.group(1))
    process.kill()
    raise RuntimeError("the platform did not start")


def measure(port: int, count: int, pause: float) -> list[float]:
    import httpx

    latencies = []
    with httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    ) as http:
        http.get("/tasks").raise_for_status()
        for _ in range(count):
            started = time.perf_counter()
            response = http.get("/tasks?limit=10")
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise RuntimeError(f"the honest client got {response.status_code}: {response.text[:200]}")
            time.sleep(pause)
    return latencies


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


class Attacker:
    """Holds ``count`` half-open connections from 127.0.0.2-11; re-opens those the server closes."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.stop = threading.Event()
        self.opened = 0
        self.closed_by_server = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def connect(self, index: int) -> socket.socket | None:
        sock = socket.socket()
        sock.settimeout(5)
        try:
            sock.bind((f"127.0.0.{2 + index % 10}", 0))
            sock.connect(("127.0.0.1", self.port))
            sock.sendall(b"GET /tasks HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        except OSError:
            sock.close()
            return None
        sock.setblocking(False)
        self.opened += 1
        return sock

    def run(self) -> None:
        held: list[socket.socket | None] = [self.connect(i) for i in range(self.count)]
        while not self.stop.wait(0.2):
            for i, sock in enumerate(held):
                alive = sock is not None
                if alive:
                    try:
                        alive = sock.recv(1) != b""
                    except BlockingIOError:
                        continue  # still open, nothing said: what the attacker wants
                    except OSError:
                        alive = False
                if not alive:
                    if sock is not None:
                        sock.close()
                        self.closed_by_server += 1
                    held[i] = self.connect(i)
        for sock in held:
            if sock is not None:
                sock.close()

    def __enter__(self) -> Attacker:
        self.thread.start()
        time.sleep(1.0)  # let every connection open before measuring
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--half-open", type=int, default=300)
    parser.add_argument(
        "--pause",
        type=float,
        default=0.03,
        help="seconds between requests (0.03: ~10 s, past the 5 s head timeout)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        process, port = start_platform(f"sqlite:///{os.path.join(tmp, 'bench.db')}")
        try:
            quiet = measure(port, args.requests, args.pause)
            with Attacker(port, args.half_open) as attacker:
                flood = measure(port, args.requests, args.pause)
            ratio = p99(flood) / p99(quiet)
            print(f"REST GET /tasks, {args.requests} requests each, one keep-alive connection")
            print(
                f"  quiet:  p50 {statistics.median(quiet) * 1000:7.2f} ms   p99 {p99(quiet) * 1000:7.2f} ms"
            )
            print(
                f"  during {args.half_open} half-open connections (10 addresses): p50 "
                f"{statistics.median(flood) * 1000:7.2f} ms   p99 {p99(flood) * 1000:7.2f} ms"
            )
            print(
                f"  attacker: opened {attacker.opened} connections, {attacker.closed_by_server} closed by the server"
            )
            print(
                f"  p99 ratio flood/quiet: {ratio:.2f} (goal <= {GOAL:g}) -> {'met' if ratio <= GOAL else 'MISSED'}"
            )
        finally:
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
            if process.poll() is None:
                process.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
