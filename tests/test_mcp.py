"""``async-agent mcp`` in a real subprocess, driven by the official SDK's own client over stdio and
streamable HTTP: tasks with progress, cancel in flight, isolation of sessions, disconnects, bad input."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip("mcp")

import mcp.types as types  # noqa: E402
from mcp import ClientSession, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402
from mcp.client.streamable_http import streamablehttp_client  # noqa: E402
from mcp.shared.exceptions import McpError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CLI = str(Path(sys.executable).with_name("async-agent"))
TOKEN = "test-token-7f3a"
MAX_REQUEST_BYTES = 20_000
SERVER_ARGS = ["mcp", "--tools", "tests._mcp_tools:TOOLS", "--max-request-bytes", str(MAX_REQUEST_BYTES)]

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def http_url() -> Iterator[str]:
    env = dict(os.environ, ASYNC_AGENT_MCP_TOKEN=TOKEN)
    server = subprocess.Popen(
        [CLI, *SERVER_ARGS, "--transport", "http", "--port", "0"],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert server.stderr is not None
    line = server.stderr.readline()
    match = re.search(r"http://\S+", line)
    assert match, line + server.stderr.read()
    yield match.group(0)
    server.terminate()
    server.wait(15)


class Client:
    """One SDK client session and the notifications it received."""

    def __init__(self, session: ClientSession, notes: list[types.ServerNotification]) -> None:
        self.session = session
        self.notes = notes

    def progress(self, token: str) -> list[float]:
        return [
            n.root.params.progress
            for n in self.notes
            if isinstance(n.root, types.ProgressNotification) and n.root.params.progressToken == token
        ]

    async def start(self, tool: str, arguments: dict, token: str | None = None) -> str:
        meta = {"progressToken": token} if token else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            created = await self.session.experimental.call_tool_as_task(tool, arguments, meta=meta)
        return created.task.taskId

    async def result(self, task_id: str) -> types.CallToolResult:
        return await self.session.experimental.get_task_result(task_id, types.CallToolResult)


@contextlib.asynccontextmanager
async def connect(transport: str, url: str | None = None) -> AsyncIterator[Client]:
    notes: list[types.ServerNotification] = []

    async def on_message(message: object) -> None:
        if isinstance(message, types.ServerNotification):
            notes.append(message)

    if transport == "stdio":
        params = StdioServerParameters(command=CLI, args=SERVER_ARGS, cwd=str(ROOT))
        streams = stdio_client(params)
    else:
        assert url is not None
        streams = streamablehttp_client(url, headers={"Authorization": f"Bearer {TOKEN}"})
    async with streams as opened, ClientSession(opened[0], opened[1], message_handler=on_message) as session:
        await session.initialize()
        yield Client(session, notes)


@pytest.fixture(params=["stdio", "http"])
def transport(request: pytest.FixtureRequest) -> tuple[str, str | None]:
    return request.param, (request.getfixturevalue("http_url") if request.param == "http" else None)


async def until(condition, what: str, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.02)


def test_the_tools_are_listed_with_task_support_and_the_server_has_the_tasks_capability(transport) -> None:
    async def main() -> None:
        async with connect(*transport) as client:
            listed = {tool.name: tool for tool in (await client.session.list_tools()).tools}
            assert {"slow_steps", "echo", "submit_task", "wait_for_tasks", "cancel_task"} <= set(listed)
            assert listed["slow_steps"].execution.taskSupport == "optional"
            assert listed["slow_steps"].inputSchema["required"] == ["steps", "delay"]
            answer = await client.session.call_tool("echo", {"text": "hello"})
            assert answer.content[0].text == "hello" and not answer.isError

    asyncio.run(main())


def test_a_slow_tool_runs_as_a_task_with_progress_and_its_result_is_fetched(transport) -> None:
    async def main() -> None:
        async with connect(*transport) as client:
            task_id = await client.start("slow_steps", {"steps": 4, "delay": 0.1}, token="p1")
            status = await client.session.experimental.get_task(task_id)
            assert status.status in ("working", "completed")
            result = await client.result(task_id)  # tasks/result blocks until the task ends
            assert result.structuredContent == {"steps": 4, "stopped": False}
            assert result.meta["io.modelcontextprotocol/related-task"]["taskId"] == task_id
            assert (await client.session.experimental.get_task(task_id)).status == "completed"
            await until(lambda: 1.0 in client.progress("p1"), "the last progress notification")
            seen = client.progress("p1")
            assert seen == sorted(seen) and len(seen) >= 3

    asyncio.run(main())


def test_cancel_in_flight_stops_the_tools_work(transport, tmp_path: Path) -> None:
    marker = tmp_path / "work.log"

    async def main() -> None:
        async with connect(*transport) as client:
            task_id = await client.start("slow_steps", {"steps": 200, "delay": 0.05, "marker": str(marker)})
            await until(lambda: marker.exists() and "step 2" in marker.read_text(), "the work to start")
            cancelled = await client.session.experimental.cancel_task(task_id)
            assert cancelled.status == "cancelled"
            await until(lambda: "stopped" in marker.read_text(), "the tool to stop")
            result = await client.result(task_id)
            assert result.isError and result.content[0].text.startswith("CANCELLED:")
            with pytest.raises(McpError, match="already ended"):
                await client.session.experimental.cancel_task(task_id)
        lines = marker.read_text().split()
        assert "finished" not in lines and lines.count("step") < 200

    asyncio.run(main())


def test_twenty_tasks_from_two_sessions_each_see_only_their_own(transport) -> None:
    async def session_work(client: Client, tag: str) -> tuple[list[str], Client]:
        ids = await asyncio.gather(
            *(client.start("slow_steps", {"steps": 2, "delay": 0.05}) for _ in range(5)),
            *(client.start("echo", {"text": f"{tag}-{i}"}) for i in range(5)),
        )
        return list(ids), client

    async def main() -> None:
        async with connect(*transport) as first, connect(*transport) as second:
            (ids_a, _), (ids_b, _) = await asyncio.gather(session_work(first, "a"), session_work(second, "b"))
            results_a = [await first.result(i) for i in ids_a]
            results_b = [await second.result(i) for i in ids_b]
            assert [r.content[0].text for r in results_a[5:]] == [f"a-{i}" for i in range(5)]
            assert [r.content[0].text for r in results_b[5:]] == [f"b-{i}" for i in range(5)]
            listed_a = {t.taskId for t in (await first.session.experimental.list_tasks()).tasks}
            listed_b = {t.taskId for t in (await second.session.experimental.list_tasks()).tasks}
            assert listed_a == set(ids_a) and listed_b == set(ids_b)
            for other in ids_b[:2]:
                with pytest.raises(McpError, match="Unknown task"):
                    await first.session.experimental.get_task(other)
                with pytest.raises(McpError, match="Unknown task"):
                    await first.session.experimental.cancel_task(other)
            with pytest.raises(McpError, match="Unknown task"):
                await first.session.call_tool("get_task_results", {"task_ids": [ids_b[0]]})

    asyncio.run(main())


def test_a_disconnect_mid_task_cancels_the_sessions_tasks(transport, tmp_path: Path) -> None:
    marker = tmp_path / "work.log"

    async def main() -> None:
        async with connect(*transport) as client:
            await client.start("slow_steps", {"steps": 200, "delay": 0.05, "marker": str(marker)})
            await until(lambda: marker.exists() and "step 2" in marker.read_text(), "the work to start")
        # the client left (stdin closed / HTTP DELETE): the server cancels what the session started
        await until(lambda: "stopped" in marker.read_text(), "the tool to stop after the disconnect")

    asyncio.run(main())
    assert "finished" not in marker.read_text()


def test_the_plain_task_tools_serve_clients_without_tasks_support(transport) -> None:
    async def main() -> None:
        async with connect(*transport) as client:
            call = client.session.call_tool
            submitted = await call(
                "submit_task", {"task_type": "tool", "name": "echo", "arguments": {"text": "x"}}
            )
            first = submitted.structuredContent["task_id"]
            chained = await call(
                "submit_task",
                {"task_type": "tool", "name": "echo", "arguments": {"text": {"$result": first}}},
            )
            second = chained.structuredContent["task_id"]
            summary = (await call("wait_for_tasks", {"task_ids": [first, second]})).structuredContent
            assert summary["all_done"] and summary["completed"] == [first, second]
            results = (await call("get_task_results", {"task_ids": [first, second]})).structuredContent
            assert results == {first: "x", second: "x"}
            assert (await call("check_task", {"task_id": second})).structuredContent["status"] == "completed"
            listed = (await call("list_tasks", {})).structuredContent["tasks"]
            assert [entry["task_id"] for entry in listed] == [first, second]

    asyncio.run(main())


def test_bad_calls_get_errors_that_say_how_to_fix_them(transport) -> None:
    async def main() -> None:
        async with connect(*transport) as client:
            with pytest.raises(McpError, match=r"Unknown tool 'nope'.*echo, slow_steps"):
                await client.session.call_tool("nope", {})
            with pytest.raises(
                McpError, match=r"unknown argument\(s\) 'txt'.*missing required argument\(s\) 'text'"
            ):
                await client.session.call_tool("echo", {"txt": "x"})
            with pytest.raises(
                McpError, match=r"Invalid arguments for 'wait_for_tasks' at task_ids.*It takes"
            ):
                await client.session.call_tool("wait_for_tasks", {"task_ids": "not-a-list"})
            if transport[0] == "stdio":  # over HTTP the body limit answers 413 (test below)
                with pytest.raises(McpError, match=f"over this server's limit of {MAX_REQUEST_BYTES} bytes"):
                    await client.session.call_tool("echo", {"text": "x" * (MAX_REQUEST_BYTES + 10)})
                assert (await client.session.call_tool("echo", {"text": "still usable"})).content[0].text == (
                    "still usable"
                )

    asyncio.run(main())


def test_http_requires_the_token_and_bounds_the_body(http_url: str) -> None:
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    headers = {"Accept": "application/json, text/event-stream"}
    missing = httpx.post(http_url, json=initialize, headers=headers, timeout=10)
    assert missing.status_code == 401 and "Authorization: Bearer" in missing.json()["error"]["message"]
    wrong = httpx.post(
        http_url, json=initialize, headers={**headers, "Authorization": "Bearer nope"}, timeout=10
    )
    assert wrong.status_code == 401
    big = json.dumps({**initialize, "params": {"pad": "x" * MAX_REQUEST_BYTES}})
    too_big = httpx.post(
        http_url,
        content=big,
        headers={**headers, "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        timeout=10,
    )
    assert too_big.status_code == 413 and "pass large data by reference" in too_big.json()["error"]["message"]


def test_http_without_a_token_does_not_start() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ASYNC_AGENT_MCP_TOKEN"}
    done = subprocess.run(
        [CLI, "mcp", "--transport", "http", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "needs a token" in done.stderr
