"""The runtimes with real programs: Node.js scripts, a Python tool file, a C binary built by gcc,
WebAssembly modules built from WAT; every bad input ends as an error result, never a hang."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from _runtime_fixtures import (
    JS_TOOL,
    PY_TOOL,
    WAT_ECHO,
    WAT_KERNELS,
    compile_c,
    require,
    require_module,
    write,
)

from async_task_system.core.errors import AsyncTaskSystemError
from async_task_system.runtimes import (
    JavaScriptRuntime,
    RuntimeManager,
    RuntimeResult,
    RuntimeToolError,
    UnknownRuntimeError,
    WasmRuntime,
)
from async_task_system.sandbox.process import RunLimits

LIMITS = RunLimits(timeout=20, max_output_bytes=64 * 1024)


def run(manager: RuntimeManager, *args, **kwargs) -> RuntimeResult:
    return asyncio.run(manager.execute(*args, **kwargs))


@pytest.fixture
def runtimes() -> RuntimeManager:
    manager = RuntimeManager(LIMITS)
    yield manager
    manager.close()


def test_unknown_runtime_is_a_clear_error_listing_the_known_ones(runtimes, tmp_path):
    result = run(runtimes, "cobol", str(tmp_path / "x"), "go", {})
    assert result.status == "error" and result.error_type == "unknown_runtime"
    assert "known runtimes are javascript, mcp, native, python, wasm" in result.error
    with pytest.raises(UnknownRuntimeError, match="known runtimes"):
        runtimes.get_runtime("cobol")
    assert issubclass(UnknownRuntimeError, AsyncTaskSystemError)
    assert runtimes.get_runtime("js").get_name() == "javascript"


def test_every_result_has_one_shape(runtimes, tmp_path):
    entry = write(tmp_path, "tool.py", PY_TOOL)
    keys = set(run(runtimes, "python", entry, "add", {"a": 1, "b": 2}).to_dict())
    assert keys == {
        "status", "result", "error", "error_type", "stdout", "stderr", "exit_code", "duration",
        "truncated", "runtime",
    }  # fmt: skip
    assert set(run(runtimes, "python", str(tmp_path / "nope.py"), "add", {}).to_dict()) == keys


# ---------------------------------------------------------------- python


def test_python_tool_functions_run_in_the_sandbox(runtimes, tmp_path):
    entry = write(tmp_path, "tool.py", PY_TOOL)
    result = run(runtimes, "python", entry, "add", {"a": 2, "b": 3})
    assert result.ok and result.result == 5 and result.exit_code == 0
    assert "this goes to stderr" in result.stderr and result.duration > 0
    assert run(runtimes, "python", entry, "shout", {"text": "hi"}).result == "HI"


def test_python_tool_errors_say_what_went_wrong(runtimes, tmp_path):
    entry = write(tmp_path, "tool.py", PY_TOOL)
    failed = run(runtimes, "python", entry, "boom", {})
    assert failed.error_type == "tool_error" and failed.error == "ValueError: no luck"
    assert "Traceback" in failed.stderr
    with pytest.raises(RuntimeToolError, match="no luck"):
        failed.value()
    missing = run(runtimes, "python", entry, "_hidden", {})
    assert missing.error_type == "invalid_entry" and "['add', 'boom', 'shout']" in missing.error
    wrong = run(runtimes, "python", entry, "add", {"a": 1})
    assert wrong.error_type == "tool_error" and "missing 1 required positional argument" in wrong.error
    nofile = run(runtimes, "python", str(tmp_path / "absent.py"), "add", {})
    assert nofile.error_type == "invalid_entry" and "does not exist" in nofile.error


# ---------------------------------------------------------------- javascript


@pytest.fixture
def js_entry(tmp_path) -> str:
    require("node")
    return write(tmp_path, "tool.js", JS_TOOL)


def test_javascript_over_stdio(runtimes, js_entry):
    added = run(runtimes, "javascript", js_entry, "add", {"a": 2, "b": 40})
    assert added.ok and added.result == 42 and added.stderr.strip() == "adding"
    assert run(runtimes, "js", js_entry, "words", {"text": "a b  c"}).result == {"count": 3}
    refused = run(runtimes, "javascript", js_entry, "refuse", {"why": "policy"})
    assert refused.error_type == "tool_error" and refused.error == "refused: policy"


def test_javascript_bad_output_and_crashes_are_errors(runtimes, js_entry):
    bad = run(runtimes, "javascript", js_entry, "bad_json", {})
    assert bad.error_type == "invalid_output" and "this is not json" in bad.error
    thrown = run(runtimes, "javascript", js_entry, "throw", {})
    assert thrown.error_type == "exit_code" and thrown.exit_code == 1
    assert "boom from js" in thrown.stderr
    with pytest.raises(RuntimeToolError, match="boom from js"):
        thrown.value()  # the message carries stderr's tail


def test_javascript_flood_and_hang_are_stopped(runtimes, js_entry):
    started = time.monotonic()
    flood = run(runtimes, "javascript", js_entry, "flood", {})
    assert flood.error_type == "output_limit" and flood.truncated
    assert len(flood.stdout) == LIMITS.max_output_bytes
    assert time.monotonic() - started < 10
    started = time.monotonic()
    hang = run(runtimes, "javascript", js_entry, "hang", {}, timeout=1.0)
    assert hang.error_type == "timeout" and "1 s" in hang.error
    assert time.monotonic() - started < 6
    assert run(runtimes, "javascript", js_entry, "add", {"a": 1, "b": 1}).result == 2  # still fine


def test_javascript_sees_only_the_allowed_environment(runtimes, js_entry, monkeypatch):
    monkeypatch.setenv("SECRET_TOKEN", "x")
    names = run(runtimes, "javascript", js_entry, "env", {}).result
    assert "SECRET_TOKEN" not in names and set(names) <= set(LIMITS.allow_env)


def test_node_permission_model_limits_reads(js_entry, tmp_path):
    runtime = JavaScriptRuntime(permission=True)
    outside = "/etc/hostname" if os.path.exists("/etc/hostname") else "/etc/passwd"
    denied = asyncio.run(runtime.execute(js_entry, "read", {"path": outside}))
    assert denied.error_type == "exit_code" and "ERR_ACCESS_DENIED" in denied.stderr
    allowed = asyncio.run(runtime.execute(js_entry, "read", {"path": js_entry}))
    assert allowed.ok and allowed.result == len(JS_TOOL)


def test_missing_node_is_a_clear_error(tmp_path):
    runtime = JavaScriptRuntime(node="/nonexistent/node")
    result = asyncio.run(runtime.execute(write(tmp_path, "t.js", JS_TOOL), "add", {}))
    assert result.error_type == "unavailable" and "Node.js is not installed" in result.error
    assert asyncio.run(runtime.validate(str(tmp_path / "t.js"))) is False


# ---------------------------------------------------------------- native


def test_native_binary_gets_an_argument_list_never_a_shell(runtimes, tmp_path):
    binary = compile_c(tmp_path)
    result = run(runtimes, "native", binary, "args", {"name": "; rm -rf ~", "n": 3, "v": True, "skip": None})
    assert result.ok and result.result == ["--name", "; rm -rf ~", "--n", "3", "--v", "true"]
    text = run(runtimes, "native", binary, "hello", {"who": "world"})
    assert text.result == "hello world"


def test_native_failures_are_errors(runtimes, tmp_path):
    binary = compile_c(tmp_path)
    failed = run(runtimes, "native", binary, "fail", {})
    assert failed.error_type == "exit_code" and failed.exit_code == 3
    assert "something went wrong" in failed.stderr
    flood = run(runtimes, "native", binary, "flood", {})
    assert flood.error_type == "output_limit" and flood.truncated
    slow = run(runtimes, "native", binary, "sleep", {}, timeout=0.5)
    assert slow.error_type == "timeout"
    plain = write(tmp_path, "not_executable", "#!/bin/sh\necho hi\n")
    refused = run(runtimes, "native", plain, "x", {})
    assert refused.error_type == "invalid_entry" and "not executable" in refused.error
    missing = run(runtimes, "native", str(tmp_path / "absent"), "x", {})
    assert missing.error_type == "invalid_entry" and "does not exist" in missing.error
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x00\x01 not a program")
    garbage.chmod(0o755)
    broken = run(runtimes, "native", str(garbage), "x", {})
    # the kernel refuses to exec it: the program never ran (no exit code, no stderr of its own), and
    # the error says why in the OS's words
    assert (broken.status, broken.error_type, broken.exit_code) == ("error", "unavailable", None)
    assert "Exec format error" in broken.error


# ---------------------------------------------------------------- wasm


@pytest.fixture
def wat(tmp_path):
    require_module("wasmtime")
    return lambda name, text: write(tmp_path, name, text)


def test_wasm_wasi_command_reads_the_request_on_stdin(runtimes, wat):
    entry = wat("echo.wat", WAT_ECHO)
    result = run(runtimes, "wasm", entry, "greet", {"who": "you"})
    assert result.ok and result.result == {"command": "greet", "parameters": {"who": "you"}}
    assert result.exit_code == 0 and result.duration < 5


def test_wasm_exported_functions_take_numbers(runtimes, wat):
    entry = wat("kernels.wat", WAT_KERNELS)
    assert run(runtimes, "wasm", entry, "add", {"a": 2, "b": 40}).result == 42
    assert run(runtimes, "wasm", entry, "fib", {"n": 20}).result == 6765
    bad = run(runtimes, "wasm", entry, "add", {"a": "x", "b": 1})
    assert bad.error_type == "trap" and "takes numbers" in bad.error
    unknown = run(runtimes, "wasm", entry, "nope", {})
    assert unknown.error_type == "invalid_entry" and "'fib'" in unknown.error


def test_wasm_traps_loops_floods_and_memory_are_errors(wat):
    entry = wat("kernels.wat", WAT_KERNELS)
    runtime = WasmRuntime(RunLimits(memory_mb=16, max_output_bytes=64 * 1024))
    crash = asyncio.run(runtime.execute(entry, "crash", {}))
    assert crash.error_type == "trap" and "unreachable" in crash.error
    started = time.monotonic()
    spin = asyncio.run(runtime.execute(entry, "spin", {}, timeout=0.5))
    assert spin.error_type == "timeout" and time.monotonic() - started < 3
    grow = asyncio.run(runtime.execute(entry, "grow", {}))
    assert grow.error_type == "trap"  # memory.grow past 16 MiB failed, the module gave up
    flood = asyncio.run(runtime.execute(entry, "flood", {}, timeout=10))
    assert flood.error_type == "output_limit" and flood.truncated
    assert asyncio.run(runtime.execute(entry, "add", {"a": 1, "b": 2})).result == 3


def test_wasm_deadlines_of_concurrent_calls_are_independent(wat):
    entry = wat("kernels.wat", WAT_KERNELS)
    runtime = WasmRuntime()

    async def both():
        return await asyncio.gather(
            runtime.execute(entry, "spin", {}, timeout=0.3),
            runtime.execute(entry, "fib", {"n": 25}, timeout=10),
        )

    spin, fib = asyncio.run(both())
    assert spin.error_type == "timeout" and fib.ok and fib.result == 75025


def test_bad_wasm_modules_are_errors(runtimes, tmp_path, wat):
    broken = wat("broken.wat", "(module (func")
    result = run(runtimes, "wasm", broken, "x", {})
    assert result.error_type == "invalid_entry" and "could not compile" in result.error
    other = wat("tool.txt", WAT_ECHO)
    assert run(runtimes, "wasm", other, "x", {}).error_type == "invalid_entry"
