"""Benchmark the JSON-lines server: requests/second and latency with 50 concurrent connections.

The server runs in this process (a background thread, as ``AgentServer.start_in_thread``); the
load comes from a separate process (asyncio, 50 connections, each sending its next request as
soon as the previous answer arrived, like seed 003's clients), so client work does not compete
with the server for this process's GIL.

Scenarios (ScriptedModel answers, no LLM):
  agent        a fresh smolagents CodeAgent per request, one step calling final_answer
  agent+tmpl   the same, the factory passing prompt_templates parsed once (skips smolagents' YAML parse)
  async-agent  a fresh create_async_agent(...) per request (adds a TaskManager), one step
  model-only   use_tools=false: one model call, no agent loop (the agent is still built for its model)
  model-only+m the same with AgentServer(model=...): no agent instance at all
  instruction  an Instruction running a tool directly (no model)
Baseline: the same CodeAgent runs called directly from 50 threads, without the server, in this
run, so the server's own cost shows as the ratio between the two.

Run: .venv/bin/python benchmarks/bench_server.py [--connections 50] [--requests 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from smolagents import CodeAgent, tool

from async_task_system import ScriptedModel, create_async_agent
from async_task_system.server import AgentServer

ANSWER = "Thought: answer.\n<code>\nfinal_answer('pong')\n</code>"


@tool
def echo(text: str) -> str:
    """Return the text.

    Args:
        text: any text
    """
    return text


def code_agent() -> CodeAgent:
    return CodeAgent(tools=[echo], model=ScriptedModel([ANSWER], repeat_last=True), verbosity_level=-1)


_TEMPLATES = code_agent().prompt_templates


def code_agent_cached_templates() -> CodeAgent:
    # smolagents parses its prompt-template YAML in every CodeAgent(); passing it in skips that.
    return CodeAgent(
        tools=[echo],
        model=ScriptedModel([ANSWER], repeat_last=True),
        verbosity_level=-1,
        prompt_templates=_TEMPLATES,
    )


def async_agent():
    return create_async_agent(
        tools=[echo], model=ScriptedModel([ANSWER], repeat_last=True), verbosity_level=-1
    )


TEXT = {"input": {"Text": "ping"}}
MODEL_ONLY = {"input": {"Text": "ping"}, "use_tools": False}
INSTRUCTION = {"input": {"Instruction": {"command": "echo", "parameters": {"text": "ping"}}}}

# name, factory, request, AgentServer options, requests per connection as a multiple of --requests
SCENARIOS = [
    ("agent", code_agent, TEXT, {}, 1),
    ("agent+tmpl", code_agent_cached_templates, TEXT, {}, 1),
    ("async-agent", async_agent, TEXT, {}, 1),
    ("model-only", code_agent, MODEL_ONLY, {}, 2),
    ("model-only+m", code_agent, MODEL_ONLY, {"model": ScriptedModel(["pong"], repeat_last=True)}, 4),
    ("instruction", code_agent, INSTRUCTION, {}, 2),
]


# ------------------------------------------------------------------------------ load process


async def _connection(
    port: int, n: int, template: dict, latencies: list[float], errors: list[str], cid: int
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 24)
    for i in range(n):
        request = dict(template, request_id=f"{cid}-{i}")
        start = time.perf_counter()
        writer.write((json.dumps(request) + "\n").encode())
        line = await reader.readline()
        latencies.append(time.perf_counter() - start)
        response = json.loads(line)
        if response.get("error"):
            errors.append(response["error"])
    writer.close()
    await writer.wait_closed()


async def _load(port: int, connections: int, per_connection: int, template: dict) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    start = time.perf_counter()
    await asyncio.gather(
        *(_connection(port, per_connection, template, latencies, errors, c) for c in range(connections))
    )
    wall = time.perf_counter() - start
    return {"wall": wall, "latencies": latencies, "errors": errors[:3], "n_errors": len(errors)}


def _load_process(port: int, connections: int, per_connection: int, template: dict, out: mp.Queue) -> None:
    out.put(asyncio.run(_load(port, connections, per_connection, template)))


def run_load(port: int, connections: int, per_connection: int, template: dict) -> dict:
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=_load_process, args=(port, connections, per_connection, template, out))
    proc.start()
    result = out.get(timeout=600)
    proc.join(60)
    return result


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def report(name: str, n: int, wall: float, latencies: list[float] | None, extra: str = "") -> float:
    rps = n / wall
    if latencies:
        print(
            f"{name:<18} {n:>5} requests in {wall:6.2f} s = {rps:7.1f} req/s   "
            f"latency p50 {1000 * statistics.median(latencies):7.1f} ms  p99 {1000 * pct(latencies, 0.99):7.1f} ms"
            f"{extra}"
        )
    else:
        print(f"{name:<18} {n:>5} runs     in {wall:6.2f} s = {rps:7.1f} runs/s{extra}")
    return rps


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--requests", type=int, default=20, help="requests per connection (agent scenarios)")
    args = parser.parse_args()
    c, r = args.connections, args.requests
    print(
        f"Python {sys.version.split()[0]}, {c} concurrent connections, closed loop (next request after the answer)"
    )

    n = c * r
    code_agent().run("warm up")

    def direct() -> float:
        """Baseline: the same CodeAgent runs, straight from c threads, no server."""
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=c) as pool:
            list(pool.map(lambda _: code_agent().run("ping"), range(n)))
        return report("direct (no server)", n, time.perf_counter() - start, None)

    baselines = [direct()]
    results = {}
    for name, factory, template, options, multiple in SCENARIOS:
        per_connection = r * multiple
        server = AgentServer(factory, request_timeout=120, max_concurrent_requests=c, **options)
        with server.start_in_thread() as running:
            run_load(running.port, 2, 2, template)  # warm up
            result = run_load(running.port, c, per_connection, template)
        total = c * per_connection
        extra = f"   errors {result['n_errors']}: {result['errors']}" if result["n_errors"] else ""
        results[name] = report(name, total, result["wall"], result["latencies"], extra)
        if name == "agent":  # the baseline again right after, as other load on the machine drifts
            baselines.append(direct())
    baseline = statistics.mean(baselines)
    print(
        f"server 'agent' throughput / direct runs: {results['agent'] / baseline:.2f}x "
        "(1.0 = the server adds nothing over running the agents yourself)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
