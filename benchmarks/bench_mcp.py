"""Benchmark ``async-agent mcp`` against calling the manager directly, in one run.

Round trip: one ``echo`` task at a time, N times (median and p95 in ms): the manager directly
(``submit`` + ``wait`` + ``result``), then an MCP ``tools/call`` over stdio and over streamable HTTP
(the server in a subprocess, the SDK's client here).
Throughput: N ``echo`` tasks in flight at once (tasks/second): the manager directly, then N
task-augmented calls (MCP Tasks) at once over each transport, each result fetched with
``tasks/result``.

Run: .venv/bin/python benchmarks/bench_mcp.py [--calls 300] [--tasks 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import mcp.types as types
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamablehttp_client

from async_task_system import TaskManager

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests._mcp_tools import echo  # noqa: E402

CLI = str(Path(sys.executable).with_name("async-agent"))
ARGS = ["mcp", "--tools", "tests._mcp_tools:TOOLS", "--max-workers", "8", "--max-tasks-per-session", "100000"]
TOKEN = "bench-token"
warnings.simplefilter("ignore", DeprecationWarning)


def figures(name: str, latencies: list[float]) -> str:
    ms = sorted(x * 1000 for x in latencies)
    p95 = ms[int(len(ms) * 0.95) - 1]
    return f"{name:<24} median {statistics.median(ms):7.3f} ms   p95 {p95:7.3f} ms"


def direct(calls: int, tasks: int) -> tuple[list[float], float]:
    with TaskManager(max_workers=8) as manager:
        manager.register_tool(echo)
        latencies = []
        for i in range(calls):
            started = time.perf_counter()
            task_id = manager.submit("tool", "echo", {"text": str(i)})
            manager.wait([task_id])
            manager.result(task_id)
            latencies.append(time.perf_counter() - started)
        started = time.perf_counter()
        ids = [manager.submit("tool", "echo", {"text": str(i)}) for i in range(tasks)]
        manager.wait(ids)
        manager.results(ids)
        return latencies, tasks / (time.perf_counter() - started)


async def over_mcp(session: ClientSession, calls: int, tasks: int) -> tuple[list[float], float]:
    latencies = []
    for i in range(calls):
        started = time.perf_counter()
        await session.call_tool("echo", {"text": str(i)})
        latencies.append(time.perf_counter() - started)
    started = time.perf_counter()
    created = await asyncio.gather(
        *(session.experimental.call_tool_as_task("echo", {"text": str(i)}) for i in range(tasks))
    )
    await asyncio.gather(
        *(session.experimental.get_task_result(c.task.taskId, types.CallToolResult) for c in created)
    )
    return latencies, tasks / (time.perf_counter() - started)


async def stdio(calls: int, tasks: int) -> tuple[list[float], float]:
    params = StdioServerParameters(command=CLI, args=ARGS, cwd=str(ROOT))
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        return await over_mcp(session, calls, tasks)


async def http(calls: int, tasks: int) -> tuple[list[float], float]:
    env = dict(os.environ, ASYNC_AGENT_MCP_TOKEN=TOKEN)
    server = subprocess.Popen(
        [CLI, *ARGS, "--transport", "http", "--port", "0"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        url = re.search(r"http://\S+", server.stderr.readline()).group(0)  # type: ignore[union-attr]
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with (
            streamablehttp_client(url, headers=headers) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            return await over_mcp(session, calls, tasks)
    finally:
        server.terminate()
        server.wait(15)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=300, help="sequential round trips per path")
    parser.add_argument("--tasks", type=int, default=500, help="tasks in flight at once per path")
    args = parser.parse_args()
    results = {
        "manager directly": direct(args.calls, args.tasks),
        "MCP over stdio": asyncio.run(stdio(args.calls, args.tasks)),
        "MCP over HTTP": asyncio.run(http(args.calls, args.tasks)),
    }
    print(f"Round trip of one echo task ({args.calls} calls, one at a time):")
    for name, (latencies, _) in results.items():
        print("  " + figures(name, latencies))
    print(f"Throughput ({args.tasks} echo tasks in flight; MCP: task-augmented calls + tasks/result):")
    base = results["manager directly"][1]
    for name, (_, rate) in results.items():
        print(f"  {name:<24} {rate:9.0f} tasks/s   ({rate / base:6.1%} of direct)")


if __name__ == "__main__":
    main()
