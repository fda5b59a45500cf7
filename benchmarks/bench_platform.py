"""Platform throughput: tasks per second through the REST API with 2 agents, against baselines measured
in the same run on the same 2 worker processes.

    .venv/bin/python benchmarks/bench_platform.py [--tasks 400] [--clients 8] [--db URL]

(``--db postgresql+psycopg://postgres@127.0.0.1:5432/test`` runs in a schema of its own, dropped after.)

Each task is the shell script ``true`` (the worker starts ``/bin/sh`` for it). Three ways in:

  bare        TaskManager + RemoteHub, no platform: ``submit("remote", "remote_execute", ...)``
  manager     the same submissions to the platform's own manager: every task also recorded in the
              store (the listener, the batched writer thread)
  rest        ``POST /tasks`` over HTTP from ``--clients`` threads (keep-alive connections of a
              minimal HTTP/1.1 client, ``KeepAliveClient``), then
              every task's end: HTTP parsing, the token check, validation, and a POST that returns
              only once its record is written
  rest apart  the same, the client threads in a process of their own (as real clients are): in
              this process they share the platform's interpreter lock

Times run from the first submission to the last task's end. The workers have 8 slots each.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator

from async_task_system import TaskManager
from async_task_system.platform.service import Platform
from async_task_system.remote.hub import RemoteHub

TOKEN = "bench-platform-token"


def start_workers(url: str) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "async_task_system",
                "worker",
                "--hub",
                url,
                "--name",
                name,
                "--max-concurrent",
                "8",
            ],
            env={**os.environ, "ASYNC_AGENT_TOKEN": TOKEN},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name in ("agent-1", "agent-2")
    ]


def stop(workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        worker.terminate()
        worker.wait(10)


def through_manager(manager: TaskManager, n: int) -> float:
    started = time.perf_counter()
    ids = [manager.submit("remote", "remote_execute", {"command": "true", "timeout": 60}) for _ in range(n)]
    result = manager.wait(ids, timeout=600)
    elapsed = time.perf_counter() - started
    assert not result.not_done, "tasks left unfinished"
    return elapsed


def bare(n: int) -> float:
    manager = TaskManager(max_workers=8, retention=10 * n)
    hub = RemoteHub(manager, token=TOKEN).start()
    workers = start_workers(hub.url)
    try:
        assert hub.wait_for_workers(2, timeout=60)
        through_manager(manager, 20)  # warm-up
        return through_manager(manager, n)
    finally:
        hub.stop()
        stop(workers)
        manager.shutdown()


class KeepAliveClient:
    """A minimal HTTP/1.1 keep-alive client: one request at a time on one socket, each answer read
    by its ``Content-Length``. The load generator runs on the same 2 cores as what it measures, so
    it must cost little: the standard library's ``http.client`` took 0.3-0.4 ms of CPU a request
    (``httpx`` as much as the platform's whole REST path); this one builds the request's bytes and
    reads one answer, as ``wrk``-like tools do."""

    def __init__(self, host: str, port: int, timeout: float = 60.0) -> None:
        self.address = (host, port)
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buffer = b""

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {self.address[0]}:{self.address[1]}\r\n{head}"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        if self.sock is None:
            self.sock = socket.create_connection(self.address, self.timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(request)
        while b"\r\n\r\n" not in self.buffer:
            self.buffer += self._receive()
        head_bytes, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head_bytes.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:])
        }
        length = int(fields.get("content-length", "0"))
        while len(self.buffer) < length:
            self.buffer += self._receive()
        data, self.buffer = self.buffer[:length], self.buffer[length:]
        if fields.get("connection", "").lower() == "close":
            self.close()
        return status, data

    def _receive(self) -> bytes:
        assert self.sock is not None
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection mid-answer")
        return chunk

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
        self.sock, self.buffer = None, b""


def post_tasks(url: str, n: int, clients: int) -> list[str]:
    """``n`` tasks posted from ``clients`` threads, each on its own keep-alive connection; their ids."""
    ids: list[str] = []
    lock = threading.Lock()
    per_client = [n // clients + (1 if i < n % clients else 0) for i in range(clients)]
    address = urllib.parse.urlsplit(url)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    failures: list[str] = []

    def post(count: int) -> None:
        client = KeepAliveClient(address.hostname or "127.0.0.1", address.port or 80)
        try:
            for number in range(count):
                body = json.dumps(
                    {"agent_id": f"agent-{1 + number % 2}", "type": "shell", "script": "true", "timeout": 60}
                ).encode()
                status, data = client.post("/tasks", body, headers)
                if status != 201:
                    failures.append(f"{status}: {data[:200]!r}")
                    return
                with lock:
                    ids.append(json.loads(data)["task_id"])
        finally:
            client.close()

    threads = [threading.Thread(target=post, args=(count,)) for count in per_client]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise RuntimeError(f"POST /tasks failed: {failures[0]}")
    return ids


def client_process() -> None:
    """``--client-process URL N CLIENTS``: say ready, wait for a line on stdin, post, print the ids."""
    url, n, clients = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    address = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
    connection.request("GET", "/healthz")  # imports and the server warm before the clock runs
    assert connection.getresponse().status == 200
    connection.close()
    print("ready", flush=True)
    sys.stdin.readline()
    print(json.dumps(post_tasks(url, n, clients)), flush=True)


def through_rest(platform: Platform, n: int, clients: int, apart: bool) -> float:
    """From the first POST to the last task's end; the clients in this process or (``apart``, as
    real clients are) in another one, which then does not share this process's interpreter lock."""
    assert platform.manager is not None
    if apart:
        process = subprocess.Popen(
            [sys.executable, __file__, "--client-process", platform.http_url, str(n), str(clients)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None and process.stdin is not None
        assert process.stdout.readline().strip() == "ready"
        started = time.perf_counter()
        process.stdin.write("go\n")
        process.stdin.flush()
        ids = json.loads(process.stdout.readline())
        process.wait(60)
    else:
        started = time.perf_counter()
        ids = post_tasks(platform.http_url, n, clients)
    result = platform.manager.wait(ids, timeout=600)
    platform.writer.flush(60)  # every record written
    elapsed = time.perf_counter() - started
    assert not result.not_done and len(ids) == n
    return elapsed


def with_platform(db: str, n: int, clients: int) -> tuple[float, float, float, int]:
    platform = Platform(db, token=TOKEN, http_port=0, ws_port=0, grpc=False).start()
    workers = start_workers(platform.ws_url)
    try:
        assert platform.router.wait_for_workers(2, timeout=60)
        assert platform.manager is not None
        through_manager(platform.manager, 20)  # warm-up
        manager_time = through_manager(platform.manager, n)
        platform.writer.flush(60)
        rest_time = through_rest(platform, n, clients, apart=False)
        apart_time = through_rest(platform, n, clients, apart=True)
        stored = platform.store.tasks.count()
        return manager_time, rest_time, apart_time, stored
    finally:
        stop(workers)
        platform.stop()


@contextlib.contextmanager
def own_schema(db: str) -> Iterator[str]:
    """A PostgreSQL URL gets a schema of its own for the run (dropped afterwards); SQLite is left as is."""
    if not db.startswith("postgresql"):
        yield db
        return
    import sqlalchemy as sa

    schema = f"bench_platform_{os.getpid()}"
    engine = sa.create_engine(db)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        yield f"{db}{'&' if '?' in db else '?'}options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as connection:
            connection.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=400)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--db", default=None, help="store URL (default: a SQLite file in a temporary directory)"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, own_schema(args.db or f"sqlite:///{tmp}/bench.db") as db:
        bare_time = bare(args.tasks)
        manager_time, rest_time, apart_time, stored = with_platform(db, args.tasks, args.clients)
    rows: list[tuple[str, float]] = [
        ("bare", bare_time),
        ("manager", manager_time),
        ("rest", rest_time),
        ("rest apart", apart_time),
    ]
    rate: Callable[[float], float] = lambda seconds: args.tasks / seconds  # noqa: E731
    print(
        f"{args.tasks} tasks ('true'), 2 agents x 8 slots, store {db.split('://')[0]}, {args.clients} REST clients"
    )
    print(f"  {'way in':<10} {'wall':>9} {'tasks/s':>9} {'vs bare':>8}")
    for name, seconds in rows:
        print(f"  {name:<10} {seconds:>8.2f}s {rate(seconds):>9.0f} {rate(seconds) / rate(bare_time):>7.2f}x")
    print(f"  records stored: {stored} (manager + rest + rest apart + warm-up)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--client-process"]:
        client_process()
    else:
        main()
