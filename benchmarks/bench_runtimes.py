"""Per-call overhead of each tool runtime, in one run.

    .venv/bin/python benchmarks/bench_runtimes.py [--calls 30]

(a) Python, JavaScript (Node) and native (a C binary built here with gcc): one call through the
    ``RuntimeManager`` (sandbox supervisor, clean environment, limits, asyncio pipes, JSON in and
    out) against a direct ``subprocess.run`` of the very same argument list and stdin. The
    difference is what the runtime adds per call.
(b) WebAssembly: ``fib(n)`` exported by a module built from WAT here, called through the runtime
    (a fresh engine and store per call, epoch deadline, memory limit, a thread hop) against the
    same ``fib`` in Python, and against a bare wasmtime call on an instance kept warm.
(c) MCP: one tool call on a running MCP stdio server through the runtime against the same call on
    the smolagents tool directly.
A runtime whose program is missing here is reported as skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from _runtime_fixtures import C_TOOL, JS_TOOL, MCP_SERVER, PY_TOOL, WAT_KERNELS  # noqa: E402

from async_task_system.runtimes import RuntimeManager  # noqa: E402
from async_task_system.sandbox.process import RunLimits  # noqa: E402

FIB_N = 20


def fib(n: int) -> int:
    return n if n < 2 else fib(n - 1) + fib(n - 2)


def timed(fn, calls: int) -> list[float]:
    fn()  # warm-up (caches, compiled module, started server)
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    return times


def line(label: str, times: list[float], base: list[float] | None = None) -> str:
    median = statistics.median(times)
    text = f"  {label:<44} median {median:8.3f} ms   p90 {sorted(times)[int(len(times) * 0.9) - 1]:8.3f} ms"
    if base is not None:
        text += f"   ({median - statistics.median(base):+.3f} ms)"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args()
    calls = args.calls
    work = Path(tempfile.mkdtemp(prefix="bench-runtimes-"))
    manager = RuntimeManager(RunLimits(timeout=30))
    loop = asyncio.new_event_loop()

    def through_runtime(runtime: str, entry: str, command: str, parameters: dict):
        def call():
            result = loop.run_until_complete(manager.execute(runtime, entry, command, parameters))
            assert result.ok, result.error
            return result.result

        return call

    def direct(runtime: str, entry: str, command: str, parameters: dict):
        argv, stdin = manager.get_runtime(runtime).command_line(entry, command, parameters)
        return lambda: subprocess.run(argv, input=stdin, capture_output=True, check=True)

    print(f"== (a) subprocess runtimes, {calls} calls each: runtime vs subprocess.run of the same argv")
    programs = [("python", "tool.py", PY_TOOL, "add", {"a": 1, "b": 2})]
    if shutil.which("node"):
        programs.append(("javascript", "tool.js", JS_TOOL, "add", {"a": 1, "b": 2}))
    else:
        print("  javascript: skipped (node is not installed)")
    for runtime, name, source, command, parameters in programs:
        entry = str(work / name)
        Path(entry).write_text(source)
        base = timed(direct(runtime, entry, command, parameters), calls)
        print(line(f"{runtime}: subprocess.run", base))
        print(
            line(
                f"{runtime}: RuntimeManager.execute",
                timed(through_runtime(runtime, entry, command, parameters), calls),
                base,
            )
        )
    if shutil.which("gcc"):
        (work / "ctool.c").write_text(C_TOOL)
        subprocess.run(["gcc", "-O1", "-o", str(work / "ctool"), str(work / "ctool.c")], check=True)
        entry, parameters = str(work / "ctool"), {"x": "1", "y": "2"}
        base = timed(direct("native", entry, "args", parameters), calls)
        print(line("native: subprocess.run", base))
        print(
            line(
                "native: RuntimeManager.execute",
                timed(through_runtime("native", entry, "args", parameters), calls),
                base,
            )
        )
    else:
        print("  native: skipped (gcc is not installed)")

    print(f"\n== (b) WebAssembly fib({FIB_N}), {calls} calls each")
    try:
        import wasmtime
    except ImportError:
        print("  skipped (wasmtime is not installed)")
    else:
        entry = str(work / "kernels.wat")
        Path(entry).write_text(WAT_KERNELS)
        python_times = timed(lambda: fib(FIB_N), calls)
        print(line("python: fib() in this process", python_times))
        store = wasmtime.Store()
        linker = wasmtime.Linker(store.engine)
        linker.define_wasi()
        store.set_wasi(wasmtime.WasiConfig())
        instance = linker.instantiate(store, wasmtime.Module(store.engine, Path(entry).read_text()))
        wasm_fib = instance.exports(store)["fib"]
        print(
            line(
                "wasmtime: warm instance, direct call",
                timed(lambda: wasm_fib(store, FIB_N), calls),
                python_times,
            )
        )
        runtime_times = timed(through_runtime("wasm", entry, "fib", {"n": FIB_N}), calls)
        print(line("wasm: RuntimeManager.execute", runtime_times, python_times))

    print(f"\n== (c) MCP stdio server, {calls} calls each")
    try:
        import mcpadapt  # noqa: F401
    except ImportError:
        print("  skipped (mcp / mcpadapt are not installed)")
    else:
        server = str(work / "server.py")
        Path(server).write_text(MCP_SERVER)
        command_line = f"{sys.executable} {server}"
        tool = manager.get_runtime("mcp").server(command_line).tool("add")
        base = timed(lambda: tool(a=1, b=2), calls)
        print(line("mcp: smolagents tool called directly", base))
        print(
            line(
                "mcp: RuntimeManager.execute",
                timed(through_runtime("mcp", command_line, "add", {"a": 1, "b": 2}), calls),
                base,
            )
        )
    manager.close()
    loop.close()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
