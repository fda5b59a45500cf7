"""``async-agent hub``: run a hub, optionally start local workers, run commands or an agent task through it.

    async-agent hub --token T --port 8765                       # serve workers until Ctrl-C
    async-agent hub --spawn-workers 2 --command "uname -a" --command "df -h /"
    async-agent hub --port 8765 --workers 1 --task "Check the disk usage on the worker"   # LLM from .env

Commands run as remote tasks in parallel; their output lines are printed as they stream in,
then a summary. The exit code is 0 when every command succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import threading
from typing import Any

__all__ = ["configure_parser", "run"]


def add_hub_limit_arguments(parser: argparse.ArgumentParser) -> None:
    """The worker-facing limits of a hub, as flags (``async-agent hub`` and ``async-agent platform``)."""
    parser.add_argument(
        "--heartbeat-interval", type=float, default=5.0, help="seconds between worker heartbeats (5)"
    )
    parser.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=15.0,
        help="seconds of silence before a worker is lost (15)",
    )
    parser.add_argument(
        "--max-message-bytes", type=int, default=1 << 20, help="largest worker frame/message (1 MiB)"
    )


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="TCP port (0 picks a free one; default 8765)")
    parser.add_argument(
        "--transport",
        choices=("ws", "grpc"),
        default="ws",
        help="ws (WebSocket, default) or grpc: workers connect with --hub ws://... or grpc://...",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("ASYNC_AGENT_TOKEN"),
        help="shared secret workers must present (default: $ASYNC_AGENT_TOKEN, else a generated one)",
    )
    add_hub_limit_arguments(parser)
    parser.add_argument("--spawn-workers", type=int, default=0, help="start this many local worker processes")
    parser.add_argument("--workers", type=int, default=None, help="wait for this many workers before running")
    parser.add_argument("--wait-workers-timeout", type=float, default=30.0, help="seconds to wait for them")
    parser.add_argument(
        "--command", action="append", default=[], help="a shell command to run remotely (repeatable)"
    )
    parser.add_argument(
        "--python", action="append", default=[], help="Python code to run remotely (repeatable)"
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds each command may run")
    parser.add_argument("--task", default=None, help="run this task on the LLM from .env with remote_execute")


def run(args: argparse.Namespace) -> int:
    from ..core.manager import TaskManager

    if args.transport == "grpc":
        from .grpc_hub import GrpcHub as hub_class
    else:
        from .hub import RemoteHub as hub_class
    token = args.token or secrets.token_urlsafe(18)
    manager = TaskManager(max_workers=4)
    hub = hub_class(
        manager,
        host=args.host,
        port=args.port,
        token=token,
        heartbeat_interval=args.heartbeat_interval,
        heartbeat_timeout=args.heartbeat_timeout,
        max_message_bytes=args.max_message_bytes,
    ).start()
    print(f"hub listening on {hub.url}", flush=True)
    if not args.token:
        print(f"generated token: {token}", flush=True)
    print(
        f"start a worker with: ASYNC_AGENT_TOKEN=... async-agent worker --hub {hub.url} --name NAME",
        flush=True,
    )
    spawned = [_spawn_worker(hub.url, token, f"local-{i + 1}") for i in range(args.spawn_workers)]
    try:
        jobs = [("shell", c) for c in args.command] + [("python", c) for c in args.python]
        wanted = (
            args.workers
            if args.workers is not None
            else (max(1, args.spawn_workers) if jobs or args.task else 0)
        )
        if wanted and not hub.wait_for_workers(wanted, timeout=args.wait_workers_timeout):
            print(
                f"error: {len(hub.workers())} of {wanted} worker(s) joined within {args.wait_workers_timeout:g} s",
                file=sys.stderr,
            )
            return 2
        if jobs:
            return _run_commands(manager, jobs, args.timeout)
        if args.task:
            return _run_task(manager, hub, args.task)
        _serve_until_interrupted()
        return 0
    finally:
        hub.stop()
        for process in spawned:
            process.terminate()
        for process in spawned:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
        manager.shutdown(wait=False, cancel_pending=True)


def _spawn_worker(url: str, token: str, name: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "async_task_system",
            "worker",
            "--hub",
            url,
            "--name",
            name,
            "--log-level",
            "WARNING",
        ],
        env={**os.environ, "ASYNC_AGENT_TOKEN": token},
    )


def _run_commands(manager: Any, jobs: list[tuple[str, str]], timeout: float) -> int:
    remote = manager.remote_manager
    lock = threading.Lock()
    names: dict[str, str] = {}

    def show(task_id: str | None, request_id: str, stream: str, line: str) -> None:
        with lock:
            marker = "!" if stream == "stderr" else ">"
            print(f"[{names.get(task_id or '', task_id)}] {marker} {line}", flush=True)

    remote.add_log_listener(show)
    ids = []
    for index, (language, command) in enumerate(jobs, 1):
        task_id = manager.submit(
            "remote", "remote_execute", {"command": command, "language": language, "timeout": timeout}
        )
        names[task_id] = f"{index}"
        ids.append(task_id)
    manager.wait(ids, timeout=timeout + 30)
    failures = 0
    print("---")
    for index, task_id in enumerate(ids, 1):
        info = manager.check(task_id)
        if info.status.value == "completed":
            result = info.result or {}
            print(
                f"[{index}] ok on {result.get('worker')}: exit code {result.get('exit_code')} in {result.get('duration', 0):.3f} s"
            )
        else:
            failures += 1
            print(f"[{index}] {info.status.value}: {info.error}")
    return 1 if failures else 0


def _run_task(manager: Any, hub: Any, task: str) -> int:
    from ..agents.agent import create_async_agent
    from ..agents.config import model_from_env
    from .tools import attach_remote

    model = model_from_env()
    if model is None:
        print("error: no LLM configured: set API_KEY, BASE_URL and MODEL_ID in .env", file=sys.stderr)
        return 2
    with create_async_agent(model=model, task_manager=manager) as agent:
        attach_remote(agent, hub=False)
        print(agent.run_with_async_guidance(task))
    return 0


def _serve_until_interrupted() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
