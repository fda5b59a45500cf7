"""Benchmark: an honest client's p99 latency on a quiet server and while an attacker floods it.

``async-agent serve --scripted --token ...`` runs as a subprocess with its default limits. An
honest client (127.0.0.1) sends trivial requests one after another (a fresh AsyncAgent on the
scripted model answers each); its latencies are measured on the quiet server, then while an
attacker, on other loopback addresses, at once:

* holds silent connections (300, from ten addresses 127.0.0.3-12), never sending a byte;
* is greedy (127.0.0.2): 8 connections with 16 ``sleep`` Instructions of 30 s each, which would
  hold every one of the 64 request slots without the per-connection and per-client limits;
* sends oversized unterminated lines without a token (127.0.0.13-14), reconnecting as soon as the
  server closes on it, 15 MB per connection as in issue 9.

Before the flood it sends image bombs (PNGs of 64 megapixels, a few hundred KB each, three in
one ``Multi`` request). The server's peak RSS (VmHWM from /proc) is read before and after each
attack. Everything goes to loopback only, is bounded in count and time, and stops by itself.

Run: .venv/bin/python benchmarks/bench_server_flood.py [--requests 300] [--flood-seconds 20]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib

TOKEN = "bench-token"
GOAL = 2.0


def _png_bomb(side: int) -> bytes:
    """A valid RGBA PNG of side x side black pixels, compressed row by row (never held decoded)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + side * 4)  # filter byte + pixels
    parts = [compressor.compress(row) for _ in range(side)]
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
    )


def _status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of ``pid`` in MB."""
    out = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) // 1024
    return out


class Client:
    def __init__(self, port: int, source: str = "127.0.0.1", timeout: float = 60.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
        self.lines = self.sock.makefile("rb")

    def send(self, obj: dict) -> None:
        self.sock.sendall((json.dumps(obj) + "\n").encode())

    def read(self) -> dict | None:
        line = self.lines.readline()
        return json.loads(line) if line else None

    def request(self, obj: dict) -> dict | None:
        self.send(obj)
        return self.read()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.lines.close()
            self.sock.close()


def honest_client(port: int) -> Client:
    client = Client(port)
    answer = client.request({"token": TOKEN})
    assert answer is not None and answer["error"] is None, answer
    return client


def honest_latencies(client: Client, n: int, label: str) -> list[float]:
    latencies = []
    for i in range(n):
        started = time.perf_counter()
        answer = client.request({"request_id": f"{label}{i}", "input": {"Text": "ping"}})
        latencies.append(time.perf_counter() - started)
        assert answer is not None and answer["error"] is None, answer
    return latencies


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


class Flood:
    """The attacker: silent connections, a greedy client, oversized lines; stops at ``deadline``."""

    def __init__(self, port: int, seconds: float) -> None:
        self.port = port
        self.deadline = time.monotonic() + seconds
        self.stop = threading.Event()
        self.sockets: list[socket.socket] = []
        self.counts = {"silent": 0, "greedy_requests": 0, "line_connections": 0, "line_bytes": 0}
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self.silent, daemon=True),
            threading.Thread(target=self.greedy, daemon=True),
            *(
                threading.Thread(target=self.lines, args=(f"127.0.0.{13 + n}",), daemon=True)
                for n in range(2)
            ),
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _keep(self, sock: socket.socket) -> None:
        with self.lock:
            self.sockets.append(sock)

    def silent(self) -> None:
        for i in range(300):
            if self.stop.is_set() or time.monotonic() > self.deadline:
                return
            with contextlib.suppress(OSError):
                sock = socket.create_connection(
                    ("127.0.0.1", self.port), timeout=0.5, source_address=(f"127.0.0.{3 + i % 10}", 0)
                )
                self._keep(sock)
                self.counts["silent"] += 1

    def greedy(self) -> None:
        for n in range(8):
            with contextlib.suppress(OSError):
                client = Client(self.port, "127.0.0.2", timeout=5)
                self._keep(client.sock)
                client.send({"token": TOKEN})
                for i in range(16):
                    instruction = {"command": "sleep", "parameters": {"seconds": 30}}
                    client.send({"request_id": f"g{n}-{i}", "input": {"Instruction": instruction}})
                    self.counts["greedy_requests"] += 1

    def lines(self, source: str) -> None:
        chunk = b"x" * (1 << 20)
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            try:
                sock = socket.create_connection(
                    ("127.0.0.1", self.port), timeout=2, source_address=(source, 0)
                )
            except OSError:
                time.sleep(0.05)
                continue
            self.counts["line_connections"] += 1
            with contextlib.suppress(OSError):
                for _ in range(15):  # 15 MB, no newline, no token
                    sock.sendall(chunk)
                    self.counts["line_bytes"] += len(chunk)
            sock.close()

    def end(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)
        with self.lock:
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.close()


def image_bombs(port: int, side: int, requests: int) -> list[str]:
    bomb = base64.b64encode(_png_bomb(side)).decode()
    client = Client(port)
    client.send({"token": TOKEN})
    client.read()
    errors = []
    for i in range(requests):
        leaves = [{"Image": {"data": bomb, "mime_type": "image/png"}} for _ in range(3)] + [
            {"Text": "describe"}
        ]
        answer = client.request({"request_id": f"bomb{i}", "input": {"Multi": leaves}})
        errors.append((answer or {}).get("error") or "answered")
    client.close()
    return errors


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=300, help="honest requests per phase (default 300)")
    parser.add_argument(
        "--flood-seconds", type=float, default=20.0, help="longest the flood lasts (default 20)"
    )
    args = parser.parse_args()

    env = dict(os.environ, API_KEY="", MODEL_ID="", BASE_URL="")
    command = [sys.executable, "-m", "async_task_system", "serve", "--remote", "127.0.0.1:0", "--scripted"]
    server = subprocess.Popen(
        [*command, "--token", TOKEN], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    try:
        assert server.stdout is not None
        banner = server.stdout.readline()
        port = int(re.search(r"127\.0\.0\.1:(\d+)", banner).group(1))  # type: ignore[union-attr]
        honest = honest_client(port)  # one connection for all its requests, opened before the flood
        honest_latencies(honest, 30, "warm")
        quiet = honest_latencies(honest, args.requests, "q")
        memory = {"start": _status(server.pid)}

        side = 8000  # 64 megapixels RGBA, 256 MB decoded; the limit is 25 megapixels per image
        started = time.monotonic()
        bombs = image_bombs(port, side, 3)
        memory["after 3 x 3 image bombs"] = _status(server.pid)
        bomb_seconds = time.monotonic() - started

        flood = Flood(port, args.flood_seconds)
        flood.start()
        time.sleep(1.0)  # let the flood set in
        flooded = honest_latencies(honest, args.requests, "f")
        flood_status = _status(server.pid)
        try:  # a new connection now: the silent ones from ten addresses fill max_connections
            honest_client(port).close()
            newcomer = "served"
        except (AssertionError, OSError) as exc:
            newcomer = f"refused ({str(exc)[:110]})"
        flood.end()
        memory["after the flood (15 MB lines)"] = flood_status
        alive = server.poll() is None
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()

    quiet_p99, flood_p99 = p99(quiet), p99(flooded)
    print(f"honest client, {args.requests} trivial requests per phase (scripted AsyncAgent, token server)")
    print(f"  quiet    p50 {statistics.median(quiet) * 1000:7.2f} ms   p99 {quiet_p99 * 1000:7.2f} ms")
    print(f"  flooded  p50 {statistics.median(flooded) * 1000:7.2f} ms   p99 {flood_p99 * 1000:7.2f} ms")
    ratio = flood_p99 / quiet_p99
    verdict = "within" if ratio <= GOAL else "OVER"
    print(f"  p99 ratio flooded/quiet: {ratio:.2f}x ({verdict} the {GOAL:g}x goal)")
    print(
        f"attacker: {flood.counts['silent']} silent connections, {flood.counts['greedy_requests']} greedy "
        f"30 s requests on 8 connections, {flood.counts['line_connections']} connections sending "
        f"{flood.counts['line_bytes'] / 1e6:.0f} MB of unterminated lines (accepted by the kernel); server alive: {alive}"
    )
    print(f"a new honest connection during the flood: {newcomer}")
    print(
        f"image bombs: {side}x{side} RGBA PNG, 3 per request, {len(bombs)} requests in {bomb_seconds:.1f} s:"
    )
    print(f"  answers: {sorted(set(b[:90] for b in bombs))}")
    print(
        "server memory (MB): "
        + "; ".join(f"{k}: RSS {v['VmRSS']}, peak {v['VmHWM']}" for k, v in memory.items())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
