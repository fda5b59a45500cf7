"""Runtime tools on fleet workers: a worker started with ``--tools-dir`` advertises the runtimes it
has, the hub routes a runtime call by runtime, and the same RuntimeTool runs locally or remotely.
Real worker subprocesses, real Node.js, a native tool compiled from C with gcc, over gRPC and WS."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from _runtime_fixtures import JS_TOOL, compile_c, require, write
from test_remote_hub import running_hub, start_worker

from async_task_system.remote.hub import RemoteHub
from async_task_system.runtimes import RuntimeToolError, load_tools, runtime_tool

grpc_hub = pytest.importorskip("async_task_system.remote.grpc_hub", reason="the grpc extra is not installed")


@pytest.fixture(params=["grpc", "ws"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path):
    """A hub of either transport with one worker whose tools directory holds a JS and a C tool."""
    require("node")
    tools = tmp_path / "tools"
    tools.mkdir()
    write(tools, "text.js", JS_TOOL)
    compile_c(tools)
    hub_class = grpc_hub.GrpcHub if request.param == "grpc" else RemoteHub
    with running_hub(hub_class) as (manager, hub, workers):
        start_worker(hub, workers, "toolbox", "--tools-dir", str(tools), "--label", "pool=tools")
        yield manager, hub, workers, tools


def remote(manager, name: str, runtime: str, entry: str, **options):
    """A runtime tool that runs on a fleet worker of ``manager``'s hub."""
    options.setdefault("description", f"The {name} tool.")
    return runtime_tool(name, runtime=runtime, entry=entry, where="remote", manager=manager, **options)


def test_a_worker_advertises_its_runtimes(fleet):
    _, hub, workers, _ = fleet
    info = next(w for w in hub.workers() if w["name"] == "toolbox")
    assert {"python", "native", "javascript"} <= set(info["runtimes"])
    assert "mcp" not in info["runtimes"]


def test_the_same_js_and_native_tools_run_locally_and_on_the_worker(fleet):
    manager, _, _, tools = fleet
    for where, entry in (("local", str(tools / "text.js")), ("remote", "text.js")):
        add = runtime_tool(
            "add",
            runtime="javascript",
            entry=entry,
            description="Adds two numbers.",
            inputs={"a": "number", "b": "number"},
            where=where,
            manager=manager,
        )
        assert add(a=2, b=3) == 5, where
        result = add.run(a=1, b=1)
        assert result.ok and result.stderr.strip() == "adding" and result.runtime == "javascript"
    hello = remote(manager, "hello", "native", "ctool", inputs={"name": "string"}, labels={"pool": "tools"})
    assert hello(name="fleet") == "hello fleet"
    fail = remote(manager, "fail", "native", "ctool")
    with pytest.raises(RuntimeToolError, match="something went wrong"):
        fail()
    assert fail.run().error_type == "exit_code"


def test_a_remote_tool_runs_as_a_task_suspension(fleet):
    manager, _, _, _ = fleet
    words = remote(manager, "words", "javascript", "text.js", inputs={"text": "string"})
    manager.register_tool(words)
    statuses: list[str] = []
    manager.add_listener(lambda info: statuses.append(info.status.value))
    task_id = manager.submit("tool", "words", {"text": "one two three"})
    assert manager.wait(task_id, timeout=30).not_done == []
    assert manager.result(task_id) == {"count": 3}
    assert "waiting_remote" in statuses  # it held no slot while the worker ran the call


def test_a_remote_tool_call_reports_its_start(fleet):
    manager, _, _, _ = fleet
    starts: list[tuple[str | None, str, float]] = []
    remove = manager.remote_manager.add_start_listener(lambda *start: starts.append(start))
    try:
        words = remote(manager, "words", "javascript", "text.js", inputs={"text": "string"})
        before = time.time()
        assert words(text="one two") == {"count": 2}
    finally:
        remove()
    assert len(starts) == 1  # the worker said so once, before its result
    _task_id, request_id, started_at = starts[0]
    assert manager.remote_manager.outcome(request_id).success
    assert started_at >= before - 1.0  # the worker's clock, on this machine


def test_paths_outside_the_tools_directory_and_missing_entries_are_refused(fleet, tmp_path: Path):
    manager, _, _, tools = fleet
    outside = tmp_path / "outside.js"
    shutil.copy(tools / "text.js", outside)
    (tools / "escape.js").symlink_to(outside)
    for entry in ("../outside.js", str(outside), "escape.js"):
        tool = remote(manager, "t", "javascript", entry)
        result = tool.run()
        assert (
            result.error_type == "invalid_entry" and "outside the worker's tools directory" in result.error
        ), entry
    missing = remote(manager, "t", "native", "nope")
    result = missing.run()
    assert result.error_type == "invalid_entry" and "does not exist" in result.error


def test_a_runtime_no_worker_offers_fails_fast_with_the_offers(fleet):
    manager, _, _, _ = fleet
    tool = remote(manager, "t", "javascript", "text.js", labels={"pool": "gpu"})
    result = tool.run()
    assert result.error_type == "no_worker"
    assert "javascript runtime tools with labels pool=gpu" in result.error and "toolbox" in result.error


def test_a_worker_without_tools_dir_offers_no_runtimes(tmp_path: Path):
    with running_hub(RemoteHub) as (manager, hub, workers):
        start_worker(hub, workers, "plain")
        assert hub.workers()[0]["runtimes"] == []
        tool = remote(manager, "t", "native", "x")
        result = tool.run()
        assert result.error_type == "no_worker" and "native runtime tools" in result.error


def test_a_manifest_declares_remote_tools(tmp_path: Path):
    manifest = tmp_path / "fleet.toml"
    manifest.write_text(
        'runtime = "javascript"\nentry = "text.js"\nwhere = "remote"\nlabels = { pool = "tools" }\n\n'
        '[[tool]]\nname = "add"\ndescription = "Adds."\ninputs.a = "number"\ninputs.b = "number"\n'
    )
    (tool,) = load_tools(manifest)  # the entry is on the worker: not checked, not made absolute here
    assert (tool.where, tool.entry, tool.labels) == ("remote", "text.js", {"pool": "tools"})


def test_bad_remote_declarations_are_refused():
    from async_task_system.runtimes import ManifestError

    with pytest.raises(ManifestError, match="where must be"):
        runtime_tool("t", runtime="native", entry="x", description="x", where="moon")
    with pytest.raises(ManifestError, match="use where='remote'"):
        runtime_tool("t", runtime="native", entry="x", description="x", labels={"a": "b"})
